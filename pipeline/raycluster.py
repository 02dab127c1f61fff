"""The `ray` executor: units as Ray tasks on an existing cluster (RAY_ADDRESS) or on a local instance that
`ray.init()` starts (and this run stops).

A task gets `num_gpus=1` for a GPU unit when the cluster has GPUs, and `runtime.threads` CPUs (1 when unset; on a
GPU cluster, each node's cores per GPU). A task runs the unit command's function, `pipeline.app.run_unit`, against
the plan the scheduler published, in the Ray worker's own process (which keeps the plan for its next unit). Ray
retries a task whose worker died (`max_retries`); the new attempt takes over the dead claim and a training resumes
from its `resume.pt`. The work dir must be a path every node sees (a shared filesystem, the repo at the same path):
each task rebuilds the plan from the published plan and checks that it is the scheduler's (`app.plan_for`), so a
node that sees other files fails with its host named. Ray is imported when this executor is chosen only.
"""

from __future__ import annotations

import os
import sys

from .app import run_unit
from .attempt import Result, set_threads
from .config import REPO
from .executor import Executor, plan_file
from .plan import Plan
from .store import Unit

RETRIES = 3


def run_task(plan_path: str, key: str, force: bool, cpus: int, threads: int, deadline=None) -> Result:
    os.environ["PIPELINE_CPUS"] = str(cpus)  # this Ray worker's own environment (DataLoader workers read it)
    set_threads(threads)
    return run_unit(plan_path, key, force, deadline)


def task_env() -> dict[str, str]:
    """What a task's worker needs of this run's environment: the repo on its path, and the run's PIPELINE_*
    settings (a heartbeat period, a host identity), which a worker must share with the run that planned it."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    return {**env, "PYTHONPATH": str(REPO)}


class RayExecutor(Executor):
    name = "ray"
    echo = False

    @classmethod
    def slots(cls, plan: Plan) -> int:
        """From the cluster when this process joined one; else the local cluster ray.init() would start."""
        ray = sys.modules.get("ray")
        res = ray.cluster_resources() if ray is not None and ray.is_initialized() else {"CPU": os.cpu_count() or 1}
        cpus, gpus, threads = int(res.get("CPU", 1)), int(res.get("GPU", 0)), plan.cfg.runtime.threads
        return max(1, cpus // (threads or (max(1, cpus // gpus) if gpus else 1)))

    def __init__(self, plan: Plan):
        import ray  # heavy and optional: only when this executor is chosen

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:  # RAY_ADDRESS names an existing cluster; without it ray.init() starts a local one
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": task_env()})  # fmt: skip
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        rt = plan.cfg.runtime
        self.cpus = rt.threads or (max(1, cpus // gpus) if gpus else 1)
        self.threads = rt.threads or self.cpus
        self.gpus = gpus
        self.capacity = max(1, cpus // self.cpus)
        self.describe = f"Ray cluster with {cpus} CPUs, {gpus} GPUs; {self.cpus} CPU(s) per unit"
        self.plan_path = str(plan_file(plan))
        self._task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(run_task)
        self._refs: dict = {}

    def submit(self, unit: Unit, force: bool, deadline: float | None = None) -> None:
        opts = {"num_cpus": self.cpus, "num_gpus": 1 if unit.gpu and self.gpus else 0, "name": unit.label}
        ref = self._task.options(**opts).remote(self.plan_path, unit.key, force, self.cpus, self.threads, deadline)
        self._refs[ref] = unit.key

    def in_flight(self) -> int:
        return len(self._refs)

    def collect(self, timeout: float | None) -> list[tuple[str, Result]]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        events = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                events.append((key, self.ray.get(ref)))
            except self.ray.exceptions.RayTaskError as err:
                events.append((key, Result("error", str(err), error="RayTaskError")))
            except self.ray.exceptions.RayError as err:  # the worker died after every retry, or the node left
                events.append((key, Result("died", exitcode=type(err).__name__, retried=True)))
        return events

    def close(self, abort: bool = False) -> None:
        for ref in list(self._refs):
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()
