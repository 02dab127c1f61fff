"""The best submission a time budget buys: `./run.sh all --budget 10m` (or `runtime.budget`).

1. Measure: the `probe` unit times this machine on this competition's candidate models (cached: a second run on
   the same machine reuses it).
2. Plan: the models of the config (a preset's ladder, best value per second first) are taken in order when the
   expected seconds of their units not yet done fit the budget left, less a reserve for blend, submit and report.
   Models are only ever added or left out, never changed, which lets a later run with more time reuse every unit.
3. Run the chosen models' units most valuable first (one model complete before the next starts, so that whatever
   the clock does there is a blendable set). A unit whose expected time no longer fits is left out; a training
   stops at an epoch boundary when another epoch would pass the deadline (it stays resumable).
4. Blend and submit the models that finished; the console, the manifest (`left_out`) and `budget.json` in the work
   dir say what was left out, and every unit's estimated against its actual seconds.
"""

from __future__ import annotations

import dataclasses
import time

from . import kinds
from .config import Config, parse_duration
from .executor import log
from .plan import Plan, build_plan
from .store import atomic_write_json
from .tta import views_for

RESERVE = (0.05, 5.0, 30.0)  # kept for blend, submit and report: 5 % of the budget, at least 5 s, at most 30 s
MARGIN = 0.95  # plan for this share of the budget: estimates err, and the whole run must stay within +10 %


class BudgetError(RuntimeError):
    pass


def estimate(plan: Plan, unit, rates: dict) -> float:
    """Expected seconds of one unit from the probe's rates (images/s) and the competition's sizes."""
    from .stages.probe import candidate

    comp = plan.comp
    n_train, n_test = len(comp.train), len(comp.test_ids)
    if unit.stage == "images":
        return 0.5 + rates["decode_s"] * len(comp.sources(unit.meta["split"]))
    if unit.stage in ("folds", "probe"):
        return 0.2
    if unit.stage in ("blend", "submit", "report"):
        return 1.0
    spec = plan.cfg.model(unit.meta["model"])
    fwd, setup = rates["eval"][candidate(spec)], rates["setup_s"][candidate(spec)]
    views = len(views_for(plan.cfg.predict.views))
    n_val = 0 if unit.meta.get("fold", 0) < 0 else n_train / plan.cfg.folds.n_folds
    if unit.stage == "features":
        return setup + len(comp.sources(unit.meta["split"])) * views / fwd
    if unit.stage in ("train", "predict"):
        sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "views": views, "setup": setup, "fwd": fwd,
                 "train_rate": rates["train"].get(candidate(spec, True))}  # fmt: skip
        return kinds.get(spec.kind).estimate(unit.stage, spec, sizes)
    return 1.0


def _model_units(plan: Plan, name: str) -> list:
    """A model's units and the image caches it reads, in the order they run."""
    own = [u for u in plan.units if u.meta.get("model") == name]
    shared = {k for u in own for k in plan.deps[u.key] if plan.by_key[k].stage == "images"}
    return [u for u in plan.units if u.key in shared] + own


def choose(plan: Plan, rates: dict, seconds_left: float) -> tuple[list[str], dict[str, float]]:
    """The config's models in order, each taken when its not-done units are expected to fit in what is left (a model
    that does not fit is passed over, and a cheaper one after it may still be taken); and each model's expected
    seconds (0 for what is done). More time only adds models: what an earlier run finished costs nothing."""
    seen: set[str] = set()
    chosen, costs, total = [], {}, 0.0
    for spec in plan.cfg.models:
        cost = 0.0
        for u in _model_units(plan, spec.name):
            if u.key not in seen and not plan.store.is_done(u):
                cost += estimate(plan, u, rates)
            seen.add(u.key)
        costs[spec.name] = cost
        if total + cost <= seconds_left:
            chosen.append(spec.name)
            total += cost
    return chosen, costs


def with_models(cfg: Config, names: list[str], left_out: list[str] | None = None) -> Config:
    """The config of a recipe: these models only (their units keep their keys), no probe (it has run)."""
    out = dataclasses.replace(cfg, models=[m for m in cfg.models if m.name in names])
    out.submit = dataclasses.replace(cfg.submit, left_out=sorted(left_out or []))
    out.runtime = dataclasses.replace(cfg.runtime, budget=None)
    return out


def run_budget(cfg: Config, started: float, **options) -> None:
    from .scheduler import ensure_done, prepare_outputs, run_stages, run_units

    total = parse_duration(cfg.runtime.budget)
    deadline = started + total
    reserve = min(max(RESERVE[0] * total, RESERVE[1]), RESERVE[2])
    plan = build_plan(cfg)
    prepare_outputs(plan)
    ensure_done(plan, plan.all("probe") + plan.all("folds"))
    rates = plan.load(plan.one("probe"))
    left = MARGIN * (deadline - time.time()) - reserve
    chosen, costs = choose(plan, rates, left)
    if not chosen:
        first = cfg.models[0].name
        raise BudgetError(f"budget {cfg.runtime.budget}: even the first model ({first}) is expected to need about "
                          f"{costs[first] + reserve:.0f}s here; give more time")  # fmt: skip
    later = [m.name for m in cfg.models if m.name not in chosen]
    log("budget", f"{total:.0f}s: recipe {chosen} (expected {sum(costs[c] for c in chosen):.0f}s of work, "
                  f"{left:.0f}s available)" + (f"; not this time: {later}" if later else ""))  # fmt: skip
    plan1 = build_plan(with_models(cfg, chosen))
    rank = {name: i for i, name in enumerate(chosen)}
    order = ["images", "folds", "features", "train", "predict"]
    targets = sorted((u for u in plan1.units if u.stage in order),
                     key=lambda u: (rank.get(u.meta.get("model"), -1), order.index(u.stage)))  # fmt: skip
    estimates = {u.key: estimate(plan1, u, rates) for u in targets}
    run_units(plan1, targets, deadline=deadline - reserve, estimates=estimates)
    complete = [n for n in chosen if all(plan1.store.is_done(u) for u in plan1.all("predict", model=n))]
    if not complete:
        raise BudgetError(f"budget {cfg.runtime.budget}: no model finished in time; run again with more time "
                          f"(finished units are kept)")  # fmt: skip
    left_out = [n for n in chosen if n not in complete] + later
    if left_out:
        log("budget", f"submitting {complete}; left out: {left_out}")
    plan2 = build_plan(with_models(cfg, complete, left_out))
    run_stages(plan2, [s for s in ("blend", "submit", "report") if plan2.all(s)], **options)
    report = []
    for u in targets:
        if plan1.store.is_done(u):
            m = plan1.store.marker(u)
            if m.get("started_at", 0) >= started:  # ran in this run (not reused)
                report.append({"unit": u.label, "estimated_s": round(estimates[u.key], 2), "actual_s": m["seconds"]})
    spent = time.time() - started
    atomic_write_json(plan.store.root / "budget.json", {
        "budget_s": total, "spent_s": round(spent, 1), "recipe": chosen, "complete": complete, "left_out": left_out,
        "not_this_time": later, "units": report,
    })  # fmt: skip
    est, act = sum(r["estimated_s"] for r in report), sum(r["actual_s"] for r in report)
    log("budget", f"spent {spent:.0f}s of {total:.0f}s; the units that ran took {act:.0f}s, estimated {est:.0f}s")
