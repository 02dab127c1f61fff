"""./run.sh bench features: the features stage against a bare timm eval loop, then a softmax head on cached
frozen-backbone features vs fine-tuning, on one fold.

1. The features unit's images/s (every train and test image, centre view) against a bare loop doing the same
   forward passes (same model, size, batch, feature levels, device, threads) on the same cached images already in
   memory as one tensor: the stage's overhead (loader, views, writing) as a ratio, bare loop timed before and after.
2. Same backbone, weights, image size and fold: the head path's time includes computing the features of every train
   and test image once; a second head (another seed or C) then costs only the fit. Prints times, their ratio and
   both fold scores; no pass/fail.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from pipeline.app import build_plan
from pipeline.models import embed
from pipeline.runtime import amp_context, prepare_model
from pipeline.scheduler import ensure_done

from .common import parse


@torch.no_grad()
def bare_loop(plan, spec) -> float:
    """images/s of a plain loop: the same forward passes as the features unit (centre crop, batch of
    predict.batch_size), on the cached images already in memory, normalised in place."""
    rt = plan.cfg.runtime
    device, model, norm = prepare_model(spec, rt, plan.comp.n_classes, seed=0)
    model.eval()
    images = [torch.from_numpy(np.load(plan.load(plan.images(s, spec)))) for s in ("train", "test")]
    x_all = torch.cat(images)
    off = (x_all.shape[1] - spec.img_size) // 2
    bs = plan.cfg.predict.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(x_all), bs):
        x = norm(x_all[i : i + bs, off : off + spec.img_size, off : off + spec.img_size])
        with amp_context(device, rt.amp):
            embed(model, x, spec.feature_levels, spec.feature_grid)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(x_all) / (time.perf_counter() - t0)


def main() -> None:
    args, cfg, spec = parse(__doc__)
    head = copy.deepcopy(spec)
    head.name, head.kind, head.seeds = f"{spec.name}-head", "head", [0]
    tuned = copy.deepcopy(spec)  # the same spec fine-tuned (a head spec's feature levels do not apply)
    tuned.seeds, tuned.kind, tuned.feature_levels, tuned.feature_grid = [0], "finetune", None, 1
    cfg.models = [tuned, head]
    cfg.predict.views = "none"
    plan = build_plan(cfg)
    ensure_done(plan, [plan.one("folds")])
    u_tuned = plan.one("train", model=tuned.name, seed=0, fold=0)
    u_head = plan.one("train", model=head.name, seed=0, fold=0)

    ensure_done(plan, [plan.images(s, head) for s in ("train", "test")])  # image caches outside the timing
    feat_unit = plan.one("features", model=head.name)
    bare = [bare_loop(plan, head)]
    t0 = time.perf_counter()
    ensure_done(plan, [feat_unit])
    t_feat = time.perf_counter() - t0
    bare.append(bare_loop(plan, head))
    n = len(plan.comp.train) + len(plan.comp.test_ids)
    stage = n / plan.store.marker(feat_unit)["seconds"]
    print(f"features stage: {stage:.1f} images/s; bare timm eval loop: {bare[0]:.1f} before, {bare[1]:.1f} after "
          f"(images/s); ratio stage/bare {stage / np.mean(bare):.3f}")  # fmt: skip
    t1 = time.perf_counter()  # the head's fit alone: the second bare loop above is not part of the head path
    ensure_done(plan, [u_head])
    t_head = t_feat + time.perf_counter() - t1
    t1 = time.perf_counter()
    ensure_done(plan, [u_tuned])
    t_tuned = time.perf_counter() - t1
    m_head, m_tuned = plan.store.marker(u_head), plan.store.marker(u_tuned)
    metric = cfg.competition.metric
    levels = f", feature levels {head.feature_levels}" if head.feature_levels else ", pre-logits features"
    levels += f" over a {head.feature_grid}x{head.feature_grid} grid" if head.feature_grid > 1 else ""
    print(f"model {spec.backbone} {spec.img_size}px, weights {spec.weights}{levels}, fold 0 of {cfg.folds.n_folds}")
    print(f"head on cached features: {t_head:7.1f}s (features {t_feat:.1f}s, fit {t_head - t_feat:.1f}s)  "
          f"fold {metric} {m_head['scores'][metric]:.4f}")  # fmt: skip
    print(f"fine-tuning ({tuned.epochs} epochs) : {t_tuned:7.1f}s  fold {metric} {m_tuned['scores'][metric]:.4f}")
    fit = max(t_head - t_feat, 1e-9)
    print(f"time ratio fine-tune / head: {t_tuned / t_head:.1f}x (fit alone: {t_tuned / fit:.0f}x)")


if __name__ == "__main__":
    main()
