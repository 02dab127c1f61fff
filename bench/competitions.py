"""Competitions built offline from real images that ship inside installed packages (no download), in the csv layout
with held-out test labels. Two are the ones this project tunes on; the others were built to measure it on tasks
nobody tuned for.

- digits (tuned on): scikit-learn's 8x8 handwritten digits, 10 classes (the embedded default competition).
- patches (tuned on): 32x32 colour patches of scikit-learn's two sample photos, labelled by photo and quadrant.
- orient (untuned): 32x32 colour patches of three photos (scikit-learn's two, matplotlib's Grace Hopper), turned by
  0, 90, 180 or 270 degrees: which turn? 4 classes, accuracy.
- sources (untuned): 32x32 grayscale patches, with random brightness, contrast and noise, of five real images of
  different kinds (two photos, a portrait, an MRI slice, a terrain elevation map from matplotlib's sample data):
  which image? 5 classes, accuracy.
- flipped (untuned): 40x40 colour patches of the three photos, half of them upside down (flipped vertically):
  binary, AUC, probabilities submitted.

`build(name, root, n_train, n_test)` writes train/, test/, train.csv, test_labels.csv and sample_submission.csv.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

UNTUNED = ("orient", "sources", "flipped")
METRIC = {"digits": "accuracy", "patches": "accuracy", "orient": "accuracy", "sources": "accuracy", "flipped": "auc"}


def _photos() -> list[np.ndarray]:
    import matplotlib.cbook as cbook
    from sklearn.datasets import load_sample_images

    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    return [*load_sample_images().images, hopper]  # china (427x640), flower (427x640), hopper (600x512)


def _gray_sources() -> list[np.ndarray]:
    import matplotlib.cbook as cbook

    gray = [np.asarray(Image.fromarray(p).convert("L"), dtype=np.float32) for p in _photos()]
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as f:
        mri = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float32)
    dem = np.load(cbook.get_sample_data("jacksboro_fault_dem.npz", asfileobj=False))["elevation"].astype(np.float32)
    out = []
    for img in [*gray, mri, dem]:
        lo, hi = np.percentile(img, [1, 99])
        out.append(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1))
    return out


def _sample(rng, n: int, size: int, kind: str):
    """n (image uint8, label) pairs of one untuned task."""
    if kind in ("orient", "flipped"):
        photos = _photos()
        for _ in range(n):
            p = photos[int(rng.integers(len(photos)))]
            t, left = int(rng.integers(0, p.shape[0] - size)), int(rng.integers(0, p.shape[1] - size))
            patch = p[t : t + size, left : left + size]
            if kind == "orient":
                k = int(rng.integers(4))
                yield np.ascontiguousarray(np.rot90(patch, k)), str(90 * k)
            else:
                k = int(rng.integers(2))
                yield np.ascontiguousarray(patch[::-1] if k else patch), k
    else:  # sources
        images = _gray_sources()
        names = ["china", "flower", "hopper", "mri", "terrain"]
        for _ in range(n):
            c = int(rng.integers(len(images)))
            img = images[c]
            t, left = int(rng.integers(0, img.shape[0] - size)), int(rng.integers(0, img.shape[1] - size))
            patch = img[t : t + size, left : left + size] * rng.uniform(0.6, 1.2) + rng.uniform(-0.2, 0.2)
            patch = patch + rng.normal(0, 0.05, patch.shape)
            yield (np.clip(patch, 0, 1) * 255).round().astype(np.uint8), names[c]


SIZES = {"orient": 32, "sources": 32, "flipped": 40}


def build(name: str, root: Path, n_train: int = 3000, n_test: int = 1000, seed: int = 0) -> Path:
    """Write the competition once (its sample_submission.csv, written last, marks it built)."""
    root = Path(root)
    if (root / "sample_submission.csv").is_file():
        return root
    if name == "digits":
        from pipeline.embedded import build_digits

        build_digits(root)
        return root
    if name == "patches":
        from .patches import build as build_patches

        build_patches(root, n_train, n_test)
        return root
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(_sample(rng, n, SIZES[name], name)):
            image_id = f"{split}{i:05d}"
            Image.fromarray(img).save(root / split / f"{image_id}.png")
            rows.append((split, image_id, label))
    df = pd.DataFrame(rows, columns=["split", "id", "label"])
    df[df.split == "train"][["id", "label"]].to_csv(root / "train.csv", index=False)
    test = df[df.split == "test"]
    test[["id", "label"]].to_csv(root / "test_labels.csv", index=False)
    first = str(df["label"].iloc[0])
    pd.DataFrame({"id": test["id"], "label": 0 if name == "flipped" else first}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def competition_section(name: str, root: Path) -> dict:
    """The `competition:` section of a config for a built competition."""
    return {"name": name, "root": str(root), "layout": "csv", "metric": METRIC[name],
            "task": "binary" if name == "flipped" else "multiclass", "holdout_labels": "test_labels.csv"}  # fmt: skip


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, H, W, C) uint8, labels as text) of the train rows or the held-out test rows."""
    df = pd.read_csv(root / ("train.csv" if split == "train" else "test_labels.csv"), dtype=str)
    folder = root / split
    x = np.stack([np.asarray(Image.open(next(folder.glob(f"{i}.*"))).convert("RGB")) for i in df["id"]])
    return x, df["label"].to_numpy()
