"""Competition layouts to one table; image decoding; the decoded-image cache; datasets.

Every layout becomes a `Competition`: the train rows (id, original target, integer class y, optional group), the
test ids exactly as sample_submission.csv lists them, and for each row where its pixels come from (a file path, or a
row of a pixel CSV). CSVs are read as text so ids and labels are written back exactly as they came.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .config import Config
from .store import atomic_write, atomic_write_json, stable_hash

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A problem with the competition's files, naming the file, the id or column, and what was expected."""


@dataclass
class Competition:
    name: str
    train: pd.DataFrame  # columns: id, target (text as in the CSV), y (int class index), group (optional)
    test_ids: pd.Series  # text, in sample_submission.csv order
    classes: list[str]  # y -> original target text
    train_sources: list  # per train row: a file path, or an index into train_pixels
    test_sources: list
    sample: pd.DataFrame  # sample_submission.csv as text
    train_pixels: np.ndarray | None = None  # (n, H, W) uint8, pixels layout only
    test_pixels: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def sources(self, split: str) -> list:
        return self.train_sources if split == "train" else self.test_sources


def read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many types for malformed files
        raise DataError(f"{what} {path} could not be read as CSV: {err}") from None


def require_columns(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)} (set them in the config)")


def class_order(values: pd.Series) -> list[str]:
    uniq = sorted(set(values))
    try:
        return sorted(uniq, key=lambda v: float(v))
    except ValueError:
        return uniq


def _index_dir(folder: Path) -> dict[str, str]:
    """Map both 'name.ext' and 'name' to the file name of every image in folder (one listing, not one stat per id)."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    index: dict[str, str] = {}
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTS):
            index[entry.name] = entry.name
            index.setdefault(os.path.splitext(entry.name)[0], entry.name)
    return index


def resolve_images(ids: pd.Series, folder: Path, ext: str | None, what: str) -> list[str]:
    index = _index_dir(folder)
    paths, missing = [], []
    for i in ids:
        name = index.get(i + ext) if ext and not i.lower().endswith(ext.lower()) else index.get(i)
        if name is None:
            missing.append(i)
        else:
            paths.append(str(folder / name))
    if missing:
        raise DataError(
            f"{len(missing)} {what} id(s) have no image in {folder} (ids with or without extension are accepted), "
            f"first: {missing[:5]}"
        )
    return paths


def _pixel_array(df: pd.DataFrame, path: Path, size: list[int] | None) -> np.ndarray:
    n_pix = df.shape[1]
    if size:
        h, w = size
    else:
        h = w = int(round(math.sqrt(n_pix)))
    if h * w != n_pix:
        raise DataError(f"{path}: {n_pix} pixel columns do not make a {h}x{w} image; set competition.pixels_image_size")
    try:
        values = df.to_numpy(dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path}: pixel columns must be numbers ({err})") from None
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0..255, found {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(-1, h, w)


def load_competition(cfg: Config) -> Competition:
    c = cfg.competition
    root = cfg.root
    if c.embedded and not (root / c.sample_submission).is_file():
        from .embedded import build_embedded

        build_embedded(c.embedded, root)
    sample = read_csv(root / c.sample_submission, "sample submission")
    if sample.shape[1] < 2:
        raise DataError(f"{root / c.sample_submission}: expected an id column and at least one target column")
    test_ids = sample.iloc[:, 0]
    dup = test_ids[test_ids.duplicated()]
    if len(dup):
        raise DataError(f"{root / c.sample_submission}: duplicated ids, first: {list(dup[:5])}")
    train_pixels = test_pixels = None

    if c.layout == "csv":
        path = root / c.train_csv
        df = read_csv(path, "train CSV")
        require_columns(df, [c.id_col, c.target_col] + ([c.group_col] if c.group_col else []), path)
        train = pd.DataFrame({"id": df[c.id_col], "target": df[c.target_col]})
        if c.group_col:
            train["group"] = df[c.group_col]
        train_sources = resolve_images(train["id"], root / c.train_dir, c.image_ext, "train")
        test_sources = resolve_images(test_ids, root / c.test_dir, c.image_ext, "test")
    elif c.layout == "folders":
        tdir = root / c.train_dir
        if not tdir.is_dir():
            raise DataError(f"train folder not found: {tdir} (expected one sub-folder per class)")
        rows = []
        for cls in sorted(p.name for p in tdir.iterdir() if p.is_dir()):
            for name in sorted(os.listdir(tdir / cls)):
                if name.lower().endswith(IMAGE_EXTS):
                    rows.append((f"{cls}/{name}", cls, str(tdir / cls / name)))
        if not rows:
            raise DataError(f"{tdir}: no images found in class sub-folders")
        train = pd.DataFrame(rows, columns=["id", "target", "source"])
        train_sources = train.pop("source").tolist()
        test_sources = resolve_images(test_ids, root / c.test_dir, c.image_ext, "test")
    else:  # pixels
        path = root / c.train_csv
        df = read_csv(path, "train CSV")
        require_columns(df, [c.target_col], path)
        train = pd.DataFrame({"id": [str(i) for i in range(len(df))], "target": df[c.target_col]})
        train_pixels = _pixel_array(df.drop(columns=[c.target_col]), path, c.pixels_image_size)
        tpath = root / c.test_csv
        tdf = read_csv(tpath, "test CSV")
        test_pixels = _pixel_array(tdf, tpath, c.pixels_image_size or list(train_pixels.shape[1:]))
        if len(tdf) != len(test_ids):
            raise DataError(f"{tpath} has {len(tdf)} rows but {root / c.sample_submission} lists {len(test_ids)} ids")
        train_sources = list(range(len(train)))
        test_sources = list(range(len(tdf)))  # the i-th sample_submission row is the i-th test CSV row

    if train["id"].duplicated().any():
        raise DataError(f"train ids must be unique, repeated: {list(train['id'][train['id'].duplicated()][:5])}")
    empty = train["target"] == ""
    if empty.any():
        raise DataError(f"train rows without a target, first ids: {list(train['id'][empty][:5])}")
    classes = class_order(train["target"])
    if len(classes) < 2:
        raise DataError(f"the training targets hold {len(classes)} class(es); at least 2 are needed")
    if c.task == "binary" and len(classes) != 2:
        raise DataError(f"competition.task is binary but the targets hold {len(classes)} classes: {classes[:10]}")
    train["y"] = train["target"].map({v: i for i, v in enumerate(classes)}).astype(int)
    return Competition(
        c.name, train.reset_index(drop=True), test_ids.reset_index(drop=True), classes, train_sources, test_sources,
        sample, train_pixels, test_pixels,
    )  # fmt: skip


def read_image(path: str) -> np.ndarray:
    """Decode any image file to HxWx3 uint8 RGB (grayscale, RGBA, palette and 16-bit converted)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / max(arr.max(), 1) * 255
                return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DataError(f"image {path} could not be decoded: {err}") from None


PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def _load_resized(source, pixels: np.ndarray | None, size: int, interp: str) -> np.ndarray:
    if pixels is not None:
        im = Image.fromarray(pixels[source]).convert("RGB")
    else:
        im = Image.fromarray(read_image(source))
    if im.size != (size, size):
        im = im.resize((size, size), PIL_INTERP.get(interp, Image.BICUBIC))
    return np.asarray(im)


def fingerprint(comp: Competition, split: str, stat_cache: Path) -> str:
    """Content hash of a split's pixels; file hashes are reused while a file's size and mtime are unchanged."""
    pixels = comp.train_pixels if split == "train" else comp.test_pixels
    if pixels is not None:
        return stable_hash([list(pixels.shape), _bytes_hash(np.ascontiguousarray(pixels).tobytes())])
    cache = json.loads(stat_cache.read_text()) if stat_cache.is_file() else {}
    hashes, changed = [], False
    for path in comp.sources(split):
        st = os.stat(path)
        rec = cache.get(path)
        if not rec or rec[0] != st.st_size or rec[1] != st.st_mtime_ns:
            rec = [st.st_size, st.st_mtime_ns, _bytes_hash(Path(path).read_bytes())]
            cache[path], changed = rec, True
        hashes.append(rec[2])
    if changed:  # rewritten only when a file was (re)hashed: `status` and skipped runs write nothing
        atomic_write_json(stat_cache, cache)
    return stable_hash(hashes)


def _bytes_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def build_image_cache(comp: Competition, split: str, size: int, interp: str, out: Path, workers: int = 4) -> None:
    """Decode and resize every image of a split once into a (n, size, size, 3) uint8 .npy read by memory map."""
    sources = comp.sources(split)
    pixels = comp.train_pixels if split == "train" else comp.test_pixels

    def write(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(sources), size, size, 3))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for i, img in enumerate(pool.map(lambda s: _load_resized(s, pixels, size, interp), sources)):
                arr[i] = img
        arr.flush()
        del arr

    atomic_write(out, write)


class ImageDataset(torch.utils.data.Dataset):
    """Rows of a cached uint8 image array; returns (HWC uint8 image after transform, label, row index).

    The row index travels with every sample, so predictions are always mapped back to ids, never to loader order.
    The memory map is opened lazily, once per worker process.
    """

    def __init__(self, cache_path: Path, rows: np.ndarray, labels: np.ndarray | None = None, transform=None):
        self.cache_path = str(cache_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels
        self.transform = transform
        self._arr = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        # item: a position, or (position, seed) from a seeded sampler: augmentation is then a pure function of seed
        i, seed = item if isinstance(item, tuple) else (item, None)
        if self._arr is None:
            self._arr = np.load(self.cache_path, mmap_mode="r")
        row = int(self.rows[i])
        img = np.array(self._arr[row])  # a writable copy out of the read-only memory map
        if self.transform is not None:
            if seed is not None:
                # one stream shared by every transform. Compose.set_random_seed would give each transform its own
                # generator seeded alike, so their draws coincide (a p=0.5 hflip and vflip always together)
                self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            img = self.transform(image=img)["image"]
        label = -1 if self.labels is None else int(self.labels[row])
        return torch.from_numpy(np.ascontiguousarray(img)), label, row  # ids travel as row indices
