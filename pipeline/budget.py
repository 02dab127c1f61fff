"""The best submission a time budget buys: `./run.sh all --budget 10m` (or `runtime.budget`).

1. Measure: the `probe` unit times this machine on this competition's candidate models (cached: a second run on
   the same machine reuses it).
2. Plan and run, one model at a time, until the time is spent: walk the models of the config (a preset's ladder,
   best value per second first) and take the first whose units not yet done are expected to fit in the time left,
   less a reserve for blend, submit and report. A fine-tuned model that does not fit is shrunk to the most epochs
   that fit (at least MIN_EPOCHS; named `<model>-e<epochs>`, so its units' labels and keys say what it is) rather
   than passed over. Its units run (a unit whose expected time no longer fits is left out; a training stops at an
   epoch boundary when another epoch would pass the deadline, and stays resumable); then the estimates are
   calibrated on what the units of this run took (per stage and kind), and the next model is chosen.
3. Blend and submit the models that finished; the console, the manifest (`left_out`) and `budget.json` in the work
   dir say what was left out or shrunk, every unit's estimated against its actual seconds, and the seconds each
   model took.
"""

from __future__ import annotations

import dataclasses
import time

from .config import Config, ModelSpec, parse_duration
from .executor import chosen_class
from .kind_table import reads_features
from .logs import log
from .plan import Plan, build_plan
from .scheduler import ensure_done, prepare_outputs, run_stages, run_units
from .store import Unit, atomic_write_json, run_id

MIN_EPOCHS = 3  # a fine-tune shrunk to fit the budget trains at least this many epochs
MIN_SIZE, SIZE_STEP = 64, 16  # a model on features that does not fit reads features computed at a smaller size
CALIBRATION = (0.5, 3.0)  # estimates are scaled by what this run's units took against them, within these bounds
RESERVE = (0.03, 8.0, 30.0)  # kept for blend, submit and report: 3 % of the budget, at least 8 s, at most 30 s
BUDGET_FILE = "budget.json"  # in the work dir: the last budget run's account (the report shows it)
LAST_CALL = 8.0  # seconds before the deadline by which a model stopped short may still be finished, when its rest
# is expected to fit (blend, submit and report take 10-12 s: the run ends within the budget + 5 %)
MARGIN = 0.95  # plan for this share of the budget: estimates err, and the whole run must stay within +10 %


class BudgetError(RuntimeError):
    pass


def estimate(plan: Plan, unit: Unit, rates: dict) -> float:
    """Expected seconds of one unit from the probe's rates (images/s) and the competition's sizes: its stage's
    `estimate`."""
    return plan.stages[unit.stage].estimate(plan, unit, rates)


def _ancestors(plan: Plan, units: list[Unit]) -> set[str]:
    keys, stack = set(), [d for u in units for d in plan.deps[u.key]]
    while stack:
        k = stack.pop()
        if k not in keys:
            keys.add(k)
            stack += plan.deps[k]
    return keys


def _model_units(plan: Plan, name: str) -> list[Unit]:
    """A model's units and the units they read (image caches, folds), in the order they run."""
    own = [u for u in plan.units if u.meta.get("model") == name]
    shared = _ancestors(plan, own) - {u.key for u in own}
    return [u for u in plan.units if u.key in shared] + own


def model_targets(plan: Plan, name: str) -> list[Unit]:
    """A model's units and what they read, in registry order (what no model owns, image caches and folds, first)."""
    order = list(plan.stages)
    return sorted(_model_units(plan, name), key=lambda u: (u.meta.get("model") == name, order.index(u.stage)))


class Clock:
    """Estimates of units, calibrated on the units that ran in this run: per (stage, kind) the ratio of the seconds
    they took to the seconds expected (within CALIBRATION), else the ratio over every unit that ran."""

    def __init__(self, rates: dict, started: float, slots: int = 1):
        self.rates, self.started, self.rows = rates, started, []
        self.slots = slots  # units the executor runs at once
        self.plans: dict[str, Plan] = {}  # repr(spec) -> its one-model plan (a clock serves one run's base plan)

    def alone(self, base: Plan, spec: ModelSpec) -> Plan:
        """The plan of one model of the base config (its units keep their keys): what the planner costs and runs.
        Built once per spec in a run (a plan's units never change; whether they are done is read from the store)."""
        if repr(spec) not in self.plans:
            self.plans[repr(spec)] = build_plan(with_models(base.cfg, [spec]), base.stages)
        return self.plans[repr(spec)]

    def _kind(self, plan: Plan, u) -> str:
        return plan.cfg.model(u.meta["model"]).kind if "model" in u.meta else ""

    def ratio(self, group: tuple | None = None) -> float:
        rows = [r for r in self.rows if group is None or r["group"] == group]
        finished = {r["key"] for r in rows if not r.get("stopped")}  # a stopped attempt counts with the one that
        rows = [r for r in rows if not r.get("stopped") or r["key"] in finished]  # finished the unit, if any
        est, act = sum(r["estimated_s"] for r in rows), sum(r["actual_s"] for r in rows)
        if est < 2.0:  # too little seen to say
            return self.ratio() if group is not None else 1.0
        return min(max(act / est, CALIBRATION[0]), CALIBRATION[1])

    def seconds(self, plan: Plan, u) -> float:
        return estimate(plan, u, self.rates) * self.ratio((u.stage, self._kind(plan, u)))

    def cost(self, plan: Plan, name: str) -> float:
        """Expected wall seconds of a model's units (and the image caches it reads) not done yet: each unit starts on
        the first free one of the executor's slots once what it reads is done (list scheduling, in the order the
        units run); with one slot, the sum of their seconds."""
        todo = [u for u in model_targets(plan, name) if not plan.store.is_done(u)]
        free, ends = [0.0] * self.slots, {}
        for u in todo:
            slot = min(range(self.slots), key=free.__getitem__)
            start = max([free[slot]] + [ends[d] for d in plan.deps[u.key] if d in ends])
            ends[u.key] = free[slot] = start + self.seconds(plan, u)
        return max(ends.values(), default=0.0)

    def record(self, plan: Plan, units: list, model: str, stopped: dict[str, float] | None = None) -> None:
        """The units of this model that ran in this run (not reused), with what was expected of them; `stopped`: the
        seconds of attempts the deadline stopped, each a row of its own with no estimate (one that a later attempt
        finished counts with that attempt in calibration and in the submitted share; one never finished, in neither)."""
        for key, secs in (stopped or {}).items():
            self.rows.append(self._row(plan, plan.by_key[key], model, 0.0, round(secs, 3)) | {"stopped": True})
        seen = {r["key"] for r in self.rows if not r.get("stopped")}
        for u in units:
            if u.key in seen:  # an image cache, the folds or shared features, counted with the model that ran them
                continue
            m = plan.store.read_marker(u) if plan.store.is_done(u) else None
            if m and m.get("started_at", 0) >= self.started:
                self.rows.append(self._row(plan, u, model, round(estimate(plan, u, self.rates), 2), m["seconds"]))

    def _row(self, plan: Plan, u: Unit, model: str, estimated: float, actual: float) -> dict:
        kind = self._kind(plan, u)
        return {"unit": u.label, "key": u.key, "model": model, "group": (u.stage, kind), "stage": u.stage,
                "kind": kind, "estimated_s": estimated, "actual_s": actual}  # fmt: skip


def shrunk(spec: ModelSpec, epochs: int) -> ModelSpec:
    """A fine-tune with fewer epochs, named for it."""
    return dataclasses.replace(spec, name=f"{spec.name}-e{epochs}", epochs=epochs,
                               frozen_epochs=min(spec.frozen_epochs, epochs - 1))  # fmt: skip


def resized(spec: ModelSpec, size: int) -> ModelSpec:
    """A model on cached features computed at a smaller input size, named for it."""
    return dataclasses.replace(spec, name=f"{spec.name}-s{size}", img_size=size)


def fit(plan: Plan, spec: ModelSpec, clock: Clock, left: float, taken=()) -> tuple[ModelSpec, float] | None:
    """(spec, its expected seconds) when its units not done fit in `left`. One that does not is adapted: a variant an
    earlier run started (largest first: a rerun resumes or reuses it rather than starting another), else a fine-tune
    shrunk to the most epochs that fit (at least MIN_EPOCHS), a model on features computed at the largest size that
    fits (a multiple of SIZE_STEP, at least MIN_SIZE); else None. A variant that is a model already `taken` under
    another name (lite2-mid160 at 128 px is lite2-mid128) is passed over: it would only be a second copy of it."""
    cost = clock.cost(plan, spec.name)
    if cost <= left:
        return spec, cost
    for small in _started_variants(plan, spec):
        c = clock.cost(clock.alone(plan, small), small.name)
        if c <= left and not _copy(small, taken):
            return small, c
    if spec.kind == "finetune" and spec.epochs > MIN_EPOCHS:
        got = _fewer_epochs(plan, spec, clock, left, cost)
        return None if got is None or _copy(got[0], taken) else got
    if reads_features(spec.kind):
        for size in range(spec.img_size - SIZE_STEP, MIN_SIZE - 1, -SIZE_STEP):
            small = resized(spec, size)
            c = clock.cost(clock.alone(plan, small), small.name)
            if c <= left and not _copy(small, taken):
                return small, c
    return None


def _copy(spec: ModelSpec, taken) -> bool:
    """Whether the spec is one of `taken` but for its name."""
    return any(dataclasses.replace(spec, name=t.name) == t for t in taken)


def _fewer_epochs(plan: Plan, spec: ModelSpec, clock: Clock, left: float, cost: float):
    """The fine-tune with the most epochs (at least MIN_EPOCHS) expected to fit: its cost is linear in epochs."""
    one = shrunk(spec, 1)
    c1 = clock.cost(clock.alone(plan, one), one.name)
    per_epoch = (cost - c1) / (spec.epochs - 1)
    epochs = min(spec.epochs - 1, int((left - c1) / per_epoch) + 1) if per_epoch > 0 else 0
    if epochs < MIN_EPOCHS:
        return None
    return shrunk(spec, epochs), c1 + per_epoch * (epochs - 1)


def _started_variants(plan: Plan, spec: ModelSpec) -> list[ModelSpec]:
    """The adapted variants of a model whose training an earlier run started (a fine-tune's fewer epochs, a features
    model's smaller size), largest first."""
    tag, full, least, make = ("e", spec.epochs, MIN_EPOCHS, shrunk) if spec.kind == "finetune" else \
        ("s", spec.img_size, MIN_SIZE, resized)  # fmt: skip
    found = set()
    for d in (plan.store.root / "train").glob(f"{spec.name}-{tag}*"):
        tail = d.name[len(spec.name) + 2 :]
        if tail.isdigit() and least <= int(tail) < full:
            found.add(int(tail))
    return [make(spec, n) for n in sorted(found, reverse=True)]


def _part_done(plan: Plan, spec: ModelSpec, clock: Clock) -> bool:
    """Some of the model's own units are done and some not, or so of an adapted variant of it an earlier run started
    (a finished one is reused where the ladder takes it: nothing of it is missing)."""

    def part(p: Plan, name: str) -> bool:
        done = [p.store.is_done(u) for u in p.units if u.meta.get("model") == name]
        return any(done) and not all(done)

    return part(plan, spec.name) or any(part(clock.alone(plan, v), v.name) for v in _started_variants(plan, spec))


def with_models(cfg: Config, specs: list[ModelSpec], left_out: list[str] | None = None) -> Config:
    """The config of a recipe: these models only (their units keep their keys), no probe (it has run)."""
    out = dataclasses.replace(cfg, models=list(specs))
    out.submit = dataclasses.replace(cfg.submit, left_out=sorted(left_out or []))
    out.runtime = dataclasses.replace(cfg.runtime, budget=None)
    return out


def run_model(base: Plan, spec: ModelSpec, clock: Clock, deadline: float,
              last_call: float | None = None) -> tuple[bool, set[str]]:  # fmt: skip
    """Run one model's units (what it reads first) by the deadline; (every unit of it done, the stages that ran).
    A model the deadline stopped short whose rest is expected to end by `last_call` (later: into the reserve) is
    finished: its last fold or its predictions cost little against the trainings they would otherwise throw away."""
    plan = clock.alone(base, spec)
    targets = model_targets(plan, spec.name)
    estimates = {u.key: clock.seconds(plan, u) for u in targets}
    stopped = run_units(plan, targets, deadline=deadline, estimates=estimates)
    rest = clock.cost(plan, spec.name) if last_call else 0.0
    if 0 < rest <= last_call - time.time():
        log("budget", f"finishing {spec.name} into the reserve: {rest:.0f}s expected")
        for key, secs in run_units(plan, targets, deadline=last_call, estimates=estimates).items():
            stopped[key] = stopped.get(key, 0.0) + secs
    clock.record(plan, targets, spec.name, stopped)
    own = [u for u in plan.units if u.meta.get("model") == spec.name]
    return all(plan.store.is_done(u) for u in own), {u.stage for u in targets}


def run_budget(plan: Plan, started: float, **options) -> None:
    """`all --budget`: measure, then take and run the model that fits best, one after another, until the time is
    spent; submit those that finished."""
    cfg = plan.cfg
    total = parse_duration(cfg.runtime.budget)
    deadline = started + total
    reserve = min(max(RESERVE[0] * total, RESERVE[1]), RESERVE[2])
    prepare_outputs(plan)
    ensure_done(plan, plan.all("probe") + plan.all("folds"))
    clock = Clock(plan.load(plan.one("probe")), started, chosen_class(plan).slots(plan))
    # a model an earlier run left part-done goes first: its missing folds before anything new (stable otherwise)
    candidates = sorted(cfg.models, key=lambda s: not _part_done(plan, s, clock))
    taken, complete, ran = [], [], set()
    while candidates:
        left = MARGIN * (deadline - time.time()) - reserve
        picks = ((spec, fit(plan, spec, clock, left, taken)) for spec in candidates)
        spec, got = next(((s, g) for s, g in picks if g is not None), (None, None))
        if got is None:
            if not taken:
                first = cfg.models[0].name
                need = clock.cost(plan, first) + reserve
                raise BudgetError(f"budget {cfg.runtime.budget}: even the first model ({first}) is expected to "
                                  f"need about {need:.0f}s here; give more time")  # fmt: skip
            break
        pick, cost = got
        candidates.remove(spec)
        taken.append(pick)
        shrink = "" if pick is spec else f" (shrunk from {spec.epochs} epochs)" if pick.epochs != spec.epochs else \
            f" (features at {pick.img_size} px instead of {spec.img_size})"  # fmt: skip
        log("budget", f"next: {pick.name}{shrink}, expected {cost:.0f}s of the {max(left, 0):.0f}s left")
        finished, stages = run_model(plan, pick, clock, deadline - reserve, deadline - LAST_CALL)
        ran |= stages
        if finished:
            complete.append(pick)
    if not complete:
        raise BudgetError(f"budget {cfg.runtime.budget}: no model finished in time; run again with more time "
                          f"(finished units are kept)")  # fmt: skip
    left_out = [s.name for s in taken if s not in complete] + [s.name for s in candidates]
    if left_out:
        log("budget", f"submitting {[s.name for s in complete]}; left out: {left_out}")
    plan2 = build_plan(with_models(cfg, complete, left_out), plan.stages)
    # what ends in the submission: the submit units and all they read (keys: a shared features unit's label names
    # whichever model came first); blend and submit count once they have run, the report does not
    ends_in = plan2.all("submit")
    submitted = _ancestors(plan2, ends_in) | {u.key for u in ends_in}
    rest = [s for s, m in plan.stages.items() if not m.IMPLICIT and s not in ran and plan2.all(s)]
    upto = rest.index("submit") + 1 if "submit" in rest else len(rest)
    run_stages(plan2, rest[:upto], **options)  # blend and submit
    clock.record(plan2, [u for u in plan2.units if u.key in submitted and "model" not in u.meta], "")
    account = _account(cfg, clock, started, total, taken, complete, candidates, submitted)
    atomic_write_json(plan.store.root / BUDGET_FILE, account)  # before the report, which shows it
    if rest[upto:]:
        run_stages(plan2, rest[upto:], **options)
    account.update(spent_s=round(time.time() - started, 1), final=True)
    atomic_write_json(plan.store.root / BUDGET_FILE, account)
    for line in where_it_went(account):
        log("budget", line)


def _account(cfg, clock: Clock, started: float, total: float, taken, complete, candidates, submitted: set) -> dict:
    """budget.json: what ran, what it was expected to take, where the time went; `run` and `started_at` tell the
    report whether its units are this run's. Written after blend and submit, before the report (spent_s: so far, final:
    false), and again at the end."""
    names = {s.name for s in complete}
    adapted = [s for s in taken if s.name not in {m.name for m in cfg.models}]
    per_model = {s.name: round(sum(r["actual_s"] for r in clock.rows if r["model"] == s.name), 1) for s in taken}
    units = [
        {**{k: v for k, v in r.items() if k not in ("group", "key")}, "submitted": r["key"] in submitted}
        for r in clock.rows
    ]
    return {
        "run": run_id(), "started_at": round(started, 3), "budget_s": total,
        "spent_s": round(time.time() - started, 1), "final": False,
        "recipe": [s.name for s in taken], "complete": [s.name for s in complete],
        "left_out": [s.name for s in taken if s.name not in names], "not_this_time": [s.name for s in candidates],
        "shrunk": {s.name: s.epochs for s in adapted if s.kind == "finetune"},
        "resized": {s.name: s.img_size for s in adapted if s.kind != "finetune"},
        "calibration": {f"{k[0]}/{k[1]}" if k[1] else k[0]: round(clock.ratio(k), 2)
                        for k in sorted({r["group"] for r in clock.rows})},
        "seconds_per_model": per_model, "units": units,
        "submitted_s": round(sum(u["actual_s"] for u in units if u["submitted"]), 1),
    }  # fmt: skip


def where_it_went(account: dict) -> list[str]:
    """The console's last lines of a budget run: the time spent, the seconds and share of the budget each model's
    units took (the image caches and folds count with the model that ran them first), and the share that went to
    units that end in the submission."""
    total, units = account["budget_s"], account["units"]
    est, act = sum(u["estimated_s"] for u in units), sum(u["actual_s"] for u in units)
    kept = sum(u["actual_s"] for u in units if u["submitted"])
    used = ", ".join(f"{n} {s:.0f}s ({100 * s / total:.0f} %" + ("" if n in account["complete"] else ", not submitted")
                     + ")" for n, s in account["seconds_per_model"].items())  # fmt: skip
    cut = sum(u["actual_s"] for u in units if u.get("stopped"))
    cut = f" ({cut:.0f}s of it in attempts the deadline stopped)" if cut else ""
    return [
        f"spent {account['spent_s']:.0f}s of {total:.0f}s; the units that ran took {act:.0f}s{cut}, "
        f"estimated {est:.0f}s",
        f"where it went: {used}",
        f"units that end in the submission took {kept:.0f}s: {100 * kept / total:.0f} % of the budget, "
        f"{100 * kept / act if act else 0:.0f} % of the units' time",
    ]
