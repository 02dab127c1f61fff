"""Unit claims between real processes: a live claim is never taken (stopped or not, in another pid namespace, on a host
whose clock is off), a dead owner's is taken over exactly once, an owner that lost its claim commits nothing, the
heartbeat rides out a full disk, and a filesystem without hard links still works."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import claims, leases
from pipeline.config import ConfigError, load_config
from pipeline.durable import HOST, HOST_TAG, remove_stale_tmp
from pipeline.store import Store, Unit

from .conftest import REPO, write_config

FAST = {"PIPELINE_HEARTBEAT_S": "0.1"}  # a heartbeat every 0.1 s: the tests watch claims for a second, not minutes

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

# another machine, as far as the work dir can tell: its own claim file, beating with its own (skewed) clock
REMOTE = """
import json, os, sys, time
from pathlib import Path
path, skew = Path(sys.argv[1]), float(sys.argv[2])
rec = {"host": "remote", "host_id": "remote/boot/pid:[1]", "pid": 1, "token": "remote", "beat": 0}
while True:
    rec["beat"] += 1
    rec["heartbeat"] = time.time() + skew
    tmp = path.with_name(".claim.tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, path)
    print("beat", flush=True)
    time.sleep(0.1)
"""

# one attempt of a unit: claim, write in its staging folder, commit when told (a line on stdin)
ATTEMPT = """
import sys
from pathlib import Path
from pipeline import claims
from pipeline.store import Store, Unit
store, unit = Store(Path(sys.argv[1])), Unit("s", "u", {})
got = claims.acquire(store.dir(unit), timeout=1.0)
assert isinstance(got, claims.Claim), got
with got:
    staging = store.dir(unit) / f".attempt-{got.token}"
    staging.mkdir()
    (staging / "out.txt").write_text(sys.argv[2])
    print("held", got.token, flush=True)
    sys.stdin.readline()
    try:
        store.finish(unit, 0.0, ["out.txt"], staging=staging, fence=got.fenced, attempt=got.token)
        print("committed", flush=True)
    except Exception as err:
        print("lost" if isinstance(err, claims.LostClaim) or got.lost else f"error {err!r}", flush=True)
"""


def python(code: str, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def watch_until_dead(folder: Path, timeout: float, limit: float = 10.0) -> float:
    """Watch a claim as the scheduler does (clearing it once dead); seconds it took."""
    t0 = time.monotonic()
    while claims.live_owner(folder, timeout, clear=True) is not None:
        assert time.monotonic() - t0 < limit, "the claim was never judged dead"
        time.sleep(0.05)
    return time.monotonic() - t0


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


def test_a_stopped_owner_on_this_host_is_never_taken_over(tmp):
    owner = python(HOLD, str(tmp))  # a heartbeat every 5 s, far longer than the 1 s timeout below
    assert owner.stdout.readline().strip() == "held"
    owner.send_signal(signal.SIGSTOP)  # Ctrl-Z, a suspended laptop: no heartbeat for as long as it lasts
    try:
        time.sleep(2.0)
        assert isinstance(claims.acquire(tmp, timeout=1.0), dict)  # its pid lives: never taken, whatever the clock
        assert claims.live_owner(tmp, 1.0, clear=True)["pid"] == owner.pid
    finally:
        owner.send_signal(signal.SIGCONT)
        owner.kill()
        owner.wait()
    assert isinstance(claims.acquire(tmp, timeout=1.0), claims.Claim)


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_another_host_is_judged_by_its_heartbeat_changing_never_by_its_clock(tmp, skew):
    remote = python(REMOTE, str(tmp / claims.CLAIM), str(skew))
    try:
        for _ in range(3):
            assert remote.stdout.readline().strip() == "beat"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:  # it beats: live for as long as it does (here 4 s, twice the timeout)
            held = claims.acquire(tmp, timeout=2.0)
            assert isinstance(held, dict) and held["host"] == "remote", held
            time.sleep(0.1)
    finally:
        remote.kill()
        remote.wait()
    t0 = time.monotonic()
    while not isinstance(got := claims.acquire(tmp, timeout=2.0), claims.Claim):
        assert time.monotonic() - t0 < 6.0, "a host that stopped beating was never judged dead"
        time.sleep(0.05)
    assert time.monotonic() - t0 > 1.9  # dead once unchanged for the timeout, by this process's clock
    got.release()


def test_an_owner_that_lost_its_claim_while_paused_commits_nothing(tmp):
    store, unit = Store(tmp), Unit("s", "u", {})
    first = python(ATTEMPT, str(tmp), "first", env={**FAST, "PIPELINE_HOST_ID": "host-a"}, stdin=subprocess.PIPE)
    assert first.stdout.readline().startswith("held")
    first.send_signal(signal.SIGSTOP)  # paused past the timeout: another host takes the unit over
    try:
        watch_until_dead(store.dir(unit), timeout=1.0)
        second = python(ATTEMPT, str(tmp), "second", env={**FAST, "PIPELINE_HOST_ID": "host-b"}, stdin=subprocess.PIPE)
        token = second.stdout.readline().split()[1]
        assert second.communicate("\n")[0].strip() == "committed"
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.communicate("\n", timeout=30)[0].strip() == "lost"  # it woke up believing it owned the unit
    d = store.dir(unit)
    assert (d / "out.txt").read_text() == "second" and store.read_marker(unit)["attempt"] == token
    assert store.is_done(unit) and not list(d.glob(".attempt-*")) and not (d / claims.CLAIM).exists()


def test_a_second_pid_namespace_is_another_host(tmp):
    """Containers on host networking share a hostname: a pid there says nothing about a process here."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) on this machine")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid is not allowed here: {probe.stderr.decode().strip()}")
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", HOLD, str(tmp)]
    owner = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, env={**os.environ, **FAST})
    try:
        assert owner.stdout.readline().strip() == "held"
        rec = json.loads((tmp / claims.CLAIM).read_text())
        assert rec["pid"] == 1 and rec["host"] == HOST  # pid 1 of its namespace; here pid 1 is another process
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            assert isinstance(claims.acquire(tmp, timeout=2.0), dict), "a live owner in another namespace lost"
            time.sleep(0.1)
    finally:
        owner.kill()
        owner.wait()


@pytest.fixture
def small_tmpfs(tmp):
    mnt = tmp / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_the_heartbeat_survives_a_full_disk(small_tmpfs):
    folder = small_tmpfs / "unit"
    owner = python(HOLD, str(folder), env=FAST)
    try:
        assert owner.stdout.readline().strip() == "held"
        filler = small_tmpfs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        assert full.value.errno == errno.ENOSPC
        time.sleep(6.0)  # heartbeats fail for a while (longer than one default 5 s heartbeat)
        filler.unlink()
        before, t0 = json.loads((folder / claims.CLAIM).read_text())["heartbeat"], time.monotonic()
        while json.loads((folder / claims.CLAIM).read_text())["heartbeat"] == before:
            assert time.monotonic() - t0 < 6.0, "the heartbeat never came back once the disk had space"
            time.sleep(0.05)
        assert owner.poll() is None and json.loads((folder / claims.CLAIM).read_text())["pid"] == owner.pid
    finally:
        owner.kill()
        owner.wait()


def test_claims_need_no_hard_links(tmp, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))  # as on some FUSE and SMB mounts

    monkeypatch.setattr(claims.os, "link", no_link)
    got = claims.acquire(tmp, timeout=60)
    assert isinstance(got, claims.Claim)
    with got:
        assert claims.acquire(tmp, timeout=60)["token"] == got.token  # exclusive all the same
        with got.fenced():  # the take-over lock too
            pass
    assert not (tmp / claims.CLAIM).exists()
    (tmp / claims.CLAIM).write_text("")  # a create cut off by a crash: watched like an unknown host's claim
    assert claims.live_owner(tmp, 1.0) is not None
    watch_until_dead(tmp, timeout=1.0)
    assert isinstance(claims.acquire(tmp, timeout=1.0), claims.Claim)


def test_a_take_over_lock_left_by_a_dead_taker_is_broken_without_comparing_clocks(tmp, monkeypatch):
    monkeypatch.setattr(leases, "TAKEOVER_LOCK_S", 2.0)
    dead = python("import os; print(os.getpid())")
    pid = int(dead.stdout.read())
    dead.wait()
    lock = {"host": HOST, "host_id": claims.HOST_ID, "pid": pid, "token": "x", "heartbeat": time.time() + 3600}
    (tmp / claims.LOCK).write_text(json.dumps(lock))
    with claims._locked(tmp, 0.1) as got:  # this host's taker is gone: broken at once, whatever its time says
        assert got
    (tmp / claims.LOCK).write_text("")  # another host's create cut off: broken once unchanged for TAKEOVER_LOCK_S
    with claims._locked(tmp, 0.2) as got:
        assert not got
    with claims._locked(tmp, 10.0) as got:
        assert got
    assert not (tmp / claims.LOCK).exists()


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


def test_a_claim_timeout_under_three_heartbeats_is_refused(tmp):
    cfg = write_config(tmp, "csv")
    with pytest.raises(ConfigError, match=r"'runtime.claim_timeout': 5.0 is out of range; expected a value >= 15.0"):
        load_config(cfg, ["runtime.claim_timeout=5"])
    assert load_config(cfg, ["runtime.claim_timeout=15"]).runtime.claim_timeout == 15


def test_temp_files_of_dead_owners_on_other_hosts_are_removed(tmp):
    unit = tmp / "train" / "m" / "key"
    unit.mkdir(parents=True)
    (unit / "unit.json").write_text("{}")
    (unit / claims.CLAIM).write_text(json.dumps({"host": "gpu-2", "host_id": "gpu-2/b/p", "pid": 7, "token": "t"}))
    holder_tag = claims.owner_tag(json.loads((unit / claims.CLAIM).read_text()))[0]
    live = unit / f".model.safetensors.tmp-{holder_tag}-7-0123abcd"  # the claim holder's write in progress
    dead = unit / ".model.safetensors.tmp-gpu-1~abcdef-9-0123abcd"  # a killed owner's, on a host it left
    staged = unit / ".attempt-old" / ".resume.pt.tmp-gpu-1~abcdef-9-89abcdef"
    outside = tmp / "plans" / ".x.json.tmp-gpu-1~abcdef-9-0123abcd"  # no unit's: nothing says whose it is
    for p in (live, dead, staged, outside):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    mine = unit / f".a.tmp-{HOST_TAG}-{os.getpid()}-0123abcd"
    mine.write_bytes(b"x")
    assert remove_stale_tmp([tmp], claims.pid_alive, claims.owners) == 2
    assert live.exists() and outside.exists() and mine.exists() and not dead.exists() and not staged.exists()


# an attempt killed right after its commit (done.json written) while it still held the take-over lock and its claim
COMMIT_THEN_DIE = """
import os, signal, sys
from pathlib import Path
from pipeline import claims
folder = Path(sys.argv[1])
got = claims.acquire(folder, timeout=60)
with got:
    with got.fenced():
        (folder / "done.json").write_text("{}")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_claim_and_lock_left_on_a_done_unit_by_a_killed_committer_are_removed_by_the_next_run(tmp):
    from pipeline.app import build_plan
    from pipeline.scheduler import ensure_done, prepare_outputs

    plan = build_plan(load_config(write_config(tmp, "csv")))
    (unit,) = plan.all("folds")
    ensure_done(plan, [unit])
    folder = plan.store.dir(unit)
    marker = (folder / "done.json").read_bytes()
    killed = python(COMMIT_THEN_DIE, str(folder), env=FAST)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    (folder / "done.json").write_bytes(marker)  # the commit it made: this unit's own
    assert (folder / claims.CLAIM).exists() and (folder / claims.LOCK).exists()
    assert plan.store.is_done(unit)  # done, so no later attempt would ever touch its folder
    prepare_outputs(plan)  # the start of the next run
    assert not (folder / claims.CLAIM).exists() and not (folder / claims.LOCK).exists()
    assert plan.store.is_done(unit)
