"""Pseudo-labels for the kinds on features (`pseudo_from`, `pseudo_threshold` of a model): a unit also fits on the
test rows its source model predicts confidently, labelled by that prediction's argmax.

Which source units label which unit is the train stage's rule (`pseudo_inputs`: fold k reads the source's fold-k
units only); here a unit checks it again on what it reads (every source unit held out exactly this unit's rows),
so a wrong graph fails loudly instead of leaking fold k's labels into fold k's training.

The source's test probabilities are read in the centre view: a label-free choice that every kind computes. The
model's TTA choice is made by the blend on every fold's OOF labels, and the blend runs after this round.

Output `fit_rows.npz` of a pseudo-labelled unit: `train_rows` the train rows it fitted on, `pseudo_rows` the test
rows it added (indices into sample_submission's order), `pseudo_labels` their classes and `pseudo_probs` the source's
centre-view probabilities of those rows (mean over its units).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plan import FULL
from ..store import atomic_savez
from .base import centre_features, fold_split, load_features

FIT_ROWS = "fit_rows.npz"


def source_probs(plan, unit) -> np.ndarray:
    """(n_test, C) the mean centre-view test probabilities of the source units a train unit reads ("pseudo<i>")."""
    names = sorted(n for n in unit.inputs if n.startswith("pseudo"))
    if not names:
        raise ValueError(f"{unit.label}: pseudo_from is set but the unit reads no source predictions")
    _, _, va = fold_split(plan, unit)
    probs = []
    for name in names:
        d, src = plan.load_input(unit, name), plan.input(unit, name)
        if unit.meta["fold"] != FULL and not np.array_equal(np.sort(d["oof_rows"]), np.where(va)[0]):
            raise ValueError(f"{unit.label}: its pseudo-label source {src.label} did not hold out exactly this "
                             f"fold's rows; its test predictions would leak them back (expected the source's fold "
                             f"{unit.meta['fold']} units)")  # fmt: skip
        if "center" not in d["views"]:
            raise ValueError(f"{src.label}: no centre view among its stored views {d['views']}")
        probs.append(d["test_probs"][d["views"].index("center")].astype(np.float64))
    return np.mean(probs, axis=0)


def fit_set(plan, unit, spec, x: np.ndarray, out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x_fit (n_fit, D), y_fit (n_fit,), {"outputs", "scores"}): the fold's training rows of the centre-view features
    x (n_train, D), and with pseudo_from the confident test rows after them (their record written to `out`)."""
    y, tr, _ = fold_split(plan, unit)
    if not spec.pseudo_from:
        return x[tr], y[tr], {"outputs": [], "scores": {}}
    probs = source_probs(plan, unit)
    test_x = centre_features(load_features(plan, unit, "test_features"), spec.feature_grid)
    if len(test_x) != len(probs):
        raise ValueError(f"{unit.label}: {len(test_x)} test feature rows but {len(probs)} source test predictions")
    rows = np.where(probs.max(1) >= spec.pseudo_threshold)[0]
    labels = probs[rows].argmax(1)
    atomic_savez(out / FIT_ROWS, train_rows=np.where(tr)[0], pseudo_rows=rows, pseudo_labels=labels,
                 pseudo_probs=probs[rows].astype(np.float32))  # fmt: skip
    x_fit, y_fit = np.concatenate([x[tr], test_x[rows]]), np.concatenate([y[tr], labels])
    return x_fit, y_fit, {"outputs": [FIT_ROWS], "scores": {"pseudo_rows": int(len(rows))}}
