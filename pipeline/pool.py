"""The `processes` executor: N long-lived worker processes on this machine, one per visible GPU (each pinned with
CUDA_VISIBLE_DEVICES), or on CPU `runtime.workers` of them with the cores split (torch threads, BLAS threads and
DataLoader workers per process derived from the split, never oversubscribed).

Each worker is the unit command in serving form, `python -m pipeline run-unit --plan PLAN --serve` (pipeline.app),
started with its own environment (the parent's is never changed): it rebuilds the plan from the published plan once,
then reads one request per line on its stdin and answers each with one `Result` as a JSON line. A worker that dies
mid-unit (SIGKILL, out of memory) closes its pipe: it is replaced, and the unit is sent again; the new attempt takes
over the dead claim and resumes from the unit's partial state.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

from .attempt import Result
from .config import REPO
from .executor import Executor, plan_file, visible_gpus, worker_env
from .plan import Plan
from .store import Unit


class _Worker:
    def __init__(self, plan_path, env: dict):
        self.env = env
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "pipeline", "run-unit", "--plan", str(plan_path), "--serve"]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONPATH": path}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
        self.key: str | None = None

    def send(self, key: str, force: bool, deadline: float | None) -> None:
        self.key = key
        self.proc.stdin.write(json.dumps({"key": key, "force": force, "deadline": deadline}) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> Result:
        """The worker's answer to the unit it was sent, or `died` when its pipe closed."""
        line = self.proc.stdout.readline()
        if line:
            return Result(**json.loads(line))
        self.proc.wait()
        return Result("died", exitcode=self.proc.returncode)


class ProcessesExecutor(Executor):
    name = "processes"
    echo = False

    @staticmethod
    def _layout(plan: Plan) -> tuple[int, int, list[str]]:
        """(workers, cores each, GPUs)"""
        rt = plan.cfg.runtime
        cores = os.cpu_count() or 1
        gpus = visible_gpus() if rt.device != "cpu" else []
        n = rt.workers or (len(gpus) if gpus else min(cores, 4))
        return n, max(1, cores // n), gpus

    @classmethod
    def slots(cls, plan: Plan) -> int:
        return cls._layout(plan)[0]

    def __init__(self, plan: Plan):
        rt = plan.cfg.runtime
        n, cpus, gpus = self._layout(plan)
        self.envs = [worker_env(cpus, rt.threads or cpus, gpus[i % len(gpus)] if gpus else None) for i in range(n)]
        self.capacity = n
        self.describe = f"{n} worker processes, " + (f"GPUs {gpus}" if gpus else f"{cpus} core(s) each")
        self.plan_path = plan_file(plan)
        self.workers = [_Worker(self.plan_path, env) for env in self.envs]

    def submit(self, unit: Unit, force: bool, deadline: float | None = None) -> None:
        w = next(w for w in self.workers if w.key is None)
        try:
            w.send(unit.key, force, deadline)
        except (BrokenPipeError, OSError):  # it died while idle: its answer says so
            pass

    def in_flight(self) -> int:
        return sum(w.key is not None for w in self.workers)

    def collect(self, timeout: float | None) -> list[tuple[str, Result]]:
        busy = [w for w in self.workers if w.key is not None]
        ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], timeout)
        events = []
        for w in busy:
            if w.proc.stdout not in ready:
                continue
            res, key = w.answer(), w.key
            events.append((key, res))
            w.key = None
            if res.state == "died":
                self.workers[self.workers.index(w)] = _Worker(self.plan_path, w.env)
        return events

    def close(self, abort: bool = False) -> None:
        if abort:  # Ctrl-C or an error: end the workers now; claims of dead pids are taken over next time
            for w in self.workers:
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.stdin.close()  # end of requests: a serving worker exits
            except OSError:
                pass
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.proc.terminate()
                w.proc.wait(timeout=5)
            w.proc.stdout.close()
