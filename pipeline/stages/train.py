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
        if spec.pseudo_from and not plan.all("predict", model=spec.pseudo_from):
            continue  # its source is not predicted yet: a later round of the plan adds it (predict.FEEDS_BACK)
        kind = kinds.get(spec.kind)
        inputs = {"folds": folds.key, **kind.train_inputs(plan, spec)}
        params = kind.key(plan, spec)
        for seed in spec.seeds:
            for fold in [*range(cfg.folds.n_folds), *([FULL] if spec.refit else [])]:
                name = f"{spec.name}/seed{seed}/" + ("full" if fold == FULL else f"fold{fold}")
                meta = {"model": spec.name, "seed": seed, "fold": fold}
                fold_inputs = {**inputs, **pseudo_inputs(plan, spec, fold)}
                unit = Unit(NAME, name, {**params, "seed": seed, "fold": fold}, fold_inputs, VERSION, meta=meta)
                unit.gpu = kind.gpu
                out.append(unit)
    return out


def pseudo_inputs(plan, spec, fold: int) -> dict[str, str]:
    """The source's predict units whose test probabilities label a pseudo-labelled unit: {"pseudo<i>": key}.

    The honesty rule: fold k reads the source's fold-k units only (every seed), trained without fold k's held-out
    rows. A blend or a mean over all folds saw fold k's held-out rows: through test images like them, their labels
    would come back into fold k's training and its OOF score would lie. A full-data unit has no held-out rows: it
    reads the source's full-data units, or all its folds' units when the source has no refit."""
    if not spec.pseudo_from:
        return {}
    src = spec.pseudo_from
    own = {"model": src, "member": src}  # the source itself, not its snapshot members
    if fold == FULL:
        preds = plan.all("predict", **own, fold=FULL) or plan.all("predict", **own)
    else:
        preds = plan.all("predict", **own, fold=fold)
    if not preds:
        raise ValueError(f"train: model {spec.name!r} has no predict unit of {src!r} for fold {fold}")
    return {f"pseudo{i}": u.key for i, u in enumerate(preds)}


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
