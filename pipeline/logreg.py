"""The one multinomial logistic regression of the pipeline, on standardised inputs: a `head` model's softmax on
cached features and the `stack` blend's level-2 model both fit it here. Applying it needs no scikit-learn:
`infer.linear_softmax(x, coef_, intercept_, mean_, scale_)` (what exported bundles run).
"""

from __future__ import annotations

import numpy as np

from .infer import full_linear


class StandardLogReg:
    """scikit-learn's LogisticRegression on inputs standardised by the fit rows' mean and standard deviation (+1e-6),
    with one BLAS thread (2-4x faster fits than two on a 2-core machine, at every size tried).

    Learns `mean_`, `scale_` (D,), `classes_` (the classes seen), `raw_coef_` (scikit-learn's own coefficients) and
    `coef_` (C, D), `intercept_` (C,) over all `n_classes` classes: a class absent from the fit rows gets no mass."""

    def __init__(self, n_classes: int, c: float = 1.0, max_iter: int = 2000, seed: int = 0):
        self.n_classes, self.c, self.max_iter, self.seed = n_classes, c, max_iter, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> StandardLogReg:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        self.mean_, self.scale_ = x.mean(0), x.std(0) + 1e-6
        self.clf_ = LogisticRegression(C=self.c, max_iter=self.max_iter, random_state=self.seed)
        with threadpool_limits(1):
            self.clf_.fit((x - self.mean_) / self.scale_, y)
        self.classes_, self.raw_coef_ = self.clf_.classes_, self.clf_.coef_
        self.coef_, self.intercept_ = full_linear(self.classes_, self.raw_coef_, self.clf_.intercept_, self.n_classes)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities, scikit-learn's own for the classes seen, 0 for the others."""
        probs = np.zeros((len(x), self.n_classes))
        probs[:, self.classes_] = self.clf_.predict_proba((x - self.mean_) / self.scale_)
        return probs

    def arrays(self) -> dict[str, np.ndarray]:
        """What applying it needs (infer.linear_softmax's arguments), as stored in head.safetensors and bundles."""
        return {"coef": self.coef_, "intercept": self.intercept_, "mean": self.mean_, "scale": self.scale_}
