"""predict: out-of-fold and test probabilities of every trained unit, for every TTA view, kept per view, computed by
the model's kind (pipeline/kinds).

Output `preds.npz` per unit: `views` (V,), `oof_rows` (n_val,) train row indices with `oof_ids` their ids,
`oof_probs` (V, n_val, C), `test_ids` (n_test,) and `test_probs` (V, n_test, C). Rows travel with every batch, so a
prediction is stored against the id it was computed for, never against a position in the loader's output. Merging
views (and choosing which) happens at blend time, so changing it recomputes no network output.

A model with `snapshots: N` gets N more units per fold unit, `<model>@snap<k>/seed<s>/fold<f>`, each predicting with
its train unit's k-th snapshot weights; `meta["member"]` names the blend member a unit belongs to (its model, or
`<model>@snap<k>`). Full-data units keep no snapshots: a snapshot member's test predictions come from its folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import kinds
from ..folding import fold_rows
from ..kinds.snapshots import member_name
from ..plan import FULL
from ..rates import model_rates
from ..stage import RunContext
from ..store import Unit, atomic_savez
from ..tta import views_for

NAME = "predict"
VERSION = 1
PARTIAL = None
IMPLICIT = False
FEEDS_BACK = "train"  # a pseudo-labelled model's train units read its source's predict units (stage.py)


def units(plan) -> list[Unit]:
    """One unit per trained unit (and per snapshot it keeps): its OOF rows (none for a full-data unit) and every test
    image, every view."""
    views = views_for(plan.cfg.predict.views)
    out = []
    for t in plan.all("train"):
        spec = plan.cfg.model(t.meta["model"])
        inputs = kinds.get(spec.kind).predict_inputs(plan, spec, t)
        meta = {**t.meta, "member": spec.name}
        out.append(Unit(NAME, t.name, {"views": views}, inputs, VERSION, meta=meta, gpu=t.gpu))
        for k in range(1, spec.snapshots + 1) if t.meta["fold"] != FULL else ():
            member = member_name(spec.name, k)
            name = f"{member}/{t.name.split('/', 1)[1]}"
            params = {"views": views, "snapshot": k}
            out.append(Unit(NAME, name, params, inputs, VERSION, meta={**meta, "member": member, "snapshot": k},
                            gpu=t.gpu))  # fmt: skip
    return out


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    comp = plan.comp
    views = unit.params["views"]
    folds = plan.load_input(plan.input(unit, "model"), "folds")  # the assignment its model was trained on
    va_rows = fold_rows(folds, unit.meta["fold"])[1]
    kind = kinds.get(plan.cfg.model(unit.meta["model"]).kind)
    oof_probs, test_probs = kind.predict(plan, unit, views, va_rows)
    arrays = {
        "views": np.array(views), "oof_rows": va_rows, "oof_ids": comp.train["id"].to_numpy()[va_rows].astype(str),
        "oof_probs": oof_probs.astype(np.float32), "test_ids": comp.test_ids.to_numpy().astype(str),
        "test_probs": test_probs.astype(np.float32),
    }  # fmt: skip
    atomic_savez(out / "preds.npz", **arrays)
    if not len(va_rows):
        return {"outputs": ["preds.npz"], "scores": {"test_rows": len(comp.test_ids)}}
    acc = float((oof_probs[0].argmax(1) == comp.train["y"].to_numpy()[va_rows]).mean())
    return {"outputs": ["preds.npz"], "scores": {"oof_acc_center": acc}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    r = model_rates(plan, unit, rates)
    return kinds.get(r.spec.kind).estimate(NAME, r.spec, r.sizes())


def load(plan, unit: Unit) -> dict:
    """The arrays of preds.npz, checked: its test ids are sample_submission's, its OOF ids those of its rows."""
    comp = plan.comp
    d = dict(np.load(plan.store.dir(unit) / "preds.npz"))
    if not np.array_equal(d["test_ids"], comp.test_ids.to_numpy().astype(str)):
        raise ValueError(f"{unit.label}: its test ids differ from sample_submission.csv; rerun predict")
    if not np.array_equal(d["oof_ids"], comp.train["id"].to_numpy()[d["oof_rows"]].astype(str)):
        raise ValueError(f"{unit.label}: OOF ids do not match their rows; rerun predict")
    d["views"] = [str(v) for v in d["views"]]
    return d
