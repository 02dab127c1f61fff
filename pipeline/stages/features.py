"""features: a frozen pretrained backbone's pooled activations (pre-logits, or the pooled feature levels the model
spec names), computed once per TTA view for every image of a split and stored on disk, for the models whose kind
fits on features (`kind: head`, a softmax; `kind: knn`, a nearest-neighbour vote: seconds each). One unit per
backbone, weights, size, preprocessing, levels and split, whatever the models that read it: one forward pass is
pooled over the whole image and over a 2 x 2 grid (and the grid a model asks for, when another), so a globally pooled
head and a grid head on the same backbone never compute it twice. A new test set recomputes the test features only,
and never refits them (their keys read the train features alone).

A model with `feature_contrast` also reads a second unit: the same backbone's features of its views flipped or
rotated (`center_vflip`, ...), which kinds/base.py appends to the plain ones as differences.

Output `features.npz`: `views` (V,), `grids` (G,) and per grid g `feats_g<g>` (V, n, D_g) float32, rows in the
split's table order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import kinds
from ..data import ImageDataset
from ..infer import contrast_views, embed
from ..models import check_levels, preprocessing, weights_id
from ..rates import model_rates
from ..runtime import make_loader, prepare_model, run_views
from ..stage import RunContext
from ..store import Unit, atomic_savez, stable_hash
from ..tta import views_for

NAME = "features"
VERSION = 3  # 2: one unit per split; 3: every grid of one forward pass in one unit
GRIDS = (1, 2)  # pooled from every forward pass: the grids the ladder's heads read
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
        params["grids"] = grids_for(spec)
        # named by what it holds, never by a model: a plan of any subset of the models (the budget runs one model at a
        # time) names it alike, so it is found done in the same folder
        levels = "-L" + ".".join(map(str, spec.feature_levels)) if spec.feature_levels is not None else ""
        name = f"{spec.backbone}@{spec.img_size}{levels}-{stable_hash(params, 6)}"
        # feature_contrast: the same views flipped or rotated, a unit of their own, so that the plain views stay one
        # unit for every model on them
        ops = spec.feature_contrast or []
        named = [(name, views, None)]
        if ops:
            named.append((f"{name}-{'.'.join(ops)}", contrast_views(views, ops), ops))
        for folder, its_views, contrast in named:
            for split in ("train", "test"):
                inputs = {"images": plan.images(split, spec).key}
                meta = {"model": spec.name, "split": split, "models": [spec.name], "contrast": contrast}
                unit = Unit(NAME, f"{folder}/{split}", {**params, "views": its_views, "split": split}, inputs,
                            VERSION, meta=meta, gpu=True)  # fmt: skip
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
    grids = _poolable(model, cfg, spec, unit, device)
    rows, feats = run_views(model, loader, views, spec.img_size, norm, rt.amp, features=True,
                            levels=spec.feature_levels, grid=tuple(grids), desc=unit.name,
                            show=rt.progress)  # fmt: skip
    placed = np.empty_like(feats)
    placed[:, rows] = feats  # rows travel with the batches: place each by its row index
    parts = np.split(placed.astype(np.float32), np.cumsum(list(grids.values()))[:-1], axis=-1)  # the grids' columns
    atomic_savez(out / "features.npz", views=np.array(views), grids=np.array(grids),
                 **{f"feats_g{g}": p for g, p in zip(grids, parts)})  # fmt: skip
    return {"outputs": ["features.npz"], "scores": {f"dim_g{g}": int(p.shape[-1]) for g, p in zip(grids, parts)}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    r = model_rates(plan, unit, rates)
    return r.setup + len(plan.comp.sources(unit.meta["split"])) * len(unit.params["views"]) / r.fwd


def _poolable(model, cfg, spec, unit: Unit, device) -> dict[int, int]:
    """{grid: its width} of the unit's grids this backbone can pool (timed on one blank image): a grid no model asks
    for is skipped on a backbone whose last features are tokens, not a 2-D map; a model asking for one is an error."""
    x, widths = torch.zeros(1, 3, spec.img_size, spec.img_size, device=device), {}
    wanted = {cfg.model(m).feature_grid for m in unit.meta["models"]}
    with torch.no_grad():
        for g in unit.params["grids"]:
            try:
                widths[g] = int(embed(model, x, spec.feature_levels, g).shape[1])
            except ValueError as e:
                if g in wanted:
                    raise ValueError(f"model {spec.name} ({spec.backbone}): feature_grid {g}: {e}") from None
    return widths


def grids_for(spec) -> list[int]:
    """The grids a model's features unit pools: GRIDS and the model's own (one unit for every model on it)."""
    return sorted({*GRIDS, spec.feature_grid})


def load(plan, unit: Unit) -> dict:
    """{"views": [names], "feats": {grid: (V, n, D_grid) float32}} of the unit's split (each grid read on first use)."""
    d = np.load(plan.store.dir(unit) / "features.npz")
    return {"views": [str(v) for v in d["views"]], "feats": _Grids(d)}


class _Grids(dict):
    """{grid: array} read from the npz when first asked for: a head reads one grid of several."""

    def __init__(self, npz):
        super().__init__()
        self.npz = npz

    def __missing__(self, grid: int) -> np.ndarray:
        self[grid] = self.npz[f"feats_g{grid}"]
        return self[grid]
