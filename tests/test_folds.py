import numpy as np

from pipeline.stages.folds import assign_folds


def test_stratified_every_row_once_and_balanced():
    y = np.repeat(np.arange(4), [40, 30, 20, 10])
    fold = assign_folds(y, 5, seed=1)
    assert fold.min() == 0 and fold.max() == 4 and (fold >= 0).all()
    for c in range(4):  # each class spread evenly over the folds
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert (assign_folds(y, 5, seed=1) == fold).all()
    assert (assign_folds(y, 5, seed=2) != fold).any()


def test_groups_never_split():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    y = rng.integers(0, 3, 120)
    fold = assign_folds(y, 3, seed=0, groups=groups)
    for g in range(30):
        assert len(set(fold[groups == g])) == 1
