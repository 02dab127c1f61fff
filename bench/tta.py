"""./run.sh bench tta: 10-crop TTA vs one view vs ttach's ClassificationTTAWrapper, same model, batch and device.

Ours builds the views of a batch by slicing, forwarded one view at a time on CPU or stacked on CUDA (the device
default; `--max-batch` overrides it); ttach runs one view at a time in a Python loop and merges raw logits. Every
contender is timed the same way over the same decoded batches: one warm-up pass each, then --repeats rounds in which
each runs once (interleaved, the order rotated every round, so machine drift hits all alike). Prints the median
seconds with the spread (min-max) and ratios of medians; no pass/fail.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import ttach

from pipeline.app import build_plan
from pipeline.data import ImageDataset
from pipeline.models import preprocessing
from pipeline.runtime import amp_context, make_loader, prepare_model, run_views
from pipeline.scheduler import ensure_done
from pipeline.tta import views_for

from .common import parse


def interleaved(contenders: dict, repeats: int, device) -> dict[str, list[float]]:
    """Seconds of each contender over `repeats` rounds, each round running every contender once."""

    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for fn in contenders.values():  # warm-up
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(once(contenders[n]))
    return times


def main() -> None:
    def extra(p):
        p.add_argument("--images", type=int, default=512)
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--repeats", type=int, default=5)
        p.add_argument("--max-batch", type=int, default=None, help="images per forward (default: per device)")

    args, cfg, spec = parse(__doc__, extra)
    if not args.model:  # the first fine-tuned model (presets start with heads on features)
        spec = next((m for m in cfg.models if m.kind != "head"), spec)
    plan = build_plan(cfg)
    prep = preprocessing(spec)
    ensure_done(plan, [plan.images("train", spec)])
    cache = plan.load(plan.images("train", spec))
    rows = np.arange(min(args.images, len(plan.comp.train)))
    device, model, norm = prepare_model(spec, cfg.runtime, plan.comp.n_classes)
    model.eval()
    batches = list(make_loader(ImageDataset(cache, rows), args.batch, 0, device))  # decoded once, outside timing
    ten = views_for("ten-crop")

    def ours(views, max_batch=args.max_batch):
        def go():
            run_views(model, batches, views, spec.img_size, norm, cfg.runtime.amp, max_batch=max_batch)

        return go

    wrapper = ttach.ClassificationTTAWrapper(model, ttach.aliases.ten_crop_transform(spec.img_size, spec.img_size))

    @torch.no_grad()
    def with_ttach():
        for images, _, _ in batches:
            x = norm(images)
            with amp_context(device, cfg.runtime.amp):
                torch.softmax(wrapper(x).float(), 1).cpu()

    contenders = {
        "one view (centre)": ours(["center"]),
        "ten-crop (device default)": ours(ten),
        "ten-crop, all 10 stacked": ours(ten, 10 * args.batch),
        "ttach ten_crop wrapper": with_ttach,
    }
    times = interleaved(contenders, args.repeats, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(rows)
    print(f"device {device}, model {spec.backbone} {spec.img_size}px (cache {prep['cache_size']}px), "
          f"{n} images, batch {args.batch}, threads {torch.get_num_threads()}, channels_last "
          f"{cfg.runtime.channels_last}, {args.repeats} interleaved rounds")  # fmt: skip
    for name, t in times.items():
        print(
            f"{name:26s}: {med[name]:7.3f}s (min {min(t):.3f}, max {max(t):.3f})  {n / med[name]:8.1f} images/s  "
            f"ratio to one view {med[name] / med['one view (centre)']:.2f}"
        )
    ours_t, ttach_t = times["ten-crop (device default)"], times["ttach ten_crop wrapper"]
    per_round = statistics.median(a / b for a, b in zip(ours_t, ttach_t))
    print(f"ours/ttach (ten-crop, device default): {statistics.median(ours_t) / statistics.median(ttach_t):.2f} "
          f"(median of the rounds' own ratios {per_round:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
