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
    dim: int | None  # features per image a kind on features reads (at its grid); None: not probed
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
    dim = rates.get("dims", {}).get(candidate(spec))
    return ModelRates(spec, rates["eval"][candidate(spec)], rates["setup_s"][candidate(spec)],
                      len(views_for(plan.cfg.predict.views)), n_val, n_train, len(comp.test_ids),
                      rates["train"].get(candidate(spec, True)),
                      dim and dim * spec.feature_grid**2, comp.n_classes)  # fmt: skip
