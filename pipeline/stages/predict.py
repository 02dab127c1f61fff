"""predict: out-of-fold and test probabilities of every trained unit, for every TTA view, kept per view.

Output `preds.npz` per unit: `views` (V,), `oof_rows` (n_val,) train row indices with `oof_ids` their ids,
`oof_probs` (V, n_val, C), `test_ids` (n_test,) and `test_probs` (V, n_test, C). Rows travel with every batch, so a
prediction is stored against the id it was computed for, never against a position in the loader's output. Merging
views (and choosing which) happens at blend time, so changing it recomputes no network output.
"""

from __future__ import annotations

import numpy as np
from safetensors.torch import load_file

from ..data import ImageDataset
from ..executor import require_done, run_units
from ..models import create_model, preprocessing
from ..plan import ModelUnit, Plan, ensure_images, read_folds
from ..runtime import Normalizer, make_loader, pick_device, place_model, run_views, setup_torch
from ..store import atomic_savez
from ..tta import views_for

NAME = "predict"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _predict_head(plan: Plan, mu: ModelUnit, train_dir, views: list[str], va_rows: np.ndarray):
    head = {k: v.numpy() for k, v in load_file(str(train_dir / "head.safetensors")).items()}
    feats = np.load(plan.store.dir(plan.features[mu.spec.name]) / "features.npz")
    idx = [list(feats["views"]).index(v) for v in views]

    def apply(x):  # (V, N, D) -> (V, N, C)
        return _softmax(((x - head["mean"]) / head["scale"]) @ head["coef"].T + head["intercept"])

    return apply(feats["train"][idx][:, va_rows].astype(np.float64)), apply(feats["test"][idx].astype(np.float64))


def _predict_network(plan: Plan, mu: ModelUnit, train_dir, views: list[str], va_rows: np.ndarray):
    cfg, spec, rt = plan.cfg, mu.spec, plan.cfg.runtime
    device = pick_device(rt)
    setup_torch(rt, device)
    prep = preprocessing(spec)
    model = create_model(spec, plan.comp.n_classes, load_weights=False)
    model.load_state_dict(load_file(str(train_dir / "model.safetensors")))
    model = place_model(model, rt, device).eval()
    norm = Normalizer(prep["mean"], prep["std"], device, rt.channels_last)
    out = []
    for split, rows in (("train", va_rows), ("test", np.arange(len(plan.comp.test_ids)))):
        if not len(rows):  # a full-data (refit) unit has no OOF rows
            out.append(np.zeros((len(views), 0, plan.comp.n_classes), np.float32))
            continue
        cache = ensure_images(plan, split, spec)
        loader = make_loader(ImageDataset(cache, rows), cfg.predict.batch_size, rt.num_workers, device)
        got_rows, probs = run_views(model, loader, views, spec.img_size, norm, rt.amp,
                                    desc=f"{mu.unit.name} {split}", show=rt.progress)  # fmt: skip
        order = {r: i for i, r in enumerate(got_rows.tolist())}
        out.append(probs[:, [order[r] for r in rows.tolist()]])  # back to the requested row order, by row id
    return out[0], out[1]


def run(plan: Plan, force: bool = False) -> None:
    views = views_for(plan.cfg.predict.views)
    train_of = {(m.spec.name, m.seed, m.fold): m.unit for m in plan.train}
    by_key = {m.unit.key: m for m in plan.predict}
    comp = plan.comp

    def work(unit, out):
        mu = by_key[unit.key]
        t = train_of[(mu.spec.name, mu.seed, mu.fold)]
        require_done(plan.store, t)
        va_rows = np.where(read_folds(plan) == mu.fold)[0]
        fn = _predict_head if mu.spec.kind == "head" else _predict_network
        oof_probs, test_probs = fn(plan, mu, plan.store.dir(t), views, va_rows)
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

    run_units(plan.store, [m.unit for m in plan.predict], work, force=force, config=plan.cfg.to_dict())
