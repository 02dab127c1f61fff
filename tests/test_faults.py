"""Faults with real processes: a worker SIGKILLed mid-training (processes and Ray executors), and three runs started
at once on one work dir. Each run completes, no unit is trained twice to completion, and the result is byte-identical
to an uninterrupted single run."""

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import REPO, exec_config, reference_run, run_outputs, unit_logs  # noqa: F401

pytestmark = pytest.mark.slow
VICTIM = "tiny-csv/train/tiny/seed0/fold0"


def start(cfg, **kw) -> subprocess.Popen:
    return subprocess.Popen(["./run.sh", "all", "--config", str(cfg)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)  # fmt: skip


def kill_worker_mid_training(tmp, proc) -> int:
    """Wait until the victim unit has finished an epoch, then SIGKILL the process holding its claim."""
    folder = tmp / "work" / VICTIM
    deadline = time.time() + 240
    while time.time() < deadline:
        claim = list(folder.glob("*/claim.json"))
        if claim and list(folder.glob("*/resume.pt")):
            try:
                pid = json.loads(claim[0].read_text())["pid"]
            except (ValueError, FileNotFoundError):
                continue
            assert pid != proc.pid  # a worker, not the run itself
            os.kill(pid, signal.SIGKILL)
            assert not list(folder.glob("*/done.json")), "killed too late: the unit had finished"
            return pid
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("the victim never reached the end of an epoch")


def check_resumed_once(tmp) -> None:
    logs = unit_logs(tmp)
    victim = logs.pop(VICTIM)
    assert victim.count("== run ") == 1 and victim.count("== resume ") == 1 and victim.count("== done") == 1, victim
    for name, log in logs.items():  # every other unit: trained once
        assert log.count("== run ") == 1 and "== resume" not in log and log.count("== done") == 1, (name, log)


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_worker_killed_mid_training_is_resumed(tmp, reference_run, executor):  # noqa: F811
    proc = start(exec_config(tmp, executor=executor))
    kill_worker_mid_training(tmp, proc)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    if executor == "processes":
        assert "worker died (exit -9) running tiny/seed0/fold0; running it again (it resumes)" in stdout
    check_resumed_once(tmp)
    assert run_outputs(tmp) == reference_run


def test_three_runs_at_once_share_the_work(tmp, reference_run):  # noqa: F811
    cfg = exec_config(tmp, executor="local")
    procs = [start(cfg) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stdout + stderr
    logs = unit_logs(tmp)
    assert len(logs) == 6  # 2 models x 3 folds
    for name, log in logs.items():
        assert log.count("== run ") == 1 and "== resume" not in log, (name, log)
    assert sum(out.count("[train] wait") for out, _ in outs) > 0  # they did meet
    assert run_outputs(tmp) == reference_run


def test_ctrl_c_says_how_to_resume(tmp, reference_run):  # noqa: F811
    proc = start(exec_config(tmp, executor="processes"), start_new_session=True)
    folder = tmp / "work" / VICTIM
    deadline = time.time() + 240
    while not list(folder.glob("*/resume.pt")) and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted; run the same command again to resume" in stderr and "Traceback" not in stderr, stderr
    again = start(exec_config(tmp, executor="processes"))
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stdout + stderr
    assert run_outputs(tmp) == reference_run
