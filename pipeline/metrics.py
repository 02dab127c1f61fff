"""Competition metrics on class probabilities. `score(metric, y, probs)`; every metric here is higher-is-better
except log loss, which `GREATER_IS_BETTER` records, so early stopping and blending can follow any of them."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

GREATER_IS_BETTER = {"accuracy": True, "logloss": False, "auc": True, "f1_macro": True, "f1_micro": True, "qwk": True}


def score(metric: str, y: np.ndarray, probs: np.ndarray) -> float:
    """y: (n,) int class indices; probs: (n, n_classes) rows summing to 1. qwk reads the indices as ordered: they
    follow competition.class_order (or the sorted classes), chosen once in labels.Labels."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)  # float32 inputs drift from 1 by ~1e-7, which sklearn warns about
    n_classes = probs.shape[1]
    if metric == "accuracy":
        return float((probs.argmax(1) == y).mean())
    if metric == "logloss":
        return float(skm.log_loss(y, np.clip(probs, 1e-15, 1), labels=np.arange(n_classes)))
    if metric == "auc":
        if n_classes == 2:
            return float(skm.roc_auc_score(y, probs[:, 1]))
        return float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=np.arange(n_classes)))
    if metric in ("f1_macro", "f1_micro"):
        return float(skm.f1_score(y, probs.argmax(1), average=metric[3:], labels=np.arange(n_classes)))
    if metric == "qwk":
        return float(skm.cohen_kappa_score(y, probs.argmax(1), weights="quadratic", labels=np.arange(n_classes)))
    raise ValueError(f"unknown metric {metric!r}; known: {sorted(GREATER_IS_BETTER)}")


def better(metric: str, a: float, b: float) -> bool:
    """True when score a is strictly better than b under metric."""
    return a > b if GREATER_IS_BETTER[metric] else a < b


def loss_of(metric: str, y: np.ndarray, probs: np.ndarray) -> float:
    """The metric as a quantity to minimise (for optimisers)."""
    s = score(metric, y, probs)
    return -s if GREATER_IS_BETTER[metric] else s


def selection_metric(metric: str, y: np.ndarray, n_classes: int) -> str:
    """The metric that can choose a fold's best epoch: the competition's, or log loss where that is not defined on
    the fold's held-out rows (auc when a class has no example there: every epoch would score NaN, and the first
    epoch's weights would be kept)."""
    if metric == "auc" and len(np.unique(y)) < n_classes:
        return "logloss"
    return metric
