"""The report's figures: matplotlib (Agg, no display, no global pyplot state) to PNG data URIs for the HTML page.

Each function takes recorded numbers (epochs, scores, probabilities' summaries) and returns
"data:image/png;base64,...", so the page needs nothing beside it.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn: the pipeline runs without it, the report needs it
    from matplotlib.figure import Figure

DPI = 96
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]  # fmt: skip


def to_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(**kw) -> Figure:
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)


def _fig(w: float, h: float, ncols: int = 1):
    fig = _figure(figsize=(w, h))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def learning_curves(runs: list[dict], metric: str) -> str:
    """runs: {label, epoch, train_loss, val, best_epoch, images_per_s}; one line per fold/seed, best epoch starred."""
    fig, (ax_loss, ax_val, ax_speed) = _fig(11, 3.1, 3)
    for i, r in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        ax_loss.plot(r["epoch"], r["train_loss"], "-o", ms=3, color=c, label=r["label"])
        if r["val"] is not None and np.isfinite(r["val"]).any():
            ax_val.plot(r["epoch"], r["val"], "-o", ms=3, color=c, label=r["label"])
            b = list(r["epoch"]).index(r["best_epoch"]) if r["best_epoch"] in list(r["epoch"]) else None
            if b is not None:
                ax_val.plot([r["epoch"][b]], [r["val"][b]], "*", ms=13, color=c, mec="k", mew=0.6)
        ax_speed.plot(r["epoch"], r["images_per_s"], "-o", ms=3, color=c)
    ax_loss.set(title="train loss", xlabel="epoch")
    ax_val.set(title=f"validation {metric} (★ best epoch)", xlabel="epoch")
    ax_speed.set(title="training images/s", xlabel="epoch")
    for ax in (ax_loss, ax_val, ax_speed):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=7, ncol=2 if len(runs) > 5 else 1)
    return to_uri(fig)


def model_scores(names: list[str], oof: list[float | None], folds: list[list[float]], weights: list[float] | None,
                 blend: float | None, metric: str) -> str:  # fmt: skip
    """Bars: each model's OOF score, its fold scores as dots and their spread (±1 sd); the blend as a line. Beside
    it the blend weights."""
    fig, (ax, ax_w) = _fig(10, 0.55 * len(names) + 1.8, 2)
    y = np.arange(len(names))
    ax.barh(y, [v if v is not None else 0 for v in oof], color=COLORS[0], alpha=0.75, label="OOF")
    for i, fs in enumerate(folds):
        if fs:
            ax.errorbar(np.mean(fs), i, xerr=np.std(fs), fmt="none", ecolor="k", capsize=4)
            ax.plot(fs, [i] * len(fs), "o", color=COLORS[1], ms=4, label="fold / seed" if i == 0 else None)
    if blend is not None:
        ax.axvline(blend, color=COLORS[3], ls="--", label=f"blend {blend:.4f}")
    shown = [v for fs in folds for v in fs] + [v for v in oof if v is not None] + ([blend] if blend else [])
    lo, hi = min(shown, default=0.0), max(shown, default=1.0)
    pad = max(hi - lo, 0.01)  # zoom on the scores: near 1, differences of 0.001 matter
    ax.set_xlim(max(0.0, lo - pad), hi + 0.6 * pad)
    ax.set(yticks=y, yticklabels=names, title=f"OOF {metric} per model", xlabel=metric)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    if weights is not None:
        ax_w.barh(y, weights, color=COLORS[2])
        for i, w in enumerate(weights):
            ax_w.text(w, i, f" {w:.2f}", va="center", fontsize=9)
        ax_w.set(yticks=y, yticklabels=names, title="blend weights", xlim=(0, 1.1))
        ax_w.invert_yaxis()
    else:
        ax_w.set_axis_off()
        ax_w.text(0.5, 0.5, "no blend yet", ha="center", va="center")
    return to_uri(fig)


def heatmap(matrix: np.ndarray, labels: list[str], title: str, vmin: float, vmax: float, cmap: str,
            xlabel: str = "", ylabel: str = "") -> str:  # fmt: skip
    """A square matrix with its values written in when it is small enough to read."""
    n = len(labels)
    side = min(11, max(4.0, 0.45 * n + 2))
    fig, (ax,) = _fig(side, side * 0.85)
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if n <= 40:
        ax.set(xticks=range(n), yticks=range(n))
        ax.set_xticklabels(labels, rotation=60 if max(map(len, labels)) > 3 else 0, ha="right", fontsize=8)
        ax.set_yticklabels(labels, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = matrix[i, j]
                dark = (v - vmin) / (vmax - vmin + 1e-12) > 0.6
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return to_uri(fig)


def roc_and_hist(y: np.ndarray, p1: np.ndarray, classes: list[str]) -> str:
    """Binary: ROC curve of P(class 1) and its histogram per true class."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, (ax_roc, ax_h) = _fig(10, 3.6, 2)
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p1)
        ax_roc.plot(fpr, tpr, color=COLORS[0], label=f"AUC {roc_auc_score(y, p1):.4f}")
    ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(title="ROC (OOF)", xlabel="false positive rate", ylabel="true positive rate")
    ax_roc.legend(loc="lower right")
    bins = np.linspace(0, 1, 21)
    for k, name in enumerate(classes):
        ax_h.hist(p1[y == k], bins=bins, alpha=0.6, color=COLORS[k], label=f"true {name}")
    ax_h.set(title=f"P({classes[1]}) per true class", xlabel="probability", ylabel="images")
    ax_h.legend()
    return to_uri(fig)


def reliability_diagram(rel: dict) -> str:
    fig, (ax, ax_n) = _fig(10, 3.6, 2)
    centres = (rel["edges"][:-1] + rel["edges"][1:]) / 2
    width = rel["edges"][1] - rel["edges"][0]
    ok = rel["count"] > 0
    ax.bar(centres[ok], rel["accuracy"][ok], width=width * 0.9, color=COLORS[0], alpha=0.8, label="accuracy")
    ax.plot(rel["confidence"][ok], rel["confidence"][ok], "o", color=COLORS[3], ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="top-class probability", ylabel="accuracy",
           title=f"reliability (ECE {rel['ece']:.4f})")  # fmt: skip
    ax.legend(fontsize=8, loc="upper left")
    ax_n.bar(centres, rel["count"], width=width * 0.9, color=COLORS[2])
    ax_n.set(xlim=(0, 1), xlabel="top-class probability", ylabel="images", title="images per bin", yscale="log")
    return to_uri(fig)


def image_grid(images: np.ndarray, titles: list[str], cols: int = 8) -> str:
    """images: (n, h, w, 3) uint8, one captioned tile each."""
    n = len(images)
    rows = int(np.ceil(n / cols))
    fig = _figure(figsize=(1.45 * cols, 1.75 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, im, t in zip(axes, images, titles):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(t, fontsize=7)
    return to_uri(fig)


def class_shift(classes: list[str], train_share: np.ndarray, test_share: np.ndarray) -> str:
    n = len(classes)
    fig, (ax,) = _fig(min(12, max(5, 0.45 * n + 2)), 3.4)
    x = np.arange(n)
    ax.bar(x - 0.2, train_share, 0.4, color=COLORS[0], label="train labels")
    ax.bar(x + 0.2, test_share, 0.4, color=COLORS[1], label="test predictions")
    if n <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=60 if max(map(len, classes)) > 3 else 0, ha="right", fontsize=8)
    ax.set(ylabel="share of images", title="class distribution: train labels vs predicted test classes")
    ax.set_ylim(0, 1.3 * max(train_share.max(), test_share.max()))  # room for the legend above the bars
    ax.legend(ncol=2, loc="upper center")
    ax.grid(alpha=0.3, axis="y")
    return to_uri(fig)


def timeline(lanes: list[str], bars: list[tuple[int, float, float, str, str]]) -> str:
    """bars: (lane index, start s, duration s, stage, name): one bar per unit in its worker's lane, coloured by stage,
    named where it is wide enough to read."""
    from matplotlib.patches import Rectangle

    stages = list(dict.fromkeys(b[3] for b in bars))
    end = max((s + d for _, s, d, _, _ in bars), default=1.0) or 1.0
    fig, (ax,) = _fig(11, 0.5 * len(lanes) + 1.6)
    for lane, start, dur, stage, name in bars:
        c = COLORS[stages.index(stage) % len(COLORS)]
        ax.barh(lane, max(dur, end / 500), left=start, height=0.7, color=c, edgecolor="w", linewidth=0.5)
        fits = int(dur / end * 150)  # characters of 7-point text across this bar on an 11-inch axis
        shown = next((t for t in (name, name.rsplit("/", 1)[-1]) if len(t) <= fits), None)
        if shown:
            ax.text(start + dur / 2, lane, shown, ha="center", va="center", fontsize=7)
    ax.set(yticks=range(len(lanes)), yticklabels=lanes, xlim=(0, end * 1.01),
           xlabel="seconds since the run's first unit started")  # fmt: skip
    ax.invert_yaxis()
    handles = [Rectangle((0, 0), 1, 1, color=COLORS[i % len(COLORS)]) for i in range(len(stages))]
    ax.legend(handles, stages, fontsize=8, ncol=min(len(stages), 8), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              title="units per worker, by stage", title_fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3, axis="x")
    return to_uri(fig)


def estimate_vs_actual(units: list[dict]) -> str:
    """units: {stage, estimated_s, actual_s} of a budget run, one dot each on log axes; the diagonal is a perfect
    estimate, the dotted lines a factor 2 either way."""
    fig, (ax,) = _fig(6, 4.2)
    stages = list(dict.fromkeys(u.get("stage", u["unit"].split("/")[0]) for u in units))
    floor = 0.01  # log axes: a unit estimated or measured at 0 s sits on the floor
    for i, stage in enumerate(stages):
        mine = [u for u in units if u.get("stage", u["unit"].split("/")[0]) == stage]
        ax.scatter([max(u["estimated_s"], floor) for u in mine], [max(u["actual_s"], floor) for u in mine], s=18,
                   color=COLORS[i % len(COLORS)], label=stage)  # fmt: skip
    values = [max(v, floor) for u in units for v in (u["estimated_s"], u["actual_s"])] or [floor, 1.0]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], "-", color="grey", lw=1)
    for f in (0.5, 2.0):
        ax.plot([lo, hi], [lo * f, hi * f], ":", color="grey", lw=1)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="estimated seconds",
           ylabel="actual seconds", title="planner's estimate against what each unit took")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_uri(fig)
