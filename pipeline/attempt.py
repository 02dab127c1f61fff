"""Run one unit, in any process: `execute(plan, key)` is the one way a unit runs, whichever executor sends it.

It skips the unit when done, takes its claim (or reports who holds it), writes `unit.json` and `config.json`, runs the
stage's function into this attempt's own staging folder (`.attempt-<token>`, seeded with a copy of a dead attempt's
resumable state), then commits under the claim's fence: outputs moved into the unit's folder, staging and scratch
state removed, `done.json` written last; release the claim. An attempt whose claim was taken over while it was paused
commits nothing and answers "lost". Every attempt is appended to the unit's `log.txt` (pipeline.logs); in a worker its
stdout and stderr go there too. Failures come back as a `Result` naming the unit, never as a traceback on the console
(the traceback is in the log).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from . import claims
from .logs import logger, unit_log
from .plan import Plan
from .stage import BudgetStop, RunContext
from .store import ATTEMPT, DONE, HOST, Store, Unit, atomic_write, tmp_owner

LOG = "log.txt"
STATES = ("done", "skip", "busy", "stopped", "lost", "error", "died")


@dataclass
class Result:
    """What became of one unit sent to an executor (it crosses processes: plain values only)."""

    state: str  # done | skip | busy (another process holds it) | stopped (a time budget) | lost | error | died
    message: str = ""  # why, for stopped, lost, error
    error: str | None = None  # the exception's type name, for error
    log: str | None = None  # the unit's log file, for error
    lines: list[str] = field(default_factory=list)  # the unit's log lines, printed by the scheduler (workers)
    marker: dict | None = None  # done.json, for done
    verb: str | None = None  # run | resume, for done
    host: str | None = None
    pid: int | None = None
    owner: str | None = None  # who holds the claim, for busy
    exitcode: int | str | None = None  # how the worker ended, for died
    retried: bool = False  # died after the executor's own retries (Ray): not sent again
    seconds: float | None = None  # how long the attempt ran, for stopped (its epochs are kept: a later run resumes)

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"unknown unit state {self.state!r}; one of {STATES}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def format_scores(scores: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items())


def set_threads(n: int) -> None:
    """torch and BLAS threads of this process (the same count gives the same bits on CPU)."""
    if n <= 0:
        return
    torch.set_num_threads(n)
    threadpool_limits(n)


def execute(plan: Plan, key: str, force: bool = False, echo: bool = True, deadline: float | None = None) -> Result:
    """Run the unit with this key unless it is done or claimed. A training checks `deadline` (epoch seconds) and its
    claim at every epoch's end."""
    store, unit = plan.store, plan.by_key[key]
    if store.is_done(unit):
        return Result("skip")
    got = claims.acquire(store.dir(unit), plan.cfg.runtime.claim_timeout)
    if not isinstance(got, claims.Claim):
        return Result("busy", owner=claims.owner(got))
    stage = plan.stages[unit.stage]
    with got, unit_log(store.dir(unit) / LOG, echo) as ulog:
        if store.is_done(unit):  # finished by another process between the check and the claim
            return Result("skip")
        staging, verb = _stage_attempt(store, unit, stage.PARTIAL, got.token)
        ulog.write(f"== {verb} {unit.label} on {HOST} pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                   f"(attempt {got.token[:8]})")  # fmt: skip
        ctx = RunContext(deadline=deadline, force=force, logger=logger(unit.stage), fence=got.check)
        started, plan.reads = time.time(), {}
        try:
            store.begin(unit, plan.cfg.to_dict())
            result = stage.run(plan, unit, staging, ctx)
            result.pop("cleanup", None)
            scratch = (stage.PARTIAL,) if stage.PARTIAL else ()
            marker = store.finish(unit, started, **result, staging=staging, fence=got.fenced, attempt=got.token,
                                  scratch=scratch, upstream=_upstream(plan, unit))  # fmt: skip
        except BudgetStop as stop:
            ulog.write(f"== stopped: {stop}")
            return Result("stopped", str(stop), lines=ulog.lines, seconds=round(time.time() - started, 3))
        except Exception as err:  # noqa: BLE001 - reported to the scheduler with the unit's name
            return _failed(store, unit, got, staging, err, ulog)
        finally:
            plan.reads = None
        ulog.write(f"== done in {marker['seconds']:.1f}s {format_scores(marker['scores'])} (attempt {got.token[:8]})")
        return Result("done", verb=verb, marker=marker, lines=ulog.lines, host=HOST, pid=os.getpid())


def _failed(store: Store, unit: Unit, got: claims.Claim, staging: Path, err: Exception, ulog) -> Result:
    """An attempt that raised: lost (its claim was taken over while it was paused) or an error, in its log."""
    lost = err if isinstance(err, claims.LostClaim) else _lost(got)
    if lost is not None:  # a paused owner woke up after a take-over: the new owner's work stands
        if store.is_done(unit):  # what it wrote since the new owner's commit removed its folder: no one's
            shutil.rmtree(staging, ignore_errors=True)
        ulog.write(f"== lost: {lost}")
        return Result("lost", str(lost), lines=ulog.lines)
    traceback.print_exc(file=ulog.file)
    ulog.file.flush()
    return Result("error", str(err) or type(err).__name__, error=type(err).__name__, log=str(store.dir(unit) / LOG),
                  lines=ulog.lines)  # fmt: skip


def _lost(claim: claims.Claim) -> claims.LostClaim | None:
    try:
        claim.check()
    except claims.LostClaim as lost:
        return lost
    return None


def _stage_attempt(store: Store, unit: Unit, partial: str | None, token: str) -> tuple[Path, str]:
    """This attempt's staging folder (where only it writes) and its verb: "resume" when it starts from the newest
    resumable state of a dead attempt, copied (never shared). A unit whose marker is there but does not count (a
    broken output, a redone input, an unreadable marker) starts from nothing."""
    if (store.dir(unit) / DONE).exists():
        store.reset(unit, partial)
    source = store.partial(unit, partial)
    staging = store.dir(unit) / f"{ATTEMPT}{token}"
    staging.mkdir()
    if source is None:
        return staging, "run"
    names = [p.name for p in source.iterdir() if p.is_file() and tmp_owner(p.name) is None and p.name != partial]
    for name in [*names, partial]:  # the resumable state last: a copy cut off midway is never resumed from
        atomic_write(staging / name, lambda p, n=name: shutil.copyfile(source / n, p))
    return staging, "resume"


def _upstream(plan: Plan, unit: Unit) -> dict[str, str]:
    """The attempt of every input unit, as read (or as done now): a redo of one of them redoes this unit."""
    out = {}
    for k in plan.deps[unit.key]:
        dep = plan.by_key[k]
        attempt = (plan.reads or {}).get(k) or (plan.store.read_marker(dep) or {}).get("attempt")
        if attempt:
            out[str(plan.store.dir(dep).relative_to(plan.store.root))] = attempt
    return out
