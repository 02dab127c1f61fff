"""Competition layouts to one table; image decoding; the decoded-image cache; datasets.

Every layout becomes a `Competition`: the train rows (id, original target, integer class y, optional group), the
test ids exactly as sample_submission.csv lists them, and for each row where its pixels come from (a file path, or a
row of a pixel CSV). CSVs are read as text so ids and labels are written back exactly as they came.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Config
from .infer import IMAGE_EXTS, InputError, load_resized, read_image  # noqa: F401 - decoding lives there
from .infer import open_image as _open
from .store import atomic_write, atomic_write_json, require_space, stable_hash


class DataError(InputError):
    """A problem with the competition's files, naming the file, the id or column, and what was expected."""


@dataclass
class Competition:
    name: str
    train: pd.DataFrame  # columns: id, target (text as in the CSV), y (int class index), group (optional)
    test_ids: pd.Series  # text, in sample_submission.csv order
    classes: list[str]  # y -> the target as the competition spells it (its most common spelling)
    train_sources: list  # per train row: a file path, or an index into train_pixels
    test_sources: list
    sample: pd.DataFrame  # sample_submission.csv as text
    train_pixels: np.ndarray | None = None  # (n, H, W) uint8, pixels layout only
    test_pixels: np.ndarray | None = None
    labels: Labels | None = None  # how targets are spelled: lookup() maps any spelling to its class index
    submit_format: str = "label"  # label | probability | class_probs, resolved from the config and the sample
    notes: list[str] = field(default_factory=list)  # what was normalised on the way (shown once by the CLI)
    pixel_fractions: bool = False  # pixels layout: the CSVs held 0..1 intensities, scaled by 255

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


# the strings pandas reads as missing (its default na_values): a label spelled so is a missing label
MISSING = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
           "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}  # fmt: skip


def _number(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


class Labels:
    """How a competition spells its classes. Labels are compared stripped of surrounding white space, and as numbers
    when every label is a number ("1" and "1.0" are one class); each class is written back with its most common
    spelling. Classes are ordered numerically when numeric, else alphabetically."""

    def __init__(self, values: pd.Series):
        stripped = values.str.strip()
        self.numeric = all(_number(v) is not None for v in stripped)
        keys = [self.key(v) for v in stripped]
        spellings: dict = {}
        for k, v in zip(keys, stripped):
            spellings.setdefault(k, {}).setdefault(v, 0)
            spellings[k][v] += 1
        self.order = sorted(spellings)
        self.classes = [max(spellings[k].items(), key=lambda kv: kv[1])[0] for k in self.order]
        self.index = {k: i for i, k in enumerate(self.order)}
        self.variants = {self.classes[self.index[k]]: sorted(v) for k, v in spellings.items() if len(v) > 1}
        self.n_stripped = int((stripped != values).sum())

    def key(self, value: str):
        v = str(value).strip()
        return _number(v) if self.numeric and _number(v) is not None else v

    def lookup(self, value: str) -> int | None:
        """The class index of a label spelled any way the competition spells it, or None."""
        return self.index.get(self.key(value))


def missing_labels(values: pd.Series) -> pd.Series:
    return values.str.strip().isin(MISSING)


def _index_dir(folder: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Map both 'name.ext' and 'name' to the file name of every image in folder (one listing, not one stat per id);
    and the names without extension that several files share ('s1' for s1.png and s1.jpg)."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    index: dict[str, str] = {}
    stems: dict[str, list[str]] = {}
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTS):
            index[entry.name] = entry.name
            stems.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)
    for stem, names in stems.items():
        index.setdefault(stem, names[0])
    return index, {k: sorted(v) for k, v in stems.items() if len(v) > 1}


def resolve_images(ids: pd.Series, folder: Path, ext: str | None, what: str) -> list[str]:
    index, ambiguous = _index_dir(folder)
    paths, missing, unclear = [], [], []
    for i in ids:
        key = i + ext if ext and not i.lower().endswith(IMAGE_EXTS) else i
        name = index.get(key)
        if name is None:
            missing.append(i)
        elif not ext and key not in (name,) and key in ambiguous:
            unclear.append(f"{i} ({', '.join(ambiguous[key])})")
        else:
            paths.append(str(folder / name))
    if missing:
        raise DataError(
            f"{len(missing)} {what} id(s) have no image in {folder} (ids with or without extension are accepted), "
            f"first: {missing[:5]}"
        )
    if unclear:
        raise DataError(f"{len(unclear)} {what} id(s) match several files in {folder}, first: {unclear[:5]}; keep one "
                        f"file per id, or set competition.image_ext (e.g. .png) to say which")  # fmt: skip
    return paths


def _pixel_array(df: pd.DataFrame, path: Path, size: list[int] | None, fractions: bool | None = None):
    """(n, h, w) uint8 from pixel columns, and whether they were fractions (0..1, scaled by 255). The test CSV is
    read with the train CSV's decision, so both are scaled alike."""
    n_pix = df.shape[1]
    if size:
        h, w = size
    else:
        h = w = int(round(math.sqrt(n_pix)))
    if h * w != n_pix:
        raise DataError(f"{path}: {n_pix} pixel columns do not make a {h}x{w} image; set competition.pixels_image_size")
    values = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    bad = np.isnan(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: {int(bad.sum())} pixel cell(s) are empty or not numbers, first at data row {r + 1}, "
                        f"column {df.columns[c]!r} (value {df.iat[r, c]!r})")  # fmt: skip
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0..255 (or 0..1), found {values.min()}..{values.max()}")
    if fractions is None:
        fractions = bool(values.max() <= 1.0)  # intensities given as 0..1: scaled by 255, not truncated to 0 and 1
    elif fractions and values.max() > 1.0:
        raise DataError(f"{path}: pixel values up to {values.max()}, but the train CSV's lie in 0..1; use one scale")
    if fractions:
        values = values * 255.0
    return np.rint(values).astype(np.uint8).reshape(-1, h, w), fractions


def load_competition(cfg: Config) -> Competition:
    c = cfg.competition
    root = cfg.root
    if c.embedded and not (root / c.sample_submission).is_file():
        from .embedded import build_embedded

        build_embedded(c.embedded, root)
    sample_path = root / c.sample_submission
    sample = read_csv(sample_path, "sample submission")
    if sample.shape[1] < 2:
        raise DataError(f"{sample_path}: expected an id column and at least one target column")
    if len(sample) == 0:
        raise DataError(f"{sample_path} lists no test ids: there is nothing to predict (a header-only submission "
                        f"would be published)")  # fmt: skip
    test_ids = sample.iloc[:, 0]
    dup = test_ids[test_ids.duplicated()]
    if len(dup):
        raise DataError(f"{sample_path}: duplicated ids, first: {list(dup[:5])}")
    train_pixels = test_pixels = None
    notes: list[str] = []
    fractions = False

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
        train_pixels, fractions = _pixel_array(df.drop(columns=[c.target_col]), path, c.pixels_image_size)
        if fractions:
            notes.append(f"{path}: pixel values lie in 0..1; scaled by 255 (train and test alike)")
        tpath = root / c.test_csv
        tdf = read_csv(tpath, "test CSV")
        test_pixels, _ = _pixel_array(tdf, tpath, c.pixels_image_size or list(train_pixels.shape[1:]), fractions)
        if len(tdf) != len(test_ids):
            raise DataError(f"{tpath} has {len(tdf)} rows but {root / c.sample_submission} lists {len(test_ids)} ids")
        train_sources = list(range(len(train)))
        test_sources = list(range(len(tdf)))  # the i-th sample_submission row is the i-th test CSV row

    if train["id"].duplicated().any():
        raise DataError(f"train ids must be unique, repeated: {list(train['id'][train['id'].duplicated()][:5])}")
    empty = missing_labels(train["target"])
    if empty.any():
        raise DataError(f"{int(empty.sum())} train row(s) without a target (empty, or a word pandas reads as missing "
                        f"such as NaN or NA), first ids: {list(train['id'][empty][:5])}")  # fmt: skip
    if c.group_col:
        no_group = train["group"].str.strip() == ""
        if no_group.any():
            raise DataError(f"{int(no_group.sum())} train row(s) have an empty '{c.group_col}' (the group column); "
                            f"they would all form one group. First ids: {list(train['id'][no_group][:5])}")  # fmt: skip
    labels = Labels(train["target"])
    classes = labels.classes
    if labels.n_stripped:
        notes.append(f"{labels.n_stripped} train target(s) had white space around them; compared without it")
    for spelled, variants in labels.variants.items():
        notes.append(f"train targets {variants} are one class, written back as {spelled!r}")
    if len(classes) < 2:
        raise DataError(f"the training targets hold {len(classes)} class(es); at least 2 are needed")
    if c.task == "binary" and len(classes) != 2:
        raise DataError(f"competition.task is binary but the targets hold {len(classes)} classes: {classes[:10]}")
    train["y"] = [labels.lookup(v) for v in train["target"]]
    from .submission import resolve_format

    fmt, fmt_notes = resolve_format(sample, labels, c.task, c.submit_format, c.metric, sample_path)
    return Competition(
        c.name, train.reset_index(drop=True), test_ids.reset_index(drop=True), classes, train_sources, test_sources,
        sample, train_pixels, test_pixels, labels, fmt, notes + fmt_notes,
        pixel_fractions=c.layout == "pixels" and fractions,
    )  # fmt: skip


def check_image(data: bytes, path) -> str | None:
    """Why these bytes are not a usable image (None when they are): empty, not an image, truncated, too large."""
    if not data:
        return "empty file (0 bytes)"
    try:
        with _open(data) as im:
            im.verify()  # structure and checksums (PNG), without a full decode
    except InputError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        return f"not a readable image ({type(err).__name__}: {err})"
    return None


def fingerprint(comp: Competition, split: str, stat_cache: Path) -> str:
    """Content hash of a split's pixels. A file is read and hashed again whenever its size, modification time,
    change time (ctime) or inode differ from when it was last hashed: every write to a file moves its ctime, and
    no tool sets ctime back, so an image edited in place with its size and mtime restored is still caught. A file
    read for hashing is also checked to be a usable image; every bad file is named at once, before any work."""
    pixels = comp.train_pixels if split == "train" else comp.test_pixels
    if pixels is not None:
        return stable_hash([list(pixels.shape), _bytes_hash(np.ascontiguousarray(pixels).tobytes())])
    cache = json.loads(stat_cache.read_text()) if stat_cache.is_file() else {}
    hashes, changed, bad = [], False, []
    for path in comp.sources(split):
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        rec = cache.get(path)
        if not rec or rec[:-1] != stamp:
            data = Path(path).read_bytes()
            problem = check_image(data, path)
            if problem:
                bad.append(f"{path}: {problem}")
                continue
            rec = [*stamp, _bytes_hash(data)]
            cache[path], changed = rec, True
        hashes.append(rec[-1])
    if changed:  # rewritten only when a file was (re)hashed: `status` and skipped runs write nothing
        try:
            atomic_write_json(stat_cache, cache)
        except OSError:
            pass  # only a cache (a read-only work dir is refused, by name, before any work)
    if bad:
        raise DataError(f"{len(bad)} {split} image(s) cannot be used:\n  " + "\n  ".join(bad[:20])
                        + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))  # fmt: skip
    return stable_hash(hashes)


def _bytes_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def build_image_cache(comp: Competition, split: str, size: int, interp: str, out: Path, workers: int = 4) -> None:
    """Decode and resize every image of a split once into a (n, size, size, 3) uint8 .npy read by memory map."""
    sources = comp.sources(split)
    pixels = comp.train_pixels if split == "train" else comp.test_pixels

    require_space(out.parent, len(sources) * size * size * 3, f"the {split} image cache")

    def write(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(sources), size, size, 3))
        with open(tmp, "r+b") as f:  # reserve the blocks now: a full disk is ENOSPC here, not SIGBUS mid-write
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise

        def load(source):
            try:
                return load_resized(source, pixels, size, interp), None
            except InputError as err:
                return None, str(err)

        bad = []
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for i, (img, problem) in enumerate(pool.map(load, sources)):
                if problem:
                    bad.append(problem)
                else:
                    arr[i] = img
        arr.flush()
        del arr
        if bad:  # every image that fails to decode is named, not only the first
            raise DataError(f"{len(bad)} {split} image(s) could not be decoded:\n  " + "\n  ".join(bad[:20])
                            + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))  # fmt: skip

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
