"""./run.sh bench blend: every blend method on the config's cached OOF predictions: plain OOF score (weights fitted
and scored on the same rows), honest nested-CV score, and the gain over the best single model with a bootstrap
interval. The honest score fits every choice (TTA policy and merge per model, weights or stacker, the best single
model) on k-1 folds. Needs the predict stage done; computes no network output. Prints a table; no pass/fail.
"""

from __future__ import annotations

import numpy as np

from pipeline.app import build_plan
from pipeline.blending import METHODS, blend_models
from pipeline.stages.blend import gather

from .common import parse


def main() -> None:
    args, cfg, _ = parse(__doc__, lambda p: p.add_argument("--bootstrap", type=int, default=500), scratch_work=False)
    plan = build_plan(cfg)
    metric, b = cfg.competition.metric, cfg.blend
    y = plan.comp.train["y"].to_numpy()
    folds = plan.load(plan.one("folds"))
    models = gather(plan, plan.one("blend"))
    # the blend stage's own function, once per method: every choice (TTA policy and merge per model, weights, best
    # single) made on k-1 folds for the honest scores
    reports = {m: blend_models(models, y, folds, m, metric, b.tta, b.merge, b.seed, args.bootstrap)[1]
               for m in sorted(METHODS)}  # fmt: skip
    first = next(iter(reports.values()))
    for name in first["models"]:
        print(f"{name:>16}: OOF {metric} {first['single'][name]:.4f}  (TTA {first['tta'][name]['chosen']})")
    best = first["best_single_model"]
    print(f"best single model: {best} {first['best_single']:.4f} (chosen on all OOF rows: optimistic)")
    print(f"{'method':>8} {'OOF':>8} {'honest':>8} {'honest single':>13} {'honest gain [95% CI]':>30}  weights")
    for method, r in reports.items():
        g = [r["honest_gain_vs_best"]["mean"], *r["honest_gain_vs_best"]["ci95"]]
        w = " ".join(f"{v:.2f}" for v in r["weights"].values())
        print(f"{method:>8} {r['oof']:8.4f} {r['honest_cv']:8.4f} {r['honest_best_single']:13.4f} "
              f"{g[0]:+9.4f} [{g[1]:+.4f}, {g[2]:+.4f}]  {w}")  # fmt: skip
    print(f"rows {len(y)}, folds {len(np.unique(folds))}, metric {metric}")


if __name__ == "__main__":
    main()
