"""Claim records on disk, below pipeline.claims: a record (host, host id, pid, process start, token, heartbeat) is
created exclusively (a hard link of a written file, or where the filesystem has no hard links an O_EXCL create), read
(an unreadable one stands as an unknown host's), and judged live without comparing clocks: same host id, while its
pid runs (the same process, by start time); another host, while the reader sees it change within `timeout` seconds
of its own monotonic clock. The take-over lock (`_locked`) is such a record too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
import uuid
from pathlib import Path

from .durable import HOST, HOST_ID, host_tag, tmp_name

CLAIM = "claim.json"
LOCK = CLAIM + ".takeover"
TAKEOVER_LOCK_S = 30.0  # a take-over lock unchanged this long (reader's clock) belongs to a taker that died mid-way
NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)
SKEW_S = float(os.environ.get("PIPELINE_CLOCK_SKEW", "0"))  # a host whose clock is off (tests, chaos bench)


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
