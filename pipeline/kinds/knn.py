"""kind: knn. A k-nearest-neighbour vote on cached frozen-backbone features, by cosine similarity.

Features are centred on the fold's training rows (pooled activations are mostly positive, so raw cosines all lie
near 1) and scaled to unit length. A row's probabilities: each of its k most similar training rows votes for its class
with its similarity (clipped at 0), plus one vote spread evenly over the classes, so no class gets 0 and log loss
stays finite. k is chosen among `K_GRID` by leave-one-out log loss on the fold's training rows only: each training row
is predicted from the others, and the held-out fold is never looked at. Deterministic: no seed enters.

Output `knn.safetensors`: rows (n_rows,) the training rows (the reference set, read back from the train features),
with `pseudo_from` test_rows (n_pseudo,) the pseudo-labelled test rows after them (read back from the test features),
y (n_rows + n_pseudo,) their classes, mean (D,) the centring vector, k (1,); `metrics.csv`: the held-out score and k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..metrics import score, selection_metric
from ..store import atomic_write
from .base import OnFeatures, centre_features, fold_split, load_features, view_features
from .pseudo import FIT_ROWS, fit_set

K_GRID = (1, 2, 3, 5, 8, 12, 20, 30, 50)  # candidates; those the fold's training rows allow
CHUNK = 1024  # query rows per similarity block: (CHUNK, n_fit) float64 at a time


def unit_rows(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(..., D) features centred and scaled to unit length, so a dot product is a cosine similarity."""
    z = x - mean
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)


def neighbours(query: np.ndarray, ref: np.ndarray, k: int, leave_one_out: bool = False):
    """The k most similar rows of `ref` (n_ref, D) to each query row (n, D), most similar first: (similarities (n, k),
    indices into ref (n, k)). leave_one_out: query is ref, and no row is its own neighbour."""
    sims_out, idx_out = np.empty((len(query), k)), np.empty((len(query), k), dtype=np.int64)
    for start in range(0, len(query), CHUNK):
        s = query[start : start + CHUNK] @ ref.T
        if leave_one_out:
            s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(s, part, 1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        sims_out[start : start + CHUNK] = np.take_along_axis(part_sims, order, 1)
        idx_out[start : start + CHUNK] = np.take_along_axis(part, order, 1)
    return sims_out, idx_out


def vote(sims: np.ndarray, idx: np.ndarray, y_ref: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """(n, C) probabilities from the first k neighbours of each row: similarity-weighted votes plus one even vote."""
    probs = np.full((len(sims), n_classes), 1.0 / n_classes)
    np.add.at(probs, (np.arange(len(sims))[:, None], y_ref[idx[:, :k]]), np.clip(sims[:, :k], 0, None))
    return probs / probs.sum(1, keepdims=True)


def choose_k(ref: np.ndarray, y_ref: np.ndarray, n_classes: int) -> tuple[int, dict[int, float]]:
    """The k of K_GRID with the lowest leave-one-out log loss on the reference rows (the smaller on a tie)."""
    grid = [k for k in K_GRID if k < len(ref)] or [1]
    sims, idx = neighbours(ref, ref, max(grid), leave_one_out=len(ref) > 1)
    losses = {k: score("logloss", y_ref, vote(sims, idx, y_ref, k, n_classes)) for k in grid}
    return min(grid, key=lambda k: (losses[k], k)), losses


def predict_rows(x: np.ndarray, ref: np.ndarray, y_ref: np.ndarray, k: int, mean: np.ndarray, n_classes: int):
    """(..., n, C) probabilities of feature rows x (..., n, D), every leading index (a TTA view) on its own."""
    flat = unit_rows(x.reshape(-1, x.shape[-1]), mean)
    if not len(flat):
        return np.zeros((*x.shape[:-1], n_classes))
    sims, idx = neighbours(flat, ref, k)
    return vote(sims, idx, y_ref, k, n_classes).reshape(*x.shape[:-1], n_classes)


class Knn(OnFeatures):
    name = "knn"
    exportable = False  # a bundle would need the train features: export refuses it, naming the model

    def key(self, plan, spec) -> dict:
        # what the features unit holds (backbone, weights, size, levels, views) is in its key, an input; which of
        # its grids the model reads is not
        return {"kind": self.name, "grid": spec.feature_grid, "k_grid": list(K_GRID),
                "metric": plan.cfg.competition.metric, "n_classes": plan.comp.n_classes,
                **self.pseudo_key(spec)}  # fmt: skip

    def train(self, plan, unit, out: Path, ctx=None) -> dict:
        n_classes = plan.comp.n_classes
        spec = plan.cfg.model(unit.meta["model"])
        grid = spec.feature_grid
        x = centre_features(load_features(plan, unit, "features"), grid)
        y, tr, va = fold_split(plan, unit)
        x_fit, y_fit, pseudo = fit_set(plan, unit, spec, x, out)  # with pseudo_from: test rows after the train rows
        mean = x_fit.mean(0)
        ref = unit_rows(x_fit, mean)
        k, losses = choose_k(ref, y_fit, n_classes)
        metric = selection_metric(plan.cfg.competition.metric, y[va], n_classes)
        val = score(metric, y[va], predict_rows(x[va], ref, y_fit, k, mean, n_classes)) if va.any() else None
        tensors = {"rows": torch.from_numpy(np.where(tr)[0]), "y": torch.from_numpy(y_fit.astype(np.int64)),
                   "mean": torch.from_numpy(mean), "k": torch.tensor([k])}  # fmt: skip
        if spec.pseudo_from:
            tensors["test_rows"] = torch.from_numpy(np.load(out / FIT_ROWS)["pseudo_rows"].astype(np.int64))
        atomic_write(out / "knn.safetensors", lambda p: save_file(tensors, str(p)))
        row = {"epoch": 0, metric: val, "k": k, "loo_logloss": losses[k]}
        atomic_write(out / "metrics.csv", lambda p: pd.DataFrame([row]).to_csv(p, index=False))
        return {"outputs": ["knn.safetensors", "metrics.csv", *pseudo["outputs"]],
                "scores": {metric: val, "k": k, **pseudo["scores"]}}  # fmt: skip

    def load(self, folder: Path) -> dict:
        return {"knn": {k: v.numpy() for k, v in load_file(str(folder / "knn.safetensors")).items()}}

    def predict(self, plan, unit, views: list[str], va_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, n_classes = plan.load_input(unit, "model")["knn"], plan.comp.n_classes
        grid = plan.cfg.model(unit.meta["model"]).feature_grid
        train, test = load_features(plan, unit, "train_features"), load_features(plan, unit, "test_features")
        fit_x = centre_features(train, grid)[m["rows"]]
        if "test_rows" in m:  # pseudo-labelled test rows, after the train rows (as y holds their classes)
            fit_x = np.concatenate([fit_x, centre_features(test, grid)[m["test_rows"]]])
        ref = unit_rows(fit_x, m["mean"])
        k = int(m["k"][0])
        oof = predict_rows(view_features(train, grid, views, va_rows), ref, m["y"], k, m["mean"], n_classes)
        return oof, predict_rows(view_features(test, grid, views), ref, m["y"], k, m["mean"], n_classes)

    def estimate(self, stage: str, spec, sizes: dict) -> float:
        n_fit = sizes["n_train"] - sizes["n_val"]
        if stage == "train":  # a similarity matrix of the training rows against themselves; ~1e-8 s per entry
            return 0.2 + 1e-8 * n_fit * n_fit
        return 0.1 + 1e-8 * n_fit * (sizes["n_val"] + sizes["n_test"]) * sizes["views"]


KIND = Knn()
