"""./run.sh bench blend: every blend method on the config's cached OOF predictions: plain OOF score (weights fitted
and scored on the same rows), honest nested-CV score, and the gain over the best single model with a bootstrap
interval. The honest score fits every choice (TTA policy and merge per model, weights or stacker, the best single
model) on k-1 folds. Needs the predict stage done; computes no network output. Prints a table; no pass/fail.
"""

from __future__ import annotations

import numpy as np

from pipeline.app import build_plan
from pipeline.blending import METHODS, bootstrap_gain, choose_tta, honest_cv, make_blend
from pipeline.metrics import GREATER_IS_BETTER, score
from pipeline.stages.blend import gather
from pipeline.tta import merge_policy

from .common import parse


def main() -> None:
    args, cfg, _ = parse(__doc__, lambda p: p.add_argument("--bootstrap", type=int, default=500), scratch_work=False)
    plan = build_plan(cfg)
    metric = cfg.competition.metric
    y = plan.comp.train["y"].to_numpy()
    folds = plan.load(plan.one("folds"))
    models = gather(plan, plan.one("blend"))
    oofs, single = [], {}
    for name, m in models.items():
        _, pol, how = choose_tta(metric, y, m["views"], m["oof"], cfg.blend.tta, cfg.blend.merge)
        oofs.append(merge_policy(m["oof"], m["views"], pol, how))
        single[name] = score(metric, y, oofs[-1])
        print(f"{name:>16}: OOF {metric} {single[name]:.4f}  (TTA {pol}/{how})")
    sign = 1 if GREATER_IS_BETTER[metric] else -1
    best = max(single, key=lambda n: sign * single[n])
    print(f"best single model: {best} {single[best]:.4f} (chosen on all OOF rows: optimistic)")
    print(f"{'method':>8} {'OOF':>8} {'honest':>8} {'honest single':>13} {'honest gain [95% CI]':>30}  weights")
    for method in sorted(METHODS):
        b = make_blend(method, metric, cfg.blend.seed).fit(oofs, y)
        # every choice (TTA policy and merge per model, weights, best single) made on k-1 folds
        honest, honest_single, _, _ = honest_cv(models, y, folds, method, metric, cfg.blend.tta, cfg.blend.merge,
                                                cfg.blend.seed)  # fmt: skip
        g = bootstrap_gain(metric, y, honest, honest_single, args.bootstrap, cfg.blend.seed)
        w = " ".join(f"{v:.2f}" for v in b.weights_)
        print(f"{method:>8} {score(metric, y, b.predict(oofs)):8.4f} {score(metric, y, honest):8.4f} "
              f"{score(metric, y, honest_single):13.4f} {g[0]:+9.4f} [{g[1]:+.4f}, {g[2]:+.4f}]  {w}")  # fmt: skip
    print(f"rows {len(y)}, folds {len(np.unique(folds))}, metric {metric}")


if __name__ == "__main__":
    main()
