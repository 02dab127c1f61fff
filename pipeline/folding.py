"""A fold of the fold assignment as rows: the one place a fold's training and held-out rows are made."""

from __future__ import annotations

import numpy as np


def fold_rows(folds: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of `fold`: ascending indices into the train table. folds: (N,) the fold of each
    train row. A full-data fold (plan.FULL, held by no row) trains on every row and holds none out."""
    folds = np.asarray(folds)
    return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
