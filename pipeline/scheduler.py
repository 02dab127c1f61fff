"""The scheduler: brings a set of units to done over the graph, not stage by stage.

A unit is ready when every unit it reads is done; ready units go to the executor in plan order (dependencies first)
up to its capacity, so folds x seeds x models, several backbones' features, and the predict of a finished fold while
other folds train all run at once. A unit claimed by another live process (another run on the same work dir) is
waited for, never run twice; when its owner dies it is run here and resumes. A worker that died is replaced and its
unit sent again (it resumes). One console line per unit: run / resume / skip / wait / done / failed.
"""

from __future__ import annotations

import os
import shutil
import time

from . import claims
from .executor import UnitFailed, format_scores, log, make_executor, stderr
from .plan import MissingInput, Plan
from .store import DONE, Unit, remove_stale_tmp, tmp_name

POLL_S = 0.5
MAX_DEATHS = 3  # a unit whose worker died this many times fails the run


class _Lazy:
    """Start the executor (worker processes, a Ray instance) only when a unit actually has to run."""

    def __init__(self, plan: Plan, executor=None):
        self.plan, self._ex = plan, executor

    @property
    def ex(self):
        if self._ex is None:
            self._ex = make_executor(self.plan)
            if getattr(self._ex, "describe", None):
                log("run", f"executor {self._ex.name}: {self._ex.describe}; {self._ex.capacity} units at once")
        return self._ex

    def close(self, abort: bool = False) -> None:
        if self._ex is not None:
            self._ex.close(abort)


def targets_for(plan: Plan, stages: list[str]) -> list[Unit]:
    """The units of the named stages plus what they need of implicit stages (image caches); any other input that is
    not done is refused before any work, naming the stage to run."""
    from .stages import STAGES

    want = [u for u in plan.units if u.stage in stages]
    keys = {u.key for u in want}
    seen: set[str] = set()
    stack = [d for u in want for d in plan.deps[u.key]]
    while stack:
        k = stack.pop()
        if k in keys or k in seen:
            continue
        seen.add(k)
        dep = plan.by_key[k]
        if STAGES[dep.stage].IMPLICIT:
            keys.add(k)
            stack += plan.deps[k]
        elif not plan.store.is_done(dep):
            raise MissingInput(f"{dep.label} is not done: run `./run.sh {dep.stage}` (or `./run.sh all`) first")
    return [u for u in plan.units if u.key in keys]


def _force(plan: Plan, units: list[Unit]) -> None:
    from .stages import STAGES

    for u in units:
        owner = claims.live_owner(plan.store.dir(u), plan.cfg.runtime.claim_timeout)
        if owner:
            raise RuntimeError(f"{u.label} is running ({claims.owner(owner)}); --force it once that run ends")
        plan.store.reset(u, STAGES[u.stage].PARTIAL)  # from nothing: no earlier attempt's state is resumed


def run_units(plan: Plan, targets: list[Unit], force: list[Unit] = (), executor=None, deadline: float | None = None,
              estimates: dict[str, float] | None = None) -> None:  # fmt: skip
    """Bring every target to done (their dependencies must be among them or done), sent in the order given. Raises
    UnitFailed after the units in flight have finished, if any unit failed. With a deadline (a time budget) a unit
    whose estimated seconds no longer fit is left out, with what needs it, and a training stops at an epoch's end."""
    from .stages import STAGES

    store, timeout = plan.store, plan.cfg.runtime.claim_timeout
    _force(plan, list(force))
    forced = {u.key for u in force}
    done = _done_now(plan, targets)
    pending = list(targets)
    running: dict[str, Unit] = {}
    waiting: dict[str, Unit] = {}
    deaths: dict[str, int] = {}
    failures: list[str] = []
    lazy = _Lazy(plan, executor)
    try:
        while pending or running or waiting:
            for key, u in list(waiting.items()):  # units another process holds
                if store.is_done(u):
                    done.add(key)
                    del waiting[key]
                    log(u.stage, f"done   {u.name} (by another run)")
                elif not claims.live_owner(store.dir(u), timeout, clear=True):
                    del waiting[key]
                    pending.insert(0, u)
            dispatched = False
            for u in list(pending) if not failures else []:
                if u not in pending:  # left out with a unit it reads, earlier in this pass
                    continue
                ready = all(d in done for d in plan.deps[u.key])
                if u.key in done and ready:
                    if store.is_done(u):
                        pending.remove(u)
                        log(u.stage, f"skip   {u.name} (done)")
                        continue
                    done.discard(u.key)  # an input it read was redone in this run: so is it
                if u.key in done:  # done, unless an input that is being redone changes that
                    continue
                if deadline is not None and _left_out(plan, u, pending, deadline, estimates or {}):
                    continue
                if not ready:
                    continue
                owner = claims.live_owner(store.dir(u), timeout, clear=True)
                if owner:
                    pending.remove(u)
                    waiting[u.key] = u
                    log(u.stage, f"wait   {u.name} (running: {claims.owner(owner)})")
                    continue
                if len(running) >= lazy.ex.capacity:
                    break
                verb = "resume" if store.partial(u, STAGES[u.stage].PARTIAL) else "run   "
                log(u.stage, f"{verb} {u.name}")
                pending.remove(u)
                running[u.key] = u
                lazy.ex.submit(u, u.key in forced, deadline)
                dispatched = True
            if failures:
                pending.clear()
            if not running and not waiting:
                if pending and not dispatched:
                    stuck = ", ".join(u.label for u in pending[:3])
                    raise MissingInput(f"cannot run {stuck}: an input is neither done nor part of this run")
                continue
            events = lazy.ex.wait(POLL_S if waiting or not running else None)
            for key, res in events:
                u = running.pop(key)
                _report(plan, u, res, lazy.ex.echo, done, pending, deaths, failures)
    except BaseException:  # Ctrl-C or a scheduler error: stop the workers now (their units resume next time)
        lazy.close(abort=True)
        raise
    lazy.close()
    if failures:
        raise UnitFailed(failures[0] + (f" (and {len(failures) - 1} more failed units)" if len(failures) > 1 else ""))


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
    gone = {u.key}
    for v in list(pending):
        if v.key in gone or any(d in gone for d in plan.deps[v.key]):
            gone.add(v.key)
            pending.remove(v)
    log(u.stage, f"left   {u.name}: expected {need:.0f}s, {max(0.0, deadline - time.time()):.0f}s of the budget left"
                 + (f" ({len(gone) - 1} later unit(s) need it)" if len(gone) > 1 else ""))  # fmt: skip
    return True


def _report(plan, u: Unit, res: dict, echo: bool, done: set, pending: list, deaths: dict, failures: list) -> None:
    state = res["state"]
    if not echo:  # a worker's lines come back with its result
        for line in res.get("lines", []):
            print(line, flush=True)
    if state == "done":
        if not _visible(plan, u):
            failures.append(f"{u.label}: a worker on {res.get('host')} finished it, but no {DONE} is visible in "
                            f"{plan.store.dir(u)}: the work dir must be shared by every worker")  # fmt: skip
            return
        done.add(u.key)
        m = res["marker"]
        log(u.stage, f"done   {u.name} in {m['seconds']:.1f}s {format_scores(m['scores'])}".rstrip())
    elif state == "skip":
        done.add(u.key)
        log(u.stage, f"skip   {u.name} (done)")
    elif state == "stopped":  # a time budget ended: it stays partial and resumes in a later run
        log(u.stage, f"paused {u.name}: {res.get('message')}")
    elif state == "lost":  # paused past the claim timeout, it was taken over: the new owner's attempt stands
        pending.insert(0, u)
        log(u.stage, f"lost   {u.name}: {res.get('message')}")
    elif state == "busy":
        pending.insert(0, u)
        log(u.stage, f"wait   {u.name} (running: {res['owner']})")
        time.sleep(POLL_S)
    elif state == "died":
        deaths[u.key] = deaths.get(u.key, 0) + 1
        if deaths[u.key] >= MAX_DEATHS or res.get("retried"):
            failures.append(f"{u.label}: its worker died {deaths[u.key]} time(s) (exit {res.get('exitcode')})")
            stderr(f"[{u.stage}] failed {u.name}: {failures[-1]}")
        else:
            log(u.stage, f"worker died (exit {res.get('exitcode')}) running {u.name}; running it again (it resumes)")
            pending.insert(0, u)
    else:
        where = f" (log: {res['log']})" if res.get("log") else ""
        failures.append(f"{u.label}: {res.get('message')}{where}")
        stderr(f"[{u.stage}] failed {u.name}: {res.get('message')}{where}")


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


def prepare_outputs(plan: Plan) -> None:
    """Before any work: every folder the run writes exists (parents too) and is writable, and temporary files that
    killed processes of this host left there are removed."""
    from .config import resolve_path

    rt = plan.cfg.runtime
    folders = {"runtime.work_dir": plan.store.root, "runtime.folds_dir": resolve_path(rt.folds_dir),
               "runtime.submissions_dir": resolve_path(rt.submissions_dir)}  # fmt: skip
    for key, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / tmp_name("write-probe")
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise RuntimeError(f"cannot write to {folder} ({key}): {err.strerror or err}; choose a writable "
                               f"folder with --set {key}=PATH") from None  # fmt: skip
    removed = remove_stale_tmp(list(folders.values()), claims.pid_alive, claims.owners)
    timeout = plan.cfg.runtime.claim_timeout
    for unit in plan.units:  # staging folders, claims and locks that a crash left in units that are done
        d, left = plan.store.dir(unit), plan.store.attempts(unit)
        held = (d / claims.CLAIM).exists() or (d / claims.LOCK).exists()
        if (left or held) and plan.store.is_done(unit) and claims.clear_dead(d, timeout):
            for a in left:
                shutil.rmtree(a, ignore_errors=True)
            removed += len(left) + held
    if removed:
        log("run", f"removed {removed} temporary file(s) left by killed processes")


def narrow_to_done(plan: Plan, stages: list[str]) -> bool:
    """A stage with `narrow` (the report) takes what is done: each of its units that reads inputs neither done nor
    made by this run is replaced by `narrow(plan, unit, missing)`, the unit of what is done (its own key). Workers'
    plans lack such a unit, so the caller runs it in this process. Returns whether any unit was replaced."""
    from .stages import STAGES

    others = [s for s in stages if getattr(STAGES[s], "narrow", None) is None]
    coming = {u.key for u in targets_for(plan, others)} if others else set()
    replaced = False
    for unit in [u for u in plan.units if u.stage in stages and getattr(STAGES[u.stage], "narrow", None)]:
        missing = [plan.by_key[k] for k in plan.deps[unit.key]
                   if k not in coming and not plan.store.is_done(plan.by_key[k])]  # fmt: skip
        if missing:
            plan.replace(unit, STAGES[unit.stage].narrow(plan, unit, missing))
            replaced = True
    return replaced


def run_stages(plan: Plan, stages: list[str], force: bool = False, executor=None, **options) -> None:
    """What the CLI runs: the named stages' units (and the image caches they need), then each stage's `after`."""
    from .executor import LocalExecutor
    from .stages import STAGES

    if narrow_to_done(plan, stages) and executor is None:
        executor = LocalExecutor(plan)
    prepare_outputs(plan)
    targets = targets_for(plan, stages)
    forced = [u for u in targets if force and u.stage in stages] if force else []
    run_units(plan, targets, forced, executor)
    for name in stages:
        after = getattr(STAGES[name], "after", None)
        if after is not None:
            after(plan, plan.all(name), **options)


def status(plan: Plan) -> int:
    from .stages import STAGES

    counts: dict[str, int] = {}
    for unit in plan.units:
        owner = claims.live_owner(plan.store.dir(unit), plan.cfg.runtime.claim_timeout)
        if owner and plan.store.read_marker(unit) is None:
            state, reason = "running", f"({owner.get('host')}, pid {owner.get('pid')})"
        elif unit.key in plan.problems:
            state, reason = "broken", plan.problems[unit.key]
        else:
            state, reason = plan.store.status(unit, STAGES[unit.stage].PARTIAL)
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:8} {unit.label:48} {reason}")
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


def ensure_done(plan: Plan, units: list[Unit], force: list[Unit] = (), executor=None) -> None:
    """Bring these units to done, with every ancestor that is not (benches and tests; the local executor unless
    one is given). `force` units are redone."""
    forced = {u.key for u in force}
    keys: set[str] = set()
    stack = [u.key for u in [*units, *force]]
    while stack:
        k = stack.pop()
        if k in keys or (k not in forced and plan.store.is_done(plan.by_key[k])):
            continue
        keys.add(k)
        stack += plan.deps[k]
    run_units(plan, [u for u in plan.units if u.key in keys], list(force), executor)
