"""Blend methods fitted on out-of-fold probabilities only, scikit-learn style: the constructor stores settings,
`fit(oof_probs_list, y)` returns self and learns `weights_` (one per model, summing to 1), `predict(probs_list)`
blends any aligned list of probabilities (OOF or test). Plus the honest (nested) CV of a blend and a bootstrap
interval of its gain over the best single model.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from .metrics import GREATER_IS_BETTER, loss_of, score


def _stack(probs_list) -> np.ndarray:
    return np.stack([np.asarray(p, dtype=np.float64) for p in probs_list])  # (M, N, C)


class MeanBlend:
    def __init__(self, metric: str = "accuracy", seed: int = 0):
        self.metric, self.seed = metric, seed

    def fit(self, probs_list, y):
        self.weights_ = np.full(len(probs_list), 1.0 / len(probs_list))
        return self

    def predict(self, probs_list) -> np.ndarray:
        p = np.tensordot(self.weights_, _stack(probs_list), axes=1)
        return p / p.sum(1, keepdims=True)


class RankBlend(MeanBlend):
    """Mean of per-class ranks (scaled to [0, 1]) renormalised per row: robust to models with different calibration.
    Its outputs are scores, not calibrated probabilities; use it with rank metrics (auc) or labels."""

    def predict(self, probs_list) -> np.ndarray:
        p = _stack(probs_list)
        ranks = np.stack([rankdata(m, axis=0) / len(m) for m in p])
        r = np.tensordot(self.weights_, ranks, axes=1)
        return r / r.sum(1, keepdims=True)


class CaruanaBlend(MeanBlend):
    """Greedy forward selection with replacement (Caruana et al. 2004, as AutoGluon does), scored by the metric
    with log loss as tie-break; weights are selection counts."""

    def __init__(self, metric: str = "accuracy", seed: int = 0, n_iter: int = 50):
        super().__init__(metric, seed)
        self.n_iter = n_iter

    def fit(self, probs_list, y):
        p = _stack(probs_list)
        counts = np.zeros(len(p))
        current = np.zeros_like(p[0])
        for it in range(self.n_iter):
            cands = [(current * it + p[m]) / (it + 1) for m in range(len(p))]
            losses = [(loss_of(self.metric, y, c), loss_of("logloss", y, c)) for c in cands]
            best = min(range(len(p)), key=lambda m: losses[m])
            counts[best] += 1
            current = cands[best]
        self.weights_ = counts / counts.sum()
        return self


class SimplexBlend(MeanBlend):
    """Weights on the simplex minimising log loss (smooth, so scipy can optimise it), then kept only if they do
    not lose on the competition metric against the plain mean."""

    def fit(self, probs_list, y):
        p = _stack(probs_list)
        m = len(p)
        y = np.asarray(y)

        def objective(z):
            w = np.exp(z - z.max())
            w /= w.sum()
            q = np.clip(np.tensordot(w, p, axes=1), 1e-15, 1)
            return -np.log(q[np.arange(len(y)), y]).mean()

        res = minimize(objective, np.zeros(m), method="L-BFGS-B")
        w = np.exp(res.x - res.x.max())
        w /= w.sum()
        mean = np.full(m, 1.0 / m)
        blend = lambda ws: np.tensordot(ws, p, axes=1)  # noqa: E731
        if loss_of(self.metric, y, blend(w)) > loss_of(self.metric, y, blend(mean)) + 1e-12:
            w = mean
        self.weights_ = w
        return self


METHODS = {"mean": MeanBlend, "rank": RankBlend, "caruana": CaruanaBlend, "simplex": SimplexBlend}


def make_blend(method: str, metric: str, seed: int = 0):
    if method not in METHODS:
        raise ValueError(f"unknown blend method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method](metric=metric, seed=seed)


def nested_cv(method: str, metric: str, probs_list, y: np.ndarray, folds: np.ndarray, seed: int = 0):
    """Honest OOF of a blend: for each fold, weights fitted on the other folds' OOF rows only, applied to this fold.
    Returns (honest_probs (N, C), per-fold weights (K, M))."""
    p = _stack(probs_list)
    out = np.zeros_like(p[0])
    weights = []
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        b = make_blend(method, metric, seed).fit(list(p[:, tr]), y[tr])
        out[va] = b.predict(list(p[:, va]))
        weights.append(b.weights_)
    return out, np.array(weights)


def bootstrap_gain(metric: str, y, probs_a, probs_b, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Score(a) - score(b) on rows resampled with replacement: (mean, 2.5%, 97.5%); positive = a is better
    (sign flipped for log loss)."""
    rng = np.random.default_rng(seed)
    sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        diffs.append(sign * (score(metric, y[idx], probs_a[idx]) - score(metric, y[idx], probs_b[idx])))
    d = np.array(diffs)
    return float(d.mean()), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))
