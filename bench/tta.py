"""./run.sh bench tta: 10-crop TTA vs one view vs ttach's ClassificationTTAWrapper, same model, batch and device.

Ours builds all ten views of a batch by slicing and runs them as one stacked forward (chunked to --max-batch);
ttach runs one view at a time in a Python loop and merges raw logits. Each is timed over the same images, after a
warm-up pass, best of --repeats. Prints seconds and ratios; no pass/fail.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import ttach

from pipeline.data import ImageDataset
from pipeline.models import preprocessing
from pipeline.plan import build_plan
from pipeline.runtime import amp_context, make_loader, prepare_model, run_views
from pipeline.scheduler import ensure_done
from pipeline.tta import views_for

from .common import parse


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    def extra(p):
        p.add_argument("--images", type=int, default=512)
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--max-batch", type=int, default=None, help="images per forward (default: per device)")

    args, cfg, spec = parse(__doc__, extra)
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

    t_ttach = timed(with_ttach, args.repeats, device)
    t_one = timed(ours(["center"]), args.repeats, device)
    t_ten = timed(ours(ten), args.repeats, device)
    t_stacked = timed(ours(ten, 10 * args.batch), args.repeats, device)
    t_ttach = min(t_ttach, timed(with_ttach, args.repeats, device))  # before and after ours: machine drift
    n = len(rows)
    print(f"device {device}, model {spec.backbone} {spec.img_size}px (cache {prep['cache_size']}px), "
          f"{n} images, batch {args.batch}, threads {torch.get_num_threads()}")  # fmt: skip
    print(f"one view (centre)        : {t_one:7.3f}s  {n / t_one:8.1f} images/s")
    print(f"ten-crop (device default): {t_ten:7.3f}s  {n / t_ten:8.1f} images/s  ratio to one view {t_ten / t_one:.2f}")
    print(
        f"ten-crop, all 10 stacked : {t_stacked:7.3f}s  {n / t_stacked:8.1f} images/s  ratio to one view "
        f"{t_stacked / t_one:.2f}"
    )
    print(f"ttach ten_crop wrapper   : {t_ttach:7.3f}s  {n / t_ttach:8.1f} images/s  ratio to one view "
          f"{t_ttach / t_one:.2f}  (ours/ttach {t_ten / t_ttach:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
