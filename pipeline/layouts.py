"""The folders and pixels layouts read into the train table: every image a class folder holds (nested folders too),
and pixel CSVs whose columns are matched by name and whose 0..1 or 0..255 scale is decided on train and test
together. (The csv layout is a table already: see data.load_competition.)"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, read_csv, require_columns
from .labels import IMAGE_EXTS, check_unique_ids, id_key


def class_folders(tdir: Path, notes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Every image under each class folder, nested folders included (id: the path below tdir); files skipped are
    noted with why."""
    if not tdir.is_dir():
        raise DataError(f"train folder not found: {tdir} (expected one sub-folder per class)")
    rows, skipped = [], []
    for cls in sorted(p.name for p in tdir.iterdir() if p.is_dir()):
        for dirpath, dirnames, files in os.walk(tdir / cls):
            dirnames.sort()
            for name in sorted(files):
                rel = Path(dirpath, name).relative_to(tdir).as_posix()
                (rows if name.lower().endswith(IMAGE_EXTS) else skipped).append((rel, cls, str(tdir / rel)))
    loose = sorted(p.name for p in tdir.iterdir() if p.is_file())
    if skipped:
        notes.append(f"{tdir}: {len(skipped)} file(s) skipped, not an image extension ({' '.join(IMAGE_EXTS)}), "
                     f"first: {[r[0] for r in skipped[:5]]}")  # fmt: skip
    if loose:
        notes.append(f"{tdir}: {len(loose)} file(s) skipped, not in a class folder, first: {loose[:5]}")
    if not rows:
        raise DataError(f"{tdir}: no images found in class sub-folders")
    train = pd.DataFrame(rows, columns=["id", "target", "source"])
    return train, train.pop("source").tolist()


def _pixel_values(df: pd.DataFrame, path: Path) -> np.ndarray:
    """(n, n_pixels) float32 pixel values, every cell a number in 0..255 (or 0..1)."""
    values = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    bad = np.isnan(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: {int(bad.sum())} pixel cell(s) are empty or not numbers, first at data row {r + 1}, "
                        f"column {df.columns[c]!r} (value {df.iat[r, c]!r})")  # fmt: skip
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"{path}: pixel values must lie in 0..255 (or 0..1), found {values.min()}..{values.max()}")
    return values


def _test_pixel_rows(tdf: pd.DataFrame, tpath: Path, pixel_cols: list[str], c, sample: pd.DataFrame, notes) -> list:
    """The test CSV's pixel columns matched to train's by name; its rows in the sample's order (by an id column when
    it has one, else row i is the sample's row i)."""
    id_cols = [x for x in dict.fromkeys([c.id_col, sample.columns[0]]) if x in tdf.columns and x not in pixel_cols]
    extra = [x for x in tdf.columns if x not in pixel_cols and x not in id_cols and x != c.target_col]
    missing = [x for x in pixel_cols if x not in tdf.columns]
    if extra or missing:
        raise DataError(f"{tpath}: pixel columns are matched to the train CSV's by name; {len(missing)} missing (first "
                        f"{missing[:5]}), {len(extra)} not in the train CSV (first {extra[:5]})")  # fmt: skip
    if c.target_col in tdf.columns:
        notes.append(f"{tpath}: column {c.target_col!r} (competition.target_col) is not a pixel column: ignored")
    ids = sample.iloc[:, 0]
    if not id_cols:
        if len(tdf) != len(ids):
            raise DataError(f"{tpath} has {len(tdf)} rows but the sample submission lists {len(ids)} ids")
        return list(range(len(tdf)))
    check_unique_ids(tdf[id_cols[0]], str(tpath))
    row_of = {id_key(v): r for r, v in enumerate(tdf[id_cols[0]])}
    absent = [i for i in ids if id_key(i) not in row_of]
    if absent or len(tdf) != len(ids):
        raise DataError(f"{tpath}: column {id_cols[0]!r} holds {len(tdf)} ids, the sample {len(ids)}; sample ids "
                        f"without a row, first: {absent[:5]}")  # fmt: skip
    return [row_of[id_key(i)] for i in ids]


def _pixel_images(values: np.ndarray, path: Path, size: list[int] | None, fractions: bool) -> np.ndarray:
    n_pix = values.shape[1]
    h, w = size if size else (int(round(math.sqrt(n_pix))),) * 2
    if h * w != n_pix:
        raise DataError(f"{path}: {n_pix} pixel columns do not make a {h}x{w} image; set competition.pixels_image_size")
    return np.rint(values * (255.0 if fractions else 1.0)).astype(np.uint8).reshape(-1, h, w)


def pixel_tables(c, root: Path, sample: pd.DataFrame, notes: list[str]):
    """The pixels layout: (train table, train (n, H, W) uint8, test (n_test, H, W) uint8 in sample order, whether the
    values were 0..1 fractions scaled by 255). Columns by name; the scale decided on train and test together."""
    path, tpath = root / c.train_csv, root / c.test_csv
    df, tdf = read_csv(path, "train CSV"), read_csv(tpath, "test CSV")
    require_columns(df, [c.target_col], path)
    ids = df[c.id_col].str.strip() if c.id_col in df.columns else [str(i) for i in range(len(df))]
    train = pd.DataFrame({"id": ids, "target": df[c.target_col]})
    pixel_cols = [x for x in df.columns if x not in (c.target_col, c.id_col)]
    rows = _test_pixel_rows(tdf, tpath, pixel_cols, c, sample, notes)
    values, tvalues = _pixel_values(df[pixel_cols], path), _pixel_values(tdf[pixel_cols].iloc[rows], tpath)
    top, ttop = float(values.max(initial=0)), float(tvalues.max(initial=0))
    if (top <= 1.0) != (ttop <= 1.0) and min(top, ttop) > 0:
        raise DataError(f"pixel values of {path} lie in 0..{top:g} and of {tpath} in 0..{ttop:g}: give both on one "
                        f"scale (0..255 or 0..1)")  # fmt: skip
    fractions = top <= 1.0 and ttop <= 1.0  # intensities given as 0..1: scaled by 255, not truncated to 0 and 1
    if fractions:
        notes.append(f"{path}: pixel values lie in 0..1; scaled by 255 (train and test alike)")
    train_pixels = _pixel_images(values, path, c.pixels_image_size, fractions)
    test_pixels = _pixel_images(tvalues, tpath, c.pixels_image_size or list(train_pixels.shape[1:]), fractions)
    return train, train_pixels, test_pixels, fractions
