"""Competition layouts, one reader each, and the table `LAYOUTS` that maps a layout's name to its reader.

A reader turns a layout's files into a `TrainTable`: the train rows (id, target as the files spell it, optional group)
and where each train row's and each test id's pixels come from (a file path, or a row of a pixel array). Test ids are
sample_submission.csv's in every layout; the reader only finds their pixels. Labels, folds and the submission format
are the same for every layout (data.load_competition). A new layout is one reader here and one line in `LAYOUTS`.

- csv: a train CSV of id (file name, with or without extension), target, optional group; images in folders.
- folders: one sub-folder per class (nested folders too); the class is the folder's name.
- pixels: train and test CSVs of pixel values, columns matched by name, 0..1 or 0..255 decided on both together.
- coco: a COCO-style JSON (`images`, `annotations`, `categories`) for the training labels; see coco_table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .inputs import DataError, read_csv, require_columns, resolve_images
from .labels import IMAGE_EXTS, check_unique_ids, id_key


@dataclass
class TrainTable:
    """What a layout's reader returns."""

    train: pd.DataFrame  # columns: id, target (text as in the files), group (when competition.group_col is set)
    train_sources: list  # per train row: a file path, or an index into train_pixels
    test_sources: list  # per sample_submission.csv id, in its order
    train_pixels: np.ndarray | None = None  # (n, H, W) uint8: layouts whose pixels are not files
    test_pixels: np.ndarray | None = None  # (n_test, H, W) uint8
    pixel_fractions: bool = False  # the pixel values were 0..1 intensities, scaled by 255
    # where the class names come from when a user made each one (a folder, a category): then two names are never
    # merged as one class (e.g. "1" and "1.0"); None: targets are values in a column, spellings of one class merged
    strict_labels: str | None = None


def csv_table(c, root: Path, sample: pd.DataFrame, notes: list[str]) -> TrainTable:
    """A train CSV (id_col, target_col, optional group_col); train images in train_dir, test images in test_dir."""
    path = root / c.train_csv
    df = read_csv(path, "train CSV")
    require_columns(df, [c.id_col, c.target_col] + ([c.group_col] if c.group_col else []), path)
    train = pd.DataFrame({"id": df[c.id_col].str.strip(), "target": df[c.target_col]})
    if c.group_col:
        train["group"] = df[c.group_col].str.strip()
    train_sources = resolve_images(train["id"], root / c.train_dir, c.image_ext, "train")
    return TrainTable(train, train_sources, _test_files(c, root, sample))


def folders_table(c, root: Path, sample: pd.DataFrame, notes: list[str]) -> TrainTable:
    tdir = root / c.train_dir
    train, train_sources = class_folders(tdir, notes)
    return TrainTable(train, train_sources, _test_files(c, root, sample), strict_labels=f"class folders in {tdir}")


def pixels_table(c, root: Path, sample: pd.DataFrame, notes: list[str]) -> TrainTable:
    train, train_pixels, test_pixels, fractions = pixel_tables(c, root, sample, notes)
    return TrainTable(train, list(range(len(train))), list(range(len(sample))), train_pixels, test_pixels, fractions)


def _test_files(c, root: Path, sample: pd.DataFrame) -> list[str]:
    return resolve_images(sample.iloc[:, 0], root / c.test_dir, c.image_ext, "test")


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


def _json_entries(path: Path) -> dict[str, list[dict]]:
    """The images, annotations and categories lists of a COCO-style JSON, each entry checked for its fields."""
    if not path.is_file():
        raise DataError(f"train JSON not found: {path} (competition.train_json)")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"train JSON {path} could not be read as JSON: {err}") from None
    fields = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id"), "categories": ("id", "name")}
    out = {}
    for key, need in fields.items():
        entries = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a list under {key!r} (COCO: images, annotations, categories)")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or any(f not in e for f in need):
                raise DataError(f"{path}: {key}[{i}] must be a mapping with {list(need)}, got {e!r}"[:300])
        out[key] = entries
    return out


def _unique(entries: list[dict], field: str, what: str, path: Path) -> None:
    seen = set()
    for i, e in enumerate(entries):
        if not isinstance(e[field], (int, str)) or isinstance(e[field], bool):
            raise DataError(f"{path}: {what}[{i}].{field} must be a number or a string, got {e[field]!r}")
        if e[field] in seen:
            raise DataError(f"{path}: {what} {field} {e[field]!r} is given twice (again at {what}[{i}])")
        seen.add(e[field])


def _one_category(file_of: dict, cats_of: dict, name_of: dict, path: Path) -> dict:
    """image id -> its one category id; an image with none, or with several different ones, is an error."""
    none = [i for i in file_of if not cats_of.get(i)]
    several = [i for i in file_of if len(cats_of.get(i, ())) > 1]
    if none:
        raise DataError(f"{path}: {len(none)} image(s) have no annotation, so no class; first: "
                        + ", ".join(f"{file_of[i]!r} (image id {i!r})" for i in none[:5])
                        + ". Annotate them, or remove them from `images`")  # fmt: skip
    if several:
        raise DataError(f"{path}: {len(several)} image(s) are annotated with more than one category, but each image "
                        f"takes one class here; first: "
                        + ", ".join(f"{file_of[i]!r} (image id {i!r}): {sorted(name_of[k] for k in cats_of[i])}"
                                    for i in several[:5]))  # fmt: skip
    return {i: next(iter(cats_of[i])) for i in file_of}


def coco_table(c, root: Path, sample: pd.DataFrame, notes: list[str]) -> TrainTable:
    """A COCO-style JSON (competition.train_json): `images` [{id, file_name}] (file_name inside train_dir),
    `annotations` [{image_id, category_id}], `categories` [{id, name}]. Each image is one train row; its id is its
    file_name, its class its category's name (names are the classes, written back so in the submission; ids only
    link annotations to categories). Annotations of one category repeated on an image (several boxes) give that
    class; an image with no annotation, or with annotations of different categories, is an error naming its file and
    image id (never dropped, never one of them picked). Ids are compared as JSON gives them: 1 is not "1"."""
    path = root / c.train_json
    doc = _json_entries(path)
    _unique(doc["images"], "id", "images", path)
    _unique(doc["categories"], "id", "categories", path)
    file_of = {e["id"]: str(e["file_name"]) for e in doc["images"]}
    name_of = {e["id"]: str(e["name"]).strip() for e in doc["categories"]}
    names = list(name_of.values())
    if len(set(names)) < len(names):  # two categories would silently become one class
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{path}: categories name {twice[0]!r} is given twice (compared without surrounding white "
                        f"space): each category is one class, rename one")  # fmt: skip
    cats_of: dict = {}
    for k, a in enumerate(doc["annotations"]):
        image, cat = a["image_id"], a["category_id"]
        if not isinstance(image, (int, str)) or image not in file_of:
            raise DataError(f"{path}: annotations[{k}] names image_id {image!r}, which no entry of `images` has")
        if not isinstance(cat, (int, str)) or cat not in name_of:
            raise DataError(f"{path}: annotations[{k}] names category_id {cat!r}, which no entry of `categories` has")
        cats_of.setdefault(image, set()).add(cat)
    category = _one_category(file_of, cats_of, name_of, path)
    unused = sorted(n for k, n in name_of.items() if k not in category.values())
    if unused:
        notes.append(f"{path}: categories without any image are not classes here: {unused[:10]}")
    tdir = root / c.train_dir
    absent = [f"{f!r} (image id {i!r})" for i, f in file_of.items() if not (tdir / f).is_file()]
    if absent:
        raise DataError(f"{path}: {len(absent)} image file(s) not found in {tdir}, first: {', '.join(absent[:5])}")
    train = pd.DataFrame({"id": list(file_of.values()), "target": [name_of[category[i]] for i in file_of]})
    sources = [str(tdir / f) for f in file_of.values()]
    return TrainTable(train, sources, _test_files(c, root, sample), strict_labels=f"category names in {path}")


Reader = Callable[[object, Path, pd.DataFrame, list[str]], TrainTable]  # (competition spec, root, sample, notes)
LAYOUTS: dict[str, Reader] = {
    "csv": csv_table,
    "folders": folders_table,
    "pixels": pixels_table,
    "coco": coco_table,
}
