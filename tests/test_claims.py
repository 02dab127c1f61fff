"""Unit claims between real processes: a live claim is never taken, a dead owner's is taken over exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

from pipeline import claims
from pipeline.store import HOST

from .conftest import REPO

HOLD = """
import sys, time
from pathlib import Path
from pipeline import claims
got = claims.acquire(Path(sys.argv[1]), timeout=60)
assert isinstance(got, claims.Claim), got
with got:
    print("held", flush=True)
    time.sleep(600)
"""

TAKE = """
import sys, time
from pathlib import Path
from pipeline import claims
start = float(sys.argv[2])
while time.time() < start:
    pass
got = claims.acquire(Path(sys.argv[1]), timeout=60)
print("won" if isinstance(got, claims.Claim) else "lost", flush=True)
if isinstance(got, claims.Claim):
    time.sleep(2)  # hold it while the others try
    got.release()
"""


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True, stdout=subprocess.PIPE, **kw)


def test_live_claim_is_refused_and_a_killed_owners_is_taken_over(tmp):
    owner = python(HOLD, str(tmp))
    assert owner.stdout.readline().strip() == "held"
    rec = claims.acquire(tmp, timeout=60)
    assert isinstance(rec, dict) and rec["pid"] == owner.pid and rec["host"] == HOST
    assert claims.live_owner(tmp, 60)["pid"] == owner.pid
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert claims.live_owner(tmp, 60) is None  # same host, pid gone: dead at once, no timeout to wait for
    got = claims.acquire(tmp, timeout=60)
    assert isinstance(got, claims.Claim) and got.rec["pid"] == os.getpid()
    with got:
        assert json.loads((tmp / claims.CLAIM).read_text())["token"] == got.rec["token"]
    assert not (tmp / claims.CLAIM).exists()  # released


def test_another_hosts_claim_lives_by_its_heartbeat(tmp):
    rec = {"host": "elsewhere", "pid": 1, "token": "t", "started": time.time(), "heartbeat": time.time()}
    (tmp / claims.CLAIM).write_text(json.dumps(rec))
    assert claims.acquire(tmp, timeout=30)["host"] == "elsewhere"
    rec["heartbeat"] = time.time() - 31
    (tmp / claims.CLAIM).write_text(json.dumps(rec))
    got = claims.acquire(tmp, timeout=30)
    assert isinstance(got, claims.Claim)
    got.release()


def test_of_many_takers_of_a_dead_claim_exactly_one_wins(tmp):
    dead = python("import os; print(os.getpid())")
    pid = int(dead.stdout.read())
    dead.wait()
    rec = {"host": HOST, "pid": pid, "token": "dead", "started": 0, "heartbeat": time.time()}
    for _ in range(3):  # three rounds, six takers each, all released at the same instant
        (tmp / claims.CLAIM).write_text(json.dumps(rec))
        start = time.time() + 3
        procs = [python(TAKE, str(tmp), str(start)) for _ in range(6)]
        results = sorted(p.communicate()[0].strip() for p in procs)
        assert results == ["lost"] * 5 + ["won"], results
        assert not (tmp / claims.CLAIM).exists()
