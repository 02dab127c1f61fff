"""./run.sh bench export: the default competition's bundle, from an empty work dir, in one command.

1. `python -m pipeline all` trains the default competition (or --config) in a scratch work dir under work/.
2. `python -m pipeline export` writes its bundle, and `export --half` an fp16 one (its OOF change printed).
3. A new test set: the same test images copied under new names (so every test-side key changes). Timed on it, as a
   user runs each: the pipeline (`python -m pipeline all` pointed at the new set: test image cache, test features,
   network predictions, blend, submit, report; the fine-tuned models' OOF rows are predicted again too, as the
   predict unit holds both) and the bundle (`python predict.py`, isolated: decoding, resizing and every model).
   Both include their start-up. Printed: seconds, images/s and the ratio.
4. The bundle's file against the pipeline's on the same images: identical labels, largest probability difference,
   and the held-out score of each (the default competition keeps its test labels aside).
5. The bundle's networks rebuilt by timm (what it ships) against the same network as a TorchScript trace and as a
   torch.export program: output difference and forward images/s on CPU, one batch size, in this process.
No pass/fail.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import REPO, load_config
from pipeline.metrics import score
from pipeline.submission import as_submitted


def run(*args: str, cwd: Path = REPO) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - t0


def new_test_set(root: Path, cfg, scratch: Path) -> list[str]:
    """The test images under new names (n0.png ...), their sample and held-out labels: every test-side key changes."""
    c = cfg.competition
    sample = pd.read_csv(root / c.sample_submission, dtype=str)
    labels = pd.read_csv(root / c.holdout_labels, dtype=str)
    folder = scratch / "new-test"
    folder.mkdir()
    ids = sample.iloc[:, 0].tolist()
    for k, i in enumerate(ids):
        src = next((root / c.test_dir).glob(f"{Path(i).stem}.*"))
        shutil.copyfile(src, folder / f"n{k}{src.suffix}")
    new_ids = [f"n{k}" for k in range(len(ids))]
    sample.assign(**{sample.columns[0]: new_ids}).to_csv(scratch / "new_sample.csv", index=False)
    by_id = dict(zip(labels.iloc[:, 0], labels.iloc[:, 1]))
    pd.DataFrame({labels.columns[0]: new_ids, labels.columns[1]: [by_id[i] for i in ids]}).to_csv(
        scratch / "new_labels.csv", index=False)  # fmt: skip
    return [f"competition.test_dir={folder}", f"competition.sample_submission={scratch / 'new_sample.csv'}",
            f"competition.holdout_labels={scratch / 'new_labels.csv'}"]  # fmt: skip


def serialisations(bundle: Path, recipe: dict, batch: int = 64, reps: int = 5) -> list[str]:
    """timm rebuild vs TorchScript trace vs torch.export of the first fine-tuned member, on CPU."""
    import timm
    from safetensors.torch import load_file

    entry = next((m for m in recipe["models"] if m["kind"] == "finetune"), None)
    if entry is None:
        return ["(no fine-tuned model in the bundle)"]
    model = timm.create_model(entry["backbone"], pretrained=False, num_classes=entry["n_classes"])
    model.load_state_dict(load_file(str(bundle / entry["members"][0]["file"])))
    model.eval()
    x = torch.randn(batch, 3, entry["img_size"], entry["img_size"])
    out = {}
    with torch.no_grad():
        out["timm rebuild (shipped)"] = model
        out["TorchScript trace"] = torch.jit.freeze(torch.jit.trace(model, x))
        try:
            out["torch.export program"] = torch.export.export(model, (x,)).module()
        except Exception as err:  # noqa: BLE001 - report, do not fail the bench
            out[f"torch.export program: failed ({type(err).__name__})"] = None
        ref = model(x)
        lines = []
        for name, m in out.items():
            if m is None:
                lines.append(f"  {name}")
                continue
            m(x)
            t0 = time.perf_counter()
            for _ in range(reps):
                y = m(x)
            rate = batch * reps / (time.perf_counter() - t0)
            diff = float((y - ref).abs().max())
            lines.append(f"  {name:<24} {rate:8.0f} images/s   max |logit diff| vs timm {diff:.1e}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    scratch = REPO / "work" / f"bench-export-{time.strftime('%Y%m%d-%H%M%S')}"
    scratch.mkdir(parents=True)
    base = [
        "--set",
        f"runtime.work_dir={scratch / 'work'}",
        "--set",
        f"runtime.folds_dir={scratch / 'folds'}",
        "--set",
        f"runtime.submissions_dir={scratch / 'submissions'}",
        "--set",
        "runtime.progress=false",
    ]
    conf = (["--config", args.config] if args.config else []) + sum((["--set", a] for a in args.set), [])
    _, t_all = run("-m", "pipeline", "all", *conf, *base)
    print(f"trained from an empty work dir in {t_all:.0f} s", flush=True)
    exported, t_exp = run("-m", "pipeline", "export", *conf, *base, "--out", str(scratch / "bundle"))
    half, t_half = run("-m", "pipeline", "export", *conf, *base, "--out", str(scratch / "bundle-fp16"), "--half")
    cfg = load_config(args.config, args.set + [a for a in base if a != "--set"])
    sets = new_test_set(cfg.root, cfg, scratch)
    new = sum((["--set", s] for s in sets), [])
    out, t_pipe = run("-m", "pipeline", "all", *conf, *base, *new)
    n = len(pd.read_csv(scratch / "new_sample.csv"))
    bundle = scratch / "bundle"
    pred, t_bundle = run("-I", "predict.py", "--images", str(scratch / "new-test"), "--sample",
                         str(scratch / "new_sample.csv"), "--out", str(scratch / "bundle.csv"), "--probs",
                         str(scratch / "bundle_probs.npy"), cwd=bundle)  # fmt: skip
    cfg_new = load_config(args.config, args.set + [a for a in base + new if a != "--set"])
    from pipeline.app import build_plan

    plan = build_plan(cfg_new)
    blend = plan.load(plan.one("blend"))
    manifest = plan.load(plan.one("submit"))["manifest"]
    mine = np.load(scratch / "bundle_probs.npy")
    labels = pd.read_csv(scratch / "new_labels.csv", dtype=str)
    y = np.array([plan.comp.labels.lookup(v) for v in labels.iloc[:, 1]])
    fmt = plan.comp.submit_format
    bundle_sub = pd.read_csv(scratch / "bundle.csv", dtype=str)
    pipe_sub = pd.read_csv(plan.load(plan.one("submit"))["submission"], dtype=str)
    recipe = json.loads((bundle / "recipe.json").read_text())
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20  # noqa: E731
    print(f"\n{exported.strip()}\n{half.strip()}")
    print(f"\nbundle: {size(bundle):.1f} MiB (fp16: {size(scratch / 'bundle-fp16'):.1f} MiB), "
          f"{sum(len(m['members']) for m in recipe['models'])} member files, {len(recipe['models'])} models; "
          f"export {t_exp:.1f} s, --half {t_half:.1f} s (with its OOF pass)")  # fmt: skip
    print(f"\nnew test set of {n} images, each command from start to end:")
    print(f"  pipeline `all` on it   {t_pipe:6.1f} s  {n / t_pipe:6.1f} images/s")
    print(f"  bundle predict.py      {t_bundle:6.1f} s  {n / t_bundle:6.1f} images/s   ({t_pipe / t_bundle:.2f}x the "
          f"pipeline's speed)")  # fmt: skip
    print(f"  predict.py's own figure: {pred.strip().splitlines()[-1]}")
    print(f"\nsame file: labels identical {bundle_sub.equals(pipe_sub)}; largest probability difference "
          f"{np.abs(mine - blend['test_probs']).max():.1e}")  # fmt: skip
    metric = cfg.competition.metric
    print(f"held-out {metric}: pipeline {manifest['holdout_score']:.4f}, bundle "
          f"{score(metric, y, as_submitted(mine, fmt)):.4f}")  # fmt: skip
    print("\nserialising the fine-tuned network (CPU, batch 64, this process):")
    print("\n".join(serialisations(bundle, recipe)))
    print(f"\nscratch: {scratch} (remove it when done)")


if __name__ == "__main__":
    main()
