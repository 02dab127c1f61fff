"""What the report computes from recorded probabilities (never a network output), and its self-contained HTML.

Statistics: a bootstrap interval of a score, the reliability of top-class probabilities with the expected
calibration error, per-class precision and recall, the confusion matrix. Panels: the HTML of a section from arrays
(blended OOF and test probabilities, targets, class names) and the numbers it shows. HTML: escaped tables and
sections in one page with inline CSS and no script, images embedded as data URIs, so the file opens from disk.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import numpy as np
from sklearn import metrics as skm

from . import report_plots as plots
from .blending import bootstrap_scores


def bootstrap_interval(metric: str, y: np.ndarray, probs: np.ndarray, n: int, seed: int = 0) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the score on rows resampled with replacement (n resamples, seeded)."""
    draws = bootstrap_scores(metric, y, [probs], n, seed)[:, 0]
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict:
    """Top-class confidence vs accuracy in equal-width bins of confidence, and the expected calibration error
    (the count-weighted mean of |accuracy - confidence| over the bins)."""
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        acc = np.bincount(which, correct, n_bins) / count
    ece = float(np.nansum(count * np.abs(acc - mean_conf)) / len(y))
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc, "ece": ece}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, row-normalised) confusion matrices, rows = true class, columns = predicted."""
    counts = skm.confusion_matrix(y, pred, labels=np.arange(n_classes))
    return counts, counts / np.maximum(counts.sum(1, keepdims=True), 1)


def per_class(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=np.arange(n_classes), zero_division=0)
    return {"precision": p, "recall": r, "f1": f, "support": s}


# --- HTML -------------------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,Segoe UI,Helvetica,Arial,sans-serif;color:#1d2733;margin:0;background:#f4f6f8}
main{max-width:1120px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:22px;margin:8px 0 2px}
h2{font-size:18px;margin:0 0 10px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:14px 18px;margin:14px 0}
nav{font-size:13px;margin:6px 0 0}nav a{margin-right:12px;color:#2a5d9f;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e6eaef;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f0f3f6;font-weight:600}td:first-child,th:first-child{text-align:left}
tr.chosen td{background:#fff6d6;font-weight:600}.kv td{text-align:left}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.big{font-size:26px;font-weight:700}.kpis{display:flex;flex-wrap:wrap;gap:10px}
.kpi{border:1px solid #dde3ea;border-radius:6px;padding:8px 14px;min-width:150px}.kpi small{color:#5b6775}
.wide{overflow-x:auto}.note{color:#5b6775}.missing{background:#fff1f0;border-color:#f3b5ae}
"""


def esc(value) -> str:
    return html.escape(str(value))


def fmt(value, digits: int = 4) -> str:
    """Scores as the report prints them everywhere (4 decimals), so a reader can find them in report.json."""
    if value is None:
        return "n/a"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: Iterable[list], chosen: Iterable[bool] = (), cls: str = "") -> str:
    """Cells are escaped unless given as ("html", text); `chosen` marks rows; cls="kv": key-value rows, no header."""
    chosen = list(chosen)

    def cell(v) -> str:
        return v[1] if isinstance(v, tuple) and v[0] == "html" else esc(fmt(v))

    body = "".join(
        f'<tr{" class=chosen" if i < len(chosen) and chosen[i] else ""}>' + "".join(f"<td>{cell(v)}</td>" for v in r)
        + "</tr>"
        for i, r in enumerate(rows)
    )  # fmt: skip
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    return f'<div class="wide"><table class="{cls}">{head}{body}</table></div>'  # wide tables scroll, not the page


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def para(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def kpi(label: str, value: str, sub: str = "") -> str:
    inner = f'<small>{esc(label)}</small><div class="big">{esc(value)}</div><small>{esc(sub)}</small>'
    return f'<div class="kpi">{inner}</div>'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], missing_html: str = "") -> str:
    """sections: (id, title, body html), numbered in order."""
    nav = "".join(f'<a href="#{sid}">{i}. {esc(t)}</a>' for i, (sid, t, _) in enumerate(sections, 1))
    parts = [f'<section id="{sid}"><h2>{i}. {esc(t)}</h2>{body}</section>' for i, (sid, t, body) in
             enumerate(sections, 1)]  # fmt: skip
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body><main>'
        f"<h1>{esc(title)}</h1><div class=note>{esc(subtitle)}</div><nav>{nav}</nav>{missing_html}"
        + "".join(parts)
        + "</main></body></html>\n"
    )


# --- panels: one section's HTML from arrays, and the numbers it shows ------------------------------------------------


def time_panel(markers: dict[str, list[dict]]) -> str:
    """Per stage, from its done units' markers: their count, summed seconds, and first start to last end."""
    rows = []
    for stage, marks in markers.items():
        if marks:
            span = max(m.get("finished_at", 0) for m in marks) - min(m.get("started_at", 0) for m in marks)
            rows.append([stage, len(marks), f"{sum(m['seconds'] for m in marks):.1f}", f"{span:.1f}"])
    header = ["stage", "units done", "unit seconds (sum)", "wall seconds (first start to last end)"]
    return "<h3>Time spent per stage</h3>" + table(header, rows)


def missing_panel(rows: list[list[str]]) -> str:
    """rows: (unit label, state and why) of the units a partial run lacks."""
    return (f'<section class="missing"><h2>Partial run: {len(rows)} unit(s) not done</h2>'
            + para("The sections below show what is done. Run `./run.sh all` to finish, then `./run.sh report`.")
            + table(["unit", "state"], rows) + "</section>")  # fmt: skip


def tta_panel(tta_report: dict, metric: str) -> tuple[str, dict]:
    """Per model: the policy x merge OOF table of the blend report, the chosen row marked, its gain over one view."""
    out, gains = [], {}
    for model, t in tta_report.items():
        one = next((row[metric] for row in t["table"] if row["tta"] == "none" and row["merge"] == "mean"), None)
        best = next(row[metric] for row in t["table"] if f"{row['tta']}/{row['merge']}" == t["chosen"])
        gains[model] = gain = best - one if one is not None else None
        out.append(f"<h3>{esc(model)}: {esc(t['chosen'])}, {'n/a' if gain is None else f'{gain:+.4f}'} over one "
                   f"view; test from {esc(t['test_from'])}</h3>")  # fmt: skip
        out.append(table(["policy", "merge", f"OOF {metric}", "OOF log loss"],
                         [[row["tta"], row["merge"], row[metric], row["logloss"]] for row in t["table"]],
                         [f"{row['tta']}/{row['merge']}" == t["chosen"] for row in t["table"]]))  # fmt: skip
    return "".join(out), {"tta_gain": gains}


def errors_panel(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[str, dict]:
    """Row-normalised confusion matrix, per-class precision and recall; for two classes the ROC curve and the
    histogram of P(class 1) per true class."""
    pred = probs.argmax(1)
    counts, norm = confusion(y, pred, len(classes))
    pc = per_class(y, pred, len(classes))
    out = img(plots.heatmap(norm, classes, "OOF confusion (each true class sums to 1)", 0, 1, "Blues",
                            "predicted", "true"), "confusion matrix")  # fmt: skip
    out += table(["class", "images", "precision", "recall", "F1"],
                 [[c, int(pc["support"][k]), float(pc["precision"][k]), float(pc["recall"][k]), float(pc["f1"][k])]
                  for k, c in enumerate(classes)])  # fmt: skip
    if len(classes) == 2:
        out += img(plots.roc_and_hist(y, probs[:, 1], classes), "ROC curve and probability histogram")
    return out, {"confusion": counts.tolist()}


def calibration_panel(y: np.ndarray, probs: np.ndarray, scores_only: bool = False) -> tuple[str, dict]:
    rel = reliability(probs, y)
    note = " The rank blend outputs scores, not probabilities." if scores_only else ""
    text = (f"Expected calibration error of the blended OOF probabilities: {fmt(rel['ece'])} (10 bins of top-class "
            f"probability; 0 = each bin's accuracy equals its mean confidence).{note}")  # fmt: skip
    return img(plots.reliability_diagram(rel), "reliability diagram") + para(text), {"ece": rel["ece"]}


def mistakes_panel(y: np.ndarray, probs: np.ndarray, classes: list[str], ids: np.ndarray, pixels, n: int = 24):
    """The n OOF mistakes with the highest predicted probability: a captioned grid of their images when `pixels`
    (the (n_train, h, w, 3) cache) is given, and a table."""
    pred = probs.argmax(1)
    wrong = np.where(pred != y)[0]
    if not len(wrong):
        return para("No OOF mistakes."), {"mistakes": []}
    top = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    out = para(f"{len(wrong)} of {len(y)} train images are misclassified out of fold; the {len(top)} the blend was "
               "surest of:")  # fmt: skip
    if pixels is not None:
        titles = [f"{ids[i]}\ntrue {classes[y[i]]}\npred {classes[pred[i]]} {probs[i, pred[i]]:.2f}" for i in top]
        out += img(plots.image_grid(np.asarray(pixels[top]), titles), "most confident OOF mistakes")
    else:
        out += para("No train image cache is done: the images are not shown.", "note")
    out += table(["id", "true", "predicted", "P(predicted)", "P(true)"],
                 [[ids[i], classes[y[i]], classes[pred[i]], float(probs[i, pred[i]]), float(probs[i, y[i]])]
                  for i in top])  # fmt: skip
    return out, {"mistakes": [str(ids[i]) for i in top]}


def diversity_panel(names: list[str], matrix: np.ndarray) -> str:
    if len(names) < 2:
        return para("One model: nothing to correlate. Add models (or heads on features) to blend diverse errors.")
    return (img(plots.heatmap(matrix, names, "OOF error correlation", -1, 1, "RdBu_r"), "error correlation")
            + table(["model", *names], [[n, *map(float, row)] for n, row in zip(names, matrix)])
            + para("Error = 1 - P(true class) per OOF image; low correlation = diverse models, where blending gains "
                   "most.", "note"))  # fmt: skip


def shift_panel(y: np.ndarray, test_probs: np.ndarray, classes: list[str]) -> tuple[str, dict]:
    """Predicted test classes vs train labels, as shares, and their total variation distance."""
    n = len(classes)
    train, test = np.bincount(y, minlength=n), np.bincount(test_probs.argmax(1), minlength=n)
    a, b = train / train.sum(), test / max(test.sum(), 1)
    tv = float(0.5 * np.abs(a - b).sum())
    out = (img(plots.class_shift(classes, a, b), "class distribution shift")
           + para(f"Total variation distance between the two distributions: {fmt(tv)} (0 = the same shares; a large "
                  "value means a shifted test set or a biased model).")
           + table(["class", "train images", "train share", "predicted test images", "test share"],
                   [[c, int(train[k]), float(a[k]), int(test[k]), float(b[k])] for k, c in enumerate(classes)])
           )  # fmt: skip
    return out, {"test_predicted": test.tolist(), "total_variation": tv}
