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
The records themselves (create, read, judge live, the take-over lock) are pipeline.leases.

Fencing: a lease cannot stop a paused owner from waking up. So an attempt writes only into its own staging folder,
and commits (moves its outputs into place and writes done.json) under the take-over lock, after re-reading the claim
and finding its own token there (`Claim.fenced`). An owner that lost its claim raises LostClaim at its next check (an
epoch's end, the commit) and commits nothing. The heartbeat writes under the same lock, so it never overwrites a
new owner's claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from .durable import HEARTBEAT_S, HOST_ID, tmp_name
from .leases import (
    CLAIM,
    LOCK,
    SKEW_S,
    TAKEOVER_LOCK_S,
    _create_new,
    _locked,
    _new_rec,
    is_live,
    owner,
    owner_tag,
    pid_alive,
    read,
    read_claim,
    same_host,
)

__all__ = ["CLAIM", "HOST_ID", "LOCK", "Claim", "LostClaim", "_locked", "acquire", "live_owner", "owner", "owner_tag",
           "owners", "pid_alive", "same_host", "take_over"]  # fmt: skip


class LostClaim(RuntimeError):
    """This attempt's claim was taken over (it was judged dead while paused or cut off): it must commit nothing."""


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
