"""How a trained ensemble turns images into a submission: the one implementation the pipeline's stages and an
exported bundle share.

Image decoding and resizing, the TTA views and their merge, the batched forward pass, a head's and a stacker's
linear softmax, the blend of models' probabilities and the submission's columns. It imports no project code and
needs only torch, numpy, pandas and pillow: `./run.sh export` copies this file as is into a bundle, beside the
bundle's `predict.py`, so a fix here is a fix in both.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

# the extensions PIL reads that image folders hold (lower case); an id ending in one of them names the file
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".ppm",
              ".pgm", ".pbm", ".pnm", ".tga")  # fmt: skip
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


class InputError(ValueError):
    """An input that cannot be used, naming the file, the id or the column, and what was expected."""


# ---- decoding ----------------------------------------------------------------------------------------------------


def to_uint8(arr: np.ndarray, path) -> np.ndarray:
    """16/32-bit integer images: scaled by the image's own maximum. Float images: values in 0..1 scaled by 255,
    any other range stretched from the image's minimum to its maximum. NaN pixels are refused."""
    arr = np.asarray(arr, dtype=np.float32)
    if np.isnan(arr).any():
        raise InputError(f"image {path} has NaN pixels")
    if arr.dtype.kind == "f" and arr.min() >= 0 and arr.max() <= 1.0:
        arr = arr * 255.0
    elif arr.min() < 0 or arr.max() > 255:
        lo = min(float(arr.min()), 0.0)
        arr = (arr - lo) / max(float(arr.max()) - lo, 1e-12) * 255.0
    return np.rint(arr).astype(np.uint8)


def open_image(path) -> Image.Image:
    """Open an image (a path or bytes), refusing what would exhaust memory; raises InputError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{err} (a decompression bomb, or a huge image: resize it)") from None
    if im.width * im.height > MAX_PIXELS or im.width < 1 or im.height < 1:
        raise InputError(f"{im.width}x{im.height} pixels: expected 1 to {MAX_PIXELS} pixels (resize it)")
    return im


def read_image(path: str) -> np.ndarray:
    """Decode any image file to HxWx3 uint8 RGB: EXIF orientation applied; grayscale, RGBA (composited on white),
    palette, 16-bit and float images converted (see to_uint8). The one decode path of the pipeline."""
    try:
        with open_image(path) as im:
            im = ImageOps.exif_transpose(im)  # a camera JPEG with orientation 6 is stored sideways
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = to_uint8(np.asarray(im), path)
                return np.repeat(arr[..., None], 3, axis=2)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("RGB"))
    except InputError as err:
        raise type(err)(f"image {path}: {err}".replace(f"image {path}: image {path}", f"image {path}")) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"image {path} could not be decoded: {err}") from None


def decode(source, pixels: np.ndarray | None = None) -> Image.Image:
    """An RGB image: a file (source is its path), or a row of a pixel array (source is its index)."""
    return Image.fromarray(pixels[source]).convert("RGB") if pixels is not None else Image.fromarray(read_image(source))


def resize(im: Image.Image, size: int, interp: str) -> np.ndarray:
    """(size, size, 3) uint8: the side a model's crops are taken from, resized once with the backbone's filter."""
    if im.size != (size, size):
        im = im.resize((size, size), PIL_INTERP.get(interp, Image.BICUBIC))
    return np.asarray(im)


def load_resized(source, pixels: np.ndarray | None, size: int, interp: str) -> np.ndarray:
    return resize(decode(source, pixels), size, interp)


def id_key(value: str) -> str:
    """The one rule ids are compared by: no surrounding white space, no image extension."""
    v = str(value).strip()
    return v[: -len(ext)] if (ext := next((e for e in IMAGE_EXTS if v.lower().endswith(e)), "")) else v


def _index_dir(folder: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Map both 'name.ext' and 'name' to the file name of every image in folder (one listing, not one stat per id);
    and the names without extension that several files share ('s1' for s1.png and s1.jpg)."""
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    index: dict[str, str] = {}
    stems: dict[str, list[str]] = {}
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTS):
            index[entry.name] = entry.name
            stems.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)
    for stem, names in stems.items():
        index.setdefault(stem, names[0])
    return index, {k: sorted(v) for k, v in stems.items() if len(v) > 1}


def _on_disk(folder: Path, key: str) -> str | None:
    """An id the folder's listing lacks that the file system still opens: a path below the folder (`day2/x.png`), or
    another case of a name where the file system ignores case. Its path relative to the folder, or None."""
    path = folder / key
    inside = path.resolve().is_relative_to(folder.resolve())
    return key if inside and path.name.lower().endswith(IMAGE_EXTS) and path.is_file() else None


def find_images(ids, folder, ext: str | None, what: str, hint: str = "set input.image_ext in recipe.json") -> list[str]:
    """The file of every id in `folder`: ids compared without surrounding white space, with or without their
    extension (`ext` appended when set, `png` meaning `.png`), or a path below the folder; an id matching several
    files (s1.png and s1.jpg) is refused, `hint` saying how to choose."""
    folder = Path(folder)
    index, ambiguous = _index_dir(folder)
    if ext and not ext.startswith("."):
        ext = "." + ext
    paths, missing, unclear = [], [], []
    for i in (str(v).strip() for v in ids):
        key = i + ext if ext and not i.lower().endswith(IMAGE_EXTS) else i
        name = index.get(key) or _on_disk(folder, key)
        if name is None:
            missing.append(i)
        elif not ext and key not in (name,) and key in ambiguous:
            unclear.append(f"{i} ({', '.join(ambiguous[key])})")
        else:
            paths.append(str(folder / name))
    if missing:
        raise InputError(f"{len(missing)} {what} id(s) have no image in {folder} (ids with or without extension are "
                         f"accepted), first: {missing[:5]}")  # fmt: skip
    if unclear:
        raise InputError(f"{len(unclear)} {what} id(s) match several files in {folder}, first: {unclear[:5]}; keep "
                         f"one file per id, or {hint}")  # fmt: skip
    return paths


# ---- test-time augmentation views --------------------------------------------------------------------------------
# A view is a crop of `img_size` from the cached image of side `cache_size = img_size / crop_pct` (so the crops are
# taken at the model's input size, the standard ten-crop), optionally flipped or rotated. Views are merged as
# probabilities (arithmetic or geometric mean), never as raw logits.

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


def contrast_views(views: list[str], ops: list[str]) -> list[str]:
    """The views a model's `feature_contrast` adds: each view taken by each operation, operation-major."""
    return [f"{v}_{op}" for op in ops for v in views]


def with_contrast(base: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """(V, n, D) features of V views and (K * V, n, D) of their K contrast views (`contrast_views` order) -> (V, n,
    D * (1 + K)): each view's features, then their difference from each of its contrast views'."""
    v = len(base)
    return np.concatenate([base] + [base - extra[j : j + v] for j in range(0, len(extra), v)], axis=-1)


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


# ---- the forward pass --------------------------------------------------------------------------------------------


def amp_context(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class Normalizer:
    """uint8 (B, H, W, C) on any device -> float (B, C, H, W) normalised with the backbone's mean and std."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.device = device
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


def embed(model: torch.nn.Module, x: torch.Tensor, levels: list[int] | None = None,
          grid: int | tuple[int, ...] = 1) -> torch.Tensor:  # fmt: skip
    """Pooled activations of a frozen timm backbone: its pre-logits features (levels None), or the global average of
    each of timm's feature levels in `levels` (indices into model.feature_info), concatenated. With grid > 1 each map
    (the last feature map when levels is None) is averaged over grid x grid cells instead, flattened channel-major:
    (B, sum of C x grid x grid). A tuple of grids pools the same forward pass once per grid, concatenated in order
    (what the features stage stores: one forward for every grid a model may read)."""
    if levels is None:
        last = model.forward_features(x)
        maps = [last]
    else:
        maps = model.forward_intermediates(x, indices=levels, intermediates_only=True, stop_early=True)
    out = []
    for g in (grid,) if isinstance(grid, int) else grid:
        if g == 1 and levels is None:
            y = model.forward_head(last, pre_logits=True)
        elif g == 1:
            y = torch.cat([t.mean((2, 3)) for t in maps], 1)
        elif any(t.ndim != 4 for t in maps):
            raise ValueError(f"a {g} x {g} grid needs 2-D feature maps (B, C, H, W); this backbone's are of shape "
                             f"{tuple(maps[0].shape)}: use feature_levels, or grid 1")  # fmt: skip
        else:
            y = torch.cat([torch.nn.functional.adaptive_avg_pool2d(t.float(), g).flatten(1) for t in maps], 1)
        out.append(y.float())
    return out[0] if len(out) == 1 else torch.cat(out, 1)


@torch.no_grad()
def forward_views(model: torch.nn.Module, x: torch.Tensor, views: list[str], img_size: int, amp: bool,
                  channels_last: bool, features: bool = False, levels: list[int] | None = None,
                  grid: int | tuple[int, ...] = 1, max_batch: int | None = None) -> np.ndarray:  # fmt: skip
    """x: one normalised batch (B, C, S, S) on the model's device -> (V, B, K) float32: class probabilities (softmax
    of the logits), or K features (embed). On CUDA all views of a batch are stacked into one forward (chunks of up to
    1024 images); on CPU one view at a time (a 640-image stacked batch ran at 0.65x ten 64-image ones on 2 cores)."""
    device, n = x.device, len(x)
    chunk = max_batch or (1024 if device.type == "cuda" else n)
    if chunk <= n:  # one view at a time (split further if a batch exceeds max_batch)
        parts = [p for v in views for p in torch.split(make_view(x, v, img_size), chunk)]
    else:  # views stacked view-major into (V*B, C, size, size), forwarded in chunks
        parts = list(torch.split(stack_views(x, views, img_size), chunk))
    out = []
    for part in parts:
        part = part.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with amp_context(device, amp):
            y = embed(model, part, levels, grid) if features else model(part)
        y = y.float()
        out.append(y if features else torch.softmax(y, dim=1))
    return torch.cat(out).view(len(views), n, -1).cpu().numpy()


# ---- heads, stackers and blends ----------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def linear_softmax(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray,
                   scale: np.ndarray) -> np.ndarray:  # fmt: skip
    """A multinomial logistic regression on standardised inputs: x (..., D) -> probabilities (..., C), float64.
    coef (C, D) holds every class (a class the fit never saw has intercept -1e4: no mass)."""
    x = np.asarray(x, dtype=np.float64)
    return softmax(((x - mean) / scale) @ coef.T + intercept)


def full_linear(classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray, n_classes: int):
    """scikit-learn's LogisticRegression coefficients as (C, D) and (C,) over every class: a binary fit's one row
    becomes class 1 against a zero class 0 (the same sigmoid); classes absent from the fit get no mass."""
    full_coef = np.zeros((n_classes, coef.shape[1]))
    full_int = np.full(n_classes, -1e4)
    if len(classes) == 2 and coef.shape[0] == 1:
        full_coef[classes[1]], full_int[classes[1]], full_int[classes[0]] = coef[0], intercept[0], 0.0
    else:
        full_coef[classes], full_int[classes] = coef, intercept
    return full_coef, full_int


def stack_features(probs_list) -> np.ndarray:
    """A stacker's inputs: the models' log-probabilities side by side, (N, M x C)."""
    p = np.stack([np.asarray(q, dtype=np.float64) for q in probs_list])  # (M, N, C)
    return np.log(np.clip(p, 1e-7, 1)).transpose(1, 0, 2).reshape(p.shape[1], -1)


def rank_columns(p: np.ndarray) -> np.ndarray:
    """Per-class ranks (ties averaged) over the rows, scaled to (0, 1]."""
    return pd.DataFrame(p).rank(axis=0, method="average").to_numpy() / len(p)


def blend_probs(method: str, weights, probs_list, stack: dict | None = None) -> np.ndarray:
    """The blend of aligned (N, C) probabilities: a weighted mean renormalised per row (mean, caruana, simplex), the
    weighted mean of per-class ranks (rank), or the stacker's linear softmax on log-probabilities (stack)."""
    if method == "stack":
        x = stack_features(probs_list)
        out = linear_softmax(x, *(np.asarray(stack[k], dtype=np.float64) for k in ("coef", "intercept", "mean",
                                                                                     "scale")))  # fmt: skip
        return out / out.sum(1, keepdims=True)
    p = np.stack([np.asarray(q, dtype=np.float64) for q in probs_list])
    if method == "rank":
        p = np.stack([rank_columns(m) for m in p])
    out = np.tensordot(np.asarray(weights, dtype=np.float64), p, axes=1)
    return out / out.sum(1, keepdims=True)


# ---- the submission ----------------------------------------------------------------------------------------------


def submission_frame(sample: pd.DataFrame, probs: np.ndarray, fmt: str, classes: list[str],
                     column_classes: list[int] | None = None, positive: int = 1) -> pd.DataFrame:  # fmt: skip
    """The file to upload, in the sample's columns and row order. probs: (n_test, n_classes) in the sample's row
    order; label: the most probable class as the competition spells it; probability: the positive class's
    probability (binary); class_probs: one column per class (`column_classes[j]`: the class of column j + 1)."""
    sub = pd.DataFrame({sample.columns[0]: sample.iloc[:, 0].to_numpy()})
    if fmt == "label":
        sub[sample.columns[1]] = np.asarray(classes, dtype=object)[probs.argmax(1)]
    elif fmt == "probability":
        if probs.shape[1] != 2:
            raise InputError(f"submit format 'probability' needs a binary task; there are {probs.shape[1]} classes")
        sub[sample.columns[1]] = probs[:, positive]
    elif fmt == "class_probs":
        for col, k in zip(sample.columns[1:], column_classes):
            sub[col] = probs[:, k] / probs.sum(1)
    else:
        raise InputError(f"unknown submit format {fmt!r}; known: label, probability, class_probs")
    return sub
