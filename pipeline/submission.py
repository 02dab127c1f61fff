"""Submission files in the exact format of sample_submission.csv, validated before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd


class SubmissionError(ValueError):
    pass


def infer_format(sample: pd.DataFrame, classes: list[str], task: str, configured: str) -> str:
    if configured != "auto":
        return configured
    cols = list(sample.columns[1:])
    if len(cols) > 1:
        return "class_probs"
    if task == "binary":
        values = sample.iloc[:, 1]
        looks_prob = values.str.contains(r"\.", regex=True).any() or not values.isin(classes).all()
        return "probability" if looks_prob else "label"
    return "label"


def make_submission(sample: pd.DataFrame, classes: list[str], probs: np.ndarray, fmt: str) -> pd.DataFrame:
    """probs: (n_test, n_classes) in sample_submission row order."""
    sub = pd.DataFrame({sample.columns[0]: sample.iloc[:, 0].to_numpy()})
    if fmt == "label":
        sub[sample.columns[1]] = np.asarray(classes, dtype=object)[probs.argmax(1)]
    elif fmt == "probability":
        if probs.shape[1] != 2:
            raise SubmissionError(
                f"submit format 'probability' needs a binary task; there are {probs.shape[1]} classes"
            )
        sub[sample.columns[1]] = probs[:, 1]
    elif fmt == "class_probs":
        missing = [c for c in sample.columns[1:] if c not in classes]
        if missing:
            raise SubmissionError(
                f"sample_submission columns {missing} are not classes of the training targets {classes}"
            )
        for col in sample.columns[1:]:
            sub[col] = probs[:, classes.index(col)] / probs.sum(1)
    else:
        raise SubmissionError(f"unknown submit format {fmt!r}; known: label, probability, class_probs")
    return sub


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
