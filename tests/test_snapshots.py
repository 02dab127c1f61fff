"""Snapshot members (models.snapshots): the next-best epochs of one fine-tune as extra blend members, their weights
those epochs' own, their OOF complete, blended and submitted; a killed training ends with the same snapshots; and
snapshots: 0 keeps every key it had before the option existed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from pipeline.app import build_plan
from pipeline.config import ConfigError, load_config
from pipeline.export import export
from pipeline.kinds import snapshots
from pipeline.scheduler import ensure_done

from .conftest import REPO, run_cli, write_config

SNAP = {"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "epochs": 4, "snapshots": 2}


def test_snapshots_zero_keeps_the_keys_of_main(tmp):
    # keys of the default tiny csv config, computed by the code before `snapshots` existed (main at a600512)
    before = ("2e4964204cc076ba", "a37c2a81ff9220fb", "043a4f38dbb68af4")
    for models in (None, [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "snapshots": 0}]):
        plan = build_plan(load_config(write_config(tmp, "csv", models=models)))
        train = plan.one("train", model="tiny", seed=0, fold=0)
        got = (train.key, plan.one("predict", model="tiny", seed=0, fold=0).key, plan.one("blend").key)
        assert got == before and "snapshots" not in train.params
        assert len(plan.all("predict")) == 3  # no snapshot members


def test_snapshots_refused_where_they_cannot_exist(tmp):
    with pytest.raises(ConfigError, match=r"models\[0\]\.snapshots': for the kinds that train in epochs only"):
        load_config(write_config(tmp, "csv", models=[{**SNAP, "kind": "head"}]))
    with pytest.raises(ConfigError, match=r"models\[0\]\.snapshots': 4 snapshots .* need at least 5 epochs"):
        load_config(write_config(tmp, "csv", models=[{**SNAP, "snapshots": 4}]))
    with pytest.raises(ConfigError, match=r"models\[0\]\.snapshots': 2 is more than patience \(1\)"):
        load_config(write_config(tmp, "csv", models=[{**SNAP, "patience": 1}]))


def test_snapshot_members_are_their_epochs_and_blended(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=[SNAP])))
    members = ["tiny", "tiny@snap1", "tiny@snap2"]
    assert sorted({p.meta["member"] for p in plan.all("predict")}) == members
    assert plan.one("predict", member="tiny@snap1", seed=0, fold=2).name == "tiny@snap1/seed0/fold2"
    ensure_done(plan, plan.all("submit"))
    y = plan.comp.train["y"].to_numpy()
    for t in plan.all("train"):
        folder, metrics = plan.store.dir(t), plan.load(t)["metrics"]
        best = plan.store.marker(t)["scores"]["best_epoch"]
        ranking = metrics.sort_values(["accuracy", "epoch"], ascending=[False, True])["epoch"].tolist()
        assert ranking[0] == best and snapshots.epochs(folder) == ranking[1:3], (t.name, metrics)
        weights = [load_file(str(folder / "model.safetensors"))]
        weights += [load_file(str(folder / snapshots.file_name(e))) for e in ranking[1:3]]
        for i in range(3):  # three different epochs' weights, not copies
            for j in range(i + 1, 3):
                assert any(not np.array_equal(weights[i][k], weights[j][k]) for k in weights[i]), (t.name, i, j)
        assert sorted(p.name for p in folder.glob("snapshot-e*")) == sorted(map(snapshots.file_name, ranking[1:3]))
        for k, epoch in enumerate([best, *ranking[1:3]]):  # each member's centre-view OOF scores as its epoch did
            d = plan.load(plan.one("predict", member=members[k], seed=0, fold=t.meta["fold"]))
            acc = float((d["oof_probs"][d["views"].index("center")].argmax(1) == y[d["oof_rows"]]).mean())
            assert acc == pytest.approx(metrics.set_index("epoch").loc[epoch, "accuracy"]), (t.name, k)
    for m in members:  # every train row once, per member
        rows = np.concatenate([plan.load(p)["oof_rows"] for p in plan.all("predict", member=m)])
        assert sorted(rows.tolist()) == list(range(len(y)))
    report = plan.load(plan.one("blend"))["report"]
    assert report["models"] == members and set(report["weights"]) == set(members)
    assert plan.load(plan.one("submit"))["submission"].is_file()
    # the offline bundle carries every member: its predict.py gives the blend's test probabilities
    bundle = export(plan, None, str(tmp / "bundle"), half=False)
    recipe = json.loads((bundle / "recipe.json").read_text())
    assert [m["name"] for m in recipe["models"]] == members and all(len(m["members"]) == 3 for m in recipe["models"])
    comp = tmp / "comp-csv"
    subprocess.run([sys.executable, "-I", "predict.py", "--images", str(comp / "test"), "--sample",
                    str(comp / "sample_submission.csv"), "--out", str(tmp / "sub.csv"), "--probs", str(tmp / "p.npy")],
                   cwd=bundle, check=True, capture_output=True, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    want = plan.load(plan.one("blend"))["test_probs"]
    np.testing.assert_allclose(np.load(tmp / "p.npy"), want, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_killed_training_ends_with_the_same_snapshots(tmp):
    model = [{**SNAP, "epochs": 6, "snapshots": 3, "ema": True, "mixup": 0.2}]
    a, b = tmp / "a", tmp / "b"
    cfgs = []
    for d in (a, b):
        d.mkdir()
        cfgs.append(str(write_config(d, "csv", models=model)))
        run_cli("folds", "--config", cfgs[-1])
    run_cli("train", "--config", cfgs[0])  # uninterrupted

    proc = subprocess.Popen(["./run.sh", "train", "--config", cfgs[1]], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    fold0 = b / "work" / "tiny-csv" / "train" / "tiny" / "seed0" / "fold0"

    def epochs_done() -> int:  # rows of the attempt's metrics.csv: epochs finished, resume.pt written after them
        found = list(fold0.glob("*/.attempt-*/resume.pt"))
        return len((found[0].parent / "metrics.csv").read_text().splitlines()) - 1 if found else 0

    deadline = time.time() + 300
    while time.time() < deadline and epochs_done() < 3:  # past a few demotions and prunes of the kept set
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= epochs_done() < 6 and not list(fold0.glob("*/done.json")), "killed too late or never reached"
    assert "[train] resume tiny/seed0/fold0" in run_cli("train", "--config", cfgs[1]).stdout
    for fold in range(3):
        folders = [next((d / "work" / "tiny-csv" / "train" / "tiny" / "seed0" / f"fold{fold}").glob("*/done.json"))
                   .parent for d in (a, b)]  # fmt: skip
        files = [sorted(p.name for p in f.glob("snapshot*")) for f in folders]
        assert files[0] == files[1] and len(files[0]) == 4, files  # snapshots.json and three weight files
        for name in files[0]:
            assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), (fold, name)
        assert json.loads((folders[0] / "snapshots.json").read_text())["epochs"] == snapshots.epochs(folders[1])
