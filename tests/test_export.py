"""Export: the bundle's predict.py, in a process of its own that cannot import the project, writes the pipeline's
submission (labels identical, probabilities to 1e-6) for each layout, a fine-tuned model and a head, ten-crop views
and the stacker; a new test set reruns no training and the bundle matches the pipeline on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from pipeline.app import build_plan
from pipeline.config import load_config

from .conftest import run_cli, shared_run, write_config  # noqa: F401

pytestmark = pytest.mark.slow
FORBIDDEN = {"pipeline", "tests", "albumentations", "ray", "sklearn", "ttach", "scipy"}


def bundle_predict(bundle: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """predict.py as Kaggle runs it: isolated (-I: no PYTHONPATH, no user site, the script's folder first on the path)
    from a copy of the bundle outside the project; every module it imports is listed (-X importtime) and checked."""
    proc = subprocess.run([sys.executable, "-I", "-X", "importtime", "predict.py", *args], cwd=bundle,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})  # fmt: skip
    imported = {m.split(".")[0] for m in re.findall(r"^import time:.*\|\s+([\w.]+)\s*$", proc.stderr, flags=re.M)}
    assert "torch" in imported and not imported & FORBIDDEN, sorted(imported & FORBIDDEN)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def export(cfg: Path, out: Path, *args: str) -> tuple[Path, str]:
    stdout = run_cli("export", "--config", str(cfg), "--out", str(out / "made"), *args).stdout
    copy = out / "elsewhere"  # the folder a Kaggle dataset mounts: nothing of the project beside it
    shutil.copytree(out / "made", copy)
    return copy, stdout


def pipeline_result(cfg: Path, *sets: str) -> tuple[np.ndarray, Path]:
    """The blend's test probabilities and the published submission file of this config."""
    plan = build_plan(load_config(cfg, list(sets)))
    blend = plan.load(plan.one("blend"))
    manifest = plan.load(plan.one("submit"))["manifest"]
    folder = Path(plan.cfg.runtime.submissions_dir)
    (sub,) = [p for p in folder.glob("*.csv") if json.loads(p.with_suffix(".json").read_text())["unit_key"]
              == manifest["unit_key"]]  # fmt: skip
    return blend["test_probs"], sub


def check_same(bundle: Path, cfg: Path, sample: Path, source: list[str], tmp: Path, *sets: str) -> str:
    probs, sub = pipeline_result(cfg, *sets)
    out = bundle_predict(bundle, *source, "--sample", str(sample), "--out", str(tmp / "sub.csv"), "--probs",
                         str(tmp / "probs.npy")).stdout  # fmt: skip
    got = pd.read_csv(tmp / "sub.csv", dtype=str, keep_default_na=False)
    want = pd.read_csv(sub, dtype=str, keep_default_na=False)
    assert list(got.columns) == list(want.columns) and got.iloc[:, 0].tolist() == want.iloc[:, 0].tolist()
    if re.search(r"\(labels\)", out):
        assert got.iloc[:, 1].tolist() == want.iloc[:, 1].tolist()
    np.testing.assert_allclose(np.load(tmp / "probs.npy"), probs, atol=1e-6, rtol=0)
    assert re.search(r"images/s", out)
    return out


@pytest.fixture(scope="module")
def stacked(shared_run, tmp_path_factory):  # noqa: F811
    """The shared run (a fine-tuned model and a head, ten views cached) blended by the stacker over ten-crop, its
    submission published to a folder of its own; and its bundle."""
    tmp, cfg, _ = shared_run
    out = tmp_path_factory.mktemp("stacked")
    sets = ["blend.method=stack", "blend.tta=ten-crop", f"runtime.submissions_dir={out / 'submissions'}"]
    path = out / "stack.yaml"
    raw = load_config(cfg, sets).to_dict()
    raw.pop("source"), raw.pop("preset")
    path.write_text(json.dumps(raw))  # JSON is YAML
    run_cli("all", "--config", str(path))
    bundle, stdout = export(path, out)
    return path, bundle, out


def test_csv_bundle_with_stacker_ten_crop_head_and_finetune_matches_the_pipeline(stacked, tmp):
    cfg, bundle, _ = stacked
    recipe = json.loads((bundle / "recipe.json").read_text())
    assert recipe["blend"]["method"] == "stack" and recipe["blend"]["stack"]["coef"]
    assert {m["kind"] for m in recipe["models"]} == {"finetune", "head"}
    assert all(len(m["views"]) == 10 and len(m["members"]) == 3 for m in recipe["models"])
    root = Path(load_config(cfg).competition.root)
    check_same(bundle, cfg, root / "sample_submission.csv", ["--images", str(root / "test")], tmp)


def test_bundle_refuses_missing_images_wrong_columns_newer_recipes_and_other_tensors(stacked, tmp):
    cfg, bundle, _ = stacked
    root = Path(load_config(cfg).competition.root)
    images = tmp / "test"
    shutil.copytree(root / "test", images)
    gone = sorted(images.iterdir())[0]
    gone.unlink()
    proc = bundle_predict(bundle, "--images", str(images), "--sample", str(root / "sample_submission.csv"),
                          "--out", str(tmp / "x.csv"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "have no image in" in proc.stderr and gone.stem in proc.stderr
    assert not (tmp / "x.csv").exists()
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str).rename(columns={"digit": "label"})
    sample.to_csv(tmp / "renamed.csv", index=False)
    proc = bundle_predict(bundle, "--images", str(root / "test"), "--sample", str(tmp / "renamed.csv"), check=False)
    assert proc.returncode == 2 and "columns ['image_id', 'label']" in proc.stderr and "'digit'" in proc.stderr
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    recipe = json.loads((copy / "recipe.json").read_text())
    (copy / "recipe.json").write_text(json.dumps({**recipe, "format_version": 99}))
    proc = bundle_predict(copy, "--images", str(root / "test"), "--sample", str(root / "sample_submission.csv"),
                          check=False)  # fmt: skip
    assert proc.returncode == 2 and "format 99, newer than this predict.py reads" in proc.stderr
    recipe["models"][0]["backbone"] = "test_resnet"  # as another timm building other tensors would
    (copy / "recipe.json").write_text(json.dumps(recipe))
    proc = bundle_predict(copy, "--images", str(root / "test"), "--sample", str(root / "sample_submission.csv"),
                          check=False)  # fmt: skip
    assert proc.returncode == 2 and "with other tensors than timm" in proc.stderr


def test_half_bundle_stores_fp16_and_prints_the_oof_change(stacked, tmp):
    cfg, _, out = stacked
    bundle, stdout = export(cfg, tmp, "--half")
    m = re.search(r"--half: OOF accuracy ([\d.]+) with the fp32 weights, ([\d.]+) with fp16", stdout)
    assert m, stdout
    plan = build_plan(load_config(cfg))
    assert float(m[1]) == pytest.approx(plan.load(plan.one("blend"))["report"]["oof"], abs=1e-12)
    recipe = json.loads((bundle / "recipe.json").read_text())
    net = next(x for x in recipe["models"] if x["kind"] == "finetune")
    tensors = load_file(str(bundle / net["members"][0]["file"]))
    assert {str(v.dtype) for v in tensors.values() if v.is_floating_point()} == {"torch.float16"}
    root = Path(plan.cfg.competition.root)
    bundle_predict(bundle, "--images", str(root / "test"), "--sample", str(root / "sample_submission.csv"),
                   "--out", str(tmp / "half.csv"))  # fmt: skip
    assert len(pd.read_csv(tmp / "half.csv")) == len(plan.comp.test_ids)


def test_a_new_test_set_reruns_no_training_and_the_bundle_matches_it(stacked, tmp):
    cfg, bundle, _ = stacked
    plan = build_plan(load_config(cfg))
    root = Path(plan.cfg.competition.root)
    new = tmp / "new-test"
    new.mkdir()
    train = pd.read_csv(root / "train.csv", dtype=str)
    picked = train.iloc[::4]  # other images than the first test set: some train images under new names
    for k, i in enumerate(picked["image_id"]):
        src = next(p for p in (root / "train").iterdir() if p.stem == Path(i).stem)
        shutil.copyfile(src, new / f"n{k}{src.suffix}")
    sample = pd.DataFrame({"image_id": [f"n{k}" for k in range(len(picked))], "digit": "0"})
    sample.to_csv(tmp / "new_sample.csv", index=False)
    sample.assign(digit=picked["digit"].to_numpy()).to_csv(tmp / "new_labels.csv", index=False)
    sets = [
        f"competition.test_dir={new}",
        f"competition.sample_submission={tmp / 'new_sample.csv'}",
        f"competition.holdout_labels={tmp / 'new_labels.csv'}",
    ]
    after = build_plan(load_config(cfg, sets))
    same = {u.label: u.key for u in plan.units}
    changed = {u.label for u in after.units if same.get(u.label) != u.key}
    assert not {lbl for lbl in changed if lbl.split("/")[0] in ("folds", "train")}
    assert not {lbl for lbl in changed if lbl.startswith("features/") and lbl.endswith("/train")}
    assert {lbl.split("/")[0] for lbl in changed} == {"images", "features", "predict", "blend", "submit", "report"}
    stdout = run_cli("all", "--config", str(cfg), *sum((["--set", s] for s in sets), [])).stdout
    assert not re.search(r"^\[(train|folds)\] (run|resume) ", stdout, flags=re.M), stdout
    assert not re.search(r"^\[features\] run +\S+/train", stdout, flags=re.M), stdout
    check_same(bundle, cfg, tmp / "new_sample.csv", ["--images", str(new)], tmp, *sets)


@pytest.mark.parametrize("layout, model", [
    ("folders", {"name": "tiny", "backbone": "test_efficientnet", "weights": "none"}),
    ("pixels", {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head",
                "feature_contrast": ["vflip", "rot90"]}),  # each of the ten views less its flipped and turned self
])  # fmt: skip
def test_folders_and_pixels_bundles_match_the_pipeline(tmp, layout, model):
    cfg = write_config(tmp, layout, models=[model], predict={"views": "ten-crop", "batch_size": 32})
    run_cli("all", "--config", str(cfg))
    bundle, _ = export(cfg, tmp)
    root = Path(load_config(cfg).competition.root)
    source = ["--pixels", str(root / "test.csv")] if layout == "pixels" else ["--images", str(root / "test")]
    check_same(bundle, cfg, root / "sample_submission.csv", source, tmp)
