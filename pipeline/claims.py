"""Unit claims: before running a unit a worker takes an exclusive claim on its folder, so two runs (or two workers of
one run, or two machines sharing the work dir) never do the same work.

A claim is `claim.json` in the unit's folder: host, pid, the process start time, a token, start and heartbeat times.
It is created atomically (written to a temporary file, then hard-linked into place: the link fails if a claim
exists, on local disks and NFS alike). A thread refreshes the heartbeat while the unit runs. A claim is live while its
owner is: on this host, while its pid runs (the same process, by start time); elsewhere, while its heartbeat is
younger than `timeout` seconds. A dead owner's claim is taken over (under a short take-over lock, so two takers never
both win) and the unit resumes from its partial state.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

from .store import HOST, tmp_name

CLAIM = "claim.json"
HEARTBEAT_S = 5.0
TAKEOVER_LOCK_S = 30.0  # a take-over lock older than this belongs to a taker that died mid-way


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]  # a zombie has exited
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    if os.path.exists("/proc/self/stat") and now is None:
        return False  # exited (zombie) or vanished
    return start is None or now is None or now == start


def read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_live(rec: dict | None, timeout: float) -> bool:
    if rec is None:
        return False
    if rec.get("host") == HOST and not pid_alive(int(rec.get("pid", -1)), rec.get("pid_start")):
        return False
    return time.time() - float(rec.get("heartbeat", 0)) < timeout


def owner(rec: dict) -> str:
    return f"{rec.get('host', '?')}, pid {rec.get('pid', '?')}"


def _link_new(path: Path, rec: dict) -> bool:
    """Create path holding rec, atomically; False if it already exists."""
    tmp = path.with_name(tmp_name(path.name))
    tmp.write_text(json.dumps(rec))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class Claim:
    """A held claim; a context manager that refreshes the heartbeat until released."""

    def __init__(self, path: Path, rec: dict):
        self.path, self.rec = path, rec
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Claim:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = read(self.path)
            if current is None or current.get("token") != self.rec["token"]:
                return  # taken over (this process was judged dead): never overwrite the new owner's claim
            self.rec["heartbeat"] = time.time()
            tmp = self.path.with_name(tmp_name(self.path.name))
            tmp.write_text(json.dumps(self.rec))
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        current = read(self.path)
        if current is not None and current.get("token") == self.rec["token"]:
            self.path.unlink(missing_ok=True)


def acquire(folder: Path, timeout: float) -> Claim | dict:
    """Claim the unit in folder: a Claim (enter it to keep it alive), or the live owner's record."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM
    now = time.time()
    rec = {"host": HOST, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()), "token": uuid.uuid4().hex,
           "started": now, "heartbeat": now}  # fmt: skip
    for _ in range(5):
        if _link_new(path, rec):
            return Claim(path, rec)
        held = read(path)
        if held is None:  # removed between the link and the read: try again
            continue
        if is_live(held, timeout):
            return held
        if not _take_over(path, held):
            return held  # another process is taking it over right now
    return read(path) or {"host": "?", "pid": "?"}


def _take_over(path: Path, dead: dict) -> bool:
    """Remove a dead owner's claim, under a lock so that of two takers only one removes it (and never a new claim)."""
    lock = path.with_name(path.name + ".takeover")
    if not _link_new(lock, {"host": HOST, "pid": os.getpid()}):
        try:
            if time.time() - lock.stat().st_mtime > TAKEOVER_LOCK_S:
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    try:
        current = read(path)
        if current is not None and current.get("token") == dead.get("token"):
            path.unlink(missing_ok=True)
        return True
    finally:
        lock.unlink(missing_ok=True)


def live_owner(folder: Path, timeout: float) -> dict | None:
    """The live claim on a unit's folder, if any (for `status` and the scheduler)."""
    rec = read(folder / CLAIM)
    return rec if is_live(rec, timeout) else None
