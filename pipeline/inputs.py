"""Reading a competition's input files, with errors that name the file, the id or column, and what was expected.

The lowest data module: layouts, labels, submission and data import it; it imports only infer (the one decode path,
shared with exported bundles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .infer import InputError, find_images
from .infer import read_image as _read_image


class DataError(InputError):
    """A problem with the competition's files, naming the file, the id or column, and what was expected."""


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


def missing_labels(values: pd.Series) -> pd.Series:
    return values.str.strip().isin(MISSING)


def read_image(path: str) -> np.ndarray:
    """infer.read_image (HxWx3 uint8 RGB, the one decode path), its errors as DataError."""
    try:
        return _read_image(path)
    except InputError as err:
        raise DataError(str(err)) from None


def resolve_images(ids: pd.Series, folder: Path, ext: str | None, what: str) -> list[str]:
    """The file of every id (infer.find_images: the rule an exported bundle reads test ids by too)."""
    try:
        return find_images(ids, folder, ext, what, hint="set competition.image_ext (e.g. .png) to say which")
    except InputError as err:
        raise DataError(str(err)) from None
