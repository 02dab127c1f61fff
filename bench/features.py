"""./run.sh bench features: a softmax head on cached frozen-backbone features vs fine-tuning, on one fold.

Same backbone, weights, image size and fold. The head path's time includes computing the features of every train and
test image once (centre view); a second head (another seed or C) then costs only the fit. Prints times, their ratio
and both fold scores; no pass/fail.
"""

from __future__ import annotations

import copy
import time

from pipeline.plan import build_plan
from pipeline.scheduler import ensure_done

from .common import parse


def main() -> None:
    args, cfg, spec = parse(__doc__)
    head = copy.deepcopy(spec)
    head.name, head.kind, head.seeds = f"{spec.name}-head", "head", [0]
    tuned = copy.deepcopy(spec)  # the same spec fine-tuned (a head spec's feature levels do not apply)
    tuned.seeds, tuned.kind, tuned.feature_levels = [0], "finetune", None
    cfg.models = [tuned, head]
    cfg.predict.views = "none"
    plan = build_plan(cfg)
    ensure_done(plan, [plan.one("folds")])
    u_tuned = plan.one("train", model=tuned.name, seed=0, fold=0)
    u_head = plan.one("train", model=head.name, seed=0, fold=0)

    t0 = time.perf_counter()
    ensure_done(plan, [plan.one("features", model=head.name)])  # with its image caches
    t_feat = time.perf_counter() - t0
    ensure_done(plan, [u_head])
    t_head = time.perf_counter() - t0
    t1 = time.perf_counter()
    ensure_done(plan, [u_tuned])
    t_tuned = time.perf_counter() - t1
    m_head, m_tuned = plan.store.marker(u_head), plan.store.marker(u_tuned)
    metric = cfg.competition.metric
    levels = f", feature levels {head.feature_levels}" if head.feature_levels else ", pre-logits features"
    print(f"model {spec.backbone} {spec.img_size}px, weights {spec.weights}{levels}, fold 0 of {cfg.folds.n_folds}")
    print(f"head on cached features: {t_head:7.1f}s (features {t_feat:.1f}s, fit {t_head - t_feat:.1f}s)  "
          f"fold {metric} {m_head['scores'][metric]:.4f}")  # fmt: skip
    print(f"fine-tuning ({tuned.epochs} epochs) : {t_tuned:7.1f}s  fold {metric} {m_tuned['scores'][metric]:.4f}")
    fit = max(t_head - t_feat, 1e-9)
    print(f"time ratio fine-tune / head: {t_tuned / t_head:.1f}x (fit alone: {t_tuned / fit:.0f}x)")


if __name__ == "__main__":
    main()
