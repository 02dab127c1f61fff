"""folds: stratified (or stratified-group) k-fold assignment, seeded; published to folds/<competition>.csv."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..config import resolve_path
from ..logs import log
from ..stage import RunContext
from ..store import Unit, atomic_write

NAME = "folds"
VERSION = 1
PARTIAL = None
IMPLICIT = False


def assign_folds(y: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(n,) fold index per row; stratified on y, and grouped (no group in two folds) when groups are given."""
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups)
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    fold = np.full(len(y), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        for k, (_, val) in enumerate(splits):
            fold[val] = k
    return fold


def units(plan) -> list[Unit]:
    c = plan.cfg.competition
    params = {**dataclasses.asdict(plan.cfg.folds), "group_col": c.group_col}
    return [Unit(NAME, c.name, params, {"table": plan.tables["train"]}, VERSION)]


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    comp, cfg = plan.comp, plan.cfg
    published = resolve_path(cfg.runtime.folds_dir) / f"{comp.name}.csv"
    groups = comp.train["group"].to_numpy() if "group" in comp.train else None
    if groups is not None and len(set(groups)) < cfg.folds.n_folds:
        raise ValueError(f"group column '{cfg.competition.group_col}' has {len(set(groups))} groups, fewer "
                         f"than folds.n_folds={cfg.folds.n_folds}")  # fmt: skip
    y = comp.train["y"].to_numpy()
    fold = assign_folds(y, cfg.folds.n_folds, cfg.folds.seed, groups)
    for k in range(cfg.folds.n_folds):  # said before any training: what a fold without a class means
        absent = [comp.classes[c] for c in range(comp.n_classes) if not ((fold == k) & (y == c)).any()]
        if absent:
            metric = cfg.competition.metric
            what = (f"{metric} is undefined on it, so its best epoch is chosen by log loss" if metric == "auc"
                    else f"its {metric} cannot show how they are predicted")  # fmt: skip
            log(NAME, f"WARNING fold {k} holds no held-out example of class(es) {absent[:10]} (fewer examples than "
                      f"folds, or groups): {what}")  # fmt: skip
    table = pd.DataFrame({"id": comp.train["id"], "fold": fold})
    text = table.to_csv(index=False)
    if published.is_file() and published.read_text() != text and not ctx.force:
        raise FileExistsError(
            f"{published} holds another fold assignment than this config gives (folds: {cfg.folds}); "
            f"move it away, or run `./run.sh folds --force` to replace it"
        )
    atomic_write(out / "folds.csv", lambda p: p.write_text(text))
    atomic_write(published, lambda p: p.write_text(text))
    return {"outputs": ["folds.csv"], "scores": {"sizes": np.bincount(fold).tolist()}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 0.2


def check(plan) -> dict[str, str]:
    """The published folds/<competition>.csv against the assignment the done folds unit wrote (and every model was
    trained and scored on): a file edited since is said by `status` and refused by a run."""
    (unit,) = plan.all(NAME)
    published = resolve_path(plan.cfg.runtime.folds_dir) / f"{plan.comp.name}.csv"
    if not published.is_file() or not plan.store.is_done(unit):
        return {}
    mine, theirs = (plan.store.dir(unit) / "folds.csv").read_text(), published.read_text()
    if mine == theirs:
        return {}
    diff = next((f"{a!r} there, {b!r} here" for a, b in zip(theirs.splitlines(), mine.splitlines()) if a != b), "")
    return {unit.key: f"{published} is not the fold assignment the models were trained and scored on "
                      f"({diff or 'another length'}): edited by hand, or published by a run with other folds settings; "
                      f"run `./run.sh folds --force` to publish this config's assignment again (the folds come from "
                      f"folds.n_folds and folds.seed)"}  # fmt: skip


def load(plan, unit: Unit) -> np.ndarray:
    """(n_train,) fold index per train row, checked against the train ids."""
    path = plan.store.dir(unit) / "folds.csv"
    folds = pd.read_csv(path, dtype={"id": str, "fold": int}, keep_default_na=False)
    if folds["id"].tolist() != plan.comp.train["id"].tolist():
        raise ValueError(f"{path}: ids do not match the train table; rerun `./run.sh folds --force`")
    return folds["fold"].to_numpy()
