"""What is published outside the work dir is complete: a submission with its manifest (again when either is missing or
the submission changed under the same name), and the embedded data, built once by concurrent first uses."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from pipeline.stages import submit

from .conftest import REPO


def fake_run(tmp, csv: str):
    """What submit's `after` reads of a run: a done submission (its work copy and manifest) and where to publish."""
    work = tmp / "work.csv"
    work.write_text(csv)
    manifest = {"cv": 0.9, "honest_cv": 0.9, "format": "label", "left_out": None, "holdout_score": None}
    runtime = SimpleNamespace(submissions_dir=str(tmp / "s"))
    comp = SimpleNamespace(name="comp", metric="accuracy")
    cfg = SimpleNamespace(competition=comp, submit=SimpleNamespace(name="blend"), runtime=runtime)
    plan = SimpleNamespace(cfg=cfg, load=lambda unit: {"submission": work, "manifest": manifest})
    return plan, [SimpleNamespace(key="0123456789abcdef")], tmp / "s" / "comp-blend-cv0.9000-01234567.csv"


def test_a_submission_is_published_complete_and_again_when_it_changes(tmp):
    plan, units, dest = fake_run(tmp, "id,label\n1,2\n")
    submit.after(plan, units)
    meta = dest.with_suffix(".json")
    assert dest.read_text() == "id,label\n1,2\n" and json.loads(meta.read_text())["file"] == dest.name
    meta.unlink()  # a run killed between the CSV and its manifest
    submit.after(plan, units)
    assert json.loads(meta.read_text())["file"] == dest.name
    plan, units, dest = fake_run(tmp, "id,label\n1,3\n")  # `./run.sh submit --force`: other bytes, the same name
    submit.after(plan, units)
    assert dest.read_text() == "id,label\n1,3\n"
    assert json.loads(meta.read_text())["sha256"] == submit.sha256_file(dest)  # it describes the bytes beside it


BUILD = """
import sys
from pathlib import Path
from pipeline.embedded import build_embedded
build_embedded("digits", Path(sys.argv[1]))
"""


def test_two_first_uses_of_the_embedded_data_both_succeed(tmp):
    root = tmp / "data" / "digits"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(root)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("building the embedded" in out for out, _ in outs) == 1  # built once; the other found it built
    assert len(list((root / "train").glob("*.png"))) == 1437 and (root / "sample_submission.csv").is_file()
    assert sorted(p.name for p in root.parent.iterdir()) == [".digits.lock", "digits"]
    assert np.loadtxt(root / "train.csv", delimiter=",", skiprows=1, usecols=1).shape == (1437,)
