"""The competition as one table; the decoded-image cache; datasets.

Every layout (read by its reader in layouts.LAYOUTS) becomes a `Competition`: the train rows (id, original target,
integer class y, optional group), the test ids exactly as sample_submission.csv lists them, and for each row where its
pixels come from (a file path, or a row of a pixel CSV). CSVs are read as text so ids and labels are written back
exactly as they came.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import embedded
from .config import Config
from .infer import InputError, load_resized  # decoding lives in infer, shared with exported bundles
from .infer import open_image as _open
from .inputs import DataError, missing_labels, read_csv
from .inputs import read_image as read_image  # re-exported: data.read_image is the decode path tests and users read
from .labels import ORDINAL, Labels, check_unique_ids, holdout_targets, positive_class
from .layouts import LAYOUTS
from .store import atomic_write, atomic_write_json, require_space, stable_hash
from .submission import resolve_format


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
    holdout_y: np.ndarray | None = None  # (n_test,) class index of each test id's held-out label, when given
    notes: list[str] = field(default_factory=list)  # what was normalised on the way (shown once by the CLI)
    pixel_fractions: bool = False  # pixels layout: the CSVs held 0..1 intensities, scaled by 255

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def sources(self, split: str) -> list:
        return self.train_sources if split == "train" else self.test_sources


def _read_sample(path: Path) -> pd.DataFrame:
    sample = read_csv(path, "sample submission")
    if sample.shape[1] < 2:
        raise DataError(f"{path}: expected an id column and at least one target column")
    if len(sample) == 0:
        raise DataError(f"{path} lists no test ids: there is nothing to predict (a header-only submission "
                        f"would be published)")  # fmt: skip
    check_unique_ids(sample.iloc[:, 0], str(path))
    return sample


def _embedded(c, root: Path) -> None:
    """Build the embedded data set when missing; a root that holds other data is refused (not published as it)."""
    if not (root / c.sample_submission).is_file():
        embedded.build_embedded(c.embedded, root)
        return
    readme = root / "README.txt"  # written by the builder: names the data set and scikit-learn
    text = readme.read_text() if readme.is_file() else ""
    if c.embedded not in text or "scikit-learn" not in text:
        raise DataError(f"{root} holds a competition that was not built from the embedded {c.embedded!r} data, and "
                        f"competition.embedded is {c.embedded!r}: remove `embedded` from the config for your own "
                        f"data, or point competition.root to the embedded data's folder")  # fmt: skip


def load_competition(cfg: Config) -> Competition:
    """The competition's files, read by its layout's reader (layouts.LAYOUTS), to one checked table."""
    c, root = cfg.competition, cfg.root
    if c.embedded:
        _embedded(c, root)
    sample_path = root / c.sample_submission
    sample = _read_sample(sample_path)
    notes: list[str] = []
    read = LAYOUTS[c.layout](c, root, sample, notes)
    train = read.train
    if c.group_col and "group" not in train:
        raise DataError(f"competition.group_col {c.group_col!r}: the {c.layout} layout has no group column (groups are "
                        f"read by the csv layout only)")  # fmt: skip
    check_unique_ids(train["id"], "train ids")
    labels = _labels(cfg, train, sample, notes, read.strict_labels)
    train["y"] = [labels.lookup(v) for v in train["target"]]
    _check_folds(cfg, labels, train["y"].to_numpy(), notes)
    holdout_y = None
    if c.holdout_labels:  # read now: a wrong path or label is said before any work
        holdout_y = holdout_targets(read_csv(root / c.holdout_labels, "held-out labels"), root / c.holdout_labels,
                                    sample, labels)  # fmt: skip
    fmt, fmt_notes = resolve_format(sample, labels, c.task, c.submit_format, c.metric, sample_path)
    return Competition(
        c.name, train.reset_index(drop=True), sample.iloc[:, 0].reset_index(drop=True), labels.classes,
        read.train_sources, read.test_sources, sample, read.train_pixels, read.test_pixels, labels, fmt, holdout_y,
        notes + fmt_notes, pixel_fractions=read.pixel_fractions,
    )  # fmt: skip


def _labels(cfg: Config, train: pd.DataFrame, sample: pd.DataFrame, notes: list[str], strict: str | None) -> Labels:
    """The classes of the train targets, in the order the metric and the submission columns read them. strict: where
    the class names come from when each is one a user made (never merged as one class), else None."""
    c = cfg.competition
    empty = missing_labels(train["target"])
    if empty.any():
        raise DataError(f"{int(empty.sum())} train row(s) without a target (empty, or a word pandas reads as missing "
                        f"such as NaN or NA), first ids: {list(train['id'][empty][:5])}")  # fmt: skip
    if c.group_col:
        no_group = train["group"] == ""
        if no_group.any():
            raise DataError(f"{int(no_group.sum())} train row(s) have an empty '{c.group_col}' (the group column); "
                            f"they would all form one group. First ids: {list(train['id'][no_group][:5])}")  # fmt: skip
    labels = Labels(train["target"], c.class_order, strict is not None, strict or "train targets")
    classes = labels.classes
    if labels.n_stripped:
        notes.append(f"{labels.n_stripped} train target(s) had white space around them; compared without it")
    for spelled, variants in labels.variants.items():
        notes.append(f"train targets {variants} are one class, written back as {spelled!r}")
    if labels.regression_like():
        raise DataError(f"competition.target_col {c.target_col!r} looks like a regression target: {len(classes)} "
                        f"distinct numbers with fractions among {len(train)} rows (e.g. {classes[:3]}); this pipeline "
                        f"classifies: bin the targets into classes")  # fmt: skip
    if len(classes) < 2:
        raise DataError(f"the training targets hold {len(classes)} class(es); at least 2 are needed")
    if c.task == "binary" and len(classes) != 2:
        raise DataError(f"competition.task is binary but the targets hold {len(classes)} classes: {classes[:10]}")
    if c.metric in ORDINAL and not labels.numeric and c.class_order is None:
        raise DataError(f"metric {c.metric} reads the classes as ordered, and the targets are text {classes[:10]}: "
                        f"set competition.class_order (lowest to highest), e.g. {classes[:3]}")  # fmt: skip
    if len(classes) == 2:
        rule = positive_class(labels, c.positive_class, list(sample.columns[1:]), c.class_order is not None)
        notes.append(f"positive class: {labels.classes[1]!r} (a probability column holds P({labels.classes[1]})): "
                     f"{rule}")  # fmt: skip
    elif c.positive_class is not None:
        raise DataError(f"competition.positive_class is for two classes; the targets hold {len(classes)}")
    return labels


def _check_folds(cfg: Config, labels: Labels, y: np.ndarray, notes: list[str]) -> None:
    n_folds, counts = cfg.folds.n_folds, np.bincount(y, minlength=len(labels.classes))
    few = {labels.classes[k]: int(n) for k, n in enumerate(counts) if n < n_folds}
    if counts.max() < n_folds:
        raise DataError(f"folds.n_folds={n_folds} is more than the train rows of every class (rows per class: "
                        f"{dict(zip(labels.classes, counts.tolist()))}): lower folds.n_folds")  # fmt: skip
    if few:
        notes.append(f"class(es) with fewer train rows than folds.n_folds={n_folds}: {few}; some folds hold none")


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
