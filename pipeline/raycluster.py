"""The `ray` executor: units as Ray tasks on an existing cluster (RAY_ADDRESS) or on a local instance that
`ray.init()` starts (and this run stops).

A task gets `num_gpus=1` for a GPU unit when the cluster has GPUs, and `runtime.threads` CPUs (1 when unset; on a
GPU cluster, each node's cores per GPU). Ray retries a task whose worker died (`max_retries`); the new attempt takes
over the dead claim and a training resumes from its `resume.pt`. The work dir must be a path every node sees (a shared
filesystem, the repo at the same path): each task rebuilds the plan from the resolved config and checks that it is
the scheduler's (`executor.plan_for`), so a node that sees other files fails with its host named.
"""

from __future__ import annotations

import os

from .config import REPO

RETRIES = 3


def run_task(cfg_dict: dict, digest: str, key: str, force: bool, cpus: int, threads: int, deadline=None) -> dict:
    os.environ["PIPELINE_CPUS"] = str(cpus)
    from .executor import execute, plan_for, set_threads

    set_threads(threads)
    try:
        plan = plan_for(cfg_dict, digest)
    except Exception as err:  # noqa: BLE001 - reported as this unit's failure, naming the host
        return {"state": "error", "message": str(err), "error": type(err).__name__}
    return execute(plan, key, force, echo=False, deadline=deadline)


def task_env() -> dict[str, str]:
    """What a task's worker needs of this run's environment: the repo on its path, and the run's PIPELINE_*
    settings (a heartbeat period, a host identity), which a worker must share with the run that planned it."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    return {**env, "PYTHONPATH": str(REPO)}


class RayExecutor:
    name = "ray"
    echo = False

    def __init__(self, plan):
        import ray

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
        self._args = (plan.cfg.to_dict(), plan.digest)
        self._task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(run_task)
        self._refs: dict = {}

    def submit(self, unit, force: bool, deadline: float | None = None) -> None:
        opts = {"num_cpus": self.cpus, "num_gpus": 1 if unit.gpu and self.gpus else 0, "name": unit.label}
        ref = self._task.options(**opts).remote(*self._args, unit.key, force, self.cpus, self.threads, deadline)
        self._refs[ref] = unit.key

    def wait(self, timeout: float | None) -> list[tuple[str, dict]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        events = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                events.append((key, self.ray.get(ref)))
            except self.ray.exceptions.RayTaskError as err:
                events.append((key, {"state": "error", "message": str(err), "error": "RayTaskError"}))
            except self.ray.exceptions.RayError as err:  # the worker died after every retry, or the node left
                events.append((key, {"state": "died", "exitcode": type(err).__name__, "retried": True}))
        return events

    def close(self, abort: bool = False) -> None:
        for ref in list(self._refs):
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()
