"""features: a frozen pretrained backbone's pooled activations (pre-logits, or the pooled feature levels the model
spec names), computed once per TTA view for every train and test image and stored on disk; `kind: head` models
train a softmax on them in seconds."""

from __future__ import annotations

import numpy as np
import torch

from ..data import ImageDataset
from ..executor import run_units
from ..models import check_levels, create_model, preprocessing
from ..plan import Plan, ensure_images
from ..runtime import Normalizer, make_loader, pick_device, place_model, run_views, setup_torch
from ..store import atomic_savez
from ..tta import views_for

NAME = "features"


def run(plan: Plan, force: bool = False) -> None:
    cfg = plan.cfg
    rt = cfg.runtime
    specs = {s.name: s for s in cfg.models}
    by_key = {u.key: specs[name] for name, u in plan.features.items()}

    def work(unit, out):
        spec = by_key[unit.key]
        device = pick_device(rt)
        setup_torch(rt, device)
        prep = preprocessing(spec)
        views = views_for(cfg.predict.views)
        torch.manual_seed(0)  # the new head (unused here) and, with weights none, the backbone: a function of the key
        model = place_model(create_model(spec, plan.comp.n_classes), rt, device).eval()
        check_levels(model, spec.feature_levels, f"model {spec.name} ({spec.backbone})")
        norm = Normalizer(prep["mean"], prep["std"], device, rt.channels_last)
        arrays = {"views": np.array(views)}
        for split in ("train", "test"):
            cache = ensure_images(plan, split, spec)
            n = len(plan.comp.sources(split))
            loader = make_loader(ImageDataset(cache, np.arange(n)), cfg.predict.batch_size, rt.num_workers, device)
            rows, feats = run_views(model, loader, views, spec.img_size, norm, rt.amp, features=True,
                                    levels=spec.feature_levels, desc=f"{unit.name} {split}",
                                    show=rt.progress)  # fmt: skip
            out_arr = np.empty_like(feats)
            out_arr[:, rows] = feats  # rows travel with the batches: place each by its row index
            arrays[split] = out_arr.astype(np.float32)
        atomic_savez(out / "features.npz", **arrays)
        return {"outputs": ["features.npz"], "scores": {"dim": int(arrays["train"].shape[-1])}}

    run_units(plan.store, list(plan.features.values()), work, force=force, config=cfg.to_dict())
