"""Bad input never gives a silently wrong result: each case is built on tiny real files and either refused with an
error that names the file, id, column or key, or handled correctly (the handled result is checked)."""

import json
import os
import re
import struct
import subprocess
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.app import build_plan
from pipeline.config import ConfigError, load_config
from pipeline.data import DataError, read_image
from pipeline.store import HOST, DiskFull, require_space
from pipeline.tta import POLICIES, merge

from .conftest import run_cli, write_config

TINY = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none"}]


def cfg_path(tmp, layout="csv", **sections):
    return write_config(tmp, layout, models=TINY, **sections)


def plan_of(tmp, *overrides, layout="csv", **sections):
    return build_plan(load_config(cfg_path(tmp, layout, **sections), list(overrides)))


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


# ---------------------------------------------------------------- config values and names (refused at load)
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.label_smoothing=1.5", r"models\[0\]\.label_smoothing': 1\.5 is out of range; expected a value in \[0"),
        ("train.accum_steps=0", r"models\[0\]\.accum_steps': 0 is out of range; expected a value >= 1"),
        ("train.epochs=0", r"models\[0\]\.epochs': 0 is out of range"),
        ("train.img_size=0", r"models\[0\]\.img_size': 0 is out of range"),
        ("folds.n_folds=1", r"'folds\.n_folds': 1 is out of range; expected a value >= 2"),
        ("train.lr=[1,", r"--set train\.lr=\[1,: the value is not valid YAML"),
        ("models.tiny.name=../../../../../x", r"models\[0\]\.name': '\.\./\.\./\.\./\.\./\.\./x' is not a safe name"),
        ("competition.name=../../x", r"'competition\.name': '\.\./\.\./x' is not a safe name"),
        ("submit.name=a/b", r"'submit\.name': 'a/b' is not a safe name"),
        ("blend.bootstrap=0", r"'blend\.bootstrap': 0 is out of range; expected a value >= 1"),
        ("train.batch_size=1", r"models\[0\]\.batch_size': 1 is out of range; expected a value >= 2 \(a training"),
        ("folds.seed=-1", r"'folds\.seed': -1 is out of range; expected a value in \[0, 4294967295\]"),
    ],
)
def test_config_values_and_names_are_refused_by_key(tmp, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cfg_path(tmp), [override])


def test_a_malicious_name_writes_nothing_outside_the_project(tmp):
    before = set(os.listdir("/"))
    proc = run_cli("all", "--config", str(cfg_path(tmp)), "--set", "models.tiny.name=../../../../../../x", check=False)
    assert proc.returncode == 2 and "not a safe name" in proc.stderr
    assert set(os.listdir("/")) == before and not (tmp / "work").exists()


# ---------------------------------------------------------------- competition files (refused or fixed at load)
def test_label_spellings_are_one_class_and_written_back_as_spelled(tmp):
    cfg = cfg_path(tmp)
    comp = tmp / "comp-csv"
    edit_csv(comp / "train.csv", lambda d: d.assign(digit=[{"0": "0", "1": "1.0" if i % 3 == 0 else "1", "2": "2 "}[v]
                                                           for i, v in enumerate(d["digit"])]))  # fmt: skip
    plan = build_plan(load_config(cfg))
    assert plan.comp.classes == ["0", "1", "2"] and plan.comp.n_classes == 3  # not 0, 1, 1.0, 2 and "2 "
    assert np.bincount(plan.comp.train["y"]).tolist() == [12, 12, 12]
    notes = " ".join(plan.comp.notes)
    assert "had white space" in notes and "['1', '1.0'] are one class, written back as '1'" in notes
    edit_csv(comp / "train.csv", lambda d: d.assign(digit=["NaN" if i == 3 else v for i, v in enumerate(d["digit"])]))
    with pytest.raises(DataError, match=r"1 train row\(s\) without a target .*NaN.*first ids: \['t"):
        build_plan(load_config(cfg))


def test_an_id_with_two_image_files_is_refused_unless_image_ext_says(tmp):
    cfg = cfg_path(tmp, "folders")
    comp = tmp / "comp-folders"
    edit_csv(comp / "sample_submission.csv", lambda d: d.assign(file=[f.removesuffix(".png") for f in d["file"]]))
    test_dir = comp / "test"
    first = sorted(test_dir.iterdir())[0]
    Image.open(first).convert("RGB").save(first.with_suffix(".jpg"))
    with pytest.raises(DataError, match=rf"1 test id\(s\) match several files .*{first.stem} \({first.stem}.jpg, "
                                        rf"{first.name}\).*image_ext"):  # fmt: skip
        build_plan(load_config(cfg))
    plan = build_plan(load_config(cfg, ["competition.image_ext=.png"]))
    assert plan.comp.test_sources[list(plan.comp.test_ids).index(first.stem)].endswith(".png")


def test_empty_group_values_are_refused_naming_rows(tmp):
    make = write_config(tmp, "csv", models=TINY)
    comp = tmp / "comp-csv"
    edit_csv(comp / "train.csv", lambda d: d.assign(patient=["" if i < 4 else f"p{i // 2}" for i in range(len(d))]))
    with pytest.raises(DataError, match=r"4 train row\(s\) have an empty 'patient' .*First ids: \["):
        build_plan(load_config(make, ["competition.group_col=patient"]))


def test_empty_test_set_is_refused(tmp):
    cfg = cfg_path(tmp)
    edit_csv(tmp / "comp-csv" / "sample_submission.csv", lambda d: d.iloc[:0])
    with pytest.raises(DataError, match=r"sample_submission.csv lists no test ids"):
        build_plan(load_config(cfg))


def test_sample_with_an_extra_column_is_refused_at_load(tmp):
    cfg = cfg_path(tmp)
    edit_csv(tmp / "comp-csv" / "sample_submission.csv", lambda d: d.assign(Usage="Public"))
    with pytest.raises(DataError, match=r"sample_submission.csv: columns \['image_id', 'digit', 'Usage'\]"):
        build_plan(load_config(cfg))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims this size (no pixel data): what a decompression bomb looks like when opened."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_every_unusable_image_is_named_before_any_work(tmp):
    cfg = cfg_path(tmp)
    test_dir = tmp / "comp-csv" / "test"
    names = sorted(p.name for p in test_dir.iterdir())
    (test_dir / names[0]).write_bytes(b"")  # zero bytes
    (test_dir / names[1]).write_bytes(b"this is no image")
    (test_dir / names[2]).write_bytes(png_claiming(13500, 13500))  # a decompression bomb
    proc = run_cli("all", "--config", str(cfg), check=False)
    assert proc.returncode == 1 and "[train]" not in proc.stdout and not (tmp / "work" / "tiny-csv" / "train").exists()
    err = proc.stderr
    assert "3 test image(s) cannot be used" in err
    assert f"{names[0]}: empty file (0 bytes)" in err and f"{names[1]}: not a readable image" in err
    assert f"{names[2]}: " in err and "decompression bomb" in err and "Traceback" not in err


def test_pixel_csv_fractions_are_scaled_and_nan_cells_refused(tmp):
    cfg = cfg_path(tmp, "pixels")
    comp = tmp / "comp-pixels"
    for name in ("train.csv", "test.csv"):
        df = pd.read_csv(comp / name)
        cols = [c for c in df.columns if c.startswith("pixel")]
        df[cols] = df[cols] / 255.0
        df.to_csv(comp / name, index=False)
    plan = build_plan(load_config(cfg))
    assert plan.comp.train_pixels.max() == 255 and plan.comp.test_pixels.max() == 255  # not truncated to 0/1
    assert any("lie in 0..1; scaled by 255" in n for n in plan.comp.notes)
    edit_csv(comp / "test.csv", lambda d: d.assign(pixel5=["" if i == 2 else v for i, v in enumerate(d["pixel5"])]))
    with pytest.raises(DataError, match=r"test.csv: 1 pixel cell\(s\) are empty or not numbers, first at data row 3, "
                                        r"column 'pixel5'"):  # fmt: skip
        build_plan(load_config(cfg))


def test_float_and_exif_rotated_images_decode_as_they_look(tmp):
    values = np.linspace(0, 1, 16 * 8, dtype=np.float32).reshape(16, 8)
    Image.fromarray(values).save(tmp / "f.tif")
    got = read_image(str(tmp / "f.tif"))
    assert got.shape == (16, 8, 3) and got.max() == 255 and got[..., 0][-1, -1] == 255  # 0..1 scaled, not 0/1
    values[3, 3] = np.nan
    Image.fromarray(values).save(tmp / "nan.tif")
    with pytest.raises(DataError, match=r"nan.tif has NaN pixels"):
        read_image(str(tmp / "nan.tif"))
    photo = np.zeros((10, 30, 3), np.uint8)
    photo[:, :5] = 255  # a white band at the left of a landscape photo
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; viewers rotate it 90 degrees clockwise
    Image.fromarray(photo).save(tmp / "cam.jpg", exif=exif.tobytes(), quality=95)
    got = read_image(str(tmp / "cam.jpg"))
    assert got.shape == (30, 10, 3)  # portrait, as it is shown
    assert got[:5].mean() > 200 and got[-5:].mean() < 50  # the band is now at the top


def test_image_edited_in_place_with_size_and_mtime_restored_is_stale(tmp):
    cfg = cfg_path(tmp)
    comp = tmp / "comp-csv"
    image_id = next(i for i in pd.read_csv(comp / "train.csv", dtype=str)["image_id"] if "." not in i)
    (path,) = (comp / "train").glob(f"{image_id}.*")
    bmp = path.with_suffix(".bmp")
    Image.open(path).convert("RGB").save(bmp)  # uncompressed: an edit keeps the size
    path.unlink()
    run_cli("folds", "--config", str(cfg))
    run_cli("train", "--config", str(cfg))  # builds the train image cache on the way
    st = bmp.stat()
    data = bytearray(bmp.read_bytes())
    data[-1] ^= 0xFF  # one pixel value changed
    bmp.write_bytes(bytes(data))
    os.utime(bmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert bmp.stat().st_size == st.st_size and bmp.stat().st_mtime_ns == st.st_mtime_ns
    status = run_cli("status", "--config", str(cfg)).stdout
    assert re.search(r"^stale +images/train/34px-bicubic +input pixels changed", status, flags=re.M), status


def test_garbage_weights_file_is_refused_at_plan_time(tmp):
    import pickle

    evil = tmp / "evil.pth"
    evil.write_bytes(pickle.dumps(os.system))  # unpickling it would import and call code
    with pytest.raises(ValueError, match=r"evil.pth is not a plain tensor checkpoint") as err:
        plan_of(tmp, f"models.tiny.weights={evil}")
    assert "weights_only=False" not in str(err.value)


# ---------------------------------------------------------------- folders, disk, leftovers (refused before work)
def test_output_folders_are_made_or_refused_before_any_work(tmp):
    nested = tmp / "a" / "b" / "subs"
    run_cli("folds", "--config", str(cfg_path(tmp)), "--set", f"runtime.submissions_dir={nested}")
    assert nested.is_dir()  # made at the start, not found missing after all the training
    blocker = tmp / "not-a-dir"
    blocker.write_text("")
    proc = run_cli("all", "--config", str(cfg_path(tmp)), "--set", f"runtime.work_dir={blocker}/w", check=False)
    assert proc.returncode == 1 and f"cannot write to {blocker}/w" in proc.stderr
    assert "(runtime.work_dir)" in proc.stderr
    assert "[images] run" not in proc.stdout


def test_temporary_files_of_killed_processes_are_removed_at_the_next_start(tmp):
    cfg = cfg_path(tmp)
    dead = subprocess.Popen(["true"])
    dead.wait()
    work = tmp / "work" / "tiny-csv" / "images" / "train"
    work.mkdir(parents=True)
    leftover = work / f".images.npy.tmp-{HOST}-{dead.pid}-0123abcd"
    live = work / f".images.npy.tmp-{HOST}-{os.getpid()}-0123abcd"  # a live process's write in progress
    leftover.write_bytes(b"x" * 1000)
    live.write_bytes(b"x")
    out = run_cli("folds", "--config", str(cfg)).stdout
    assert not leftover.exists() and live.exists() and "removed 1 temporary file(s)" in out


def test_disk_full_is_said_with_the_place_and_the_size(tmp):
    mnt = tmp / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode == 0
    try:
        if mounted:  # a real 1 MB filesystem: the image cache needs more
            proc = run_cli("all", "--config", str(cfg_path(tmp)), "--set", f"runtime.work_dir={mnt}",
                           "--set", "train.img_size=256", check=False)  # fmt: skip
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "disk full: " in proc.stderr and f"MB needed at {mnt}" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr and not [p for p in mnt.rglob("*.tmp-*")]
        free = os.statvfs(tmp).f_bavail * os.statvfs(tmp).f_frsize
        with pytest.raises(DiskFull, match=rf"disk full: \d+ MB needed at {tmp} for the cache, \d+ MB free"):
            require_space(tmp, free + (1 << 30), "the cache")
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)])


def test_foreign_json_in_submissions_is_skipped_with_a_warning(tmp):
    subs = tmp / "submissions"
    subs.mkdir()
    (subs / "notes.json").write_text('{"hello": 1}')
    (subs / "half.json").write_text('{"cv": 0.9')
    proc = run_cli("submissions", "--config", str(cfg_path(tmp)))
    assert "warning: skipping" in proc.stderr and "notes.json" in proc.stderr and "half.json" in proc.stderr
    assert "no submissions yet" in proc.stdout


# ---------------------------------------------------------------- whole runs: handled correctly
@pytest.mark.slow
def test_broken_output_is_reported_and_redone_never_read(tmp):
    cfg = str(cfg_path(tmp))
    run_cli("all", "--config", cfg)
    (preds,) = (tmp / "work" / "tiny-csv" / "predict" / "tiny" / "seed0" / "fold1").glob("*/preds.npz")
    size = preds.stat().st_size
    with open(preds, "r+b") as f:
        f.truncate(size // 2)  # a partial copy, a full disk elsewhere
    status = run_cli("status", "--config", cfg).stdout
    assert "broken   predict/tiny/seed0/fold1" in status and f"preds.npz has {size // 2} bytes, {size}" in status
    again = run_cli("all", "--config", cfg).stdout
    assert "[predict] run    tiny/seed0/fold1" in again and "BadZipFile" not in again
    assert preds.stat().st_size == size


def binary_config(tmp, models=TINY, **competition):
    cfg = write_config(tmp, "csv", models=models, competition={"task": "binary", "metric": "auc", **competition})
    comp = tmp / "comp-csv"
    keep = lambda d: d[d["digit"] != "2"]  # noqa: E731 - two classes of digits
    for name in ("train.csv", "labels.csv"):
        edit_csv(comp / name, keep)
    labels = pd.read_csv(comp / "labels.csv", dtype=str)
    edit_csv(comp / "sample_submission.csv", lambda d: d[d["image_id"].isin(labels["image_id"])])
    return cfg


def merged(plan, model: str, policy: str, how: str) -> tuple[np.ndarray, np.ndarray]:
    """A model's OOF (N, C) and test (n_test, C) probabilities under a TTA policy and merge, from its stored views."""
    oof, tests = np.zeros((len(plan.comp.train), plan.comp.n_classes)), []
    for p in plan.all("predict", model=model):
        d = plan.load(p)
        idx = [d["views"].index(v) for v in POLICIES[policy]]
        oof[d["oof_rows"]] = merge(d["oof_probs"][idx], how)
        tests.append(d["test_probs"][idx])
    return oof, merge(np.mean(tests, axis=0), how)  # folds averaged per view, then the views merged


BINARY_MODELS = [{**TINY[0], "epochs": 4, "frozen_epochs": 0, "patience": 1},
                 {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip


@pytest.mark.slow
def test_binary_auc_end_to_end_probabilities_labels_and_the_files_scores(tmp):
    """A binary competition scored by auc, a fine-tuned model and a head: auc picks each fold's best epoch and stops
    it, the head's two-class path, the TTA choice and blend on OOF, and the held-out score of what the file holds."""
    from sklearn.metrics import roc_auc_score

    from pipeline.metrics import score

    cfg = str(binary_config(tmp, models=BINARY_MODELS))
    out = run_cli("all", "--config", cfg).stdout
    assert "look like labels, but metric auc scores probabilities" in out
    plan = build_plan(load_config(cfg))
    y = plan.comp.train["y"].to_numpy()
    assert plan.comp.n_classes == 2
    for u in plan.all("train", model="tiny"):  # auc chose the best epoch, and patience stopped after it
        m = plan.load(u)["metrics"]
        best = int(m["auc"].to_numpy().argmax())
        assert len(m) == min(4, best + 2) and plan.store.marker(u)["scores"]["best_epoch"] == best
        p = plan.load(plan.one("predict", model="tiny", seed=0, fold=u.meta["fold"]))
        assert score("auc", y[p["oof_rows"]], p["oof_probs"][0]) == pytest.approx(m["auc"][best])  # its weights
    for u in plan.all("train", model="tiny-head"):  # the two-class head predicts what its regression scored
        p = plan.load(plan.one("predict", model="tiny-head", seed=0, fold=u.meta["fold"]))
        assert score("auc", y[p["oof_rows"]], p["oof_probs"][0]) == pytest.approx(plan.store.marker(u)["scores"]["auc"])
    blend = plan.load(plan.one("blend"))
    report = blend["report"]
    want_oof, want_test = 0, 0
    for name, t in report["tta"].items():  # every policy's OOF auc as recorded, the best one chosen
        for row in t["table"]:
            assert row["auc"] == pytest.approx(score("auc", y, merged(plan, name, row["tta"], row["merge"])[0]))
        best = max(t["table"], key=lambda r: (r["auc"], -r["logloss"], -len(POLICIES[r["tta"]])))
        assert t["chosen"] == f"{best['tta']}/{best['merge']}"
        oof, test = merged(plan, name, best["tta"], best["merge"])
        want_oof, want_test = want_oof + report["weights"][name] * oof, want_test + report["weights"][name] * test
    np.testing.assert_allclose(blend["oof_probs"], want_oof / want_oof.sum(1, keepdims=True), atol=1e-6)
    assert report["oof"] == pytest.approx(score("auc", y, want_oof))
    want_test /= want_test.sum(1, keepdims=True)
    np.testing.assert_allclose(blend["test_probs"], want_test, atol=1e-6)

    (sub,) = (tmp / "submissions").glob("*.csv")
    manifest = json.loads(sub.with_suffix(".json").read_text())
    got = pd.read_csv(sub)
    truth = pd.read_csv(tmp / "comp-csv" / "labels.csv").set_index("image_id").loc[got["image_id"], "digit"]
    assert manifest["format"] == "probability" and got["digit"].nunique() > 2
    np.testing.assert_allclose(got["digit"], want_test[:, 1], atol=1e-6)  # the positive class's probability
    assert manifest["holdout_score"] == pytest.approx(roc_auc_score(truth.to_numpy(), want_test[:, 1]))
    label_run = run_cli("all", "--config", cfg, "--set", "competition.submit_format=label").stdout
    assert "[train] run" not in label_run  # only submit changes
    newest = max((tmp / "submissions").glob("*.json"), key=lambda p: p.stat().st_mtime)
    labelled = json.loads(newest.read_text())
    written = pd.read_csv(newest.with_suffix(".csv"))
    assert labelled["format"] == "label" and written["digit"].tolist() == want_test.argmax(1).tolist()
    # the reported held-out AUC is the AUC of the hard labels in the file, not of the probabilities
    assert labelled["holdout_score"] == pytest.approx(roc_auc_score(truth.to_numpy(), written["digit"]))


@pytest.mark.slow
def test_auc_on_a_fold_without_a_class_selects_by_log_loss_and_says_so(tmp):
    cfg = cfg_path(tmp, competition={"metric": "auc"})
    comp = tmp / "comp-csv"
    edit_csv(comp / "train.csv", lambda d: d.drop(d.index[(d["digit"] == "2")][2:]))  # class 2: two rows, 3 folds
    out = run_cli("folds", "--config", str(cfg)).stdout + run_cli("train", "--config", str(cfg)).stdout
    assert "WARNING fold" in out and "holds no held-out example of class(es) ['2']" in out
    assert "auc is undefined on it, so its best epoch is chosen by log loss" in out
    assert "is undefined on this fold's held-out rows" in out and "chosen by logloss" in out
    markers = [json.loads(p.read_text()) for p in (tmp / "work").glob("tiny-csv/train/**/done.json")]
    chosen = [m["scores"] for m in markers]
    assert any("logloss" in s for s in chosen) and any("auc" in s for s in chosen)


def test_holdout_labels_are_checked_at_load_wrong_path_or_unknown_class(tmp):
    cfg = cfg_path(tmp)
    with pytest.raises(DataError, match=r"held-out labels not found: .*nope.csv"):
        build_plan(load_config(cfg, ["competition.holdout_labels=nope.csv"]))  # before any training, not after
    edit_csv(tmp / "comp-csv" / "labels.csv", lambda d: d.assign(digit=["7"] + list(d["digit"][1:])))
    with pytest.raises(DataError, match=r"labels.csv: 1 held-out label\(s\) are not classes .*\('s\d+', '7'\)"):
        build_plan(load_config(cfg))


# ---------------------------------------------------------------- every input that decides a result is keyed
def keys(plan) -> dict[str, str]:
    return {u.label: u.key for u in plan.units}


def changed(before, after) -> list[str]:
    """The units of `after` whose keys differ from `before`'s, and why as `status` says it."""
    from pipeline.store import diff_reason

    old = {u.label: u for u in before.units}
    marker = lambda u: {"version": u.version, "params": u.params, "inputs": u.inputs}  # noqa: E731
    return sorted(
        f"{u.label}: {diff_reason(marker(old[u.label]), u)}" for u in after.units if old[u.label].key != u.key
    )


def test_a_changed_sample_header_or_type_redoes_submit_only_and_says_why(tmp):
    before = plan_of(tmp)
    edit_csv(tmp / "comp-csv" / "sample_submission.csv", lambda d: d.rename(columns={"digit": "label"}))
    renamed = plan_of(tmp)
    assert changed(before, renamed) == [
        "report/blend: input submit/blend changed",
        "submit/blend: sample.columns: ['image_id', 'digit'] -> ['image_id', 'label']",
    ]
    edit_csv(tmp / "comp-csv" / "sample_submission.csv", lambda d: d.assign(label="none"))  # numbers -> text
    assert "submit/blend: sample.types: ['number'] -> ['text']" in changed(renamed, plan_of(tmp))
    edit_csv(tmp / "comp-csv" / "sample_submission.csv",
             lambda d: d.drop(columns="label").assign(**{"0": "0.3", "1": "0.3", "2": "0.4"}))  # fmt: skip
    probs = plan_of(tmp)
    assert probs.comp.submit_format == "class_probs"
    assert [c.split(":")[0] for c in changed(before, probs)] == ["report/blend", "submit/blend"]


def test_edited_holdout_labels_are_scored_again(tmp):
    before = plan_of(tmp)
    edit_csv(tmp / "comp-csv" / "labels.csv", lambda d: d.assign(digit=list(reversed(d["digit"]))))
    after = plan_of(tmp)
    assert changed(before, after) == ["report/blend: input submit/blend changed",
                                      "submit/blend: input holdout_labels changed"]  # fmt: skip
    from pipeline.stages.submit import holdout_score

    y = pd.read_csv(tmp / "comp-csv" / "labels.csv", dtype=str)["digit"].astype(int).to_numpy()
    assert holdout_score(after, np.eye(3)[y]) == 1.0  # the edited labels, not the ones read first


def test_a_published_folds_csv_edited_after_the_run_is_said_and_refused(tmp):
    cfg = str(cfg_path(tmp))
    run_cli("folds", "--config", cfg)
    published = tmp / "folds" / "tiny-csv.csv"
    original = published.read_text()
    lines = original.splitlines()
    lines[1] = lines[1][:-1] + str((int(lines[1][-1]) + 1) % 3)  # one row moved to another fold: same size
    published.write_text("\n".join(lines) + "\n")
    status = run_cli("status", "--config", cfg).stdout
    assert re.search(
        r"^broken +folds/tiny-csv +.*tiny-csv.csv is not the fold assignment the models were trained and scored on",
        status,
        re.M,
    )
    proc = run_cli("all", "--config", cfg, check=False)
    assert proc.returncode == 1 and "edited by hand, or published by a run with other" in proc.stderr
    assert "[train]" not in proc.stdout and "folds --force" in proc.stderr
    run_cli("folds", "--config", cfg, "--force")
    assert published.read_text() == original
    assert "broken" not in run_cli("status", "--config", cfg).stdout


def test_an_ordinal_metric_needs_the_class_order_of_text_labels_and_keys_it(tmp):
    with pytest.raises(DataError, match=r"metric qwk reads the classes as ordered, .*set competition.class_order"):
        plan_of(tmp, layout="folders", competition={"metric": "qwk"})
    with pytest.raises(DataError, match=r"class_order \['zero', 'two'\] must list each class .*missing \['one'\]"):
        plan_of(tmp, "competition.class_order=[zero, two]", layout="folders", competition={"metric": "qwk"})
    plan = plan_of(tmp, "competition.class_order=[two, zero, one]", layout="folders", competition={"metric": "qwk"})
    assert plan.comp.classes == ["two", "zero", "one"]
    assert (plan.comp.train["y"] == plan.comp.train["target"].map({"two": 0, "zero": 1, "one": 2})).all()
    sorted_plan = plan_of(tmp, "competition.class_order=[one, two, zero]", layout="folders")  # the sorted order
    assert sorted_plan.tables == plan_of(tmp, layout="folders").tables != plan.tables  # keyed only when not sorted


# ---------------------------------------------------------------- columns by name, identities normalised once
def test_pixel_test_csv_columns_are_matched_by_name_and_rows_by_id(tmp):
    plain = plan_of(tmp, layout="pixels").comp
    comp_dir = tmp / "comp-pixels"
    test = pd.read_csv(comp_dir / "test.csv", dtype=str)
    cols = [c for c in test.columns if c.startswith("pixel")]
    shuffled = test[cols[::-1]].assign(label="3", ImageId=[str(i) for i in range(1, len(test) + 1)]).iloc[::-1]
    shuffled.to_csv(comp_dir / "test.csv", index=False)  # reversed columns and rows, an id and a label column
    comp = plan_of(tmp, layout="pixels").comp
    np.testing.assert_array_equal(comp.test_pixels, plain.test_pixels)
    assert any("column 'label' (competition.target_col) is not a pixel column" in n for n in comp.notes)
    edit_csv(comp_dir / "train.csv", lambda d: d.assign(id=[f"r{i}" for i in range(len(d))]))  # an id, not a pixel
    train = plan_of(tmp, layout="pixels").comp
    np.testing.assert_array_equal(train.train_pixels, plain.train_pixels)
    assert train.train["id"].tolist() == [f"r{i}" for i in range(36)]
    shuffled.drop(columns="pixel7").to_csv(comp_dir / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test.csv: pixel columns are matched .* 1 missing \(first \['pixel7'\]\)"):
        plan_of(tmp, layout="pixels")


def test_pixel_csvs_on_two_scales_are_refused(tmp):
    cfg = cfg_path(tmp, "pixels")
    df = pd.read_csv(tmp / "comp-pixels" / "test.csv")
    (df / 255.0).to_csv(tmp / "comp-pixels" / "test.csv", index=False)  # train 0..255, test 0..1
    with pytest.raises(DataError, match=r"train.csv lie in 0\.\.255 and of .*test.csv in 0\.\.1: give both on one"):
        build_plan(load_config(cfg))


def test_ids_that_are_one_id_are_refused_naming_both_spellings(tmp):
    cfg = cfg_path(tmp)
    train = pd.read_csv(tmp / "comp-csv" / "train.csv", dtype=str)
    bare = next(i for i in train["image_id"] if "." not in i)
    train.loc[len(train)] = [f" {bare}.png", "0"]  # the same image spelled with white space and its extension
    train.to_csv(tmp / "comp-csv" / "train.csv", index=False)
    with pytest.raises(DataError, match=rf"train ids must be unique: 1 id\(s\) repeated .*'{bare}' and '{bare}.png'"):
        build_plan(load_config(cfg))
    edit_csv(tmp / "comp-csv" / "sample_submission.csv", lambda d: d.assign(image_id=[d["image_id"][1] + ".png"]
                                                                            + list(d["image_id"][1:])))  # fmt: skip
    with pytest.raises(DataError, match=r"sample_submission.csv must be unique: .*'s\d+.png' and 's\d+'"):
        build_plan(load_config(cfg))


def test_class_folders_that_would_be_one_class_are_refused_naming_both(tmp):
    cfg = cfg_path(tmp, "folders")
    train = tmp / "comp-folders" / "train"
    (train / "zero").rename(train / "0")
    (train / "one").rename(train / "1")
    (train / "two").rename(train / "01")  # as numbers, 1 and 01 are one class
    with pytest.raises(DataError, match=r"class folders in .*train: \['01', '1'\] would be one class"):
        build_plan(load_config(cfg))


def test_groups_are_compared_without_white_space(tmp):
    make = write_config(tmp, "csv", models=TINY)
    edit_csv(tmp / "comp-csv" / "train.csv", lambda d: d.assign(patient=[f"p{i // 2}" + " " * (i % 2)
                                                                         for i in range(len(d))]))  # fmt: skip
    plan = build_plan(load_config(make, ["competition.group_col=patient"]))
    assert plan.comp.train["group"].nunique() == len(plan.comp.train) // 2


# ---------------------------------------------------------------- what the file means
def text_binary(tmp, *overrides, column="species"):
    """The folders competition with two classes spelled as words: fake (digit 0) and real (digit 1)."""
    root = tmp / "comp-folders"
    if not root.exists():
        write_config(tmp, "folders")
        (root / "train" / "zero").rename(root / "train" / "fake")
        (root / "train" / "one").rename(root / "train" / "real")
        for p in (root / "train" / "two").iterdir():
            p.unlink()
        (root / "train" / "two").rmdir()
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    pd.DataFrame({"file": sample.iloc[:, 0], column: "0.5"}).to_csv(root / "sample_submission.csv", index=False)
    edit_csv(root / "labels.csv", lambda d: d[d["species"] != "two"].replace({"zero": "fake", "one": "real"}))
    keep = set(pd.read_csv(root / "labels.csv", dtype=str)["file"])
    edit_csv(root / "sample_submission.csv", lambda d: d[d["file"].isin(keep)])
    return plan_of(tmp, *overrides, layout="folders", competition={"task": "binary", "metric": "auc"})


def test_the_positive_class_of_a_binary_task_is_named_and_an_option(tmp):
    from pipeline.stages.submit import _what, sample_params

    plan = text_binary(tmp)
    assert plan.comp.submit_format == "probability" and plan.comp.classes == ["fake", "real"]
    assert "positive class: 'real' (a probability column holds P(real)): the class that sorts last; set " \
           "competition.positive_class to choose" in plan.comp.notes  # fmt: skip
    chosen = text_binary(tmp, "competition.positive_class=fake")
    assert chosen.comp.classes == ["real", "fake"] and sample_params(chosen.comp)["positive_class"] == "fake"
    assert chosen.tables["train"] != plan.tables["train"]  # every unit that reads the class order is redone
    assert _what({"format": "probability", "positive_class": "fake"}) == "probabilities of 'fake'"
    named = text_binary(tmp, column="fake")  # the sample's column says which class it holds
    assert named.comp.classes == ["real", "fake"] and "column 'fake' is named after it" in " ".join(named.comp.notes)
    ordered = text_binary(tmp, "competition.class_order=[real, fake]")
    assert ordered.comp.classes == ["real", "fake"] and "the last of competition.class_order" in " ".join(
        ordered.comp.notes
    )
    with pytest.raises(DataError, match=r"positive_class: 'cat' is not a class of the training targets"):
        text_binary(tmp, "competition.positive_class=cat")


def test_console_names_the_format_in_words():
    from pipeline.stages.submit import _what

    assert [_what({"format": f}) for f in ("label", "class_probs")] == ["labels", "class probabilities"]


# ---------------------------------------------------------------- every image a layout holds is read or named
def test_nested_class_folders_and_every_pil_format_are_read_or_named(tmp):
    cfg = cfg_path(tmp, "folders")
    root = tmp / "comp-folders"
    zero = sorted((root / "train" / "zero").iterdir())
    (root / "train" / "zero" / "batch2").mkdir()
    zero[0].rename(root / "train" / "zero" / "batch2" / zero[0].name)  # a subfolder inside a class folder
    for src, ext in zip(zero[1:4], (".gif", ".jfif", ".tif")):
        Image.open(src).save(src.with_suffix(ext), format={".jfif": "JPEG"}.get(ext))
        src.unlink()
    (root / "train" / "zero" / "notes.txt").write_text("not an image")
    test = sorted((root / "test").iterdir())[0]
    Image.open(test).save(test.with_suffix(".gif"))
    test.unlink()
    second = sorted((root / "test").iterdir())[1]
    (root / "test" / "day2").mkdir()
    second.rename(root / "test" / "day2" / second.name)  # a test id that is a path below the test folder
    ids = lambda d: ["day2/" + f if f == second.name else f.removesuffix(".png") for f in d["file"]]  # noqa: E731
    edit_csv(root / "sample_submission.csv", lambda d: d.assign(file=ids(d)))
    edit_csv(root / "labels.csv", lambda d: d.assign(file=ids(d)))
    comp = build_plan(load_config(cfg)).comp
    assert str(root / "test" / "day2" / second.name) in comp.test_sources
    assert len(comp.train) == 36  # none dropped
    assert f"zero/batch2/{zero[0].name}" in set(comp.train["id"])
    assert {"zero/" + zero[1].stem + ".gif", "zero/" + zero[2].stem + ".jfif"} <= set(comp.train["id"])
    assert any("1 file(s) skipped, not an image extension" in n and "zero/notes.txt" in n for n in comp.notes)
    assert any(s.endswith(".gif") for s in comp.test_sources)
    assert read_image(next(s for s in comp.test_sources if s.endswith(".gif"))).shape == (8, 8, 3)


# ---------------------------------------------------------------- an embedded config under another name or root
def test_embedded_data_is_built_only_as_itself(tmp):
    other = tmp / "other.yaml"
    other.write_text("competition: {name: leaves, root: data/leavs, embedded: digits}\n")
    with pytest.raises(ConfigError, match=r"'competition.embedded': 'digits' builds .* names competition 'leaves'"):
        load_config(other)
    cfg = cfg_path(tmp, competition={"name": "digits", "embedded": "digits"})  # the csv test data, not digits
    with pytest.raises(DataError, match=r"comp-csv holds a competition that was not built from the embedded"):
        build_plan(load_config(cfg))
    assert not (tmp / "comp-csv" / "README.txt").exists()


# ---------------------------------------------------------------- unclear failures made clear
def test_image_ext_without_a_dot_is_taken(tmp):
    cfg = cfg_path(tmp, "folders")
    edit_csv(tmp / "comp-folders" / "sample_submission.csv", lambda d: d.assign(file=[f[:-4] for f in d["file"]]))
    comp = build_plan(load_config(cfg, ["competition.image_ext=png"])).comp
    assert all(s.endswith(".png") for s in comp.test_sources)


def test_continuous_targets_are_named_as_regression_like(tmp):
    cfg = cfg_path(tmp)
    edit_csv(tmp / "comp-csv" / "train.csv", lambda d: d.assign(digit=[f"{0.37 * i:.3f}" for i in range(len(d))]))
    with pytest.raises(DataError, match=r"competition.target_col 'digit' looks like a regression target: 36 distinct"):
        build_plan(load_config(cfg))


def test_more_folds_than_rows_of_a_class_names_the_class_and_counts(tmp):
    cfg = cfg_path(tmp)
    with pytest.raises(DataError, match=r"folds.n_folds=13 is more than the train rows of every class .*'0': 12"):
        build_plan(load_config(cfg, ["folds.n_folds=13"]))
    edit_csv(tmp / "comp-csv" / "train.csv", lambda d: d.drop(d.index[d["digit"] == "2"][2:]))
    notes = build_plan(load_config(cfg)).comp.notes
    assert "class(es) with fewer train rows than folds.n_folds=3: {'2': 2}; some folds hold none" in notes
