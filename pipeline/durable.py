"""Durable files on shared work dirs: who this host is, temporary names, atomic fsynced writes, whole-file
fingerprints, and the sweep of temporary files that killed processes left.

A host is its hostname plus its boot id and pid namespace (two containers on host networking share a hostname, not a
pid namespace; a rebooted machine reuses pids). Temporary names carry a short tag of that identity and the pid, so a
sweep removes only what a dead process wrote. A file is published by writing a temporary file, fsyncing it, renaming
it into place and fsyncing the folder: after a power loss a reader sees the old file or the whole new one, never an
empty one. A fingerprint records size, mtime, ctime and inode with the sha256 of the whole file; a file whose stat is
unchanged is trusted, any other is hashed again in full.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

HOST = socket.gethostname()
HEARTBEAT_S = float(os.environ.get("PIPELINE_HEARTBEAT_S", "5"))  # tests shorten it; claim_timeout >= 3 of them


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def _host_id() -> str:
    """hostname/boot id/pid namespace; PIPELINE_HOST_ID stands for another machine (tests, chaos bench)."""
    fake = os.environ.get("PIPELINE_HOST_ID")
    if fake:
        return fake
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = "?"
    return f"{HOST}/{_read('/proc/sys/kernel/random/boot_id')}/{pidns}"


HOST_ID = _host_id()


def host_tag(host: str, host_id: str) -> str:
    """What temporary names carry of a host: readable, and unique per boot and pid namespace."""
    return f"{host}~{hashlib.sha256(host_id.encode()).hexdigest()[:6]}"


HOST_TAG = host_tag(HOST, HOST_ID)


def tmp_name(name: str) -> str:
    """A temporary name unique across processes and hosts (work dirs may be shared between machines)."""
    return f".{name}.tmp-{HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


_TMP = re.compile(r"\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def tmp_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of a temporary file's writer, or None for any other name."""
    m = _TMP.match(name)
    return (m["host"], int(m["pid"])) if m else None


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


def fsync(path: Path, folder: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to the disk; filesystems that cannot fsync a folder are let be."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path), fsync it, then rename tmp_path to path and fsync the folder, so a reader never sees a
    half-written file, even after a power loss. The temporary file of a failed write is removed; a write that failed
    for want of space says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name(path.name))
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent, folder=True)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or shutil.disk_usage(path.parent).free < 1 << 20:
            raise DiskFull(f"disk full while writing {path}: free space on that filesystem and run the same "
                           f"command again (finished units are kept)") from err  # fmt: skip
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat_id(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_digest(path: Path, sha256: str | None = None) -> dict:
    """A file's fingerprint: size, mtime, ctime and inode as they are now, and the sha256 of all its bytes."""
    st = os.stat(path)
    return {"size": st.st_size, "stat": _stat_id(st), "sha256": sha256 or sha256_file(path)}


_hashed: dict[tuple[str, tuple], str] = {}  # (path, stat) -> sha256, so an unchanged copy is hashed once a process


def _ends_digest(path: Path, size: int) -> str:
    """The fingerprint of markers written before whole-file hashes: first and last MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return h.hexdigest()[:16]


def changed(path: Path, want: dict) -> str | None:
    """Why a file no longer is the one fingerprinted (None when it is): missing, another size, other bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is missing"
    if st.st_size != want["size"]:
        return f"has {st.st_size} bytes, {want['size']} when it was done"
    if "sha256" not in want:  # a marker of an earlier version
        same = want.get("sha256_ends") in (None, _ends_digest(path, st.st_size))
        return None if same else "changed after it was done (checksum)"
    now = _stat_id(st)
    if now == want.get("stat"):
        return None
    key = (str(path), tuple(now))
    if key not in _hashed:
        _hashed[key] = sha256_file(path)
    return None if _hashed[key] == want["sha256"] else "changed after it was done (checksum)"


def remove_stale_tmp(folders: list[Path], is_alive: Callable[[int], bool],
                     claimed: Callable[[Path], set[tuple[str, int]]] | None = None) -> int:  # fmt: skip
    """Remove the temporary files that killed processes left: this host's whose pid is gone, and (with `claimed`:
    the (host tag, pid) of the live claim on a unit folder, None for a folder that is no unit's) other hosts'
    inside unit folders whose claim they no longer hold."""
    removed = 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            owners = None
            for name in files:
                who = tmp_owner(name)
                if who is None:
                    continue
                if who[0] in (HOST_TAG, HOST):  # HOST alone: the names of earlier versions
                    dead = not is_alive(who[1])
                else:
                    owners = claimed(Path(dirpath)) if owners is None and claimed else owners
                    dead = owners is not None and who not in owners
                if dead:
                    Path(dirpath, name).unlink(missing_ok=True)
                    removed += 1
    return removed
