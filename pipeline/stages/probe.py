"""probe: how fast this machine runs this competition's candidate models (with a budget only).

For every fine-tuned model of the config it times a few eval batches and a few training steps (forward, backward,
AdamW), and for the first model on features of each (backbone, feature levels) a few eval batches, on tensors of the
model's input size (a model on features at another size is estimated from it, scaled by the pixels: `rates.probed`);
and it times decoding and resizing this competition's first images. The budget planner turns these rates into the
expected seconds of every unit. Cached like any unit: its key holds the candidates and what identifies the machine
(processor, torch threads, device), so a second run on the same machine reuses it.

Output `probe.json`: {"decode_s": seconds per image, "setup_s": {candidate: seconds to build the model and run a
first batch}, "eval": {candidate: images/s}, "train": {candidate: images/s}, "dims": {candidate: features per image
pooled over the whole image, for the kinds on features}}.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from .. import kinds
from ..infer import embed, load_resized
from ..rates import candidate, parts
from ..runtime import amp_context, pick_device, prepare_model
from ..stage import RunContext
from ..store import Unit, atomic_write_json

NAME = "probe"
VERSION = 2  # 2: dims
PARTIAL = None
IMPLICIT = True
REPORTED = False  # what a machine measured is not a result: the report's key stays the same on every machine
EVAL_BATCH, STEPS = 32, 2  # small: the probe's own seconds come out of the budget


def machine(rt) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()  # fmt: skip
    gpu = torch.cuda.get_device_name(0) if pick_device(rt).type == "cuda" else None
    # the threads as configured, not this process's count: the scheduler and its workers (which set their own) must
    # build the same plan; the probe runs in one of the executor's slots, so its rates are a slot's
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": rt.threads, "executor": rt.executor,
            "workers": rt.workers, "gpu": gpu}  # fmt: skip


def probed_models(models) -> list:
    """The models the probe times: each fine-tune (its training at its own size and batch), and the first model on
    features of each backbone and levels (the probe's seconds come out of the budget)."""
    out, seen = [], set()
    for s in models:
        if kinds.reads_features(s.kind):
            backbone, _, levels = parts(candidate(s))
            if (backbone, levels) in seen:
                continue
            seen.add((backbone, levels))
        out.append(s)
    return out


def units(plan) -> list[Unit]:
    if plan.cfg.runtime.budget is None:
        return []
    specs = {candidate(s): s for s in probed_models(plan.cfg.models)}
    train = {candidate(s, True): s for s in plan.cfg.models if kinds.get(s.kind).probe_train}
    params = {"eval": sorted(specs), "train": sorted(train), "machine": machine(plan.cfg.runtime)}
    return [Unit(NAME, "machine", params, {"pixels": plan.fingerprint("train")}, VERSION)]


def _timed(fn, device) -> float:
    """Seconds per call of fn after one warm-up call, over STEPS calls."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / STEPS


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    cfg, rt = plan.cfg, plan.cfg.runtime
    result = {"eval": {}, "train": {}, "setup_s": {}, "dims": {}}
    sources = plan.comp.sources("train")[:32]
    t0 = time.perf_counter()
    for s in sources:
        load_resized(s, plan.comp.train_pixels, 64, "bicubic")
    result["decode_s"] = (time.perf_counter() - t0) / max(1, len(sources))
    for spec in probed_models(cfg.models):
        key, tkey, kind = candidate(spec), candidate(spec, True), kinds.get(spec.kind)
        if key in result["eval"] and (not kind.probe_train or tkey in result["train"]):
            continue
        t_setup = time.perf_counter()
        device, model, _ = prepare_model(spec, rt, plan.comp.n_classes, seed=0)
        x = torch.randn(EVAL_BATCH, 3, spec.img_size, spec.img_size, device=device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model.eval()

        @torch.no_grad()
        def forward(model=model, x=x, spec=spec, device=device, kind=kind):
            with amp_context(device, rt.amp):
                kind.probe_forward(model, x, spec)

        forward()
        result["setup_s"][key] = time.perf_counter() - t_setup
        if kinds.reads_features(spec.kind):  # what a head's fit costs grows with it
            with torch.no_grad():
                result["dims"][key] = int(embed(model, x[:1], spec.feature_levels, 1).shape[1])
        result["eval"][key] = EVAL_BATCH / _timed(forward, device)
        if kind.probe_train:
            xb = x[: spec.batch_size]
            y = torch.randint(0, plan.comp.n_classes, (len(xb),)).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            model.train()

            def step(model=model, xb=xb, y=y, opt=opt, device=device):
                with amp_context(device, rt.amp):
                    loss = torch.nn.functional.cross_entropy(model(xb).float(), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            result["train"][tkey] = len(xb) / _timed(step, device)
    atomic_write_json(out / "probe.json", result)
    return {"outputs": ["probe.json"], "scores": {"candidates": len(result["eval"])}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 0.2


def load(plan, unit: Unit) -> dict:
    return json.loads((plan.store.dir(unit) / "probe.json").read_text())
