"""The scheduler's loop: brings a set of units to done over the graph, not stage by stage (`run_units`).

A unit is ready when every unit it reads is done; ready units go to the executor in plan order (dependencies first)
up to its capacity, so folds x seeds x models, several backbones' features, and the predict of a finished fold while
other folds train all run at once. A unit claimed by another live process (another run on the same work dir) is
waited for, never run twice; when its owner dies it is run here and resumes. A worker that died is replaced and its
unit sent again (it resumes). One console line per unit: run / resume / skip / wait / done / failed.
"""

from __future__ import annotations

import os
import time

from . import claims
from .attempt import Result, format_scores
from .executor import Executor, UnitFailed, make_executor, stderr
from .logs import log
from .plan import MissingInput, Plan
from .store import DONE, Unit

POLL_S = 0.5
MAX_DEATHS = 3  # a unit whose worker died this many times fails the run


class _Lazy:
    """Start the executor (worker processes, a Ray instance) only when a unit actually has to run."""

    def __init__(self, plan: Plan, executor: Executor | None = None):
        self.plan, self._ex = plan, executor

    @property
    def ex(self) -> Executor:
        if self._ex is None:
            self._ex = make_executor(self.plan)
            if self._ex.describe:
                log("run", f"executor {self._ex.name}: {self._ex.describe}; {self._ex.capacity} units at once")
        return self._ex

    def close(self, abort: bool = False) -> None:
        if self._ex is not None:
            self._ex.close(abort)


def _force(plan: Plan, units: list[Unit]) -> None:
    for u in units:
        owner = claims.live_owner(plan.store.dir(u), plan.cfg.runtime.claim_timeout)
        if owner:
            raise RuntimeError(f"{u.label} is running ({claims.owner(owner)}); --force it once that run ends")
        plan.store.reset(u, plan.stages[u.stage].PARTIAL)  # from nothing: no earlier attempt's state is resumed


class _Run:
    """The state of one `run_units`: what is pending, running, held by another run, done, dead, failed."""

    def __init__(self, plan: Plan, targets: list[Unit], force, executor, deadline, estimates):
        self.plan, self.deadline, self.estimates = plan, deadline, estimates or {}
        self.forced = {u.key for u in force}
        self.stopped: dict[str, float] = {}  # key -> seconds its attempt ran before the deadline stopped it
        self.done = _done_now(plan, targets)
        self.pending = list(targets)
        self.running: dict[str, Unit] = {}
        self.waiting: dict[str, Unit] = {}
        self.deaths: dict[str, int] = {}
        self.failures: list[str] = []
        self.lazy = _Lazy(plan, executor)

    def poll_waiting(self) -> None:
        """Units another process holds: done by it, or free again (their owner died: run here, resumed)."""
        store, timeout = self.plan.store, self.plan.cfg.runtime.claim_timeout
        for key, u in list(self.waiting.items()):
            if store.is_done(u):
                self.done.add(key)
                del self.waiting[key]
                log(u.stage, f"done   {u.name} (by another run)")
            elif not claims.live_owner(store.dir(u), timeout, clear=True):
                del self.waiting[key]
                self.pending.insert(0, u)

    def dispatch(self) -> bool:
        """Send the ready pending units, in order, up to the executor's capacity. Returns whether any was sent."""
        plan, store = self.plan, self.plan.store
        dispatched = False
        for u in list(self.pending) if not self.failures else []:
            if u not in self.pending:  # left out with a unit it reads, earlier in this pass
                continue
            ready = all(d in self.done for d in plan.deps[u.key])
            if u.key in self.done and ready:
                if store.is_done(u):
                    self.pending.remove(u)
                    log(u.stage, f"skip   {u.name} (done)")
                    continue
                self.done.discard(u.key)  # an input it read was redone in this run: so is it
            if u.key in self.done:  # done, unless an input that is being redone changes that
                continue
            if self.deadline is not None and _left_out(plan, u, self.pending, self.deadline, self.estimates):
                continue
            if not ready:
                continue
            owner = claims.live_owner(store.dir(u), plan.cfg.runtime.claim_timeout, clear=True)
            if owner:
                self.pending.remove(u)
                self.waiting[u.key] = u
                log(u.stage, f"wait   {u.name} (running: {claims.owner(owner)})")
                continue
            if len(self.running) >= self.lazy.ex.capacity:
                break
            verb = "resume" if store.partial(u, plan.stages[u.stage].PARTIAL) else "run   "
            log(u.stage, f"{verb} {u.name}")
            self.pending.remove(u)
            self.running[u.key] = u
            self.lazy.ex.submit(u, u.key in self.forced, self.deadline)
            dispatched = True
        return dispatched

    def step(self) -> None:
        self.poll_waiting()
        dispatched = self.dispatch()
        if self.failures:
            self.pending.clear()
        if not self.running and not self.waiting:
            if self.pending and not dispatched:
                stuck = ", ".join(u.label for u in self.pending[:3])
                raise MissingInput(f"cannot run {stuck}: an input is neither done nor part of this run")
            return
        for key, res in self.lazy.ex.wait(POLL_S if self.waiting or not self.running else None):
            self.report(self.running.pop(key), res)

    def report(self, u: Unit, res: Result) -> None:
        if not self.lazy.ex.echo:  # a worker's lines come back with its result
            for line in res.lines:
                print(line, flush=True)
        if res.state == "done" and not _visible(self.plan, u):
            self.failures.append(f"{u.label}: a worker on {res.host} finished it, but no {DONE} is visible in "
                                 f"{self.plan.store.dir(u)}: the work dir must be shared by every worker")  # fmt: skip
        elif res.state in ("done", "skip"):
            self.done.add(u.key)
            m = res.marker
            log(u.stage, f"done   {u.name} in {m['seconds']:.1f}s {format_scores(m['scores'])}".rstrip()
                if res.state == "done" else f"skip   {u.name} (done)")  # fmt: skip
        elif res.state == "stopped":  # a time budget ended: it stays partial and resumes in a later run
            later = _drop_readers(self.plan, u.key, self.pending)
            self.stopped[u.key] = res.seconds or 0.0
            log(u.stage, f"paused {u.name}: {res.message}" + (f" ({later} later unit(s) need it)" if later else ""))
        elif res.state in ("lost", "busy"):  # lost: paused past the claim timeout, taken over; busy: another holds it
            self.pending.insert(0, u)
            log(u.stage, f"lost   {u.name}: {res.message}" if res.state == "lost"
                else f"wait   {u.name} (running: {res.owner})")  # fmt: skip
            if res.state == "busy":
                time.sleep(POLL_S)
        elif res.state == "died":
            self.died(u, res)
        else:
            where = f" (log: {res.log})" if res.log else ""
            self.failures.append(f"{u.label}: {res.message}{where}")
            stderr(f"[{u.stage}] failed {u.name}: {res.message}{where}")

    def died(self, u: Unit, res: Result) -> None:
        self.deaths[u.key] = self.deaths.get(u.key, 0) + 1
        if self.deaths[u.key] >= MAX_DEATHS or res.retried:
            self.failures.append(f"{u.label}: its worker died {self.deaths[u.key]} time(s) (exit {res.exitcode})")
            stderr(f"[{u.stage}] failed {u.name}: {self.failures[-1]}")
        else:
            log(u.stage, f"worker died (exit {res.exitcode}) running {u.name}; running it again (it resumes)")
            self.pending.insert(0, u)


def run_units(plan: Plan, targets: list[Unit], force: list[Unit] = (), executor: Executor | None = None,
              deadline: float | None = None, estimates: dict | None = None) -> dict[str, float]:  # fmt: skip
    """Bring every target to done (their dependencies must be among them or done), sent in the order given. Raises
    UnitFailed after the units in flight have finished, if any unit failed. With a deadline (a time budget) a unit
    whose estimated seconds no longer fit is left out, with what needs it, and a training stops at an epoch's end;
    returned: the key and the seconds of each unit so stopped (it stays partial)."""
    _force(plan, list(force))
    run = _Run(plan, targets, force, executor, deadline, estimates)
    try:
        while run.pending or run.running or run.waiting:
            run.step()
    except BaseException:  # Ctrl-C or a scheduler error: stop the workers now (their units resume next time)
        run.lazy.close(abort=True)
        raise
    run.lazy.close()
    failures = run.failures
    if failures:
        raise UnitFailed(failures[0] + (f" (and {len(failures) - 1} more failed units)" if len(failures) > 1 else ""))
    return run.stopped


def _done_now(plan: Plan, targets: list[Unit]) -> set[str]:
    """Keys of the units done now, less the targets whose input is a target to redo (they are redone after it)."""
    done = {u.key for u in plan.units if plan.store.is_done(u)}
    redo = {u.key for u in targets if u.key not in done}
    for u in targets:  # dependencies first
        if u.key in done and any(d in redo for d in plan.deps[u.key]):
            done.discard(u.key)
            redo.add(u.key)
    return done


def _left_out(plan: Plan, u: Unit, pending: list, deadline: float, estimates: dict) -> bool:
    """Drop a pending unit (and every pending unit that reads it) when it cannot finish before the deadline."""
    need = estimates.get(u.key, 0.0)
    if time.time() + need <= deadline:
        return False
    pending.remove(u)
    later = _drop_readers(plan, u.key, pending)
    log(u.stage, f"left   {u.name}: expected {need:.0f}s, {max(0.0, deadline - time.time()):.0f}s of the budget left"
                 + (f" ({later} later unit(s) need it)" if later else ""))  # fmt: skip
    return True


def _drop_readers(plan: Plan, key: str, pending: list) -> int:
    """Remove from pending every unit that reads `key`, directly or not (it will not be done in this run)."""
    gone, n = {key}, 0
    for v in list(pending):  # in dependency order: a reader comes after what it reads
        if any(d in gone for d in plan.deps[v.key]):
            gone.add(v.key)
            pending.remove(v)
            n += 1
    return n


def _visible(plan: Plan, u: Unit, tries: int = 20) -> bool:
    """Whether a unit a worker reports done is done here; a shared filesystem's cached lookups may hide a new
    done.json for a few seconds (NFS attribute caching), so look again (listing the folder refreshes it) first."""
    for _ in range(tries):
        if plan.store.is_done(u):
            return True
        try:
            os.listdir(plan.store.dir(u))
        except OSError:
            pass
        time.sleep(POLL_S)
    return False
