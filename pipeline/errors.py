"""The error a competition's files raise, and the two CSV helpers that raise it; below data, labels, layouts and
submission, which all report problems with the user's files through it (no module needs data.py for its error)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .infer import InputError


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
