"""Faults with real processes: a worker SIGKILLed mid-training (processes and Ray executors), and three runs started
at once on one work dir. Each run completes, no unit is trained twice to completion, and the result is byte-identical
to an uninterrupted single run."""

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import EXEC_MODELS, REPO, exec_config, reference_run, run_outputs, unit_logs, write_config  # noqa: F401

pytestmark = pytest.mark.slow
VICTIM = "tiny-csv/train/tiny/seed0/fold0"


def start(cfg, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(["./run.sh", "all", "--config", str(cfg)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def freeze_when(proc, ready, slice_s: float = 0.05) -> None:
    """Let the run's process group go on in short slices, frozen (SIGSTOP) between them, until `ready()` holds while it
    is frozen; it is left frozen then. The test reads the work dir while nothing moves, so it cannot miss a state that
    lasts less than one of its polls, however loaded the machine is (a loaded one only makes the slices do less)."""
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(slice_s)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGSTOP)
        if ready():
            return
        os.killpg(proc.pid, signal.SIGCONT)
    raise AssertionError("the run never reached the state the test waits for")


def kill_worker_mid_training(tmp, proc) -> int:
    """Wait until the victim unit has finished an epoch, then SIGKILL the process holding its claim."""
    folder = tmp / "work" / VICTIM
    deadline = time.time() + 240
    while time.time() < deadline:
        claim = list(folder.glob("*/claim.json"))
        if claim and list(folder.glob("*/.attempt-*/resume.pt")):
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
    freeze_when(proc, lambda: bool(list(folder.glob("*/.attempt-*/resume.pt"))))
    assert not list(folder.glob("*/done.json")), "interrupted too late: the unit had finished"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group (delivered as it goes on)
    os.killpg(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted; run the same command again to resume" in stderr and "Traceback" not in stderr, stderr
    again = start(exec_config(tmp, executor="processes"))
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stdout + stderr
    assert run_outputs(tmp) == reference_run


def test_a_run_paused_past_the_claim_timeout_commits_nothing(tmp, reference_run):  # noqa: F811
    """A laptop suspended mid-training: another host takes its unit over and finishes the run; the paused run wakes
    up, finds its claim gone at the end of its epoch, commits nothing and says so, then finishes with the rest."""
    fast = {"PIPELINE_HEARTBEAT_S": "0.5"}  # so that a claim timeout of 2 s is allowed (three heartbeats)
    cfg = write_config(tmp, "csv", models=EXEC_MODELS, runtime={"threads": 1, "executor": "local", "claim_timeout": 2})
    paused = start(cfg, env={**fast, "PIPELINE_HOST_ID": "laptop"}, start_new_session=True)
    folder = tmp / "work" / VICTIM
    freeze_when(paused, lambda: bool(list(folder.glob("*/**/resume.pt"))))  # an epoch done, where it is kept
    try:
        assert not list(folder.glob("*/done.json")), "paused too late: the unit had finished"
        other = start(cfg, env={**fast, "PIPELINE_HOST_ID": "gpu-node", "PIPELINE_CLOCK_SKEW": "-7200"})
        stdout, stderr = other.communicate(timeout=600)
        assert other.returncode == 0, stdout + stderr
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    stdout, stderr = paused.communicate(timeout=600)
    assert paused.returncode == 0, stdout + stderr
    assert "[train] lost   tiny/seed0/fold0: this attempt's claim" in stdout, stdout
    victim = unit_logs(tmp)[VICTIM]
    assert victim.count("== done") == 1 and victim.count("== lost: ") == 1 and "== resume " in victim, victim
    assert not list((tmp / "work").glob("**/.attempt-*")) and not list((tmp / "work").glob("**/resume.pt"))
    assert run_outputs(tmp) == reference_run
