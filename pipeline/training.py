"""Parts of a fine-tuning recipe the train stage assembles: the seeded epoch sampler, the learning-rate schedule,
per-stage parameter groups with layer-wise decay, freezing (BatchNorm statistics included), mixup and cutmix."""

from __future__ import annotations

import math

import numpy as np
import torch

from .models import stage_groups
from .runtime import derive_seed


class EpochSampler(torch.utils.data.Sampler):
    """Yields (position, sample seed): order and augmentation seeds are a pure function of (seed, fold, epoch)."""

    def __init__(self, n: int, seed: int, fold: int):
        self.n, self.seed, self.fold, self.epoch = n, seed, fold, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng(derive_seed(self.seed, self.fold, self.epoch))
        order = rng.permutation(self.n)
        seeds = rng.integers(0, 2**31 - 1, self.n)
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.n


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup then cosine to zero, over one phase of `steps` optimizer steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def param_groups(model: torch.nn.Module, spec) -> tuple[list[dict], list[list[str]]]:
    """AdamW groups: per stage (layer-wise decayed lr) x (decay | no decay for biases and norms)."""
    stages = stage_groups(model)
    named = dict(model.named_parameters())
    groups = []
    n_backbone = len(stages) - 1
    for i, names in enumerate(stages):
        mult = 1.0 if i == n_backbone else spec.backbone_lr_mult * spec.layer_decay ** (n_backbone - 1 - i)
        for decay in (True, False):
            params = [named[n] for n in names if (named[n].ndim > 1) == decay]
            if params:
                groups.append({"params": params, "lr_mult": mult, "weight_decay": spec.weight_decay if decay else 0.0})
    return groups, stages


def set_trainable(model: torch.nn.Module, trainable: set[str]) -> None:
    """requires_grad for the named parameters only; modules whose own parameters are all frozen go to eval mode
    (BatchNorm statistics frozen with their weights)."""
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    for mname, module in model.named_modules():
        own = [f"{mname}.{n}" if mname else n for n, _ in module.named_parameters(recurse=False)]
        if own and not any(n in trainable for n in own):
            module.eval()


def mix_batch(x: torch.Tensor, y: torch.Tensor, n_classes: int, spec, smoothing: float):
    """Soft targets with label smoothing, and mixup or cutmix (torch RNG, seeded per epoch)."""
    target = torch.full((len(y), n_classes), smoothing / n_classes, device=x.device)
    target.scatter_(1, y[:, None], 1 - smoothing + smoothing / n_classes)
    alphas = [a for a in (spec.mixup, spec.cutmix) if a > 0]
    if not alphas:
        return x, target
    use_cutmix = spec.cutmix > 0 and (spec.mixup <= 0 or torch.rand(()) < 0.5)
    alpha = spec.cutmix if use_cutmix else spec.mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(y), device=x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        t, b, left, r = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., t:b, left:r] = x[perm][..., t:b, left:r]
        lam = 1 - (b - t) * (r - left) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]
