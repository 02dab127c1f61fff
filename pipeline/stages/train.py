"""train: one unit per model x seed x fold, trained by the model's kind (pipeline/kinds): a fine-tuned network
(finetune), or a model fitted on cached frozen-backbone features (head, knn). Each kind declares its key slice, so
a change that cannot alter a unit's result (a fine-tuning field such as `lr` for a head) does not redo it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import kinds
from ..kinds.finetune import PARTIAL  # noqa: F401 - the stage's resumable file: a fine-tuning's state per epoch
from ..plan import FULL
from ..rates import model_rates
from ..stage import RunContext
from ..store import Unit

NAME = "train"
VERSION = 3
IMPLICIT = False


def units(plan) -> list[Unit]:
    """One unit per model x seed x fold (and x full-data with refit)."""
    cfg, folds = plan.cfg, plan.one("folds")
    out = []
    for spec in cfg.models:
        kind = kinds.get(spec.kind)
        inputs = {"folds": folds.key, **kind.train_inputs(plan, spec)}
        params = kind.key(plan, spec)
        for seed in spec.seeds:
            for fold in [*range(cfg.folds.n_folds), *([FULL] if spec.refit else [])]:
                name = f"{spec.name}/seed{seed}/" + ("full" if fold == FULL else f"fold{fold}")
                meta = {"model": spec.name, "seed": seed, "fold": fold}
                unit = Unit(NAME, name, {**params, "seed": seed, "fold": fold}, inputs, VERSION, meta=meta)
                unit.gpu = kind.gpu
                out.append(unit)
    return out


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    return kinds.get(plan.cfg.model(unit.meta["model"]).kind).train(plan, unit, out, ctx)


def estimate(plan, unit: Unit, rates: dict) -> float:
    r = model_rates(plan, unit, rates)
    return kinds.get(r.spec.kind).estimate(NAME, r.spec, r.sizes())


def load(plan, unit: Unit) -> dict:
    """{"kind": its name, "metrics": metrics.csv as a frame, and what the kind stored: "state_dict" (finetune),
    "head" (head) or "knn" (knn)}."""
    kind = kinds.get(plan.cfg.model(unit.meta["model"]).kind)
    d = plan.store.dir(unit)
    return {"kind": kind.name, **kind.load(d), "metrics": pd.read_csv(d / "metrics.csv")}
