"""Snapshot members (`models.snapshots: N`): a fine-tune also keeps the weights of its N best epochs other than the
best one, ranked by the same validation metric, and each becomes a blend member of its own, `<model>@snap<k>`
(k = 1: the runner-up epoch of every seed x fold unit, k = 2: the third best, ...).

While training, the N + 1 best epochs so far (the best included, since a later best demotes it to a snapshot) are
kept as `snapshot-e<epoch>.safetensors`, each written from that epoch's own weights; the set is part of `resume.pt`
and files outside it are removed only after the state naming the new set is saved, so a killed training resumes with
the same files. At the end the best epoch's copy goes (it is `model.safetensors`) and `snapshots.json` records the
ranking: `epochs[k - 1]` is snapshot k's epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..metrics import GREATER_IS_BETTER
from ..store import atomic_write, atomic_write_json

INDEX = "snapshots.json"
SEP = "@snap"  # `@` is not allowed in a model name, so a member name never collides with a model's


def member_name(model: str, k: int) -> str:
    """The blend member of model's k-th snapshot (k = 0: the model itself, its best epochs)."""
    return f"{model}{SEP}{k}" if k else model


def file_name(epoch: int) -> str:
    return f"snapshot-e{epoch:03d}.safetensors"


def ranked(history: list[dict], metric: str) -> list[int]:
    """Epochs with a validation score, best first; ties go to the earlier epoch (as the best epoch does)."""
    sign = -1.0 if GREATER_IS_BETTER[metric] else 1.0
    scored = [(sign * row[metric], row["epoch"]) for row in history if row.get(metric) is not None]
    return [epoch for _, epoch in sorted(scored)]


def keep(out: Path, history: list[dict], metric: str, n: int, epoch: int, weights: dict) -> list[int]:
    """After `epoch` (its row already in `history`): the N + 1 best epochs so far; this epoch's weights written when
    it is one of them. Files that left the set stay until `prune`, after the state naming the new set is saved."""
    kept = ranked(history, metric)[: n + 1]
    if epoch in kept:
        atomic_write(out / file_name(epoch), lambda p: save_file(weights, str(p)))
    return kept


def prune(out: Path, kept: list[int]) -> None:
    """Remove snapshot files of epochs outside `kept` (left by a later epoch of a killed attempt, or demoted)."""
    names = {file_name(e) for e in kept}
    for p in out.glob("snapshot-e*.safetensors"):
        if p.name not in names:
            p.unlink(missing_ok=True)


def finish(out: Path, kept: list[int], best_epoch: int, metric: str, history: list[dict]) -> list[str]:
    """Drop the best epoch's copy, write the ranking; returns the output files (INDEX first)."""
    (out / file_name(best_epoch)).unlink(missing_ok=True)
    epochs = [e for e in kept if e != best_epoch]
    by_epoch = {row["epoch"]: row.get(metric) for row in history}
    atomic_write_json(out / INDEX, {"metric": metric, "best_epoch": best_epoch, "epochs": epochs,
                                    "scores": [by_epoch[e] for e in epochs]})  # fmt: skip
    return [INDEX, *[file_name(e) for e in epochs]]


def epochs(folder: Path) -> list[int]:
    """The snapshot epochs of a done training (snapshot k at index k - 1); [] when it kept none."""
    path = folder / INDEX
    return json.loads(path.read_text())["epochs"] if path.is_file() else []


def load_snapshot(folder: Path, k: int) -> dict:
    """The weights of snapshot k (1-based) of the training in `folder`."""
    kept = epochs(folder)
    if not 1 <= k <= len(kept):
        raise ValueError(f"{folder}: snapshot {k} asked for, but this training kept {len(kept)} (see {INDEX}); "
                         f"retrain it with models.snapshots >= {k}")  # fmt: skip
    return load_file(str(folder / file_name(kept[k - 1])))


def member_weights(loaded: dict, k: int) -> dict:
    """The weights a predict unit of snapshot k reads from its train unit's loaded outputs (k = 0: the best)."""
    return loaded["state_dict"] if k == 0 else loaded["snapshot"](k)
