"""Unit claims: before running a unit a worker takes an exclusive claim on its folder, so two runs (or two workers of
one run, or two machines sharing the work dir) never do the same work, and never both commit it.

A claim is `claim.json` in the unit's folder: host, host id (hostname, boot id, pid namespace), pid, the process
start time, a token, and a heartbeat counter. It is created exclusively (a hard link of a written file, or where the
filesystem has no hard links an O_EXCL create). A thread bumps the counter every HEARTBEAT_S seconds, riding out
write errors (a full disk for a while). Liveness is judged without comparing clocks:
- same host id: the claim lives while its pid runs (the same process, by start time), paused (Ctrl-Z, SIGSTOP) or not;
- another host: while the reader sees its counter change within `timeout` seconds of the reader's own monotonic
  clock. A claim seen for the first time is live: a reader must watch it for `timeout` before judging it dead.
A dead owner's claim is removed under a short take-over lock, only if it is still exactly what was judged dead.

Fencing: a lease cannot stop a paused owner from waking up. So an attempt writes only into its own staging folder,
and commits (moves its outputs into place and writes done.json) under the take-over lock, after re-reading the claim
and finding its own token there (`Claim.fenced`). An owner that lost its claim raises LostClaim at its next check (an
epoch's end, the commit) and commits nothing. The heartbeat writes under the same lock, so it never overwrites a
new owner's claim.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
import uuid
from pathlib import Path

from .durable import HEARTBEAT_S, HOST, HOST_ID, host_tag, tmp_name

CLAIM = "claim.json"
LOCK = CLAIM + ".takeover"
TAKEOVER_LOCK_S = 30.0  # a take-over lock unchanged this long (reader's clock) belongs to a taker that died mid-way
NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)
SKEW_S = float(os.environ.get("PIPELINE_CLOCK_SKEW", "0"))  # a host whose clock is off (tests, chaos bench)


class LostClaim(RuntimeError):
    """This attempt's claim was taken over (it was judged dead while paused or cut off): it must commit nothing."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]  # a zombie has exited
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether a process of this host runs (stopped counts as running); with start, the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _proc_start(pid)
    if os.path.exists("/proc/self/stat") and now is None:
        return False  # exited (zombie) or vanished
    return start is None or now is None or now == start


def read(path: Path) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def same_host(rec: dict) -> bool:
    if "host_id" in rec:
        return rec["host_id"] == HOST_ID
    return rec.get("host") == HOST  # a claim of an earlier version: hostname only


def read_claim(path: Path) -> dict | None:
    """The claim in path; one that cannot be read (a create cut off by a crash) stands as a record of an unknown host,
    watched like any other until it is judged dead."""
    rec = read(path)
    if rec is not None:
        return rec
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"host": "?", "pid": "?", "token": f"unreadable-{st.st_size}-{st.st_mtime_ns}"}


_seen: dict[str, tuple[tuple, float]] = {}  # file -> (what it held, this process's monotonic time when first seen)


def _unchanged_for(path: Path, rec: dict) -> float:
    """Seconds (monotonic, this process) for which path has held this record's token and heartbeat."""
    state = (rec.get("token"), rec.get("beat"), rec.get("heartbeat"))
    now = time.monotonic()
    seen = _seen.get(str(path))
    if seen is None or seen[0] != state:
        _seen[str(path)] = (state, now)
        return 0.0
    return now - seen[1]


def is_live(rec: dict | None, timeout: float, path: Path | None = None) -> bool:
    if rec is None:
        return False
    if same_host(rec):
        return pid_alive(int(rec.get("pid", -1)), rec.get("pid_start"))
    return path is None or _unchanged_for(path, rec) < timeout


def owner(rec: dict) -> str:
    return f"{rec.get('host', '?')}, pid {rec.get('pid', '?')}"


def owner_tag(rec: dict) -> tuple[str, int]:
    """(host tag, pid) as temporary file names carry them."""
    return host_tag(str(rec.get("host")), str(rec.get("host_id", rec.get("host")))), int(rec.get("pid", -1))


def _create_new(path: Path, rec: dict) -> bool:
    """Create path holding rec, exclusively; False if it already exists. A hard link of a written file where the
    filesystem has them (never seen half-written), an O_EXCL create elsewhere."""
    tmp = path.with_name(tmp_name(path.name))
    try:
        tmp.write_text(json.dumps(rec))
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno in NO_LINKS:  # no hard links here (some FUSE and SMB mounts, object stores)
            return _create_excl(path, rec)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _create_excl(path: Path, rec: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(rec).encode())
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def _new_rec() -> dict:
    now = time.time() + SKEW_S
    return {"host": HOST, "host_id": HOST_ID, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
            "token": uuid.uuid4().hex, "started": now, "heartbeat": now, "beat": 0}  # fmt: skip


@contextlib.contextmanager
def _locked(folder: Path, wait_s: float):
    """Hold the take-over lock of a unit folder (yields True), or yield False when it stays taken for wait_s. A
    lock whose holder died (this host: its pid; others: unchanged for TAKEOVER_LOCK_S on this clock) is broken."""
    path, rec = folder / LOCK, _new_rec()
    give_up = time.monotonic() + wait_s
    while True:
        try:
            got = _create_new(path, rec)
        except OSError:
            got = False  # a full disk: not now
        if got:
            break
        held = read_claim(path)
        if held is not None and not is_live(held, TAKEOVER_LOCK_S, path):
            _break_lock(path, held)
            continue
        if time.monotonic() >= give_up:
            yield False
            return
        time.sleep(0.02)
    try:
        yield True
    finally:
        if (read(path) or {}).get("token") == rec["token"]:
            path.unlink(missing_ok=True)


def _break_lock(path: Path, dead: dict) -> None:
    """Move a dead taker's lock aside and drop it; put back a lock that turned out to be another (it was renewed)."""
    aside = path.with_name(tmp_name(path.name))
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if (read_claim(aside) or {}).get("token") == dead.get("token"):
        aside.unlink(missing_ok=True)
    else:
        os.rename(aside, path)


class Claim:
    """A held claim; a context manager that beats the heartbeat until released."""

    def __init__(self, path: Path, rec: dict):
        self.path, self.rec = path, rec
        self.lost: dict | None = None  # the record that replaced ours, once seen
        self.beat_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    @property
    def token(self) -> str:
        return self.rec["token"]

    def __enter__(self) -> Claim:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        interval = HEARTBEAT_S
        while not self._stop.wait(interval):
            try:
                with _locked(self.path.parent, HEARTBEAT_S / 2) as got:
                    if not got:
                        interval = HEARTBEAT_S / 5
                        continue
                    current = read(self.path)
                    if current is None or current.get("token") != self.token:
                        self.lost = current or {"host": "?", "pid": "?"}
                        return  # taken over: never overwrite the new owner's claim
                    rec = {**self.rec, "beat": self.rec["beat"] + 1, "heartbeat": time.time() + SKEW_S}
                    tmp = self.path.with_name(tmp_name(self.path.name))
                    try:
                        tmp.write_text(json.dumps(rec))
                        os.replace(tmp, self.path)
                    finally:
                        tmp.unlink(missing_ok=True)
                    self.rec, interval = rec, HEARTBEAT_S
            except OSError:  # a full disk, a flaky mount: try again soon, the claim stays ours until judged dead
                self.beat_errors += 1
                interval = HEARTBEAT_S / 5

    def check(self) -> None:
        """Raise LostClaim when another attempt holds the unit now (an epoch's end calls this)."""
        current = read(self.path)
        if self.lost or current is None or current.get("token") != self.token:
            self.lost = self.lost or current or {"host": "?", "pid": "?"}
            raise LostClaim(f"this attempt's claim on {self.path.parent} was taken over by {owner(self.lost)} (this "
                            f"process was judged dead: paused or cut off longer than the claim timeout); it commits "
                            f"nothing")  # fmt: skip

    @contextlib.contextmanager
    def fenced(self):
        """Hold the take-over lock with this claim still ours, or raise LostClaim: commit inside."""
        with _locked(self.path.parent, 2 * TAKEOVER_LOCK_S) as got:
            if not got:
                raise LostClaim(f"the take-over lock of {self.path.parent} stayed taken; nothing committed")
            self.check()
            yield

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with _locked(self.path.parent, TAKEOVER_LOCK_S) as got:
            current = read(self.path)
            if got and current is not None and current.get("token") == self.token:
                self.path.unlink(missing_ok=True)


def acquire(folder: Path, timeout: float) -> Claim | dict:
    """Claim the unit in folder: a Claim (enter it to keep it alive), or the live owner's record."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM
    rec = _new_rec()
    for _ in range(5):
        if _create_new(path, rec):
            return Claim(path, rec)
        held = read_claim(path)
        if held is None:  # removed between the create and the read, or being written: try again
            time.sleep(0.01)
            continue
        if is_live(held, timeout, path):
            return held
        if not take_over(folder, held):
            return held  # renewed, or another process is taking it over right now
    return read_claim(path) or {"host": "?", "pid": "?"}


def take_over(folder: Path, dead: dict) -> bool:
    """Remove a dead owner's claim if it still is exactly the record judged dead (under the take-over lock, so that
    of two takers only one removes it, and never a renewed or a new claim)."""
    path = folder / CLAIM
    with _locked(folder, 1.0) as got:
        if not got:
            return False
        current = read_claim(path)
        if current is not None and all(current.get(k) == dead.get(k) for k in ("token", "beat", "heartbeat")):
            path.unlink(missing_ok=True)
            return True
        return current is None


def live_owner(folder: Path, timeout: float, clear: bool = False) -> dict | None:
    """The live claim on a unit's folder, if any (for `status` and the scheduler); with clear, a dead one is removed
    (the scheduler watches claims over time: a fresh worker could not judge another host's claim dead)."""
    rec = read_claim(folder / CLAIM)
    if rec is None or is_live(rec, timeout, folder / CLAIM):
        return rec
    if clear:
        take_over(folder, rec)
    return None


def clear_dead(folder: Path, timeout: float) -> bool:
    """Remove what a dead owner left on a unit's folder (its claim, a take-over lock it held while committing: a kill
    between done.json and the release leaves both on a done unit, which no later attempt would touch). True when no
    live owner holds it."""
    if (folder / LOCK).exists():
        with _locked(folder, 0.05):  # breaks a dead holder's lock; a live holder's stays
            pass
    return live_owner(folder, timeout, clear=True) is None


def owners(folder: Path) -> set[tuple[str, int]] | None:
    """(host tag, pid) of the claim on a unit folder or its parent (a staging folder); None if no unit's folder."""
    for d in (folder, folder.parent):
        if (d / "unit.json").is_file():
            rec = read(d / CLAIM)
            return {owner_tag(rec)} if rec else set()
    return None
