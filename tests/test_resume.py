"""A training killed mid-run (a real process, SIGKILL) resumes at its last finished epoch and ends identical to an
uninterrupted run: same weights, same OOF predictions."""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from .conftest import REPO, run_cli, write_config

pytestmark = pytest.mark.slow
MODEL = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "epochs": 5, "ema": True,
          "frozen_epochs": 1, "mixup": 0.2}]  # fmt: skip


def outputs(work, stage):
    (d,) = [p.parent for p in (work / "tiny-csv" / stage / "tiny" / "seed0" / "fold0").glob("*/done.json")]
    return d


def test_sigkill_then_resume_matches_uninterrupted(tmp):
    a, b = tmp / "a", tmp / "b"
    a.mkdir()
    b.mkdir()
    cfg_a = str(write_config(a, "csv", models=MODEL))
    cfg_b = str(write_config(b, "csv", models=MODEL))
    run_cli("folds", "--config", cfg_a)
    run_cli("folds", "--config", cfg_b)
    run_cli("train", "--config", cfg_a)  # uninterrupted

    proc = subprocess.Popen(["./run.sh", "train", "--config", cfg_b], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    fold0 = b / "work" / "tiny-csv" / "train" / "tiny" / "seed0" / "fold0"
    while time.time() < deadline and not list(fold0.glob("*/.attempt-*/resume.pt")):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(fold0.glob("*/.attempt-*/resume.pt")), "training never reached the end of an epoch"
    assert not list(fold0.glob("*/done.json")), "killed too late: the unit had finished"

    status = run_cli("status", "--config", cfg_b).stdout
    assert re.search(r"^partial +train/tiny/seed0/fold0 +resumable$", status, flags=re.M), status
    resumed = run_cli("train", "--config", cfg_b).stdout
    assert "[train] resume tiny/seed0/fold0" in resumed
    for stage in ("train",):
        wa, wb = (
            load_file(outputs(a / "work", stage) / "model.safetensors"),
            load_file(outputs(b / "work", stage) / "model.safetensors"),
        )
        assert wa.keys() == wb.keys()
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    run_cli("predict", "--config", cfg_a)
    run_cli("predict", "--config", cfg_b)
    pa, pb = (
        np.load(outputs(a / "work", "predict") / "preds.npz"),
        np.load(outputs(b / "work", "predict") / "preds.npz"),
    )
    np.testing.assert_array_equal(pa["oof_probs"], pb["oof_probs"])
    np.testing.assert_array_equal(pa["test_probs"], pb["test_probs"])
