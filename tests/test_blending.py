import numpy as np
import pytest

from pipeline.blending import METHODS, blend_models, bootstrap_gain, choose_tta, honest_cv, make_blend, nested_cv
from pipeline.folding import fold_rows
from pipeline.metrics import score
from pipeline.tta import merge_policy


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


def test_honest_cv_chooses_tta_and_best_single_without_the_held_out_fold():
    y, (good, fair, noise) = synthetic(n=500)
    folds = np.where(np.arange(len(y)) < 300, 0, 1 + np.arange(len(y)) % 4)  # fold 0 holds 60 % of the rows
    flip = noise.copy()
    flip[folds == 0] = np.eye(3)[y[folds == 0]]  # the flipped view is perfect on fold 0 only, noise elsewhere
    models = {"a": {"views": ["center", "center_hflip"], "oof": np.stack([fair, flip])},
              "b": {"views": ["center"], "oof": good[None]}}  # fmt: skip
    # on all rows the flip view wins (fold 0 weighs most): a choice made there would leak fold 0's labels into it
    assert choose_tta("accuracy", y, models["a"]["views"], models["a"]["oof"], "auto", "mean")[1] == "hflip"
    blend, single, weights, best = honest_cv(models, y, folds, "mean", "accuracy", "auto", "mean")
    on_0 = folds == 0
    # chosen on folds 1-4: model a's centre view alone, and b is the best single model there
    assert best[0] == "b" and np.allclose(single[on_0], good[on_0])
    np.testing.assert_allclose(blend[on_0], (fair[on_0] + good[on_0]) / 2)
    assert weights.shape == (5, 2)


def test_stacking_learns_which_model_to_trust_per_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 2000)
    onehot = np.eye(4)[y]
    noisy = rng.dirichlet(np.ones(4), len(y))
    a = np.where((y < 2)[:, None], 0.7 * onehot + 0.3 * noisy, noisy)  # knows classes 0 and 1 only
    b = np.where((y >= 2)[:, None], 0.7 * onehot + 0.3 * noisy, noisy)  # knows classes 2 and 3 only
    folds = np.arange(len(y)) % 5
    stack = score("accuracy", y, honest_cv({"a": {"views": ["center"], "oof": a[None]},
                                            "b": {"views": ["center"], "oof": b[None]}}, y, folds, "stack",
                                           "accuracy", "none", "mean")[0])  # fmt: skip
    mean = score("accuracy", y, (a + b) / 2)
    assert stack > mean + 0.02, (stack, mean)


def test_bootstrap_gain_sign():
    y, probs = synthetic()
    mean, lo, hi = bootstrap_gain("accuracy", y, probs[0], probs[2], n=200)
    assert lo > 0 and mean == pytest.approx(score("accuracy", y, probs[0]) - score("accuracy", y, probs[2]), abs=0.05)


def test_simplex_falls_back_to_the_mean_when_its_weights_lose_on_the_metric():
    # two models on 8 rows: the log-loss optimum (0.135, 0.865) scores accuracy 0.25, the plain mean 0.625
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    a = [[0.61, 0.39], [0.21, 0.79], [0.98, 0.02], [0.63, 0.37], [0.32, 0.68], [0.88, 0.12], [0.13, 0.87], [0.12, 0.88]]
    b = [[0.02, 0.98], [0.45, 0.55], [0.66, 0.34], [0.42, 0.58], [0.67, 0.33], [0.47, 0.53], [0.5, 0.5], [0.58, 0.42]]
    probs = [np.array(a), np.array(b)]
    by_logloss = make_blend("simplex", "logloss").fit(probs, y).weights_
    np.testing.assert_allclose(by_logloss, [0.135, 0.865], atol=0.01)  # kept: it is what log loss asks for
    assert score("accuracy", y, by_logloss[0] * probs[0] + by_logloss[1] * probs[1]) == 0.25
    by_accuracy = make_blend("simplex", "accuracy").fit(probs, y)
    np.testing.assert_array_equal(by_accuracy.weights_, [0.5, 0.5])  # the mean, which scores 0.625
    assert score("accuracy", y, by_accuracy.predict(probs)) == 0.625


def test_blend_models_fits_on_oof_and_reports_what_it_fitted():
    """The blend stage's maths (and bench blend's): weights fitted on the chosen views' OOF, applied to test; the
    honest scores those of honest_cv; a refit model's test said to come from the full-data refit."""
    y, (good, fair, noise) = synthetic(n=200)
    folds = np.arange(len(y)) % 4
    test = [good[:50], fair[:50]]
    models = {"a": {"views": ["center", "center_hflip"], "oof": np.stack([fair, noise]), "test": np.stack(test)},
              "b": {"views": ["center"], "oof": good[None], "test": good[None, :50], "refit": True}}  # fmt: skip
    arrays, rep = blend_models(models, y, folds, "simplex", "logloss", "auto", "mean", seed=0, bootstrap=50)
    assert rep["tta"]["a"]["chosen"] == "none/mean" and rep["tta"]["b"]["test_from"] == "full-data refit"
    oofs = [merge_policy(m["oof"], m["views"], "none", "mean") for m in models.values()]
    tests = [merge_policy(m["test"], m["views"], "none", "mean") for m in models.values()]
    b = make_blend("simplex", "logloss").fit(oofs, y)
    np.testing.assert_array_equal(arrays["oof_probs"], b.predict(oofs))
    np.testing.assert_array_equal(arrays["test_probs"], b.predict(tests))
    assert rep["weights"] == {"a": b.weights_[0], "b": b.weights_[1]}
    honest, single, _, _ = honest_cv(models, y, folds, "simplex", "logloss", "auto", "mean")
    np.testing.assert_array_equal(arrays["honest_probs"], honest)
    assert rep["honest_cv"] == score("logloss", y, honest) and rep["honest_best_single"] == score("logloss", y, single)
    assert rep["best_single_model"] == "b" and rep["oof"] == score("logloss", y, arrays["oof_probs"])


def test_fold_rows_are_the_folds_rows_and_a_full_fold_holds_none_out():
    folds = np.array([2, 0, 1, 0, 2])
    tr, va = fold_rows(folds, 0)
    assert tr.tolist() == [0, 2, 4] and va.tolist() == [1, 3]
    tr, va = fold_rows(folds, -1)  # plan.FULL: every row trains
    assert tr.tolist() == [0, 1, 2, 3, 4] and va.size == 0
