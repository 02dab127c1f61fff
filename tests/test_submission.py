import numpy as np
import pandas as pd
import pytest

from pipeline.data import DataError, Labels
from pipeline.submission import SubmissionError, make_submission, resolve_format, validate_submission

SAMPLE = pd.DataFrame({"id": ["a", "b", "c"], "label": ["0", "0", "0"]})
CLASSES = ["cat", "dog"]
LABELS = Labels(pd.Series(CLASSES))
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])


def infer_format(sample, classes, task, configured, metric="accuracy"):
    return resolve_format(sample, Labels(pd.Series(classes)), task, configured, metric, "sample.csv")[0]


def test_label_and_probability_formats():
    sub = make_submission(SAMPLE, LABELS, PROBS, "label")
    assert sub["label"].tolist() == ["cat", "dog", "cat"]
    validate_submission(sub, SAMPLE, "label", CLASSES)
    sub = make_submission(SAMPLE, LABELS, PROBS, "probability")
    np.testing.assert_allclose(sub["label"], [0.1, 0.8, 0.5])
    validate_submission(sub, SAMPLE, "probability", CLASSES)


def test_class_probs_format_and_inference():
    sample = pd.DataFrame({"id": ["a", "b", "c"], "dog": "0.5", "cat": "0.5"})
    assert infer_format(sample, CLASSES, "binary", "auto") == "class_probs"
    sub = make_submission(sample, LABELS, PROBS, "class_probs")
    assert list(sub.columns) == ["id", "dog", "cat"] and np.allclose(sub[["dog", "cat"]].sum(1), 1)
    validate_submission(sub, sample, "class_probs", CLASSES)
    prob_sample = pd.DataFrame({"id": ["a"], "target": ["0.5"]})
    assert infer_format(prob_sample, ["0", "1"], "binary", "auto") == "probability"
    assert infer_format(pd.DataFrame({"id": ["a"], "t": ["1"]}), ["0", "1"], "binary", "auto") == "label"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.rename(columns={"label": "Label"}), "header"),
        (lambda s: s.iloc[:2], "rows"),
        (lambda s: s.assign(id=["a", "b", "z"]), "missing \\['c'\\], unexpected \\['z'\\]"),
        (lambda s: s.iloc[[1, 0, 2]].reset_index(drop=True), "order differs from sample_submission from row 0"),
        (lambda s: s.assign(label=[0.1, np.nan, 0.2]), "NaN .*\\['b'\\]"),
        (lambda s: s.assign(label=[0.1, 1.5, 0.2]), "outside \\[0, 1\\]"),
    ],
)
def test_invalid_submissions_are_refused_with_reason(mutate, message):
    good = make_submission(SAMPLE, LABELS, PROBS, "probability")
    with pytest.raises(SubmissionError, match=message):
        validate_submission(mutate(good), SAMPLE, "probability", CLASSES)


def test_unknown_label_refused():
    bad = make_submission(SAMPLE, LABELS, PROBS, "label").assign(label=["cat", "cow", "dog"])
    with pytest.raises(SubmissionError, match="\\['b'\\]"):
        validate_submission(bad, SAMPLE, "label", CLASSES)


def test_class_probs_must_sum_to_one():
    sample = pd.DataFrame({"id": ["a", "b", "c"], "cat": "0", "dog": "0"})
    sub = make_submission(sample, LABELS, PROBS, "class_probs")
    sub["cat"] = 0.0
    with pytest.raises(SubmissionError, match="sum to 1"):
        validate_submission(sub, sample, "class_probs", CLASSES)


def test_binary_ranking_metric_writes_probabilities_even_when_the_sample_holds_labels():
    sample = pd.DataFrame({"id": ["a", "b"], "target": ["0", "1"]})
    labels = Labels(pd.Series(["0", "1"]))
    fmt, notes = resolve_format(sample, labels, "binary", "auto", "auc", "s.csv")
    assert fmt == "probability" and "look like labels" in notes[0]
    assert resolve_format(sample, labels, "binary", "label", "auc", "s.csv") == ("label", [])
    assert resolve_format(sample, labels, "binary", "auto", "accuracy", "s.csv")[0] == "label"


def test_sample_columns_are_checked_at_load():
    extra = SAMPLE.assign(Usage="Public")
    with pytest.raises(DataError, match=r"s.csv: columns \['id', 'label', 'Usage'\].*\['Usage'\] would not be filled"):
        resolve_format(extra, LABELS, "multiclass", "auto", "accuracy", "s.csv")
    wrong = pd.DataFrame({"id": ["a"], "cat": "0.5", "cow": "0.5"})
    with pytest.raises(DataError, match=r"not classes: \['cow'\]; classes without a column: \['dog'\]"):
        resolve_format(wrong, LABELS, "multiclass", "auto", "accuracy", "s.csv")
