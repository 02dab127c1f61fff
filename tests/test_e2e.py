"""End to end through run.sh on tiny competitions: a valid submission, then caching that redoes only what changed."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.tta import POLICIES, merge

from .conftest import run_cli, write_config

pytestmark = pytest.mark.slow


def ran(stdout: str, stage: str) -> list[str]:
    return re.findall(rf"^\[{stage}\] (?:run|resume) +(\S+)", stdout, flags=re.M)


def submission(tmp):
    subs = sorted((tmp / "submissions").glob("*.csv"))
    assert subs, "no submission written"
    return subs


def test_csv_layout_end_to_end_and_caching(tmp):
    cfg = str(write_config(tmp, "csv"))
    first = run_cli("all", "--config", cfg).stdout
    assert len(ran(first, "train")) == 3 and len(ran(first, "predict")) == 3
    (sub,) = submission(tmp)
    sample = pd.read_csv(tmp / "comp-csv" / "sample_submission.csv", dtype=str)
    got = pd.read_csv(sub, dtype=str)
    assert list(got.columns) == list(sample.columns) and got["image_id"].tolist() == sample["image_id"].tolist()
    assert set(got["digit"]) <= {"0", "1", "2"}
    assert sub.with_suffix(".json").is_file()
    assert "held-out test accuracy" in first
    assert (tmp / "folds" / "tiny-csv.csv").is_file()

    again = run_cli("all", "--config", cfg).stdout
    assert not re.search(r"^\[\w+\] (run|resume) ", again, flags=re.M), again
    assert "skip" in again

    status = run_cli("status", "--config", cfg).stdout
    assert not re.search(r"^(stale|missing|partial) ", status, flags=re.M), status

    blend_only = run_cli("all", "--config", cfg, "--set", "blend.method=mean").stdout
    assert ran(blend_only, "train") == [] and ran(blend_only, "predict") == []
    assert ran(blend_only, "blend") == ["blend"] and ran(blend_only, "submit") == ["blend"]

    stale = run_cli("status", "--config", cfg, "--set", "models.tiny.seeds=[0, 1]").stdout
    assert re.search(r"^missing +train/tiny/seed1/fold0", stale, flags=re.M)
    more_seeds = run_cli("all", "--config", cfg, "--set", "models.tiny.seeds=[0, 1]").stdout
    assert sorted(ran(more_seeds, "train")) == [f"tiny/seed1/fold{k}" for k in range(3)]
    assert sorted(ran(more_seeds, "predict")) == [f"tiny/seed1/fold{k}" for k in range(3)]


@pytest.mark.parametrize("layout", ["folders", "pixels", "coco"])
def test_other_layouts_end_to_end(tmp, layout):
    out = run_cli("all", "--config", str(write_config(tmp, layout))).stdout
    (sub,) = submission(tmp)
    got = pd.read_csv(sub, dtype=str)
    if layout == "folders":
        assert list(got.columns) == ["file", "species"] and set(got["species"]) <= {"zero", "one", "two"}
    elif layout == "coco":  # category names written back, as the sample spells them
        assert list(got.columns) == ["image_id", "label"] and set(got["label"]) <= {"zero", "one", "two"}
    else:
        assert list(got.columns) == ["ImageId", "Label"] and got["ImageId"].tolist() == [str(i) for i in range(1, 10)]
    assert "held-out test accuracy" in out


def test_stage_alone_says_what_is_missing(tmp):
    cfg = str(write_config(tmp, "csv"))
    proc = run_cli("train", "--config", cfg, check=False)
    assert proc.returncode == 1 and "folds/tiny-csv is not done" in proc.stderr


def test_refit_trains_full_data_units_and_their_test_predictions_are_submitted(tmp):
    models = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none"},
              {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip
    cfg = str(write_config(tmp, "csv", models=models))
    run_cli("all", "--config", cfg)
    work = tmp / "work" / "tiny-csv"
    (before,) = work.glob("blend/blend/*/blend.npz")
    refit = run_cli("all", "--config", cfg, "--set", "train.refit=true").stdout
    # turning refit on trains one full-data unit per model and seed; the fold models are kept
    assert sorted(ran(refit, "train")) == ["tiny-head/seed0/full", "tiny/seed0/full"]
    assert sorted(ran(refit, "predict")) == ["tiny-head/seed0/full", "tiny/seed0/full"]
    assert refit.count("test from full-data refit") == 2

    newest = max(work.glob("blend/blend/*/blend.npz"), key=lambda p: p.stat().st_mtime)
    report = json.loads((newest.parent / "report.json").read_text())
    # OOF, weights and CV still come from the fold models: all as they were without refit
    old = json.loads((before.parent / "report.json").read_text())
    for k in ("weights", "fold_weights", "single", "oof", "honest_cv", "best_single"):
        assert report[k] == old[k], k
    assert {m: t["chosen"] for m, t in report["tta"].items()} == {m: t["chosen"] for m, t in old["tta"].items()}
    for k in ("oof_probs", "honest_probs"):
        np.testing.assert_array_equal(np.load(newest)[k], np.load(before)[k])
    expected = 0
    for name in ("tiny", "tiny-head"):
        (full,) = work.glob(f"predict/{name}/seed0/full/*/preds.npz")
        d = np.load(full)
        assert d["oof_probs"].shape[1] == 0 and d["test_probs"].shape[1] == 9  # no held-out rows, every test id
        pol, how = report["tta"][name]["chosen"].split("/")
        views = [list(d["views"]).index(v) for v in POLICIES[pol]]
        expected = expected + report["weights"][name] * merge(d["test_probs"][views].astype(np.float64), how)
    np.testing.assert_allclose(np.load(newest)["test_probs"], expected, atol=1e-6)
