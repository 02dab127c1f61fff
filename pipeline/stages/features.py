"""features: a frozen pretrained backbone's pooled activations (pre-logits, or the pooled feature levels the model
spec names), computed once per TTA view for every image of a split and stored on disk, for the models whose kind
fits on features (`kind: head`, a softmax; `kind: knn`, a nearest-neighbour vote: seconds each). One unit per model
and split: a new test set recomputes the test features only, and never refits them (their keys read the train
features alone).

Output `features.npz`: `views` (V,) and `feats` (V, n, D) float32, rows in the split's table order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import kinds
from ..data import ImageDataset
from ..models import check_levels, preprocessing, weights_id
from ..rates import model_rates
from ..runtime import make_loader, prepare_model, run_views
from ..stage import RunContext
from ..store import Unit, atomic_savez
from ..tta import views_for

NAME = "features"
VERSION = 2  # 2: one unit per split
PARTIAL = None
IMPLICIT = False


def units(plan) -> list[Unit]:
    """One unit per distinct features and split; meta "model" the first model that reads it, "models" all of them."""
    made: dict[str, Unit] = {}
    views = views_for(plan.cfg.predict.views)
    for spec in plan.cfg.models:
        if not kinds.reads_features(spec.kind):
            continue
        params = {"backbone": spec.backbone, "weights": weights_id(spec.weights, spec.backbone),
                  "img_size": spec.img_size, "prep": preprocessing(spec)}  # fmt: skip
        if spec.feature_levels is not None:  # unset: the key it had before levels existed
            params["levels"] = spec.feature_levels
        if spec.feature_grid != 1:
            params["grid"] = spec.feature_grid
        for split in ("train", "test"):
            inputs = {"images": plan.images(split, spec).key}
            unit = Unit(NAME, f"{spec.name}/{split}", {**params, "views": views, "split": split}, inputs, VERSION,
                        meta={"model": spec.name, "split": split, "models": [spec.name]}, gpu=True)  # fmt: skip
            if unit.key in made:  # one backbone's features for several models (a head and a knn): computed once
                made[unit.key].meta["models"].append(spec.name)
            else:
                made[unit.key] = unit
    return list(made.values())


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    cfg, rt = plan.cfg, plan.cfg.runtime
    spec, split = cfg.model(unit.meta["model"]), unit.meta["split"]
    views = unit.params["views"]
    # seeded: the new head (unused here) and, with weights none, the backbone are a function of the key
    device, model, norm = prepare_model(spec, rt, plan.comp.n_classes, seed=0)
    model.eval()
    check_levels(model, spec.feature_levels, f"model {spec.name} ({spec.backbone})")
    cache = plan.load_input(unit, "images")
    n = len(plan.comp.sources(split))
    loader = make_loader(ImageDataset(cache, np.arange(n)), cfg.predict.batch_size, rt.num_workers, device)
    rows, feats = run_views(model, loader, views, spec.img_size, norm, rt.amp, features=True,
                            levels=spec.feature_levels, grid=spec.feature_grid, desc=unit.name,
                            show=rt.progress)  # fmt: skip
    placed = np.empty_like(feats)
    placed[:, rows] = feats  # rows travel with the batches: place each by its row index
    atomic_savez(out / "features.npz", views=np.array(views), feats=placed.astype(np.float32))
    return {"outputs": ["features.npz"], "scores": {"dim": int(placed.shape[-1])}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    r = model_rates(plan, unit, rates)
    return r.setup + len(plan.comp.sources(unit.meta["split"])) * r.views / r.fwd


def load(plan, unit: Unit) -> dict:
    """{"views": [names], "feats": (V, n, D) float32} of the unit's split."""
    d = np.load(plan.store.dir(unit) / "features.npz")
    return {"views": [str(v) for v in d["views"]], "feats": d["feats"]}
