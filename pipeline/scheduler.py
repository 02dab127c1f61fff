"""The scheduler: what the CLI runs (`run_stages`: the named stages' units, then each stage's `after`), `status`,
and the units a run needs (`targets_for`, `ensure_done`); the loop that brings units to done is pipeline.dispatch
(`run_units`). Stages are reached through `plan.stages`, the registry the plan was built with.
"""

from __future__ import annotations

import shutil

from . import claims
from .config import resolve_path
from .dispatch import run_units
from .executor import Executor, LocalExecutor
from .logs import log
from .plan import MissingInput, Plan
from .store import Unit, remove_stale_tmp, tmp_name

__all__ = ["ensure_done", "narrow_to_done", "prepare_outputs", "run_stages", "run_units", "status", "targets_for"]


def targets_for(plan: Plan, stages: list[str]) -> list[Unit]:
    """The units of the named stages plus what they need of implicit stages (image caches) and of later stages (a
    pseudo-labelled model's source predictions); any other input that is not done is refused before any work, naming
    the stage to run."""
    want = [u for u in plan.units if u.stage in stages]
    keys = {u.key for u in want}
    order = list(plan.stages)
    first = min(order.index(s) for s in stages)
    seen: set[str] = set()
    stack = [d for u in want for d in plan.deps[u.key]]
    while stack:
        k = stack.pop()
        if k in keys or k in seen:
            continue
        seen.add(k)
        dep = plan.by_key[k]
        # a later stage's unit feeding a named one (the source's predict units of a pseudo-labelled train unit) is
        # no upstream stage to run first: it runs with them
        if plan.stages[dep.stage].IMPLICIT or order.index(dep.stage) >= first:
            keys.add(k)
            stack += plan.deps[k]
        elif not plan.store.is_done(dep):
            raise MissingInput(f"{dep.label} is not done: run `./run.sh {dep.stage}` (or `./run.sh all`) first")
    return [u for u in plan.units if u.key in keys]


def prepare_outputs(plan: Plan) -> None:
    """Before any work: every folder the run writes exists (parents too) and is writable, and temporary files that
    killed processes of this host left there are removed."""
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
    others = [s for s in stages if getattr(plan.stages[s], "narrow", None) is None]
    coming = {u.key for u in targets_for(plan, others)} if others else set()
    replaced = False
    for unit in [u for u in plan.units if u.stage in stages and getattr(plan.stages[u.stage], "narrow", None)]:
        missing = [plan.by_key[k] for k in plan.deps[unit.key]
                   if k not in coming and not plan.store.is_done(plan.by_key[k])]  # fmt: skip
        if missing:
            plan.replace(unit, plan.stages[unit.stage].narrow(plan, unit, missing))
            replaced = True
    return replaced


def run_stages(plan: Plan, stages: list[str], force: bool = False, executor: Executor | None = None,
               **options) -> None:  # fmt: skip
    """What the CLI runs: the named stages' units (and the image caches they need), then each stage's `after`."""
    if narrow_to_done(plan, stages) and executor is None:
        executor = LocalExecutor(plan)
    prepare_outputs(plan)
    targets = targets_for(plan, stages)
    forced = [u for u in targets if force and u.stage in stages] if force else []
    run_units(plan, targets, forced, executor)
    for name in stages:
        after = getattr(plan.stages[name], "after", None)
        if after is not None:
            after(plan, plan.all(name), **options)


def status(plan: Plan) -> int:
    counts: dict[str, int] = {}
    for unit in plan.units:
        owner = claims.live_owner(plan.store.dir(unit), plan.cfg.runtime.claim_timeout)
        if owner and plan.store.read_marker(unit) is None:
            state, reason = "running", f"({owner.get('host')}, pid {owner.get('pid')})"
        elif unit.key in plan.problems:
            state, reason = "broken", plan.problems[unit.key]
        else:
            state, reason = plan.store.status(unit, plan.stages[unit.stage].PARTIAL)
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:8} {unit.label:48} {reason}")
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


def ensure_done(plan: Plan, units: list[Unit], force: list[Unit] = (), executor: Executor | None = None) -> None:
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
