"""Blend methods fitted on out-of-fold probabilities only, scikit-learn style: the constructor stores settings,
`fit(oof_probs_list, y)` returns self and learns `weights_` (one per model, summing to 1), `predict(probs_list)`
blends any aligned list of probabilities (OOF or test). Plus the honest (nested) CV of a blend and a bootstrap
interval of its gain over the best single model.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from .folding import fold_rows
from .infer import blend_probs, stack_features
from .logreg import StandardLogReg
from .metrics import GREATER_IS_BETTER, loss_of, score
from .tta import POLICIES, merge_policy, policies_within


def _stack(probs_list) -> np.ndarray:
    return np.stack([np.asarray(p, dtype=np.float64) for p in probs_list])  # (M, N, C)


class MeanBlend:
    def __init__(self, metric: str = "accuracy", seed: int = 0):
        self.metric, self.seed = metric, seed

    def fit(self, probs_list, y):
        self.weights_ = np.full(len(probs_list), 1.0 / len(probs_list))
        return self

    def predict(self, probs_list) -> np.ndarray:
        return blend_probs("mean", self.weights_, probs_list)

    def params(self) -> dict:
        """What predicting needs, as JSON (an exported bundle blends with it)."""
        return {"weights": self.weights_.tolist(), "stack": None}


class RankBlend(MeanBlend):
    """Mean of per-class ranks (scaled to [0, 1]) renormalised per row: robust to models with different calibration.
    Its outputs are scores, not calibrated probabilities; use it with rank metrics (auc) or labels."""

    def predict(self, probs_list) -> np.ndarray:
        return blend_probs("rank", self.weights_, probs_list)


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


class StackBlend(MeanBlend):
    """Stacking: a level-2 multinomial logistic regression on the models' log-probabilities (M x C features per
    row), L2-regularised (C=1 on standardised inputs). Learns interactions a weighted mean cannot (one model trusted
    for some classes, another for others). `weights_` is each model's share of the absolute coefficients, for the
    report; predictions come from the regression."""

    def fit(self, probs_list, y):
        x = stack_features(probs_list)
        lr = StandardLogReg(_stack(probs_list).shape[-1], c=1.0, max_iter=2000, seed=self.seed).fit(x, y)
        share = np.abs(lr.raw_coef_).reshape(len(lr.raw_coef_), len(probs_list), -1).sum((0, 2))
        self.weights_ = share / share.sum()
        self.mean_, self.scale_, self.coef_, self.intercept_ = lr.mean_, lr.scale_, lr.coef_, lr.intercept_
        return self

    def predict(self, probs_list) -> np.ndarray:
        return blend_probs("stack", self.weights_, probs_list, self.params()["stack"])

    def params(self) -> dict:
        stack = {"coef": self.coef_, "intercept": self.intercept_, "mean": self.mean_, "scale": self.scale_}
        return {"weights": self.weights_.tolist(), "stack": {k: v.tolist() for k, v in stack.items()}}


METHODS = {"mean": MeanBlend, "rank": RankBlend, "caruana": CaruanaBlend, "simplex": SimplexBlend,
           "stack": StackBlend}  # fmt: skip


def make_blend(method: str, metric: str, seed: int = 0):
    if method not in METHODS:
        raise ValueError(f"unknown blend method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method](metric=metric, seed=seed)


def nested_cv(method: str, metric: str, probs_list, y: np.ndarray, folds: np.ndarray, seed: int = 0):
    """Honest OOF of a blend: for each fold, weights fitted on the other folds' OOF rows only, applied to this fold.
    Returns (honest_probs (N, C), per-fold weights (K, M)). honest_cv with one view per model and no TTA choice."""
    models = {str(i): {"views": ["center"], "oof": p[None]} for i, p in enumerate(_stack(probs_list))}
    honest, _, weights, _ = honest_cv(models, y, folds, method, metric, "none", "mean", seed)
    return honest, weights


def choose_tta(metric: str, y: np.ndarray, views: list[str], oof: np.ndarray, tta: str, merge_how: str):
    """Score every TTA policy within the computed views and each merge on OOF; return (table, best policy, merge)."""
    table = []
    policies = policies_within(views) if tta == "auto" else [tta]
    merges = ["mean", "gmean"] if tta == "auto" else [merge_how]
    for pol in policies:
        if not set(POLICIES[pol]) <= set(views):
            raise ValueError(f"blend.tta={pol} needs views {POLICIES[pol]}, but predict computed {views}")
        for how in merges:
            p = merge_policy(oof, views, pol, how)
            table.append({"tta": pol, "merge": how, metric: score(metric, y, p), "logloss": score("logloss", y, p)})
    sign = -1 if GREATER_IS_BETTER[metric] else 1
    best = min(table, key=lambda r: (sign * r[metric], r["logloss"], len(POLICIES[r["tta"]])))
    return table, best["tta"], best["merge"]


def merged_oof(m: dict, metric: str, y: np.ndarray, rows: np.ndarray, tta: str, merge_how: str):
    """A model's OOF (N, C) merged over the TTA policy and merge chosen on `rows` only; and that choice."""
    _, pol, how = choose_tta(metric, y[rows], m["views"], m["oof"][:, rows], tta, merge_how)
    return merge_policy(m["oof"], m["views"], pol, how), (pol, how)


def honest_cv(models: dict, y: np.ndarray, folds: np.ndarray, method: str, metric: str, tta: str, merge_how: str,
              seed: int = 0):  # fmt: skip
    """Honest OOF of everything the blend chooses: for each fold, every choice made on the other folds' rows only
    (each model's TTA policy and merge, the blend's weights or stacker, the best single model), then applied to this
    fold. models: name -> {"views", "oof" (V, N, C)}. Returns (blend probs (N, C), best-single probs (N, C),
    per-fold weights (K, M), per-fold best single model names)."""
    names = list(models)
    n, c = next(iter(models.values()))["oof"].shape[1:]
    blend, single, weights, best = np.zeros((n, c)), np.zeros((n, c)), [], []
    sign = 1 if GREATER_IS_BETTER[metric] else -1
    for k in np.unique(folds):
        tr, va = fold_rows(folds, k)
        merged = [merged_oof(models[name], metric, y, tr, tta, merge_how)[0] for name in names]
        b = make_blend(method, metric, seed).fit([p[tr] for p in merged], y[tr])
        blend[va] = b.predict([p[va] for p in merged])
        i = max(range(len(names)), key=lambda j: sign * score(metric, y[tr], merged[j][tr]))
        single[va] = merged[i][va]
        weights.append(b.weights_)
        best.append(names[i])
    return blend, single, np.array(weights), best


def bootstrap_scores(metric: str, y, probs_list, n: int, seed: int = 0) -> np.ndarray:
    """(n, len(probs_list)): each prediction's score on the same n resamples of the rows (with replacement)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(probs_list)))
    for i in range(n):
        idx = rng.integers(0, len(y), len(y))
        out[i] = [score(metric, y[idx], p[idx]) for p in probs_list]
    return out


def bootstrap_gain(metric: str, y, probs_a, probs_b, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Score(a) - score(b) on rows resampled with replacement: (mean, 2.5%, 97.5%); positive = a is better
    (sign flipped for log loss)."""
    s = bootstrap_scores(metric, y, [probs_a, probs_b], n, seed)
    d = (1.0 if GREATER_IS_BETTER[metric] else -1.0) * (s[:, 0] - s[:, 1])
    return float(d.mean()), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def merge_models(models: dict, y: np.ndarray, metric: str, tta: str, merge_how: str):
    """Each model's TTA policy and merge chosen on all OOF rows. models: name -> {"views", "oof" (V, N, C), "test"
    (V, n_test, C), "refit"}. Returns (OOF probs per model, test probs per model, TTA report, OOF score per model)."""
    oofs, tests, tta_report, single = [], [], {}, {}
    for name, m in models.items():
        table, pol, how = choose_tta(metric, y, m["views"], m["oof"], tta, merge_how)
        oofs.append(merge_policy(m["oof"], m["views"], pol, how))
        tests.append(merge_policy(m["test"], m["views"], pol, how))
        test_from = "full-data refit" if m.get("refit") else "fold models"
        tta_report[name] = {"chosen": f"{pol}/{how}", "table": table, "test_from": test_from}
        single[name] = score(metric, y, oofs[-1])
    return oofs, tests, tta_report, single


def blend_models(models: dict, y: np.ndarray, folds: np.ndarray, method: str, metric: str, tta: str = "auto",
                 merge_how: str = "mean", seed: int = 0, bootstrap: int = 1000) -> tuple[dict, dict]:  # fmt: skip
    """The blend stage's maths, no I/O: each model's TTA chosen on OOF, the blend fitted on OOF, its honest nested-CV
    score, the best single model, a bootstrap interval of the honest gain, the models' error correlation. models as
    for merge_models. Returns (arrays: oof_probs (N, C), honest_probs (N, C), test_probs (n_test, C); report)."""
    names = list(models)
    oofs, tests, tta_report, single = merge_models(models, y, metric, tta, merge_how)
    blender = make_blend(method, metric, seed).fit(oofs, y)
    oof_blend, test_blend = blender.predict(oofs), blender.predict(tests)
    # honest: the TTA choices, the blend and the best single model all chosen again on k-1 folds for each fold
    honest, honest_single, fold_weights, fold_best = honest_cv(models, y, folds, method, metric, tta, merge_how, seed)
    best_name = max(names, key=lambda n: single[n] if GREATER_IS_BETTER[metric] else -single[n])
    gain = bootstrap_gain(metric, y, honest, honest_single, bootstrap, seed)
    errors = np.stack([1 - o[np.arange(len(y)), y] for o in oofs])
    corr = np.corrcoef(errors) if len(oofs) > 1 else np.ones((1, 1))
    scores = {"oof": score(metric, y, oof_blend), "honest_cv": score(metric, y, honest),
              "best_single": single[best_name], "honest_best_single": score(metric, y, honest_single),
              "oof_logloss": score("logloss", y, oof_blend)}  # fmt: skip
    report = {
        "metric": metric, "method": method, "models": names,
        "weights": dict(zip(names, blender.weights_.tolist())),
        "blender": blender.params(),  # what blending test predictions needs (an exported bundle reads it)
        "fold_weights": fold_weights.tolist(), "fold_best_single": fold_best, "single": single,
        "best_single_model": best_name, **scores,
        "honest_gain_vs_best": {"mean": gain[0], "ci95": [gain[1], gain[2]]}, "tta": tta_report,
        "error_correlation": {"models": names, "matrix": np.round(corr, 4).tolist()},
    }  # fmt: skip
    return {"oof_probs": oof_blend, "honest_probs": honest, "test_probs": test_blend}, report


SCORES = ("oof", "honest_cv", "best_single", "honest_best_single", "oof_logloss")  # of a blend report
