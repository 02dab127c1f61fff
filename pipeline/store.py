"""The unit store: every computed thing is a unit keyed by its content, written atomically, done when marked.

A unit's key hashes (stage, params, input unit keys, stage version). Its outputs live in
`work/<competition>/<stage>/<name>/<key>/`, so a changed setting never overwrites an earlier result: it gets its own
folder, and the old one reads as stale. Files are written to a temporary name and renamed; `done.json` (key, params,
inputs, version, timings, scores) is written last. No marker means not done, whatever else the folder holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .durable import (  # noqa: F401 - the store's API since before durable.py
    HOST,
    DiskFull,
    atomic_write,
    changed,
    file_digest,
    fsync,
    remove_stale_tmp,
    require_space,
    sha256_file,
    tmp_name,
    tmp_owner,
)

DONE = "done.json"
RUN_ENV = "PIPELINE_RUN"  # the id of the command that runs units (`./run.sh all`); its workers inherit it
_PROCESS_RUN = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # units run outside a command (tests, benches)
ATTEMPT = ".attempt-"  # an attempt's staging folder inside its unit's folder: .attempt-<claim token>


def start_run() -> str:
    """A new run id for this command, in the environment its worker processes and Ray tasks inherit (the report draws
    the units a run ran apart from those it reused)."""
    os.environ[RUN_ENV] = run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return run


def run_id() -> str:
    return os.environ.get(RUN_ENV) or _PROCESS_RUN


def worker_id() -> str:
    """Who runs units in this process, whatever the executor: host and pid (one lane of the report's timeline)."""
    return f"{HOST}:{os.getpid()}"


def stable_hash(obj: Any, n: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_savez(path: Path, **arrays) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@dataclass
class Unit:
    stage: str
    name: str  # e.g. "lite0/seed0/fold3"
    params: dict  # the config slice that changes this unit's result
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> that unit's key (or a content hash)
    version: int = 1
    meta: dict = field(default_factory=dict)  # what tells it apart within its stage (model, seed, fold); not keyed
    gpu: bool = False  # resources: runs on an accelerator when there is one

    @cached_property
    def key(self) -> str:
        return stable_hash({"stage": self.stage, "params": self.params, "inputs": self.inputs, "v": self.version})

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.name}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def diff_reason(old: dict, unit: Unit) -> str:
    """Say which part of the key changed between an earlier marker and this unit (for `status`)."""
    if old.get("version") != unit.version:
        return f"stage version {old.get('version')} -> {unit.version}"
    old_p, new_p = _flatten(old.get("params", {})), _flatten(unit.params)
    changed = [k for k in sorted(set(old_p) | set(new_p)) if old_p.get(k, "<unset>") != new_p.get(k, "<unset>")]
    if changed:
        k = changed[0]
        more = f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"{k}: {old_p.get(k, '<unset>')!r} -> {new_p.get(k, '<unset>')!r}{more}"
    old_i = old.get("inputs", {})
    changed = [k for k in sorted(set(old_i) | set(unit.inputs)) if old_i.get(k) != unit.inputs.get(k)]
    if changed:
        return f"input {changed[0]} changed" + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")
    return "key changed"


class BrokenOutput(RuntimeError):
    """A done unit's output changed after it was marked done (truncated, overwritten): it is never read."""


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    def dir(self, unit: Unit) -> Path:
        d = self.root / unit.stage / unit.name / unit.key
        if not d.resolve().is_relative_to(self.root.resolve()):  # names are checked by the config; this is the floor
            raise ValueError(f"unit {unit.label} would write outside the work dir {self.root}")
        return d

    def read_marker(self, unit: Unit) -> dict | None:
        """The unit's done.json, or None when there is none or it cannot be read (empty, cut off, not this key)."""
        m = _read_json(self.dir(unit) / DONE)
        return m if m is not None and m.get("key") == unit.key else None

    def broken(self, unit: Unit, marker: dict | None = None) -> str | None:
        """Why a done unit's outputs no longer are what its marker recorded (None when they are)."""
        for name, want in (marker or self.read_marker(unit) or {}).get("files", {}).items():
            why = changed(self.dir(unit) / name, want)
            if why:
                return f"{name} {why}"
        return None

    def redone_input(self, marker: dict) -> str | None:
        """Which input unit was redone (or undone) since this marker's unit read it, if any."""
        for rel, attempt in marker.get("upstream", {}).items():
            m = _read_json(self.root / rel / DONE)
            if m is None or m.get("attempt") != attempt:
                return rel
        return None

    def not_done(self, unit: Unit) -> tuple[str, str] | None:
        """The one rule of done, for `status`, `all` and the scheduler: None when done, else (state, why)."""
        path = self.dir(unit) / DONE
        marker = self.read_marker(unit)
        if marker is None:
            return ("broken", f"{path} cannot be read (empty or cut off)") if path.exists() else ("missing", "")
        why = self.broken(unit, marker)
        if why:
            return "broken", why
        rel = self.redone_input(marker)
        return ("stale", f"input {rel} was redone after it") if rel else None

    def is_done(self, unit: Unit) -> bool:
        """A readable marker with this key, every output it records unchanged, every input it read the same."""
        return self.not_done(unit) is None

    def verify(self, unit: Unit) -> None:
        """Before a unit's outputs are read: refuse a broken one, and drop its marker so that it is redone."""
        reason = self.broken(unit)
        if reason:
            (self.dir(unit) / DONE).unlink(missing_ok=True)
            raise BrokenOutput(f"{unit.label}: {reason}; it is no longer counted as done: run the same command again "
                               f"to redo it")  # fmt: skip

    def marker(self, unit: Unit) -> dict:
        marker = self.dir(unit) / DONE
        if not marker.is_file():
            raise FileNotFoundError(f"unit {unit.label} is not done (no {marker}); run its stage first")
        return json.loads(marker.read_text())

    def begin(self, unit: Unit, config: dict | None = None) -> Path:
        d = self.dir(unit)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"key": unit.key, "stage": unit.stage, "name": unit.name, "params": unit.params, "inputs": unit.inputs}
        atomic_write_json(d / "unit.json", meta)
        if config is not None:
            atomic_write_json(d / "config.json", config)
        return d

    def attempts(self, unit: Unit) -> list[Path]:
        """The staging folders of the unit's attempts (live, dead, or left by a crash)."""
        return sorted(self.dir(unit).glob(f"{ATTEMPT}*"))

    def partial(self, unit: Unit, partial_file: str | None) -> Path | None:
        """The newest staging folder that holds resumable state (a dead attempt's), if any."""
        found = [a for a in self.attempts(unit) if partial_file and (a / partial_file).is_file()]
        return max(found, key=lambda a: (a / partial_file).stat().st_mtime_ns) if found else None

    def reset(self, unit: Unit, partial_file: str | None = None) -> None:
        """Forget every attempt and the marker: the unit is redone from nothing (--force, a broken output)."""
        d = self.dir(unit)
        (d / DONE).unlink(missing_ok=True)
        for a in self.attempts(unit):
            shutil.rmtree(a, ignore_errors=True)
        if partial_file:
            (d / partial_file).unlink(missing_ok=True)  # where earlier versions kept it

    def finish(self, unit: Unit, started: float, outputs: list[str], scores: dict | None = None, *,
               staging: Path | None = None, fence=contextlib.nullcontext, scratch: tuple = (),
               upstream: dict | None = None, attempt: str | None = None, **extra) -> dict:  # fmt: skip
        """Commit: outputs (written in `staging`, or in the unit's folder) are fsynced, then under `fence` (which
        raises when this attempt no longer holds the unit) moved into place with every other file of the staging
        folder but `scratch`; the staging folders and scratch state are removed, and done.json is written last."""
        d = self.dir(unit)
        src = staging or d
        missing = [o for o in outputs if not (src / o).is_file()]
        if missing:
            with fence():  # a lost claim first: its staging folder went with the new owner's commit
                raise RuntimeError(f"unit {unit.label}: declared outputs missing in {src}: {missing}")
        hashes = {o: sha256_file(src / o) for o in outputs}  # the slow part, before the lock
        for o in outputs:
            fsync(src / o)
        with fence():
            if staging is not None:
                for p in staging.iterdir():
                    if p.is_file() and p.name not in scratch and tmp_owner(p.name) is None:
                        os.replace(p, d / p.name)
                fsync(d, folder=True)
            marker = {
                "key": unit.key, "stage": unit.stage, "name": unit.name, "params": unit.params,
                "inputs": unit.inputs, "version": unit.version, "outputs": outputs,
                "files": {o: file_digest(d / o, hashes[o]) for o in outputs},  # a later change is caught
                "scores": scores or {}, "seconds": round(time.time() - started, 3),
                "started_at": round(started, 3),  # epoch seconds: when the unit started and ended (for timelines)
                "finished_at": round(time.time(), 3), "host": HOST, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "run": run_id(), "worker": worker_id(),  # which command ran it, in which process (timelines)
                "attempt": attempt or uuid.uuid4().hex,  # readers record it: a redo of this unit redoes them
                "upstream": upstream or {}, **extra,
            }  # fmt: skip
            for name in scratch:
                (d / name).unlink(missing_ok=True)
            for a in self.attempts(unit):  # this attempt's and any dead one's: nothing to resume from any more
                shutil.rmtree(a, ignore_errors=True)
            atomic_write_json(d / DONE, marker)
        return marker

    def status(self, unit: Unit, partial_file: str | None = None) -> tuple[str, str]:
        """Return (state, reason): done | broken | partial | stale | missing."""
        why = self.not_done(unit)
        if why is None:
            return "done", ""
        if why[0] != "missing":
            return why[0], f"{why[1]}; it will be redone"
        if self.partial(unit, partial_file) is not None:
            return "partial", "resumable"
        markers = sorted((self.root / unit.stage / unit.name).glob(f"*/{DONE}"), key=_mtime, reverse=True)
        for path in markers:
            old = _read_json(path)
            if old is not None:
                return "stale", diff_reason(old, unit)
        return "missing", ""


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
