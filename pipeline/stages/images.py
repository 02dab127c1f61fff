"""images: every image of a split decoded and resized once, at the side a model's crops are taken from, into a
(n, side, side, 3) uint8 `images.npy` read by memory map. One unit per (split, side, interpolation), shared by every
model that needs it; built on demand when a later stage runs alone."""

from __future__ import annotations

from pathlib import Path

from ..data import build_image_cache
from ..plan import image_meta
from ..stage import RunContext
from ..store import Unit

NAME = "images"
VERSION = 1
PARTIAL = None
IMPLICIT = True


def units(plan) -> list[Unit]:
    out = []
    for spec in plan.cfg.models:
        for split in ("train", "test"):
            meta = image_meta(split, spec)  # how consumers find it: plan.images(split, spec)
            params = {"size": meta["size"], "interpolation": meta["interpolation"]}
            inputs = {"pixels": plan.fingerprint(split), "table": plan.tables[split]}
            name = f"{split}/{meta['size']}px-{meta['interpolation']}"
            out.append(Unit(NAME, name, params, inputs, VERSION, meta=meta))
    return out


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    m = unit.meta
    build_image_cache(plan.comp, m["split"], m["size"], m["interpolation"], out / "images.npy",
                      workers=max(2, plan.cfg.runtime.num_workers))  # fmt: skip
    return {"outputs": ["images.npy"], "scores": {"n": len(plan.comp.sources(m["split"]))}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 0.5 + rates["decode_s"] * len(plan.comp.sources(unit.meta["split"]))


def load(plan, unit: Unit) -> Path:
    """The path of the cache (datasets memory-map it lazily, once per worker process)."""
    return plan.store.dir(unit) / "images.npy"
