"""./run.sh bench train: training images/s of the train stage vs a bare timm loop (same model, size, batch, device).

The bare loop trains on tensors already in memory (no decoding, no augmentation, no loader): the ceiling for the
device. The stage's figure is from its own per-epoch metrics (training steps only, validation excluded), with the
share of step time spent waiting for the DataLoader. Shared machines swing by 15-35 % within one command, so the bare
loop runs several times before and after the stage and the ratio compares the medians (the stage's epochs after the
first); the ratio of the best of each is printed too, though short bare runs catch quiet spells more often than
whole epochs do. No pass/fail.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.plan import build_plan
from pipeline.runtime import amp_context, pick_device, prepare_model, resolve_workers
from pipeline.scheduler import ensure_done

from .common import parse


def bare_loop(cfg, spec, images: np.ndarray, n_images: int) -> float:
    device, model, norm = prepare_model(spec, cfg.runtime, 10)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    off = (images.shape[1] - spec.img_size) // 2
    x_all = torch.from_numpy(images[:, off : off + spec.img_size, off : off + spec.img_size].copy())
    y_all = torch.randint(0, 10, (len(x_all),))
    steps = max(3, n_images // spec.batch_size)
    seen, t0 = 0, None
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x_all), (spec.batch_size,))
        x, y = norm(x_all[idx]), y_all[idx].to(device)
        with amp_context(device, cfg.runtime.amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(idx) if step >= 2 else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    def extra(p):
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--repeats", type=int, default=3, help="bare-loop runs before and after the stage")

    args, cfg, spec = parse(__doc__, extra)
    spec.epochs, spec.frozen_epochs, spec.patience = args.epochs, 0, 0
    cfg.models = [spec]
    spec.seeds = spec.seeds[:1]
    plan = build_plan(cfg)
    ensure_done(plan, [plan.one("folds"), plan.images("train", spec)])
    images = np.load(plan.load(plan.images("train", spec)))
    unit = plan.all("train")[0]
    n_train = int((plan.comp.train.shape[0]) * (1 - 1 / cfg.folds.n_folds))
    n_bare = max(n_train // 2, 4 * spec.batch_size)
    bare = [bare_loop(cfg, spec, images, n_bare) for _ in range(args.repeats)]
    ensure_done(plan, [unit])
    bare += [bare_loop(cfg, spec, images, n_bare) for _ in range(args.repeats)]
    metrics = plan.load(unit)["metrics"]
    stage = metrics["images_per_s"].to_numpy()
    stage = stage[1:] if len(stage) > 1 else stage  # the first epoch includes starting the worker processes
    device = pick_device(cfg.runtime)
    print(f"device {device}, model {spec.backbone} {spec.img_size}px, batch {spec.batch_size}, "
          f"workers {resolve_workers(cfg.runtime.num_workers, device)}, threads {torch.get_num_threads()}")  # fmt: skip
    print("bare timm loop      : " + " ".join(f"{b:.1f}" for b in bare) + " images/s (before, after the stage)")
    for _, row in metrics.iterrows():
        print(f"train stage epoch {int(row['epoch'])}: {row['images_per_s']:8.1f} images/s, "
              f"waiting for data {100 * row['data_wait_share']:.1f}% of step time")  # fmt: skip
    print(
        f"ratio stage/bare, median of each: {np.median(stage) / np.median(bare):.3f} "
        f"(best of each: {stage.max() / max(bare):.3f})"
    )


if __name__ == "__main__":
    main()
