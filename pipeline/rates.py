"""What a time budget's estimates share: the probe's name for a model's speed (`candidate`), and a model unit's
rates and sizes (`model_rates`), read by the stages' `estimate` functions and written by the probe stage."""

from __future__ import annotations

from dataclasses import dataclass

from .tta import views_for


def candidate(spec, train: bool = False) -> str:
    """The probe's key of a model's speed: (backbone, input size, feature levels), and the batch when training."""
    levels = "" if spec.feature_levels is None or train else f"-L{'.'.join(map(str, spec.feature_levels))}"
    return f"{spec.backbone}@{spec.img_size}{levels}" + (f"-b{spec.batch_size}" if train else "")


@dataclass
class ModelRates:
    spec: object  # the unit's ModelSpec
    fwd: float  # eval images/s
    setup: float  # seconds to build the model and run a first batch
    views: int  # TTA views per image
    n_val: float  # held-out rows of a fold unit (0 for a full-data unit)
    n_train: int
    n_test: int
    train_rate: float | None  # training images/s (None for kinds on cached features: the probe does not train them)
    dim: int | None  # features per image a kind on features reads (at its grid, with contrasts); None: not probed
    n_classes: int

    def sizes(self) -> dict:
        """What a kind's `estimate` reads (kinds/base.py)."""
        return {"n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test, "views": self.views,
                "setup": self.setup, "fwd": self.fwd, "train_rate": self.train_rate, "dim": self.dim,
                "n_classes": self.n_classes}  # fmt: skip


def model_rates(plan, unit, rates: dict) -> ModelRates:
    """The probe's rates of the model a unit belongs to, and the competition's sizes."""
    comp, spec = plan.comp, plan.cfg.model(unit.meta["model"])
    n_train = len(comp.train)
    n_val = 0 if unit.meta.get("fold", 0) < 0 else n_train / plan.cfg.folds.n_folds
    dim = probed(rates.get("dims", {}), spec)
    fwd = probed(rates["eval"], spec, per_pixel=True)
    if fwd is None:
        raise KeyError(f"the probe timed no model like {candidate(spec)} (backbone, levels): {sorted(rates['eval'])}")
    return ModelRates(spec, fwd, probed(rates["setup_s"], spec),
                      len(views_for(plan.cfg.predict.views)), n_val, n_train, len(comp.test_ids),
                      probed(rates["train"], spec, train=True, per_pixel=True),
                      dim and dim * spec.feature_grid**2 * (1 + len(spec.feature_contrast or [])),
                      comp.n_classes)  # fmt: skip


def parts(key: str) -> tuple[str, int, str]:
    """(backbone, input size, the rest: levels and batch) of a `candidate` key."""
    backbone, rest = key.split("@")
    size, _, tail = rest.partition("-")
    return backbone, int(size), tail


def probed(table: dict, spec, train: bool = False, per_pixel: bool = False):
    """The probe's figure for this model (None when the table has none): its own, else (a model the budget shrank to
    a size the probe did not time) that of the same backbone, levels and batch at the nearest probed size, scaled by
    the pixel count when it is a rate (images/s): a convolution's work grows with the pixels it sees."""
    key = candidate(spec, train)
    if key in table:
        return table[key]
    backbone, _, tail = parts(key)
    same = {parts(k)[1]: k for k in table if parts(k)[::2] == (backbone, tail)}
    if not same:
        return None
    near = min(same, key=lambda size: abs(size - spec.img_size))
    return table[same[near]] * ((near / spec.img_size) ** 2 if per_pixel else 1.0)
