"""What every model kind declares (`Kind`), and what the kinds that fit on cached frozen-backbone features share
(`OnFeatures`): their inputs (the features stage's units), CPU resources, probe and fold rows.

`sizes`, the budget's view of a unit: n_train, n_val (its held-out rows), n_test, views (TTA views computed),
setup (s to build the model), fwd (eval images/s) and train_rate (training images/s; None for kinds on features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..infer import embed


class Kind:
    name = ""
    gpu = True  # its train and predict units want an accelerator
    probe_train = True  # the probe times training steps of its network
    exportable = True  # `./run.sh export` can bundle it

    def key(self, plan, spec) -> dict:
        """The config fields that change what its train units learn (with seed and fold added by the stage)."""
        raise NotImplementedError

    def train_inputs(self, plan, spec) -> dict[str, str]:
        """Input units of a train unit besides the folds: {name: key}."""
        raise NotImplementedError

    def predict_inputs(self, plan, spec, train_unit) -> dict[str, str]:
        """Input units of a predict unit: {name: key}, "model" the train unit."""
        raise NotImplementedError

    def train(self, plan, unit, out: Path, ctx) -> dict:
        """Fit one seed x fold unit into `out` (ctx: the stage.RunContext: deadline, fence); returns
        {"outputs": [files], "scores": {...}}."""
        raise NotImplementedError

    def load(self, folder: Path) -> dict:
        """What train wrote in `folder` (besides metrics.csv, which the train stage reads)."""
        raise NotImplementedError

    def predict(self, plan, unit, views: list[str], va_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OOF (V, len(va_rows), C) and test (V, n_test, C) probabilities, views in the order asked."""
        raise NotImplementedError

    def probe_forward(self, model, x, spec):
        """The eval forward pass the probe times (and its predict or features units run)."""
        return model(x)

    def estimate(self, stage: str, spec, sizes: dict) -> float:
        """Expected seconds of its `stage` ("train" or "predict") unit."""
        raise NotImplementedError


class OnFeatures(Kind):
    """A kind fitted on the features stage's cached embeddings of the train split: seconds on a CPU."""

    gpu, probe_train = False, False

    def train_inputs(self, plan, spec) -> dict[str, str]:
        if spec.pseudo_from:  # pseudo-labelled: the test rows' features too (the source's units: the train stage)
            return {"features": features_unit(plan, spec, "train").key,
                    "test_features": features_unit(plan, spec, "test").key}  # fmt: skip
        return {"features": features_unit(plan, spec, "train").key}

    def pseudo_key(self, spec) -> dict:
        """The key slice of pseudo-labels (none without): the threshold; the source's units are inputs."""
        return {"pseudo_threshold": spec.pseudo_threshold, "pseudo_view": "center"} if spec.pseudo_from else {}

    def predict_inputs(self, plan, spec, train_unit) -> dict[str, str]:
        return {"model": train_unit.key, "train_features": train_unit.inputs["features"],
                "test_features": features_unit(plan, spec, "test").key}  # fmt: skip

    def probe_forward(self, model, x, spec):
        return embed(model, x, spec.feature_levels, spec.feature_grid)


def features_unit(plan, spec, split: str):
    """The features unit a model reads for a split (models with the same backbone settings share one)."""
    (unit,) = [u for u in plan.all("features", split=split) if spec.name in u.meta["models"]]
    return unit


def grid_features(feats: dict, grid: int) -> np.ndarray:
    """(V, n, D) float32: a features unit's arrays pooled over this grid (the model's `feature_grid`)."""
    try:
        return feats["feats"][grid]
    except KeyError:
        raise ValueError(
            f"the features unit holds no {grid} x {grid} grid (this backbone's maps are tokens?)"
        ) from None


def centre_features(feats: dict, grid: int) -> np.ndarray:
    """(n, D) float64: the centre view of a features unit's arrays, the view every kind on features fits on."""
    return grid_features(feats, grid)[feats["views"].index("center")].astype(np.float64)


def view_features(feats: dict, grid: int, views: list[str], rows=slice(None)) -> np.ndarray:
    """(V, n, D) float64: the views asked for, in their order, of these rows."""
    return grid_features(feats, grid)[[feats["views"].index(v) for v in views]][:, rows].astype(np.float64)


def fold_split(plan, unit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y (n_train,), training mask, held-out mask) of a train unit's fold; nothing is held out for a full-data unit."""
    folds = plan.load_input(unit, "folds")
    return plan.comp.train["y"].to_numpy(), folds != unit.meta["fold"], folds == unit.meta["fold"]
