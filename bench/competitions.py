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
- glyphs (untuned, many classes, larger colour images): 48x48 colour images of one capital letter (26 classes), drawn
  in one of matplotlib's 22 text fonts (DejaVu, STIX, Computer Modern) at a random size, turn and place, in a colour
  set off from a random patch of the three photos behind it. Accuracy.
- scratches (untuned, binary with a rare class, larger colour images): 64x64 colour patches of the three photos, 6 %
  of them crossed by a thin straight scratch (1-2 px, random colour, angle and length): which have one? AUC.
- numerals (at scale): 28x28 grayscale images of one digit (10 classes) in the 22 fonts, on noise and a random
  gradient; built with `--train 60000 --test 10000` for the at-scale bench. Accuracy.

`build(name, root, n_train, n_test)` writes train/, test/, train.csv, test_labels.csv and sample_submission.csv.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

UNTUNED = ("orient", "sources", "flipped", "glyphs", "scratches")
METRIC = {"digits": "accuracy", "patches": "accuracy", "orient": "accuracy", "sources": "accuracy", "flipped": "auc",
          "glyphs": "accuracy", "scratches": "auc", "numerals": "accuracy"}  # fmt: skip
BINARY = ("flipped", "scratches")


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


def _fonts() -> list[Path]:
    """matplotlib's text fonts (its symbol-only fonts and the Display faces, which draw no letters, left out)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = [f for f in sorted(ttf.glob("*.ttf")) if f.name.startswith(("DejaVuS", "STIXGeneral", "cm"))]
    return [f for f in names if "Display" not in f.name and f.stem not in ("cmex10", "cmsy10")]


@functools.cache
def _font(path: Path, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(path), size)


def _glyph(rng, char: str, fonts: list, side: int) -> np.ndarray:
    """A float mask (side x side) of one character in a random font, size, turn and place."""
    from PIL import ImageDraw

    font = _font(fonts[int(rng.integers(len(fonts)))], int(side * rng.uniform(0.5, 0.85)))
    canvas = Image.new("L", (2 * side, 2 * side))
    left, top, right, bottom = font.getbbox(char)
    xy = (side - (left + right) / 2, side - (top + bottom) / 2)
    ImageDraw.Draw(canvas).text(xy, char, font=font, fill=255)
    canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    dx, dy = rng.integers(-side // 8, side // 8 + 1, size=2)
    box = (side // 2 + dx, side // 2 + dy, side // 2 + dx + side, side // 2 + dy + side)
    return np.asarray(canvas.crop(tuple(int(v) for v in box)), dtype=np.float32) / 255


def _patch(rng, photos: list[np.ndarray], size: int) -> np.ndarray:
    p = photos[int(rng.integers(len(photos)))]
    t, left = int(rng.integers(0, p.shape[0] - size)), int(rng.integers(0, p.shape[1] - size))
    return p[t : t + size, left : left + size]


def _letters(rng, n: int, size: int, chars: str, colour: bool):
    fonts = _fonts()
    photos = _photos() if colour else None
    for _ in range(n):
        c = chars[int(rng.integers(len(chars)))]
        mask = _glyph(rng, c, fonts, size)[..., None]
        if colour:
            back = _patch(rng, photos, size).astype(np.float32) * rng.uniform(0.4, 0.8)
            ink = rng.uniform(0, 255, 3) if rng.random() < 0.5 else np.full(3, 255.0)
            ink = np.where(back.mean() > 100, ink * 0.25, np.maximum(ink, 160))  # set off from the background
        else:
            ramp = np.linspace(0, 1, size)[None, :, None] * rng.uniform(-80, 80)
            back = rng.uniform(20, 110) + ramp * 0.6 + rng.normal(0, 12, (size, size, 1))
            ink = np.full(1, rng.uniform(180, 255))
        img = back * (1 - mask) + ink * mask
        img = np.clip(img, 0, 255).round().astype(np.uint8)
        yield (img if colour else img[..., 0]), c


def _scratched(rng, n: int, size: int, rate: float = 0.06):
    from PIL import ImageDraw

    photos = _photos()
    for _ in range(n):
        img = Image.fromarray(np.ascontiguousarray(_patch(rng, photos, size)))
        k = int(rng.random() < rate)
        if k:
            x0, y0 = rng.uniform(0, size, 2)
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.8) * size
            x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            ImageDraw.Draw(img).line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        yield np.asarray(img), k


def _sample(rng, n: int, size: int, kind: str):
    """n (image uint8, label) pairs of one untuned task."""
    if kind == "glyphs":
        yield from _letters(rng, n, size, "ABCDEFGHIJKLMNOPQRSTUVWXYZ", colour=True)
    elif kind == "numerals":
        yield from _letters(rng, n, size, "0123456789", colour=False)
    elif kind == "scratches":
        yield from _scratched(rng, n, size)
    elif kind in ("orient", "flipped"):
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


SIZES = {"orient": 32, "sources": 32, "flipped": 40, "glyphs": 48, "scratches": 64, "numerals": 28}


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
    pd.DataFrame({"id": test["id"], "label": 0 if name in BINARY else first}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def competition_section(name: str, root: Path) -> dict:
    """The `competition:` section of a config for a built competition."""
    return {"name": name, "root": str(root), "layout": "csv", "metric": METRIC[name],
            "task": "binary" if name in BINARY else "multiclass", "holdout_labels": "test_labels.csv"}  # fmt: skip


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, H, W, C) uint8, labels as text) of the train rows or the held-out test rows."""
    df = pd.read_csv(root / ("train.csv" if split == "train" else "test_labels.csv"), dtype=str)
    folder = root / split
    x = np.stack([np.asarray(Image.open(next(folder.glob(f"{i}.*"))).convert("RGB")) for i in df["id"]])
    return x, df["label"].to_numpy()
