"""./run.sh bench budget: the budget planner on competitions nobody tuned for, against scikit-learn's
HistGradientBoosting on raw pixels, in one command.

For each competition of bench/competitions.py (default: the untuned orient, sources, flipped) it fits
HistGradientBoosting on the raw train pixels and scores the held-out test labels; then, for each budget (default 5m
and 10m), runs `python -m pipeline all --budget B` from an empty work dir of its own with a config that holds only
the `competition:` section (the preset `auto`), and reads the held-out score from the submission's manifest. Prints
the held-out score, the wall time (against the budget) and the gain over HistGradientBoosting. No pass/fail.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from pipeline.config import REPO, parse_duration

from .competitions import METRIC, UNTUNED, build, competition_section, load_split


def hgb(root: Path, metric: str) -> tuple[float, float]:
    x_tr, y_tr = load_split(root, "train")
    x_te, y_te = load_split(root, "test")
    if (x_tr[..., :1] == x_tr).all():  # grayscale: one channel, not three copies
        x_tr, x_te = x_tr[..., :1], x_te[..., :1]
    t0 = time.perf_counter()
    model = HistGradientBoostingClassifier(random_state=0).fit(x_tr.reshape(len(x_tr), -1), y_tr)
    x = x_te.reshape(len(x_te), -1)
    if metric == "auc":
        held = roc_auc_score((y_te == model.classes_[1]).astype(int), model.predict_proba(x)[:, 1])
    else:
        held = float((model.predict(x) == y_te).mean())
    return held, time.perf_counter() - t0


def pipeline_run(name: str, root: Path, budget: str, extra: list[str]) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-budget-{name}-"))
    cfg = {"competition": competition_section(name, root),
           "runtime": {"work_dir": str(scratch / "work"), "folds_dir": str(scratch / "folds"),
                       "submissions_dir": str(scratch / "submissions"), "progress": False}}  # fmt: skip
    path = scratch / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "all", "--config", str(path), "--budget", budget, *extra],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"wall": wall, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    (manifest,) = (scratch / "submissions").glob("*.json")
    m = json.loads(manifest.read_text())
    plan = json.loads((scratch / "work" / name / "budget.json").read_text())
    return {"wall": wall, "held": m["holdout_score"], "cv": m["cv"], "honest": m["honest_cv"],
            "models": m["models"], "left_out": m.get("left_out", []), "plan": plan}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--competitions", default=",".join(UNTUNED))
    ap.add_argument("--budgets", default="5m,10m")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every pipeline run")
    args = ap.parse_args()
    extra = [a for s in args.set for a in ("--set", s)]
    rows = []
    for name in args.competitions.split(","):
        root = build(name, REPO / "data" / f"bench-{name}", args.train, args.test)
        metric = METRIC[name]
        base, t_hgb = hgb(root, metric)
        print(f"{name}: HistGradientBoosting on raw pixels, held-out {metric} {base:.4f} in {t_hgb:.0f}s", flush=True)
        for budget in args.budgets.split(","):
            r = pipeline_run(name, root, budget, extra)
            limit = parse_duration(budget)
            if "error" in r:
                print(f"  budget {budget}: failed after {r['wall']:.0f}s: {r['error']}", flush=True)
                continue
            rows.append((name, budget, r["held"] - base))
            print(f"  budget {budget:>4}: held-out {metric} {r['held']:.4f} ({r['held'] - base:+.4f} vs HGB), CV "
                  f"{r['cv']:.4f}, honest {r['honest']:.4f}, wall {r['wall']:.0f}s = {r['wall'] / limit:.2f} of the "
                  f"budget; models {r['models']}" + (f", left out {r['left_out']}" if r["left_out"] else ""),
                  flush=True)  # fmt: skip
            units = r["plan"]["units"]
            est, act = sum(u["estimated_s"] for u in units), sum(u["actual_s"] for u in units)
            print(f"             planner: units estimated {est:.0f}s, took {act:.0f}s", flush=True)
    if rows:
        gains = np.array([g for _, _, g in rows])
        print(f"gain over HistGradientBoosting: min {gains.min():+.4f}, mean {gains.mean():+.4f}")


if __name__ == "__main__":
    main()
