"""./run.sh bench budget: the budget planner on competitions nobody tuned for, against scikit-learn's
HistGradientBoosting on raw pixels, in one command.

For each competition of bench/competitions.py (default: the five untuned ones) it fits the baselines on the raw
train pixels (HistGradientBoosting; with `--baselines hgb,svc` also an RBF SVC on standardised pixels) and scores
the held-out test labels (a baseline's score is kept beside the data and reused while the labels and scikit-learn's
version are the same); then, for each budget (default 5m, 10m, 30m), runs `python -m pipeline all --budget B`
from an empty work dir of its own with a config that holds only the `competition:` section (the preset `auto`), and
reads the held-out score from the submission's manifest. Prints per run the held-out score and its gain over the
best baseline, the wall time against the budget, the share of the budget spent on units whose model is in the
submission (from budget.json: shared image caches and folds count, units of models left out do not), and ends with
a table of the goals of issue 22 (10 minutes: +5 points or +0.05 AUC over the baseline; 5 minutes: not below it;
30 minutes at least 10 minutes; at least 0.9 of the budget on submitted units; within the budget + 5 %). No
pass/fail: it prints what it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sklearn
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from pipeline.config import REPO, parse_duration

from .competitions import METRIC, UNTUNED, build, competition_section, load_split


def baseline(kind: str, root: Path, metric: str) -> tuple[float, float, bool]:
    """Held-out score and seconds of a classifier on the raw pixels, and whether they were read from an earlier fit:
    kept beside the competition's data (`baseline-<kind>.json`) with the digests of its labels and scikit-learn's
    version, and reused while both match (boosting on glyphs alone takes 20 minutes on 2 cores)."""
    stamp = {"labels": [hashlib.sha256((root / f).read_bytes()).hexdigest() for f in ("train.csv", "test_labels.csv")],
             "sklearn": sklearn.__version__, "metric": metric}  # fmt: skip
    kept = root / f"baseline-{kind}.json"
    if kept.is_file() and (old := json.loads(kept.read_text()))["stamp"] == stamp:
        return old["score"], old["seconds"], True
    held, secs = fit_baseline(kind, root, metric)
    kept.write_text(json.dumps({"stamp": stamp, "score": held, "seconds": round(secs, 1)}))
    return held, secs, False


def fit_baseline(kind: str, root: Path, metric: str) -> tuple[float, float]:
    """Held-out score and seconds of a classifier on the raw pixels (hgb: HistGradientBoosting; svc: an RBF SVC on
    pixels scaled to [0, 1]; its decision function ranks for AUC)."""
    x_tr, y_tr = load_split(root, "train")
    x_te, y_te = load_split(root, "test")
    if (x_tr[..., :1] == x_tr).all():  # grayscale: one channel, not three copies
        x_tr, x_te = x_tr[..., :1], x_te[..., :1]
    x_tr, x = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    t0 = time.perf_counter()
    if kind == "hgb":
        model = HistGradientBoostingClassifier(random_state=0).fit(x_tr, y_tr)
    else:
        x_tr, x = x_tr / 255.0, x / 255.0
        model = SVC(kernel="rbf").fit(x_tr, y_tr)
    if metric == "auc":
        score = model.predict_proba(x)[:, 1] if kind == "hgb" else model.decision_function(x)
        held = roc_auc_score((y_te == model.classes_[1]).astype(int), score)
    else:
        held = float((model.predict(x) == y_te).mean())
    return held, time.perf_counter() - t0


def submitted_share(plan: dict) -> float:
    """Seconds of this run's units that the submission reads, over the budget: budget.json's `submitted_s` (each unit
    marked by the planner: shared features and image caches count for every model that reads them). Older files:
    a unit's label names its model second (`train/<model>/...`); units that name no ladder model serve them all."""
    if "submitted_s" in plan:
        return plan["submitted_s"] / plan["budget_s"]
    models = set(plan["recipe"]) | set(plan["not_this_time"])
    used = 0.0
    for u in plan["units"]:
        parts = u["unit"].split("/")
        model = parts[1] if len(parts) > 1 and parts[1] in models else None
        used += u["actual_s"] if model is None or model in plan["complete"] else 0.0
    return used / plan["budget_s"]


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


def goals(name: str, metric: str, base: float, runs: dict) -> str:
    """One row of the goals table: each budget's held-out score, and which of issue 22's goals it meets."""
    need = 0.05  # 5 points of accuracy, or 0.05 AUC
    cells, checks = [], []
    for budget, r in runs.items():
        if "error" in r:
            cells.append(f"{budget}: failed")
            continue
        limit = parse_duration(budget)
        cells.append(f"{budget}: {r['held']:.3f} ({r['held'] - base:+.3f}), {r['wall'] / limit:.2f} of it, "
                     f"{submitted_share(r['plan']):.2f} submitted")  # fmt: skip
        checks.append(r["wall"] <= 1.05 * limit and submitted_share(r["plan"]) >= 0.9)
        if limit <= 300:
            checks.append(r["held"] >= base)
        if limit == 600:
            checks.append(r["held"] >= base + need)
    ok = [r["held"] for b, r in runs.items() if "error" not in r and parse_duration(b) in (600, 1800)]
    if len(ok) == 2:
        checks.append(ok[1] >= ok[0])
    met = "all" if checks and all(checks) else f"{sum(checks)} of {len(checks)}"
    return f"| {name} ({metric}) | {base:.3f} | " + " | ".join(cells) + f" | {met} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--competitions", default=",".join(UNTUNED))
    ap.add_argument("--budgets", default="5m,10m,30m")
    ap.add_argument("--baselines", default="hgb", help="hgb, svc or both: the best of them is the bar")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every pipeline run")
    args = ap.parse_args()
    extra = [a for s in args.set for a in ("--set", s)]
    table = []
    for name in args.competitions.split(","):
        root = build(name, REPO / "data" / f"bench-{name}-{args.train}", args.train, args.test)
        metric = METRIC[name]
        bases = {}
        for kind in args.baselines.split(","):
            bases[kind], secs, kept = baseline(kind, root, metric)
            when = f" (fitted in {secs:.0f}s by an earlier run: {root.name}/baseline-{kind}.json)" if kept else \
                f" in {secs:.0f}s"  # fmt: skip
            print(f"{name}: {kind} on raw pixels, held-out {metric} {bases[kind]:.4f}{when}", flush=True)
        base = max(bases.values())
        runs = {}
        for budget in args.budgets.split(","):
            r = runs[budget] = pipeline_run(name, root, budget, extra)
            limit = parse_duration(budget)
            if "error" in r:
                print(f"  budget {budget}: failed after {r['wall']:.0f}s: {r['error']}", flush=True)
                continue
            print(f"  budget {budget:>4}: held-out {metric} {r['held']:.4f} ({r['held'] - base:+.4f} vs the best "
                  f"baseline), CV {r['cv']:.4f}, honest {r['honest']:.4f}, wall {r['wall']:.0f}s = "
                  f"{r['wall'] / limit:.2f} of the budget, {submitted_share(r['plan']):.2f} of it on submitted "
                  f"units; models {r['models']}" + (f", left out {r['left_out']}" if r["left_out"] else ""),
                  flush=True)  # fmt: skip
            units = r["plan"]["units"]
            est, act = sum(u["estimated_s"] for u in units), sum(u["actual_s"] for u in units)
            print(f"             planner: units estimated {est:.0f}s, took {act:.0f}s", flush=True)
        table.append(goals(name, metric, base, runs))
    print("| competition | best baseline | " + " | ".join(args.budgets.split(",")) + " | goals met |")
    print("| --- " * (3 + len(args.budgets.split(","))) + "|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
