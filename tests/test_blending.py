import numpy as np
import pytest

from pipeline.blending import METHODS, bootstrap_gain, make_blend, nested_cv
from pipeline.metrics import score


def synthetic(n=300, c=3, seed=0):
    """Three models: a good one, a noisy one, and one that is pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    onehot = np.eye(c)[y]

    def model(strength):
        logits = strength * onehot + rng.normal(size=(n, c))
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    return y, [model(3.0), model(1.0), model(0.0)]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_fit_weights_on_simplex(method):
    y, probs = synthetic()
    b = make_blend(method, "accuracy").fit(probs, y)
    assert b.weights_.shape == (3,) and np.isclose(b.weights_.sum(), 1) and (b.weights_ >= 0).all()
    out = b.predict(probs)
    assert out.shape == probs[0].shape and np.allclose(out.sum(1), 1)


def test_optimised_weights_prefer_the_good_model():
    y, probs = synthetic()
    for method in ("simplex", "caruana"):
        w = make_blend(method, "logloss").fit(probs, y).weights_
        assert w[0] > w[2], (method, w)


def test_nested_cv_never_sees_the_held_out_fold():
    y, probs = synthetic()
    folds = np.arange(len(y)) % 5
    honest, fold_weights = nested_cv("simplex", "logloss", probs, y, folds)
    assert fold_weights.shape == (5, 3)
    # corrupting fold 0's labels changes nothing for fold 0's honest predictions except through other folds' fits
    y2 = y.copy()
    y2[folds == 0] = (y2[folds == 0] + 1) % 3
    honest2, _ = nested_cv("simplex", "logloss", probs, y2, folds)
    k = 0
    b = make_blend("simplex", "logloss").fit([p[folds != k] for p in probs], y[folds != k])
    np.testing.assert_allclose(honest[folds == k], b.predict([p[folds == k] for p in probs]))
    np.testing.assert_allclose(honest2[folds == k], honest[folds == k])


def test_bootstrap_gain_sign():
    y, probs = synthetic()
    mean, lo, hi = bootstrap_gain("accuracy", y, probs[0], probs[2], n=200)
    assert lo > 0 and mean == pytest.approx(score("accuracy", y, probs[0]) - score("accuracy", y, probs[2]), abs=0.05)
