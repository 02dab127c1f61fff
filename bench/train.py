"""./run.sh bench train: training images/s of the train stage vs bare loops that do the same work, the stage's extras
added one at a time so that each gets a ratio of its own. No pass/fail.

Every rung runs one epoch of the fold's training rows with the stage's model (the real class count), batch size and
device:
1. bare: centre crops already in memory as a tensor, AdamW over all parameters at one learning rate, cross entropy;
2. + loader: the stage's DataLoader instead (the cached images, the stage's augmentation and seeded sampler, its
   workers);
3. + recipe: the stage's per-stage parameter groups (weight decay split, layer-decayed learning rates set every
   step), label-smoothed soft targets (mixup/cutmix when configured), gradient clipping, accumulation and EMA: the
   stage's loop written out bare;
4. the train stage's own epoch (`train_one_epoch` on the Session its `setup` builds): what it adds to rung 3 is its
   overhead.

Shared machines swing by 15-35 % within one command, so the rungs are interleaved: each round runs every rung once,
then one stage epoch, and ratios compare medians over rounds (min-max printed too). A warm-up round is not timed
(worker start-up, first allocations), so `--epochs 1` times one steady epoch of each.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from pipeline.app import build_plan
from pipeline.augment import train_transform
from pipeline.data import ImageDataset
from pipeline.kinds.finetune import setup, train_one_epoch
from pipeline.models import preprocessing
from pipeline.runtime import amp_context, derive_seed, make_loader, pick_device, prepare_model, resolve_workers
from pipeline.scheduler import ensure_done
from pipeline.training import EpochSampler, lr_factor, mix_batch, param_groups, set_trainable

from .common import parse


class Rung:
    """One bare loop: its own model and optimizer, run for an epoch (or a few warm-up steps) at a time."""

    def __init__(self, plan, unit, rows: np.ndarray, loader: bool, recipe: bool):
        cfg, spec = plan.cfg, plan.cfg.model(unit.meta["model"])
        self.spec, self.amp, self.recipe = spec, cfg.runtime.amp, recipe
        self.device, self.model, self.norm = prepare_model(spec, cfg.runtime, plan.comp.n_classes, seed=0)
        self.n_classes = plan.comp.n_classes
        if recipe:
            groups, _ = param_groups(self.model, spec)
            self.opt = torch.optim.AdamW(groups, lr=spec.lr)
            self.ema = None
            if spec.ema:
                from timm.utils import ModelEmaV3

                self.ema = ModelEmaV3(self.model, decay=spec.ema_decay)
        else:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=spec.lr)
        cache = plan.load_input(unit, "train_images")
        y = plan.comp.train["y"].to_numpy()
        self.steps = math.ceil(len(rows) / spec.batch_size)
        if loader:
            prep = preprocessing(spec)
            ds = ImageDataset(cache, rows, y, train_transform(spec.augment, spec.img_size, prep["cache_size"]))
            self.sampler = EpochSampler(len(rows), 0, 0)
            self.loader = make_loader(ds, spec.batch_size, cfg.runtime.num_workers, self.device, sampler=self.sampler)
            self.steps = len(self.loader)
        else:
            self.loader = None
            images = np.load(cache, mmap_mode="r")[rows]
            off, size = (images.shape[1] - spec.img_size) // 2, spec.img_size
            self.x = torch.from_numpy(np.ascontiguousarray(images[:, off : off + size, off : off + size]))
            self.y = torch.from_numpy(y[rows])
        self.epoch = 0

    def batches(self, steps: int):
        if self.loader is None:
            g = torch.Generator().manual_seed(self.epoch)
            for _ in range(steps):
                idx = torch.randint(0, len(self.x), (self.spec.batch_size,), generator=g)
                yield self.x[idx], self.y[idx]
            return
        self.sampler.set_epoch(self.epoch)
        for i, (images, labels, _) in enumerate(self.loader):
            if i == steps:
                break
            yield images, labels

    def run(self, steps: int | None = None) -> float:
        """Images per second over `steps` steps (default: one epoch)."""
        spec, steps = self.spec, steps or self.steps
        self.model.train()
        if self.recipe:
            set_trainable(self.model, {n for n, _ in self.model.named_parameters()})
            torch.manual_seed(derive_seed(0, 0, self.epoch, 1))
        seen, t0 = 0, time.perf_counter()
        for i, (images, labels) in enumerate(self.batches(steps)):
            x, labels = self.norm(images), labels.to(self.device)
            seen += len(labels)
            if self.recipe:
                for g in self.opt.param_groups:
                    g["lr"] = spec.lr * g["lr_mult"] * lr_factor(i // spec.accum_steps, steps, 0)
                x, target = mix_batch(x, labels, self.n_classes, spec, spec.label_smoothing)
            else:
                target = labels
            with amp_context(self.device, self.amp):
                logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), target) / (spec.accum_steps if self.recipe else 1)
            loss.backward()
            if not self.recipe or (i + 1) % spec.accum_steps == 0 or i + 1 == steps:
                if self.recipe and spec.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), spec.grad_clip)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                if self.recipe and self.ema is not None:
                    self.ema.update(self.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.epoch += 1
        return seen / (time.perf_counter() - t0)


def spread(v: list[float]) -> str:
    return f"{np.median(v):8.1f} images/s (min {min(v):.1f}, max {max(v):.1f})"


def main() -> None:
    def extra(p):
        p.add_argument("--epochs", type=int, default=3, help="timed rounds: one epoch of each rung and of the stage")

    args, cfg, spec = parse(__doc__, extra)
    if not args.model:  # the first fine-tuned model (presets start with heads on features)
        spec = next((m for m in cfg.models if m.kind != "head"), spec)
    if spec.kind == "head":
        raise SystemExit(f"bench train: model {spec.name} is a head on features; name a fine-tuned one with --model")
    spec.epochs, spec.frozen_epochs, spec.patience = args.epochs + 1, 0, 0  # + the untimed warm-up epoch
    cfg.models = [spec]
    spec.seeds = spec.seeds[:1]
    plan = build_plan(cfg)
    unit = plan.one("train", model=spec.name, seed=spec.seeds[0], fold=0)
    ensure_done(plan, [plan.one("folds"), plan.images("train", spec)])
    session = setup(plan, unit)
    rows = np.where(plan.load_input(unit, "folds") != 0)[0]
    names = ["bare (tensors in memory)", "+ loader (cache, augmentation)", "+ recipe (groups, clip, smoothing)"]
    rungs = [Rung(plan, unit, rows, loader=i > 0, recipe=i > 1) for i in range(3)]
    for r in rungs:  # warm-up: worker start-up, first allocations
        r.run(steps=3)
    train_one_epoch(session, 0)
    times: list[list[float]] = [[] for _ in range(4)]
    stage_rows = []
    for epoch in range(1, args.epochs + 1):
        for i, r in enumerate(rungs):
            times[i].append(r.run())
        stage_rows.append(train_one_epoch(session, epoch))
        times[3].append(stage_rows[-1]["images_per_s"])
    device = pick_device(cfg.runtime)
    print(f"device {device}, model {spec.backbone} {spec.img_size}px, {plan.comp.n_classes} classes, batch "
          f"{spec.batch_size}, {len(rows)} rows per epoch, augment {spec.augment!r}, workers "
          f"{resolve_workers(cfg.runtime.num_workers, device)}, threads {torch.get_num_threads()}, "
          f"{args.epochs} timed rounds")  # fmt: skip
    med = [float(np.median(t)) for t in times]
    for i, name in enumerate(names):
        ratio = "" if i == 0 else f"  ratio to the rung above {med[i] / med[i - 1]:.3f}"
        print(f"{i + 1}. {name:36s}: {spread(times[i])}{ratio}")
    wait = np.median([row["data_wait_share"] for row in stage_rows])
    print(f"4. {'train stage (train_one_epoch)':36s}: {spread(times[3])}  ratio to rung 3 {med[3] / med[2]:.3f}; "
          f"waiting for data {100 * wait:.1f}% of step time")  # fmt: skip
    print(f"ratio stage/bare (all extras and overhead): {med[3] / med[0]:.3f}")


if __name__ == "__main__":
    main()
