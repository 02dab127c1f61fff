"""The unit graph of a config: every unit's params and input keys, computed without running anything.

Stages execute the units of their stage from this plan; `status` reads the same plan. A key changes exactly when
the config slice that changes the unit's result, an input's key, or the stage's version changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, ModelSpec, model_params
from .data import Competition, build_image_cache, fingerprint, load_competition
from .executor import require_done, run_units
from .models import preprocessing, weights_id
from .store import Store, Unit, stable_hash
from .tta import views_for

# bump a stage's version when a code change alters what that stage writes
VERSIONS = {"folds": 1, "images": 1, "features": 1, "train": 3, "predict": 1, "blend": 1, "submit": 1}
FULL = -1  # the fold index of a full-data (refit) unit: trained on every train row, no held-out rows
PARTIAL = {"train": "resume.pt"}  # a file whose presence means a resumable, unfinished unit


@dataclass
class ModelUnit:
    spec: ModelSpec
    seed: int
    fold: int
    unit: Unit


@dataclass
class Plan:
    cfg: Config
    comp: Competition
    store: Store
    tables: dict[str, str]  # split -> key of its table
    folds: Unit
    images: dict[tuple[str, int, str], Unit] = field(default_factory=dict)
    features: dict[str, Unit] = field(default_factory=dict)  # model name -> features unit (head models)
    train: list[ModelUnit] = field(default_factory=list)
    predict: list[ModelUnit] = field(default_factory=list)
    blend: Unit | None = None
    submit: Unit | None = None
    _fingerprints: dict[str, str] = field(default_factory=dict)

    def fingerprint(self, split: str) -> str:
        if split not in self._fingerprints:
            self._fingerprints[split] = fingerprint(self.comp, split, self.store.root / "file-hashes.json")
        return self._fingerprints[split]

    def image_unit(self, split: str, spec: ModelSpec) -> Unit:
        prep = preprocessing(spec)
        k = (split, prep["cache_size"], prep["interpolation"])
        if k not in self.images:
            self.images[k] = Unit(
                "images", f"{split}/{prep['cache_size']}px-{prep['interpolation']}",
                {"size": prep["cache_size"], "interpolation": prep["interpolation"]},
                {"pixels": self.fingerprint(split), "table": self.tables[split]}, VERSIONS["images"],
            )  # fmt: skip
        return self.images[k]

    def units(self) -> list[tuple[Unit, str | None]]:
        """Every unit in execution order, with the name of its partial-state file (if the stage has one)."""
        out: list[Unit] = [self.folds, *self.images.values(), *self.features.values()]
        out += [m.unit for m in self.train] + [m.unit for m in self.predict]
        out += [u for u in (self.blend, self.submit) if u is not None]
        return [(u, PARTIAL.get(u.stage)) for u in out]


def table_hashes(comp: Competition) -> dict[str, str]:
    """Separate keys for the train table (ids, targets, groups) and the test ids, so that a reordered
    sample_submission redoes test predictions only, and new train labels never reuse a test cache."""
    cols = ["id", "target"] + (["group"] if "group" in comp.train else [])
    return {"train": stable_hash(comp.train[cols].to_numpy().tolist()), "test": stable_hash(comp.test_ids.tolist())}


def build_plan(cfg: Config) -> Plan:
    comp = load_competition(cfg)
    store = Store(cfg.work)
    tables = table_hashes(comp)
    c = cfg.competition
    fold_params = {**dataclasses.asdict(cfg.folds), "group_col": c.group_col}
    folds = Unit("folds", c.name, fold_params, {"table": tables["train"]}, VERSIONS["folds"])
    plan = Plan(cfg, comp, store, tables, folds)
    views = views_for(cfg.predict.views)
    for spec in cfg.models:
        prep = preprocessing(spec)
        wid = weights_id(spec.weights, spec.backbone)
        imgs = {"train_images": plan.image_unit("train", spec).key, "test_images": plan.image_unit("test", spec).key}
        if spec.kind == "head":
            feat_params = {"backbone": spec.backbone, "weights": wid, "img_size": spec.img_size, "prep": prep}
            if spec.feature_levels is not None:  # unset: the key it had before levels existed
                feat_params["levels"] = spec.feature_levels
            feat = Unit("features", spec.name, {**feat_params, "views": views}, imgs, VERSIONS["features"])
            plan.features[spec.name] = feat
            inputs = {"folds": folds.key, "features": feat.key}
        else:
            inputs = {"folds": folds.key, "train_images": imgs["train_images"]}
        params = {
            **model_params(spec),
            "weights_id": wid,
            "prep": prep,
            "metric": c.metric,
            "n_classes": comp.n_classes,
        }
        for seed in spec.seeds:
            for fold in [*range(cfg.folds.n_folds), *([FULL] if spec.refit else [])]:
                name = f"{spec.name}/seed{seed}/" + ("full" if fold == FULL else f"fold{fold}")
                t = Unit("train", name, {**params, "seed": seed, "fold": fold}, inputs, VERSIONS["train"])
                plan.train.append(ModelUnit(spec, seed, fold, t))
                p_inputs = {"model": t.key, **({"features": inputs["features"]} if spec.kind == "head" else imgs)}
                p = Unit("predict", t.name, {"views": views}, p_inputs, VERSIONS["predict"])
                plan.predict.append(ModelUnit(spec, seed, fold, p))
    blend_params = {**dataclasses.asdict(cfg.blend), "metric": c.metric}
    plan.blend = Unit("blend", cfg.submit.name, blend_params, {m.unit.name: m.unit.key for m in plan.predict},
                      VERSIONS["blend"])  # fmt: skip
    plan.submit = Unit("submit", cfg.submit.name,
                       {"name": cfg.submit.name, "format": c.submit_format, "task": c.task},
                       {"blend": plan.blend.key, **tables}, VERSIONS["submit"])  # fmt: skip
    return plan


def read_folds(plan: Plan) -> np.ndarray:
    """(n_train,) fold index per train row, from the folds unit, checked against the train ids."""
    require_done(plan.store, plan.folds)
    path = plan.store.dir(plan.folds) / "folds.csv"
    folds = pd.read_csv(path, dtype={"id": str, "fold": int}, keep_default_na=False)
    if folds["id"].tolist() != plan.comp.train["id"].tolist():
        raise ValueError(f"{path}: ids do not match the train table; rerun `./run.sh folds --force`")
    return folds["fold"].to_numpy()


def ensure_images(plan: Plan, split: str, spec: ModelSpec) -> Path:
    """The decoded-image cache of a split at the spec's cache size, built once (as a unit of its own)."""
    unit = plan.image_unit(split, spec)
    path = plan.store.dir(unit) / "images.npy"
    if plan.store.is_done(unit):
        return path
    prep = preprocessing(spec)

    def work(u: Unit, out: Path) -> dict:
        build_image_cache(plan.comp, split, prep["cache_size"], prep["interpolation"], out / "images.npy",
                          workers=max(2, plan.cfg.runtime.num_workers))  # fmt: skip
        return {"outputs": ["images.npy"], "scores": {"n": len(plan.comp.sources(split))}}

    run_units(plan.store, [unit], work)
    return path
