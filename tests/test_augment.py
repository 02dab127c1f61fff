"""Augmentation is a pure function of (seed, fold, epoch, row), and its random draws are independent."""

from collections import Counter

import numpy as np
import torch

from pipeline.augment import train_transform
from pipeline.data import ImageDataset
from pipeline.runtime import make_loader
from pipeline.training import EpochSampler


def flip_dataset(tmp, n=400):
    """n copies of one asymmetric 4x4 image, augmented by an independent p=0.5 hflip and p=0.5 vflip."""
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, axis=2)
    np.save(tmp / "images.npy", np.repeat(img[None], n, axis=0))
    spec = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]
    return img, ImageDataset(tmp / "images.npy", np.arange(n), np.zeros(n, int), train_transform(spec, 4, 4))


def outcome(out: np.ndarray, img: np.ndarray) -> str:
    for name, ref in (("none", img), ("h", img[:, ::-1]), ("v", img[::-1]), ("hv", img[::-1, ::-1])):
        if np.array_equal(out, ref):
            return name
    raise AssertionError(f"not a flip of the input: {out[..., 0]}")


def test_transforms_draw_independently(tmp):
    # Compose.set_random_seed seeds every transform alike: hflip and vflip then always come together
    img, ds = flip_dataset(tmp)
    seen = Counter(outcome(ds[(i, 1000 + i)][0].numpy(), img) for i in range(len(ds)))
    assert set(seen) == {"none", "h", "v", "hv"}
    assert all(60 <= c <= 140 for c in seen.values()), seen  # each ~100 of 400


def test_augmentation_is_a_function_of_the_sample_seed(tmp):
    img, ds = flip_dataset(tmp, n=64)
    sampler = EpochSampler(len(ds), seed=3, fold=0)
    sampler.set_epoch(2)
    in_process = [ds[item][0] for item in sampler]
    loader = make_loader(ds, 16, 1, torch.device("cpu"), sampler=sampler)  # a real worker process
    from_worker = torch.cat([images for images, _, _ in loader])
    assert torch.equal(torch.stack(in_process), from_worker)
    sampler.set_epoch(3)
    assert not torch.equal(torch.stack([ds[item][0] for item in sampler]), from_worker)
