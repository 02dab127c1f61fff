"""The unit graph of a config, assembled from a stage registry; it runs nothing.

`build_plan(cfg, stages)` takes the registry (pipeline.stages.STAGES, which `pipeline.app.build_plan` passes); the
plan keeps it as `plan.stages`, the one way the core reaches a stage. Each stage (in registry order) adds its units
given the units of the stages before it; a stage that declares `FEEDS_BACK = "<earlier stage>"` (predict: a
pseudo-labelled model's train units read another model's predict units) is followed by rounds of that stage through
itself again until no unit is new (the config refuses cycles, so the rounds end). A unit's key changes exactly when the
config slice that changes its result, an input's key, or the stage's version changes. A unit's dependencies are the
inputs that name other units of the plan; the scheduler runs a unit once they are done. The same config gives the same
plan in any process, so a worker anywhere can run a unit from (config, key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import Config
from .data import Competition, fingerprint, load_competition
from .models import preprocessing
from .stage import Stage, check_stages
from .store import Store, Unit, stable_hash

FULL = -1  # the fold index of a full-data (refit) unit: trained on every train row, no held-out rows


class MissingInput(RuntimeError):
    """An upstream unit is not done; the message says which stage to run."""


@dataclass
class Plan:
    cfg: Config
    comp: Competition
    store: Store
    tables: dict[str, str]  # split -> key of its table (train: ids, targets, groups; test: ids)
    stages: Mapping[str, Stage] = field(default_factory=dict)  # the registry the plan was built with, in order
    units: list[Unit] = field(default_factory=list)  # every unit, dependencies first
    by_key: dict[str, Unit] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)  # unit key -> keys of the units it reads
    problems: dict[str, str] = field(default_factory=dict)  # unit key -> why a done unit no longer matches a file
    reads: dict[str, str] | None = None  # input unit key -> attempt read, while a unit runs (its marker records them)
    _fingerprints: dict[str, str] = field(default_factory=dict)

    def fingerprint(self, split: str) -> str:
        """Content hash of a split's pixels."""
        if split not in self._fingerprints:
            self._fingerprints[split] = fingerprint(self.comp, split, self.store.root / "file-hashes.json")
        return self._fingerprints[split]

    def add(self, unit: Unit) -> Unit:
        if unit.key in self.by_key:  # the same unit asked for twice (e.g. one image cache for two models)
            return self.by_key[unit.key]
        self.units.append(unit)
        self.by_key[unit.key] = unit
        self.deps[unit.key] = [k for k in unit.inputs.values() if k in self.by_key]
        return unit

    def replace(self, old: Unit, new: Unit) -> Unit:
        """Put `new` in the place of `old`, a unit nothing reads (a report rebuilt on what is done)."""
        if any(old.key in deps for deps in self.deps.values()):
            raise ValueError(f"plan: {old.label} is read by other units; it cannot be replaced")
        self.units[self.units.index(old)] = new
        del self.by_key[old.key], self.deps[old.key]
        self.by_key[new.key] = new
        self.deps[new.key] = [k for k in new.inputs.values() if k in self.by_key]
        return new

    def state(self, unit: Unit) -> tuple[str, str]:
        """(done | partial | stale | missing, why), as `./run.sh status` says it."""
        return self.store.status(unit, self.stages[unit.stage].PARTIAL)

    def all(self, stage: str, **meta) -> list[Unit]:
        """The units of a stage whose meta has these values, in plan order."""
        return [u for u in self.units if u.stage == stage and all(u.meta.get(k) == v for k, v in meta.items())]

    def one(self, stage: str, **meta) -> Unit:
        found = self.all(stage, **meta)
        if len(found) != 1:
            raise KeyError(f"plan: {len(found)} units of stage {stage} with {meta}, expected one")
        return found[0]

    def images(self, split: str, spec) -> Unit:
        """The decoded-image cache unit a model reads for a split."""
        return self.one("images", **image_meta(split, spec))

    def input(self, unit: Unit, name: str) -> Unit:
        """The unit that `unit` reads under this input name."""
        return self.by_key[unit.inputs[name]]

    def load(self, unit: Unit):
        """What a done unit wrote, read by its own stage's loader (consumers never spell file names)."""
        marker = require_done(self.store, unit)
        self.store.verify(unit)
        if self.reads is not None and marker.get("attempt"):
            self.reads.setdefault(unit.key, marker["attempt"])
        return self.stages[unit.stage].load(self, unit)

    def load_input(self, unit: Unit, name: str):
        return self.load(self.input(unit, name))

    @property
    def digest(self) -> str:
        """One hash of every unit key: two processes with the same digest see the same inputs."""
        return stable_hash([u.key for u in self.units])


def image_meta(split: str, spec) -> dict:
    """What identifies an image cache: split, side (img_size / crop_pct) and interpolation, from timm's config."""
    prep = preprocessing(spec)
    return {"split": split, "size": prep["cache_size"], "interpolation": prep["interpolation"]}


def require_done(store: Store, unit: Unit) -> dict:
    if not store.is_done(unit):
        raise MissingInput(f"{unit.label} is not done: run `./run.sh {unit.stage}` (or `./run.sh all`) first")
    return store.marker(unit)


def table_hashes(comp: Competition) -> dict[str, str]:
    """Separate keys for the train table (ids, targets, groups, and the class order when it is not the sorted one:
    class_order, positive_class) and the test ids, so that a reordered
    sample_submission redoes test predictions only, and new train labels never reuse a test cache."""
    cols = ["id", "target"] + (["group"] if "group" in comp.train else [])
    rows = comp.train[cols].to_numpy().tolist()
    if comp.labels is not None and not comp.labels.natural:  # the class order decides y: keyed when not the sorted one
        rows = {"rows": rows, "classes": comp.classes}
    return {"train": stable_hash(rows), "test": stable_hash(comp.test_ids.tolist())}


def add_units(plan: Plan, stage: Stage) -> int:
    """Add a stage's units to the plan; how many were new (a stage asked again returns those it made before too)."""
    before = len(plan.units)
    for unit in stage.units(plan):
        plan.add(unit)
    return len(plan.units) - before


def build_plan(cfg: Config, stages: Mapping[str, Stage]) -> Plan:
    """The plan of a config over a stage registry (name -> stage module, in dependency order)."""
    check_stages(stages)
    comp = load_competition(cfg)
    plan = Plan(cfg, comp, Store(cfg.work), table_hashes(comp), stages)
    names = list(stages)
    for name, stage in stages.items():
        add_units(plan, stage)
        back = getattr(stage, "FEEDS_BACK", None)
        if back:  # its units feed an earlier stage's (predict -> pseudo-labelled train): rounds until nothing is new
            loop = [stages[n] for n in names[names.index(back) : names.index(name) + 1]]
            while sum(add_units(plan, s) for s in loop):
                pass
    for stage in stages.values():
        if hasattr(stage, "check"):
            plan.problems.update(stage.check(plan))
    return plan
