"""./run.sh bench chaos [--faults N] [--executors local,processes,ray]: random faults during a small real run.

A tiny competition (3 digit classes, 36 train and 9 test images) with a fine-tuned test model (6 epochs) and a head,
3 folds, one torch thread per unit. First an undisturbed run per executor gives the reference submission and OOF
probabilities. Then, N times per executor, a fresh run gets one fault drawn from the kinds below at a random
instant; afterwards the run is finished (`all` again, up to 3 times) and compared with the reference:
- kill-run: SIGKILL of the run's whole process group (driver and workers);
- kill-owner: SIGKILL of the process holding a random unit's claim (the driver under `local`, else a worker);
- kill-node (ray only): the run goes to a two-node `ray.cluster_utils.Cluster` (1 CPU each), whose second node is
  removed without grace (its raylet and workers killed) at a random instant, then replaced by a fresh node;
- kill-after-done: SIGKILL of the whole run right after a new done.json appears;
- pause-owner: SIGSTOP of a unit's owner past claim_timeout (2 s here, heartbeat 0.5 s; under `local` the whole run,
  else one worker) while a second run, as another host whose clock is 2 h behind, finishes the work; then SIGCONT:
  the paused owner must commit nothing, and the first run finish;
- skewed-host: a second run as another host whose clock is 1 h ahead, started beside the first;
- corrupt-after-done: a byte of a random output flipped after the run finished (the next run must redo it);
- disk-full: the work dir on a 256 MB tmpfs, filled for 3 s at a random instant (skipped where mount is refused).
Printed per executor and kind: faults, runs finished, submissions and OOF identical to the reference, units
committed twice (two attempts of one unit that both reached `== done` while both were running, from the units'
logs), and leftover files (temporary files, staging folders, resume.pt, claims, locks). No pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.config import REPO

KINDS = ["kill-run", "kill-owner", "kill-after-done", "pause-owner", "skewed-host", "corrupt-after-done", "disk-full",
         "kill-node"]  # fmt: skip
MODELS = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "epochs": 6},
          {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip
FAST = {"PIPELINE_HEARTBEAT_S": "0.5"}
LEFTOVER = re.compile(r"(\.tmp-|^\.attempt-|^resume\.pt$|^claim\.json)")


def make_competition(root: Path) -> None:
    d = load_digits()
    images = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    train, test = [], []
    for c in range(3):
        idx = np.where(d.target == c)[0]
        train += idx[:12].tolist()
        test += idx[12:15].tolist()
    for split, rows in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        for i in rows:
            Image.fromarray(images[i], mode="L").save(root / split / f"i{i}.png")
    pd.DataFrame({"id": [f"i{i}" for i in train], "label": d.target[train]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": [f"i{i}" for i in test], "label": 0}).to_csv(root / "sample_submission.csv", index=False)


def write_config(comp: Path, base: Path, executor: str) -> Path:
    cfg = {"competition": {"name": "chaos", "root": str(comp), "layout": "csv"}, "folds": {"n_folds": 3, "seed": 0},
           "train": {"img_size": 32, "epochs": 2, "frozen_epochs": 1, "batch_size": 16, "lr": 0.01},
           "models": MODELS, "predict": {"views": "hflip", "batch_size": 32}, "blend": {"bootstrap": 50},
           "runtime": {"work_dir": str(base / "work"), "folds_dir": str(base / "folds"), "claim_timeout": 2,
                       "submissions_dir": str(base / "submissions"), "num_workers": 0, "progress": False,
                       "executor": executor, "threads": 1, "workers": 2}}  # fmt: skip
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cfg: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "all", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **FAST, **env})  # fmt: skip


def outputs(base: Path) -> dict:
    out = {"submission": b"".join(p.read_bytes() for p in sorted((base / "submissions").glob("*.csv")))}
    for path in sorted((base / "work").glob("*/predict/**/preds.npz")):
        with np.load(path) as d:
            out[str(path.parent.parent.relative_to(base / "work"))] = d["oof_probs"].tobytes()
    return out


def double_commits(base: Path) -> int:
    """Units two of whose attempts both reached `== done` while both were running, from the order of log lines."""
    n = 0
    for log in (base / "work").glob("**/log.txt"):
        events = re.findall(r"^== (run|resume|done)\b.*\(attempt (\w+)\)", log.read_text(), flags=re.M)
        start = {a: i for i, (e, a) in enumerate(events) if e != "done"}
        done = {a: i for i, (e, a) in enumerate(events) if e == "done"}
        spans = sorted((start.get(a, i), i) for a, i in done.items())
        n += any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:]))
    return n


def leftovers(base: Path) -> list[str]:
    return [str(p.relative_to(base)) for p in (base / "work").rglob("*") if LEFTOVER.search(p.name)]


def claim_pids(work: Path) -> list[int]:
    pids = []
    for c in work.glob("**/claim.json"):
        try:
            pids.append(int(json.loads(c.read_text())["pid"]))
        except Exception:  # noqa: BLE001 - written or removed meanwhile
            pass
    return pids


def wait_for(cond, proc: subprocess.Popen, limit: float = 120.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < limit and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.01)
    return False


def inject(kind: str, cfg: Path, base: Path, rng: random.Random, cluster=None) -> None:
    """Start a run, do the fault to it, and leave its processes ended."""
    work = base / "work"
    proc = start(cfg)
    if kind in ("kill-run", "kill-owner", "disk-full", "kill-node"):
        time.sleep(rng.uniform(2.0, 25.0))
    if kind == "kill-run" or (kind == "kill-after-done" and wait_for(lambda: _new_done(work), proc)):
        _killpg(proc, signal.SIGKILL)
    elif kind == "kill-owner":
        pids = claim_pids(work)
        if pids:
            _kill(rng.choice(pids), signal.SIGKILL)
    elif kind == "kill-node" and cluster is not None:
        cluster.remove_node(cluster.list_all_nodes()[-1], allow_graceful=False)
    elif kind == "pause-owner" and wait_for(lambda: claim_pids(work), proc):
        owner = rng.choice(claim_pids(work) or [proc.pid])
        stop = (lambda sig: _killpg(proc, sig)) if owner == proc.pid else (lambda sig: _kill(owner, sig))
        stop(signal.SIGSTOP)
        start(cfg, PIPELINE_HOST_ID="chaos-b", PIPELINE_CLOCK_SKEW="-7200").wait(timeout=900)
        stop(signal.SIGCONT)
    elif kind == "skewed-host":
        other = start(cfg, PIPELINE_HOST_ID="chaos-c", PIPELINE_CLOCK_SKEW="3600")
        other.wait(timeout=900)
    elif kind == "disk-full":
        _fill(work.parent / "filler")
        time.sleep(3.0)
        (work.parent / "filler").unlink(missing_ok=True)
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        _killpg(proc, signal.SIGKILL)
    if kind == "corrupt-after-done":
        files = [p for p in work.glob("*/*/**/*") if p.suffix in (".npz", ".safetensors", ".csv", ".npy")]
        path = rng.choice([p for p in files if p.stat().st_size > 0])
        data = bytearray(path.read_bytes())
        data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(data)


_seen_done: set[str] = set()


def _new_done(work: Path) -> bool:
    now = {str(p) for p in work.glob("**/done.json")}
    new = bool(now - _seen_done)
    _seen_done.update(now)
    return new


def _fill(path: Path) -> None:
    """Write zeros until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 20))
    except OSError:
        pass
    finally:
        os.close(fd)


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def finish(cfg: Path) -> bool:
    for _ in range(3):
        if subprocess.run([sys.executable, "-m", "pipeline", "all", "--config", str(cfg)], cwd=REPO,
                          capture_output=True, env={**os.environ, **FAST}).returncode == 0:  # fmt: skip
            return True
    return False


def one_fault(kind: str, comp: Path, scratch: Path, executor: str, ref: dict, rng: random.Random, cluster=None) -> dict:
    if kind == "kill-node" and cluster is None:
        return {}
    base = Path(tempfile.mkdtemp(dir=scratch))
    if kind == "disk-full":
        (base / "work").mkdir()
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(base)], capture_output=True)
        if mount.returncode != 0:
            return {"skipped": 1}
    cfg = write_config(comp, base, executor)
    _seen_done.clear()
    try:
        inject(kind, cfg, base, rng, cluster)
        if cluster is not None and len(cluster.list_all_nodes()) < 2:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
        ok = finish(cfg)
        same = ok and outputs(base) == ref
        return {"faults": 1, "finished": int(ok), "identical": int(same), "double": double_commits(base),
                "leftover": len(left := leftovers(base)), "files": left}  # fmt: skip
    finally:
        if kind == "disk-full":
            subprocess.run(["umount", "-l", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=7, help="faults per executor (kinds drawn in turn)")
    parser.add_argument("--executors", default="local,processes,ray")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="chaos-"))
    comp = scratch / "comp"
    make_competition(comp)
    kinds = args.kinds.split(",")
    print("| executor | fault | faults | runs finished | identical submission + OOF | double commits | leftovers |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for executor in args.executors.split(","):
        cluster = two_node_cluster() if executor == "ray" else None
        try:
            run_executor(executor, [k for k in kinds if k != "kill-node" or cluster], args.faults, comp, scratch,
                         rng, cluster)  # fmt: skip
        finally:
            if cluster is not None:
                cluster.shutdown()
                os.environ.pop("RAY_ADDRESS", None)
    shutil.rmtree(scratch, ignore_errors=True)


def two_node_cluster():
    """A head and one more node of 1 CPU each; the runs join it through RAY_ADDRESS."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    return cluster


def run_executor(executor: str, kinds: list[str], faults: int, comp: Path, scratch: Path, rng, cluster) -> None:
    ref_base = scratch / f"ref-{executor}"
    ref_base.mkdir()
    t0 = time.time()
    if not finish(write_config(comp, ref_base, executor)):
        print(f"| {executor} | (undisturbed run failed) | | | | | |", flush=True)
        return
    ref = outputs(ref_base)
    print(f"<!-- {executor}: undisturbed run {time.time() - t0:.0f} s -->", flush=True)
    rows: dict[str, dict] = {}
    for i in range(faults):
        kind = kinds[i % len(kinds)]
        t0 = time.time()
        res = one_fault(kind, comp, scratch, executor, ref, rng, cluster)
        row = rows.setdefault(kind, {})
        for k, v in res.items():
            if k != "files":
                row[k] = row.get(k, 0) + v
        bad = res.get("faults") and (res["identical"] < 1 or res["double"] or res["leftover"])
        print(f"<!-- fault {i} {kind}: {time.time() - t0:.0f} s{', ' + str(res) if bad else ''} -->", flush=True)
    for kind, r in rows.items():
        if r.get("faults"):
            print(f"| {executor} | {kind} | {r['faults']} | {r['finished']} | {r['identical']} | {r['double']} | "
                  f"{r['leftover']} |", flush=True)  # fmt: skip
        else:
            print(f"| {executor} | {kind} | skipped: mount -t tmpfs refused | | | | |", flush=True)


if __name__ == "__main__":
    main()
