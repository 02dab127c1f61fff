"""Albumentations pipelines, run in DataLoader worker processes on cached uint8 images of side `cache_size`.

A pipeline ends at `img_size` x `img_size` uint8 HWC; normalisation happens on the device (less to copy, faster).
Randomness is reseeded per sample from the sampler, so augmentation is a pure function of (seed, fold, epoch, row).
"""

from __future__ import annotations

from typing import Any

import albumentations as A


def _presets(img: int, cache: int) -> dict[str, list]:
    crop = [A.RandomCrop(img, img)] if cache > img else []
    light = [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), p=0.7)] + crop
    return {
        "none": [A.CenterCrop(img, img)],
        "light": light,  # no flips: safe for digits and text
        "flip": light + [A.HorizontalFlip()],
        "medium": [
            A.RandomResizedCrop((img, img), scale=(0.5, 1.0)),
            A.HorizontalFlip(),
            A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.5),
        ],
        "heavy": [
            A.RandomResizedCrop((img, img), scale=(0.35, 1.0)),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.RandomRotate90(),
            A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.7),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2)),
        ],
    }


PRESETS = ("none", "light", "flip", "medium", "heavy")


def _from_spec(item: Any, where: str) -> A.BasicTransform:
    """One transform from {name: HorizontalFlip, p: 0.5, ...} (any albumentations class and its arguments)."""
    if not isinstance(item, dict) or "name" not in item:
        raise ValueError(f"{where}: expected a mapping with 'name' (an albumentations transform), got {item!r}")
    kwargs = dict(item)
    name = kwargs.pop("name")
    cls = getattr(A, name, None)
    if cls is None:
        raise ValueError(f"{where}: albumentations has no transform {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {name}({kwargs}) failed: {err}") from None


def train_transform(augment: Any, img_size: int, cache_size: int) -> A.Compose:
    if isinstance(augment, str):
        presets = _presets(img_size, cache_size)
        if augment not in presets:
            raise ValueError(f"augment preset {augment!r} unknown; known: {list(PRESETS)} or a list of transforms")
        steps = presets[augment]
    else:
        steps = [_from_spec(item, f"augment[{i}]") for i, item in enumerate(augment)]
    # whatever the steps did to the size, end at img_size (centre crop when larger, resize when smaller)
    steps = steps + [A.PadIfNeeded(img_size, img_size), A.CenterCrop(img_size, img_size)]
    return A.Compose(steps, seed=0)
