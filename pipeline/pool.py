"""The `processes` executor: N long-lived worker processes on this machine, one per visible GPU (each pinned with
CUDA_VISIBLE_DEVICES), or on CPU `runtime.workers` of them with the cores split (torch threads, BLAS threads and
DataLoader workers per process derived from the split, never oversubscribed).

Each worker rebuilds the plan from the resolved config once, then runs the units it is sent (`executor.execute`)
and answers through its own pipe. A worker that dies mid-unit (SIGKILL, out of memory) is seen through its process
sentinel: it is replaced, and the unit is sent again; the new attempt takes over the dead claim and resumes from
the unit's partial state. Top-level imports stay light: the worker sets its environment before torch loads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import wait as wait_any


def _watch_parent(ppid: int) -> None:
    """A worker ends when the run that started it is gone (killed), so it never trains on unattended."""
    while True:
        if os.getppid() != ppid:
            os._exit(1)
        time.sleep(1.0)


def worker_main(conn, cfg_dict: dict, digest: str, env: dict, ppid: int, start_method: str) -> None:
    os.environ.update(env)
    # a spawned process defaults to spawning its own children: DataLoader workers would re-import torch (seconds
    # per unit); they start as in the run's own process instead (fork on Linux)
    mp.set_start_method(start_method, force=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: it stops the workers
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True).start()
    from .executor import execute, plan_for, set_threads

    set_threads(int(env["PIPELINE_THREADS"]))
    try:
        plan, init_error = plan_for(cfg_dict, digest), None
    except Exception as err:  # noqa: BLE001 - answered to every unit sent, with this host named
        plan, init_error = None, str(err)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, force, deadline = msg
        if plan is None:
            conn.send({"state": "error", "message": init_error, "error": "RuntimeError"})
            continue
        conn.send(execute(plan, key, force, echo=False, deadline=deadline))


class _Worker:
    def __init__(self, ctx, cfg_dict: dict, digest: str, env: dict):
        self.env = env
        self.conn, child = ctx.Pipe()
        args = (child, cfg_dict, digest, env, os.getpid(), mp.get_start_method())
        self.proc = ctx.Process(target=worker_main, args=args, name="pipeline-worker")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the spawned interpreter starts with them, before any import
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.key: str | None = None


class ProcessesExecutor:
    name = "processes"
    echo = False

    def __init__(self, plan):
        from .executor import visible_gpus, worker_env

        rt = plan.cfg.runtime
        cores = os.cpu_count() or 1
        gpus = visible_gpus() if rt.device != "cpu" else []
        n = rt.workers or (len(gpus) if gpus else min(cores, 4))
        cpus = max(1, cores // n)
        self.envs = [worker_env(cpus, rt.threads or cpus, gpus[i % len(gpus)] if gpus else None) for i in range(n)]
        self.capacity = n
        self.describe = f"{n} worker processes, " + (f"GPUs {gpus}" if gpus else f"{cpus} core(s) each")
        self._ctx = mp.get_context("spawn")
        self._args = (plan.cfg.to_dict(), plan.digest)
        self.workers = [_Worker(self._ctx, *self._args, env) for env in self.envs]

    def submit(self, unit, force: bool, deadline: float | None = None) -> None:
        w = next(w for w in self.workers if w.key is None)
        w.key = unit.key
        w.conn.send((unit.key, force, deadline))

    def wait(self, timeout: float | None) -> list[tuple[str, dict]]:
        busy = [w for w in self.workers if w.key is not None]
        if not busy:
            if timeout:
                time.sleep(timeout)
            return []
        ready = set(wait_any([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout))
        events = []
        for w in busy:
            msg = None
            if w.conn in ready:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    msg = None
            if msg is not None:
                events.append((w.key, msg))
                w.key = None
            elif w.proc.sentinel in ready or not w.proc.is_alive():
                w.proc.join()
                events.append((w.key, {"state": "died", "exitcode": w.proc.exitcode}))
                self.workers[self.workers.index(w)] = _Worker(self._ctx, *self._args, w.env)
        return events

    def close(self, abort: bool = False) -> None:
        if abort:  # Ctrl-C or an error: end the workers now; claims of dead pids are taken over next time
            for w in self.workers:
                w.proc.terminate()
        for w in self.workers:
            if w.proc.is_alive():
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for w in self.workers:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=5)
