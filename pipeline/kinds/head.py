"""kind: head. A multinomial logistic regression (logreg.StandardLogReg) on standardised centre-view features of the
fold's training rows (with `pseudo_from`, also the confidently pseudo-labelled test rows: kinds/pseudo.py).
Output `head.safetensors`: coef (C, D), intercept (C,), mean and scale (D,), float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..infer import linear_softmax
from ..logreg import StandardLogReg
from ..metrics import score, selection_metric
from ..store import atomic_write
from .base import OnFeatures, centre_features, fold_split, load_features, view_features
from .pseudo import fit_set

# seconds per (row x feature x class) of a fit: 36.6 s for 48,000 rows of 608 features and 10 classes (a 60,000-image
# competition on 2 cores); the planner calibrates it on the heads a run fits
FIT_S = 1.25e-7


class Head(OnFeatures):
    name = "head"

    def key(self, plan, spec) -> dict:
        # what the features unit holds (backbone, weights, size, levels, views) is in its key, an input; which of
        # its grids the model reads is not
        return {"kind": self.name, "grid": spec.feature_grid, "head_c": spec.head_c,
                "metric": plan.cfg.competition.metric, "n_classes": plan.comp.n_classes,
                **self.pseudo_key(spec)}  # fmt: skip

    def train(self, plan, unit, out: Path, ctx=None) -> dict:
        spec, n_classes = plan.cfg.model(unit.meta["model"]), plan.comp.n_classes
        x = centre_features(load_features(plan, unit, "features"), spec.feature_grid)
        y, _, va = fold_split(plan, unit)
        x_fit, y_fit, pseudo = fit_set(plan, unit, spec, x, out)
        lr = StandardLogReg(n_classes, c=spec.head_c, max_iter=3000, seed=unit.meta["seed"]).fit(x_fit, y_fit)
        metric = selection_metric(plan.cfg.competition.metric, y[va], n_classes)
        val = score(metric, y[va], lr.predict_proba(x[va])) if va.any() else None  # None: a full-data (refit) unit
        tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in lr.arrays().items()}
        atomic_write(out / "head.safetensors", lambda p: save_file(tensors, str(p)))
        atomic_write(out / "metrics.csv", lambda p: pd.DataFrame([{"epoch": 0, metric: val}]).to_csv(p, index=False))
        return {"outputs": ["head.safetensors", "metrics.csv", *pseudo["outputs"]],
                "scores": {metric: val, **pseudo["scores"]}}  # fmt: skip

    def load(self, folder: Path) -> dict:
        return {"head": {k: v.numpy() for k, v in load_file(str(folder / "head.safetensors")).items()}}

    def predict(self, plan, unit, views: list[str], va_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        head, grid = plan.load_input(unit, "model")["head"], plan.cfg.model(unit.meta["model"]).feature_grid
        train, test = load_features(plan, unit, "train_features"), load_features(plan, unit, "test_features")

        def apply(x):  # (V, N, D) -> (V, N, C)
            return linear_softmax(x, head["coef"], head["intercept"], head["mean"], head["scale"])

        return apply(view_features(train, grid, views, va_rows)), apply(view_features(test, grid, views))

    def estimate(self, stage: str, spec, sizes: dict) -> float:
        if stage == "train":  # a logistic regression: grows with rows x features x classes
            n_fit = sizes["n_train"] - sizes["n_val"]
            return 0.2 + FIT_S * n_fit * (sizes.get("dim") or 1000) * sizes.get("n_classes", 10)
        return 0.1


KIND = Head()
