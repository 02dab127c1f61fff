"""Run units: skip the done ones, run the rest, write their markers. The local sequential executor.

A stage hands over its units and a function `work(unit, out_dir) -> dict(outputs=[...], scores={...})`; the executor
owns skipping, `--force`, the done marker and the one log line per unit (run / skip / resume, with time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .store import Store, Unit


class MissingInput(RuntimeError):
    """An upstream unit is not done; the message says which stage to run."""


def log(stage: str, msg: str) -> None:
    print(f"[{stage}] {msg}", flush=True)


def require_done(store: Store, unit: Unit) -> dict:
    if not store.is_done(unit):
        raise MissingInput(f"{unit.label} is not done: run `./run.sh {unit.stage}` (or `./run.sh all`) first")
    return store.marker(unit)


def run_units(
    store: Store,
    units: Iterable[Unit],
    work: Callable[[Unit, object], dict],
    force: bool = False,
    config: dict | None = None,
    partial: str | None = None,
) -> list[dict]:
    markers = []
    for unit in units:
        if store.is_done(unit) and not force:
            log(unit.stage, f"skip   {unit.name} (done)")
            markers.append(store.marker(unit))
            continue
        out = store.dir(unit)
        if force and (out / "done.json").exists():
            (out / "done.json").unlink()
            if partial and (out / partial).exists():
                (out / partial).unlink()
        verb = "resume" if partial and (out / partial).exists() else "run   "
        log(unit.stage, f"{verb} {unit.name}")
        started = time.time()
        store.begin(unit, config)
        result = work(unit, out)
        cleanup = result.pop("cleanup", [])
        marker = store.finish(unit, started, **result)
        for name in cleanup:  # scratch state (e.g. resume.pt) is dropped only once the unit is marked done
            (out / name).unlink(missing_ok=True)
        scores = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in marker["scores"].items())
        log(unit.stage, f"done   {unit.name} in {marker['seconds']:.1f}s {scores}".rstrip())
        markers.append(marker)
    return markers
