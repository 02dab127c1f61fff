"""predict: out-of-fold and test probabilities of every trained unit, for every TTA view, kept per view.

Output `preds.npz` per unit: `views` (V,), `oof_rows` (n_val,) train row indices with `oof_ids` their ids,
`oof_probs` (V, n_val, C), `test_ids` (n_test,) and `test_probs` (V, n_test, C). Rows travel with every batch, so a
prediction is stored against the id it was computed for, never against a position in the loader's output. Merging
views (and choosing which) happens at blend time, so changing it recomputes no network output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import ImageDataset
from ..folding import fold_rows
from ..infer import linear_softmax
from ..rates import model_rates
from ..runtime import make_loader, prepare_model, run_views
from ..stage import RunContext
from ..store import Unit, atomic_savez
from ..tta import views_for

NAME = "predict"
VERSION = 1
PARTIAL = None
IMPLICIT = False


def units(plan) -> list[Unit]:
    """One unit per trained unit: its OOF rows (none for a full-data unit) and every test image, every view."""
    views = views_for(plan.cfg.predict.views)
    out = []
    for t in plan.all("train"):
        spec = plan.cfg.model(t.meta["model"])
        if spec.kind == "head":
            inputs = {"model": t.key, "train_features": t.inputs["features"],
                      "test_features": plan.one("features", model=spec.name, split="test").key}  # fmt: skip
        else:
            inputs = {"model": t.key, "train_images": plan.images("train", spec).key,
                      "test_images": plan.images("test", spec).key}  # fmt: skip
        out.append(Unit(NAME, t.name, {"views": views}, inputs, VERSION, meta=dict(t.meta), gpu=t.gpu))
    return out


def _predict_head(plan, unit: Unit, views: list[str], va_rows: np.ndarray):
    head = plan.load_input(unit, "model")["head"]
    train, test = plan.load_input(unit, "train_features"), plan.load_input(unit, "test_features")

    def apply(x):  # (V, N, D) -> (V, N, C)
        return linear_softmax(x, head["coef"], head["intercept"], head["mean"], head["scale"])

    def rows(feats, rows=slice(None)):  # the views asked for, in their order
        return feats["feats"][[feats["views"].index(v) for v in views]][:, rows].astype(np.float64)

    return apply(rows(train, va_rows)), apply(rows(test))


def _predict_network(plan, unit: Unit, views: list[str], va_rows: np.ndarray):
    cfg, rt = plan.cfg, plan.cfg.runtime
    spec = cfg.model(unit.meta["model"])
    state = plan.load_input(unit, "model")["state_dict"]
    device, model, norm = prepare_model(spec, rt, plan.comp.n_classes, state_dict=state)
    model.eval()
    out = []
    for split, rows in (("train", va_rows), ("test", np.arange(len(plan.comp.test_ids)))):
        if not len(rows):  # a full-data (refit) unit has no OOF rows
            out.append(np.zeros((len(views), 0, plan.comp.n_classes), np.float32))
            continue
        cache = plan.load_input(unit, f"{split}_images")
        loader = make_loader(ImageDataset(cache, rows), cfg.predict.batch_size, rt.num_workers, device)
        got_rows, probs = run_views(model, loader, views, spec.img_size, norm, rt.amp,
                                    desc=f"{unit.name} {split}", show=rt.progress)  # fmt: skip
        order = {r: i for i, r in enumerate(got_rows.tolist())}
        out.append(probs[:, [order[r] for r in rows.tolist()]])  # back to the requested row order, by row id
    return out[0], out[1]


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    comp = plan.comp
    views = unit.params["views"]
    folds = plan.load_input(plan.input(unit, "model"), "folds")  # the assignment its model was trained on
    va_rows = fold_rows(folds, unit.meta["fold"])[1]
    fn = _predict_head if plan.cfg.model(unit.meta["model"]).kind == "head" else _predict_network
    oof_probs, test_probs = fn(plan, unit, views, va_rows)
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
    return 0.1 if r.spec.kind == "head" else r.setup + (r.n_val + r.n_test) * r.views / r.fwd


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
