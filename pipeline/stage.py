"""The stage contract: what a stage module (pipeline/stages) declares, and the context its `run` gets.

A stage is a module with:
- `NAME`, `VERSION` (bump when a code change alters what the stage writes), `PARTIAL` (the file whose presence means
  a resumable, unfinished unit, or None), `IMPLICIT` (built on demand when a later stage alone needs it);
- `units(plan) -> list[Unit]`: its units from the config and the units of earlier stages (params, inputs, resources);
- `run(plan, unit, out, ctx) -> dict(outputs=[...], scores={...})`: the work of one unit into the folder `out`, given
  the plan any process rebuilds from the config and this attempt's `RunContext`; it reads inputs only through
  `plan.load_input` (their own stage's loader);
- `load(plan, unit)`: what consumers get from a done unit;
- `estimate(plan, unit, rates) -> float`: the expected seconds of a unit, from the probe's rates (a time budget);
and optionally:
- `after(plan, units, **options)`: run in the main process once the stage's units are done;
- `check(plan) -> {unit key: problem}`: a done unit whose published copy outside the store no longer is what it
  wrote (an edited folds/<competition>.csv); `status` shows it as broken, a run refuses it;
- `narrow(plan, unit, missing) -> Unit`: the stage takes what is done (the report): when run on its own with inputs
  not done, its unit is replaced by this one, built on the done inputs (scheduler.narrow_to_done);
- `FEEDS_BACK = "<earlier stage>"`: units of that earlier stage may read this stage's units (train units of a
  pseudo-labelled model read its source's predict units); the plan then asks that stage through this one again
  until no unit is new, so those stages' `units` must return only units whose inputs are already in the plan;
- `REPORTED = False`: the report does not read its units (the probe: what a machine measured is no result).

A stage imports the core only, never another stage: stages meet through the artifacts their loaders read. The core
never imports a stage: it reaches them through `plan.stages`, the registry the plan was built with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .store import Unit


class BudgetStop(Exception):
    """A unit stopped at a safe point because the run's time budget ends before its next step; it stays partial."""


@dataclass
class RunContext:
    """What one attempt at a unit knows besides the plan: when it must stop, whether it redoes a done unit, where
    it logs, and how to learn that its claim was taken over."""

    deadline: float | None = None  # epoch seconds by which the unit must stop at a safe point (a time budget)
    force: bool = False  # redone by --force (the folds stage may then replace its published file)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("pipeline"))
    fence: Callable[[], None] | None = None  # raises LostClaim once the claim was taken over

    def check_fence(self) -> None:
        """At a safe point of a long unit (an epoch's end): stop, committing nothing, if its claim was taken over."""
        if self.fence is not None:
            self.fence()


@runtime_checkable
class Stage(Protocol):
    NAME: str
    VERSION: int
    PARTIAL: str | None
    IMPLICIT: bool

    def units(self, plan) -> list[Unit]: ...

    def run(self, plan, unit: Unit, out: Path, ctx: RunContext) -> dict: ...

    def load(self, plan, unit: Unit) -> Any: ...

    def estimate(self, plan, unit: Unit, rates: dict) -> float: ...


def check_stages(stages: dict) -> None:
    """Refuse a registry entry that is not a stage, naming what it lacks."""
    for name, stage in stages.items():
        lacks = [a for a in ("NAME", "VERSION", "PARTIAL", "IMPLICIT", "units", "run", "load", "estimate")
                 if not hasattr(stage, a)]  # fmt: skip
        if lacks or stage.NAME != name:
            raise TypeError(f"stage {name!r} ({stage!r}) lacks {lacks or ['NAME == its registry name']}")
