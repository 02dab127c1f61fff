"""./run.sh bench blend: every blend method on the config's cached OOF predictions: plain OOF score (weights fitted
and scored on the same rows), honest nested-CV score, and the gain over the best single model with a bootstrap
interval. Needs the predict stage done; computes no network output. Prints a table; no pass/fail.
"""

from __future__ import annotations

import numpy as np

from pipeline.blending import METHODS, bootstrap_gain, make_blend, nested_cv
from pipeline.metrics import GREATER_IS_BETTER, score
from pipeline.plan import build_plan
from pipeline.stages.blend import choose_tta, gather
from pipeline.tta import POLICIES, merge

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
        oofs.append(merge(m["oof"][[m["views"].index(v) for v in POLICIES[pol]]], how))
        single[name] = score(metric, y, oofs[-1])
        print(f"{name:>16}: OOF {metric} {single[name]:.4f}  (TTA {pol}/{how})")
    sign = 1 if GREATER_IS_BETTER[metric] else -1
    best = max(single, key=lambda n: sign * single[n])
    best_probs = oofs[list(models).index(best)]
    print(f"best single model: {best} {single[best]:.4f}")
    print(f"{'method':>8} {'OOF':>8} {'honest':>8} {'gain vs best [95% CI]':>30}  weights")
    for method in sorted(METHODS):
        b = make_blend(method, metric, cfg.blend.seed).fit(oofs, y)
        honest, _ = nested_cv(method, metric, oofs, y, folds, cfg.blend.seed)
        g = bootstrap_gain(metric, y, honest, best_probs, args.bootstrap, cfg.blend.seed)
        w = " ".join(f"{v:.2f}" for v in b.weights_)
        print(f"{method:>8} {score(metric, y, b.predict(oofs)):8.4f} {score(metric, y, honest):8.4f} "
              f"{g[0]:+9.4f} [{g[1]:+.4f}, {g[2]:+.4f}]  {w}")  # fmt: skip
    print(f"rows {len(y)}, folds {len(np.unique(folds))}, metric {metric}")


if __name__ == "__main__":
    main()
