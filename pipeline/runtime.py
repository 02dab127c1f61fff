"""Devices, seeding, loaders and batched multi-view inference shared by the train, features and predict stages."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from .config import ModelSpec, Runtime
from .infer import Normalizer, amp_context, forward_views  # noqa: F401 - stages and benches import them from here
from .models import create_model, preprocessing


def pick_device(rt: Runtime) -> torch.device:
    if rt.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(rt.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device is {rt.device!r} but CUDA is not available; use auto or cpu")
    return dev


def setup_torch(rt: Runtime, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif rt.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of its parts (seed, fold, epoch, ...; the full-data fold is -1)."""
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def place_model(model: torch.nn.Module, rt: Runtime, device: torch.device) -> torch.nn.Module:
    """Move to the device, channels_last when asked (measured 1.07-1.23x faster training on this 2-core CPU too)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if rt.channels_last else model


def prepare_model(spec: ModelSpec, rt: Runtime, n_classes: int, seed: int | None = None, state_dict=None):
    """The one way train, features, predict and the benches get (device, model, normaliser): torch set up for the
    device, the timm model (pretrained weights, or `state_dict` of ours over a bare one; `seed` seeds the new head
    and, with weights none, the backbone) moved there, and the backbone's mean/std normaliser on it."""
    device = pick_device(rt)
    setup_torch(rt, device)
    if seed is not None:
        torch.manual_seed(seed)
    model = create_model(spec, n_classes, load_weights=state_dict is None)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    prep = preprocessing(spec)
    return device, place_model(model, rt, device), Normalizer(prep["mean"], prep["std"], device, rt.channels_last)


def unit_cpus() -> int:
    """The cores this process may use: its share when an executor split them (PIPELINE_CPUS), else all."""
    return int(os.environ.get("PIPELINE_CPUS") or os.cpu_count() or 1)


def resolve_workers(num_workers: int, device: torch.device) -> int:
    """-1 (auto): on CUDA, all cores but one feed the GPU (at most 8). On CPU the workers compete with training for
    the same cores: measured on 2 cores (bench train), 0 workers ran at 0.93 of a bare loop, 1 at 0.89, 2 at 0.83."""
    if num_workers >= 0:
        return num_workers
    cpus = unit_cpus()
    return min(8, cpus - 1) if device.type == "cuda" else max(0, min(4, (cpus - 2) // 2))


def make_loader(dataset, batch_size: int, num_workers: int, device: torch.device, sampler=None, shuffle=False):
    """A training loader (with a sampler) drops a last batch of one sample: BatchNorm cannot train on it."""
    num_workers = resolve_workers(num_workers, device)
    drop_last = sampler is not None and len(sampler) % batch_size == 1
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        drop_last=drop_last,
        # its own generator: starting an iterator (e.g. after a resume) must not draw from the global torch RNG,
        # which the training loop reseeds per epoch for dropout and mixup
        generator=torch.Generator().manual_seed(0),
    )


def progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal; silent otherwise (logs get one line per unit instead)."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


@torch.no_grad()
def run_views(
    model: torch.nn.Module,
    loader,
    views: list[str],
    img_size: int,
    norm: Normalizer,
    amp: bool,
    features: bool = False,
    levels: list[int] | None = None,
    grid: int | tuple[int, ...] = 1,
    desc: str = "",
    show: bool = False,
    max_batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward every view of every sample. Returns (rows (N,), out (V, N, K)): K classes (probabilities) or
    K features (models.embed: pre-logits, or pooled feature `levels`). Rows are the dataset row indices carried by
    the loader.

    Views are built on the device and forwarded in chunks of max_batch images (infer.forward_views, the code an
    exported bundle runs too)."""
    model.eval()
    outs, rows = [], []
    for images, _, idx in progress(loader, len(loader), desc, show):
        outs.append(forward_views(model, norm(images), views, img_size, amp, norm.channels_last, features, levels,
                                  grid, max_batch))  # fmt: skip
        rows.append(np.asarray(idx))
    return np.concatenate(rows), np.concatenate(outs, axis=1)
