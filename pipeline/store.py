"""The unit store: every computed thing is a unit keyed by its content, written atomically, done when marked.

A unit's key hashes (stage, params, input unit keys, stage version). Its outputs live in
`work/<competition>/<stage>/<name>/<key>/`, so a changed setting never overwrites an earlier result: it gets its own
folder, and the old one reads as stale. Files are written to a temporary name and renamed; `done.json` (key, params,
inputs, version, timings, scores) is written last. No marker means not done, whatever else the folder holds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

DONE = "done.json"


def stable_hash(obj: Any, n: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


HOST = socket.gethostname()


def tmp_name(name: str) -> str:
    """A temporary name unique across processes and hosts (work dirs may be shared between machines)."""
    return f".{name}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class DiskFull(OSError):
    """No space left where the pipeline writes; the message says where and how much."""


def require_space(folder: Path, nbytes: int, what: str) -> None:
    """Refuse before writing nbytes into folder when the filesystem lacks them (a full disk under a memory map
    kills the process with SIGBUS, no message)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < nbytes + (16 << 20):
        raise DiskFull(f"disk full: {(nbytes >> 20) + 16} MB needed at {folder} for {what}, {free >> 20} MB free; "
                       f"free space there (or set runtime.work_dir elsewhere) and run again")  # fmt: skip


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) then rename tmp_path to path, so a reader never sees a half-written file. The temporary
    file of a failed write is removed; a write that failed for want of space says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name(path.name))
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or shutil.disk_usage(path.parent).free < 1 << 20:
            raise DiskFull(f"disk full while writing {path}: free space on that filesystem and run the same "
                           f"command again (finished units are kept)") from err  # fmt: skip
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


_TMP = re.compile(r"\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def remove_stale_tmp(folders: list[Path], is_alive: Callable[[int], bool]) -> int:
    """Remove the temporary files that processes of this host left when they were killed mid-write."""
    removed = 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                m = _TMP.match(name)
                if m and m["host"] == HOST and not is_alive(int(m["pid"])):
                    Path(dirpath, name).unlink(missing_ok=True)
                    removed += 1
    return removed


def file_digest(path: Path) -> dict:
    """A cheap fingerprint of a written file: its size and the sha256 of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return {"size": size, "sha256_ends": h.hexdigest()[:16]}


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
        try:
            m = json.loads((self.dir(unit) / DONE).read_text())
        except (OSError, ValueError):
            return None
        return m if m.get("key") == unit.key else None

    def broken(self, unit: Unit, marker: dict | None = None, checksums: bool = False) -> str | None:
        """Why a done unit's outputs no longer are what its marker recorded (None when they are): a missing file,
        another size, or (checksums) other first and last bytes."""
        marker = marker or self.read_marker(unit)
        for name, want in (marker or {}).get("files", {}).items():
            path = self.dir(unit) / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != want["size"]:
                return f"{name} has {size} bytes, {want['size']} when it was done"
            if checksums and file_digest(path) != want:
                return f"{name} changed after it was done (checksum)"
        return None

    def is_done(self, unit: Unit) -> bool:
        """A marker with this key, and every output it records present at its recorded size."""
        marker = self.read_marker(unit)
        return marker is not None and self.broken(unit, marker) is None

    def verify(self, unit: Unit) -> None:
        """Before a unit's outputs are read: refuse a broken one, and drop its marker so that it is redone."""
        reason = self.broken(unit, checksums=True)
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

    def finish(self, unit: Unit, started: float, outputs: list[str], scores: dict | None = None, **extra) -> dict:
        d = self.dir(unit)
        missing = [o for o in outputs if not (d / o).exists()]
        if missing:
            raise RuntimeError(f"unit {unit.label}: declared outputs missing in {d}: {missing}")
        marker = {
            "key": unit.key,
            "stage": unit.stage,
            "name": unit.name,
            "params": unit.params,
            "inputs": unit.inputs,
            "version": unit.version,
            "outputs": outputs,
            "files": {o: file_digest(d / o) for o in outputs},  # size and checksum: a later change is caught
            "scores": scores or {},
            "seconds": round(time.time() - started, 3),
            "started_at": round(started, 3),  # epoch seconds: when the unit started and ended (for timelines)
            "finished_at": round(time.time(), 3),
            "host": HOST,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            **extra,
        }
        atomic_write_json(d / DONE, marker)
        return marker

    def status(self, unit: Unit, partial_file: str | None = None) -> tuple[str, str]:
        """Return (state, reason): done | broken | partial | stale | missing."""
        marker = self.read_marker(unit)
        if marker is not None:
            reason = self.broken(unit, marker, checksums=True)
            return ("broken", f"{reason}; it will be redone") if reason else ("done", "")
        if partial_file and (self.dir(unit) / partial_file).exists():
            return "partial", "resumable"
        siblings = sorted(
            (self.root / unit.stage / unit.name).glob(f"*/{DONE}"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        if siblings:
            return "stale", diff_reason(json.loads(siblings[0].read_text()), unit)
        return "missing", ""
