"""Submission files in the exact format of sample_submission.csv, validated before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .infer import InputError, submission_frame
from .inputs import DataError


class SubmissionError(ValueError):
    pass


RANKING = {"auc", "logloss"}  # metrics that score probabilities: hard labels would throw their information away


def resolve_format(sample: pd.DataFrame, labels, task: str, configured: str, metric: str, path) -> tuple[str, list]:
    """The submission format (label | probability | class_probs) from the config and the sample, checked against
    the sample's columns when the competition is loaded, before any work. Returns (format, notes)."""
    cols, notes = list(sample.columns[1:]), []
    fmt = configured
    if fmt == "auto":
        if len(cols) > 1 and any(labels.lookup(c) is not None for c in cols):
            fmt = "class_probs"  # one column per class (some may be misspelled: checked below)
        elif task == "binary":
            values = sample.iloc[:, 1]
            looks_label = (
                values.map(lambda v: labels.lookup(v) is not None).all()
                and not values.str.contains(r"\.", regex=True).any()
            )
            if metric in RANKING:
                fmt = "probability"
                if looks_label:
                    notes.append(f"{path}: its values look like labels, but metric {metric} scores probabilities: "
                                 f"writing the positive class's probability (competition.submit_format: label "
                                 f"writes labels)")  # fmt: skip
            else:
                fmt = "label" if looks_label else "probability"
        else:
            fmt = "label"  # the first target column; more columns are refused below
    if fmt in ("label", "probability") and len(cols) != 1:
        raise DataError(f"{path}: columns {list(sample.columns)}; a {fmt} submission has the id and one target "
                        f"column, and {cols[1:]} would not be filled (drop them from the sample, or use "
                        f"submit_format: class_probs if they are classes)")  # fmt: skip
    if fmt == "probability" and len(labels.classes) != 2:
        raise DataError(f"submit format 'probability' needs a binary task; the targets hold {len(labels.classes)} "
                        f"classes")  # fmt: skip
    if fmt == "class_probs":
        found = [labels.lookup(c) for c in cols]
        unknown = [c for c, i in zip(cols, found) if i is None]
        absent = [labels.classes[i] for i in range(len(labels.classes)) if i not in found]
        if unknown or absent or len(set(found)) != len(found):
            raise DataError(
                f"{path}: class-probability columns {cols} do not match the training classes {labels.classes} "
                f"(not classes: {unknown}; classes without a column: {absent})"
            )
    return fmt, notes


def as_submitted(probs: np.ndarray, fmt: str) -> np.ndarray:
    """What a submission file holds, as (n, C) scores: one-hot rows for labels, the probabilities otherwise. The scores
    the pipeline reports (CV, honest CV, held-out) are computed on this, so they describe the file."""
    probs = np.asarray(probs, dtype=np.float64)
    if fmt == "label":
        return np.eye(probs.shape[1])[probs.argmax(1)]
    return probs / probs.sum(1, keepdims=True)


def make_submission(sample: pd.DataFrame, labels, probs: np.ndarray, fmt: str) -> pd.DataFrame:
    """probs: (n_test, n_classes) in sample_submission row order (infer.submission_frame, as a bundle writes it)."""
    column_classes = [labels.lookup(c) for c in sample.columns[1:]] if fmt == "class_probs" else None
    try:
        return submission_frame(sample, probs, fmt, labels.classes, column_classes)
    except InputError as err:
        raise SubmissionError(str(err)) from None


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame, fmt: str, classes: list[str]) -> None:
    """Refuse what Kaggle would refuse (or score wrongly), naming what is wrong."""
    if list(sub.columns) != list(sample.columns):
        raise SubmissionError(f"header {list(sub.columns)} differs from sample_submission's {list(sample.columns)}")
    if len(sub) != len(sample):
        raise SubmissionError(f"{len(sub)} rows, sample_submission has {len(sample)}")
    ids, want = sub.iloc[:, 0].astype(str), sample.iloc[:, 0].astype(str)
    if set(ids) != set(want):
        extra, missing = sorted(set(ids) - set(want))[:5], sorted(set(want) - set(ids))[:5]
        raise SubmissionError(f"ids differ from sample_submission: missing {missing}, unexpected {extra}")
    if not (ids.to_numpy() == want.to_numpy()).all():
        first = int(np.argmax(ids.to_numpy() != want.to_numpy()))
        raise SubmissionError(f"id order differs from sample_submission from row {first} (id {ids.iloc[first]!r})")
    values = sub.iloc[:, 1:]
    if values.isna().any().any():
        bad = sub.iloc[:, 0][values.isna().any(axis=1)].tolist()[:5]
        raise SubmissionError(f"NaN in the submission for ids {bad}")
    if fmt == "label":
        bad = ~values.iloc[:, 0].astype(str).isin(classes)
        if bad.any():
            raise SubmissionError(f"labels not among the training classes for ids {sub.iloc[:, 0][bad].tolist()[:5]}")
    else:
        v = values.to_numpy(dtype=np.float64)
        if (v < 0).any() or (v > 1).any():
            raise SubmissionError("probabilities outside [0, 1]")
        if fmt == "class_probs" and not np.allclose(v.sum(1), 1, atol=1e-4):
            raise SubmissionError("class probabilities of a row do not sum to 1")
