"""What the competition's identities mean, decided once: ids, groups and classes are normalised by one rule here, and
the order of the classes (the column a binary probability is for, the order an ordinal metric reads) is chosen here.

- An id is compared stripped of surrounding white space and of an image extension (`s1`, ` s1`, `s1.png` are one id);
  two rows whose ids are one id under that rule are refused, naming both spellings.
- A group is compared stripped of surrounding white space.
- A class is compared stripped of surrounding white space, and as a number when every label is a number (`1` and
  `1.0` in a CSV are one class, written back with the most common spelling). Class folders are names a user chose:
  two folders that would be one class (`1` and `01`) are refused, naming both.
- Classes are ordered numerically when numeric, else alphabetically, unless `competition.class_order` says otherwise
  (required for an ordinal metric, qwk, on text labels). A binary task's positive class is index 1: see
  `positive_class`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .infer import IMAGE_EXTS, id_key  # noqa: F401 - the extensions PIL reads; the one rule ids are compared by
from .inputs import DataError

ORDINAL = {"qwk"}  # metrics that read the classes as ordered
POSITIVE_WORDS = {"1", "true", "yes", "y", "t", "positive", "pos"}


def _error(msg: str) -> Exception:
    return DataError(msg)


def check_unique_ids(ids: pd.Series, what: str) -> None:
    """Refuse two rows whose ids are one id under id_key, naming both spellings."""
    seen: dict[str, str] = {}
    clashes = []
    for v in ids:
        k = id_key(v)
        if k in seen:
            clashes.append(f"{seen[k]!r} and {v!r}" if seen[k] != v else f"{v!r} twice")
        seen.setdefault(k, v)
    if clashes:
        raise _error(f"{what} must be unique: {len(clashes)} id(s) repeated (compared without surrounding white "
                     f"space and without an image extension), first: {'; '.join(clashes[:5])}")  # fmt: skip


def _number(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


class Labels:
    """How a competition spells its classes (see the module's rules). `strict`: two spellings of one class are refused
    (class folders). `order`: the classes in the order the metric and the columns read them, any spelling."""

    def __init__(self, values: pd.Series, order: list | None = None, strict: bool = False, what: str = "train targets"):
        stripped = values.str.strip()
        self.numeric = all(_number(v) is not None for v in stripped)
        spellings: dict = {}
        for v in stripped:
            spellings.setdefault(self.key(v), {}).setdefault(v, 0)
            spellings[self.key(v)][v] += 1
        if strict and any(len(v) > 1 for v in spellings.values()):
            both = [sorted(v) for v in spellings.values() if len(v) > 1]
            raise _error(f"{what}: {both[0]} would be one class (compared as numbers): rename one of them")
        self.counts = {k: sum(v.values()) for k, v in spellings.items()}
        self.spelled = {k: max(v.items(), key=lambda kv: kv[1])[0] for k, v in spellings.items()}
        self.variants = {self.spelled[k]: sorted(v) for k, v in spellings.items() if len(v) > 1}
        self.n_stripped = int((stripped != values).sum())
        self.reorder(self._keys_of(order, "competition.class_order") if order is not None else sorted(spellings))

    @property
    def natural(self) -> bool:
        """The classes are in their sorted order (the order before class_order and positive_class existed)."""
        return self.order == sorted(self.order)

    def reorder(self, keys: list) -> None:
        self.order = list(keys)
        self.classes = [self.spelled[k] for k in self.order]
        self.index = {k: i for i, k in enumerate(self.order)}

    def _keys_of(self, names: list, option: str) -> list:
        keys = [self.key(str(n)) for n in names]
        unknown = [n for n, k in zip(names, keys) if k not in self.spelled]
        absent = [self.spelled[k] for k in self.spelled if k not in keys]
        if unknown or absent or len(set(keys)) != len(keys):
            raise _error(f"{option} {list(names)} must list each class of the training targets once: not classes "
                         f"{unknown}, missing {absent} (the classes: {sorted(self.spelled.values())})")  # fmt: skip
        return keys

    def key(self, value: str):
        v = str(value).strip()
        return _number(v) if self.numeric and _number(v) is not None else v

    def lookup(self, value: str) -> int | None:
        """The class index of a label spelled any way the competition spells it, or None."""
        return self.index.get(self.key(value))

    def regression_like(self) -> bool:
        """Numbers with fractions, nearly one class per row: a continuous target, not classes."""
        n = sum(self.counts.values())
        fractional = self.numeric and any(k != int(k) for k in self.order)
        return fractional and len(self.order) > max(10, n // 2)


def positive_class(labels: Labels, configured, sample_cols: list[str], ordered: bool = False) -> str:
    """Make the binary task's positive class index 1 (the class a probability column is for); return the rule that
    chose it. The rule: `competition.positive_class` when set; else the last of `competition.class_order` (ordered);
    else the class the sample's target column is named after (`fake`); else for numbers the larger (1 of 0/1); else
    the one class spelled 1/true/yes/positive; else the class that sorts last (a note says which, and how to choose)."""
    k0, k1 = labels.order
    if configured is None and ordered:
        pos, rule = k1, "the last of competition.class_order"
    elif configured is not None:
        pos = labels.key(str(configured))
        if pos not in (k0, k1):
            raise _error(f"competition.positive_class: {configured!r} is not a class of the training targets "
                         f"{labels.classes}")  # fmt: skip
        rule = "competition.positive_class"
    else:
        named = [k for k in (k0, k1) for c in sample_cols if labels.key(c) == k]
        words = [k for k in (k0, k1) if str(labels.spelled[k]).strip().lower() in POSITIVE_WORDS]
        if len(named) == 1:
            pos, rule = named[0], f"the sample's column {sample_cols[-1]!r} is named after it"
        elif labels.numeric:
            pos, rule = k1, "the larger number"
        elif len(words) == 1:
            pos, rule = words[0], "spelled as a positive answer"
        else:
            pos, rule = k1, "the class that sorts last; set competition.positive_class to choose"
    labels.reorder([k0, k1] if pos == k1 else [k1, k0])
    return rule


def holdout_targets(df: pd.DataFrame, path, sample: pd.DataFrame, labels: Labels):
    """(n_test,) class index of each sample id's held-out label. Columns by the sample's names (id and target), else
    the only two columns; ids by id_key; every label must be a training class."""
    id_col, target = sample.columns[0], sample.columns[1]
    if {id_col, target} <= set(df.columns):
        ids, values = df[id_col], df[target]
    elif df.shape[1] == 2:
        ids, values = df.iloc[:, 0], df.iloc[:, 1]
    else:
        raise _error(f"{path}: expected the sample's columns {[id_col, target]} (or two columns: id, label); found "
                     f"{list(df.columns)}")  # fmt: skip
    check_unique_ids(ids, str(path))
    by_id = dict(zip(ids.map(id_key), values))
    test_ids = sample.iloc[:, 0]
    missing = [i for i in test_ids if id_key(i) not in by_id][:5]
    if missing:
        raise _error(f"{path}: no held-out label for test ids {missing}")
    y = [labels.lookup(by_id[id_key(i)]) for i in test_ids]
    unknown = [(i, by_id[id_key(i)]) for i, k in zip(test_ids, y) if k is None]
    if unknown:
        raise _error(f"{path}: {len(unknown)} held-out label(s) are not classes of the training targets "
                     f"{labels.classes}, first (id, label): {unknown[:5]}")  # fmt: skip
    return np.array(y, dtype=np.int64)
