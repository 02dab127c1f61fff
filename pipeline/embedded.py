"""The embedded default competition, built from data that ships inside scikit-learn's wheel (no download).

`digits`: scikit-learn's 1,797 8x8 handwritten digits as a Kaggle-style folder: train.csv (id,label), train/*.png,
test/*.png, sample_submission.csv, and test_labels.csv (the held-out answers, read only by the final scoring step).
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .store import atomic_write_text, tmp_name

HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 2024


def build_digits(root: Path) -> None:
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    labels = digits.target
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=HOLDOUT_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    tmp = root.with_name(tmp_name(root.name))  # this process's own: a concurrent first use never shares it
    (tmp / "train").mkdir(parents=True)
    (tmp / "test").mkdir()
    for split, rows in (("train", train_idx), ("test", test_idx)):
        for i in rows:
            Image.fromarray(images[i], mode="L").save(tmp / split / f"img_{i:04d}.png")
    train_ids = [f"img_{i:04d}" for i in train_idx]
    test_ids = [f"img_{i:04d}" for i in test_idx]
    pd.DataFrame({"id": train_ids, "label": labels[train_idx]}).to_csv(tmp / "train.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": labels[test_idx]}).to_csv(tmp / "test_labels.csv", index=False)
    atomic_write_text(tmp / "README.txt", __doc__ or "")
    # sample_submission.csv is written last: its presence is what marks the competition as built
    pd.DataFrame({"id": test_ids, "label": 0}).to_csv(tmp / "sample_submission.csv", index=False)
    try:
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BUILDERS = {"digits": build_digits}


def build_embedded(name: str, root: Path) -> None:
    """Build once: concurrent first uses (two runs, workers of one) wait on a lock, and the one that comes second
    finds it built."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(f".{root.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process is killed
        if (root / "sample_submission.csv").is_file():
            return
        print(f"[data] building the embedded '{name}' competition in {root}", flush=True)
        for left in root.parent.glob(f".{root.name}.tmp-*"):  # a build killed midway (the lock is ours now)
            shutil.rmtree(left, ignore_errors=True)
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists but holds no sample_submission.csv; move it away to rebuild '{name}'")
        if root.exists():
            root.rmdir()
        BUILDERS[name](root)
