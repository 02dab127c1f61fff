"""Test-time augmentation views and their merging, on batches already on the device.

A view is a crop of `img_size` from the cached image of side `cache_size = img_size / crop_pct` (so the crops are
taken at the model's input size, the standard ten-crop), optionally flipped or rotated. All views of a batch are built
by tensor slicing and stacked into one forward pass (chunked by the caller to fit memory). Views are merged as
probabilities (arithmetic or geometric mean), never as raw logits.
"""

from __future__ import annotations

import numpy as np
import torch

FIVE = ["center", "tl", "tr", "bl", "br"]
POLICIES: dict[str, list[str]] = {
    "none": ["center"],
    "hflip": ["center", "center_hflip"],
    "vflip": ["center", "center_vflip"],
    "d4": ["center", "center_rot90", "center_rot180", "center_rot270",
           "center_hflip", "center_hflip_rot90", "center_hflip_rot180", "center_hflip_rot270"],
    "five-crop": FIVE,
    "ten-crop": FIVE + [f"{v}_hflip" for v in FIVE],
    "multiscale": ["center", "full", "zoom"],
}  # fmt: skip


def views_for(policy: str) -> list[str]:
    return list(POLICIES[policy])


def policies_within(views: list[str]) -> list[str]:
    """The policies whose views were all computed."""
    have = set(views)
    return [p for p, vs in POLICIES.items() if set(vs) <= have]


def _crop(x: torch.Tensor, where: str, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if where in ("full", "zoom"):  # multiscale: the whole cached image, or a tighter centre crop, resized to size
        side = h if where == "full" else max(1, round(size * size / h))
        t = (h - side) // 2
        part = x[..., t : t + side, t : t + side]
        return torch.nn.functional.interpolate(part, size=(size, size), mode="bilinear", antialias=side > size)
    top = {"t": 0, "b": h - size, "c": (h - size) // 2}
    left = {"l": 0, "r": w - size, "c": (w - size) // 2}
    t, l = (top["c"], left["c"]) if where == "center" else (top[where[0]], left[where[1]])
    return x[..., t : t + size, l : l + size]


def make_view(x: torch.Tensor, name: str, size: int) -> torch.Tensor:
    """x: (B, C, S, S) -> (B, C, size, size) for one named view."""
    parts = name.split("_")
    out = _crop(x, parts[0], size)
    for op in parts[1:]:
        if op == "hflip":
            out = out.flip(-1)
        elif op == "vflip":
            out = out.flip(-2)
        elif op.startswith("rot"):
            out = torch.rot90(out, int(op[3:]) // 90, dims=(-2, -1))
        else:
            raise ValueError(f"unknown TTA view operation {op!r} in {name!r}")
    return out


def stack_views(x: torch.Tensor, names: list[str], size: int) -> torch.Tensor:
    """(B, C, S, S) -> (V*B, C, size, size), view-major."""
    return torch.cat([make_view(x, n, size) for n in names], dim=0)


def merge(probs: np.ndarray, how: str = "mean") -> np.ndarray:
    """probs: (V, N, C) per-view probabilities -> (N, C), rows summing to 1."""
    probs = np.asarray(probs, dtype=np.float64)
    if how == "mean":
        return probs.mean(0)
    if how == "gmean":
        logp = np.log(np.clip(probs, 1e-12, 1.0)).mean(0)
        logp -= logp.max(1, keepdims=True)
        p = np.exp(logp)
        return p / p.sum(1, keepdims=True)
    raise ValueError(f"unknown TTA merge {how!r}; known: mean, gmean")


def merge_policy(probs: np.ndarray, views: list[str], policy: str, how: str = "mean") -> np.ndarray:
    """probs: (V, N, C) stored in the order of `views` -> (N, C): the policy's views merged."""
    return merge(probs[[list(views).index(v) for v in POLICIES[policy]]], how)
