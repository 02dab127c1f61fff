"""What every model kind declares (`Kind`), and what the kinds that fit on cached frozen-backbone features share
(`OnFeatures`): their inputs (the features stage's units), CPU resources, probe and fold rows.

`sizes`, the budget's view of a unit: n_train, n_val (its held-out rows), n_test, views (TTA views computed),
setup (s to build the model), fwd (eval images/s) and train_rate (training images/s; None for kinds on features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..infer import embed, with_contrast


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
        names = ("features", "test_features") if spec.pseudo_from else ("features",)  # pseudo: the test rows' too
        return _feature_inputs(plan, spec, names)

    def pseudo_key(self, spec) -> dict:
        """The key slice of pseudo-labels (none without): the threshold; the source's units are inputs."""
        return {"pseudo_threshold": spec.pseudo_threshold, "pseudo_view": "center"} if spec.pseudo_from else {}

    def predict_inputs(self, plan, spec, train_unit) -> dict[str, str]:
        return {"model": train_unit.key, **_feature_inputs(plan, spec, ("train_features", "test_features"))}

    def probe_forward(self, model, x, spec):
        return embed(model, x, spec.feature_levels, spec.feature_grid)


def features_unit(plan, spec, split: str, contrast: bool = False):
    """The features unit a model reads for a split (models with the same backbone settings share one); with
    `contrast`, the one of its `feature_contrast` views."""
    (unit,) = [u for u in plan.all("features", split=split)
               if spec.name in u.meta["models"] and bool(u.meta.get("contrast")) == contrast]  # fmt: skip
    return unit


def _feature_inputs(plan, spec, names) -> dict[str, str]:
    """{name: key} of the features units of these inputs ("features" and "train_features": the train split), and
    {"contrast_" + name: key} of their contrast views' units when the model has `feature_contrast`."""
    out = {}
    for name in names:
        split = "test" if name.startswith("test") else "train"
        out[name] = features_unit(plan, spec, split).key
        if spec.feature_contrast:
            out[f"contrast_{name}"] = features_unit(plan, spec, split, contrast=True).key
    return out


def load_features(plan, unit, name: str) -> dict:
    """A features input of a unit ({"views", "feats": {grid: (V, n, D)}}); for a model with `feature_contrast`, each
    view's features followed by their differences from its contrast views' (infer.with_contrast: D * (1 + K) wide)."""
    feats = plan.load_input(unit, name)
    if f"contrast_{name}" not in unit.inputs:
        return feats
    extra = plan.load_input(unit, f"contrast_{name}")
    return {"views": feats["views"], "feats": _Contrasted(feats["feats"], extra["feats"])}


class _Contrasted(dict):
    """{grid: (V, n, D * (1 + K))} built from the plain and the contrast units' arrays when first asked for."""

    def __init__(self, base, extra):
        super().__init__()
        self.base, self.extra = base, extra

    def __missing__(self, grid: int) -> np.ndarray:
        self[grid] = with_contrast(self.base[grid], self.extra[grid])
        return self[grid]


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
