"""Executors: what runs units, and the contract every one of them keeps. An executor only runs units; it knows
nothing of what a stage does.

- `Executor`: `submit(unit, force, deadline)` starts a unit (up to `capacity` at once); `wait(timeout)` returns the
  `Result` of each unit finished since the last call, waiting at most `timeout` seconds (None: until one finishes).
  With nothing in flight it sleeps `timeout` and returns nothing, in every executor: a run waiting on units another
  run holds polls at that pace instead of spinning. `close(abort)` stops its workers.
- `EXECUTORS`: the registry, name -> "module:Class", imported when chosen (`runtime.executor`): `local` here,
  `processes` (pipeline.pool) and `ray` (pipeline.raycluster). Outside this process a unit runs through one command,
  `python -m pipeline run-unit --plan PLAN --key KEY` (pipeline.app.run_unit) against the plan the scheduler
  published (`publish_plan`), so an executor for a batch system (SLURM, Kubernetes) is a module that submits that
  command, plus one line here.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from .attempt import Result, execute, set_threads
from .plan import Plan
from .store import HOST, Unit, atomic_write_json

EXECUTORS: dict[str, str] = {
    "local": "pipeline.executor:LocalExecutor",
    "processes": "pipeline.pool:ProcessesExecutor",
    "ray": "pipeline.raycluster:RayExecutor",
}


class UnitFailed(RuntimeError):
    """A unit raised; the message names it, says what went wrong and where its log is."""


class Executor(ABC):
    name: ClassVar[str]
    echo: ClassVar[bool] = False  # whether a unit's lines were printed here as it ran (else they come back in Result)
    capacity: int = 1  # units at once
    describe: str | None = None  # one line for the console when it starts

    @abstractmethod
    def submit(self, unit: Unit, force: bool, deadline: float | None = None) -> None:
        """Start the unit (the caller keeps within `capacity`)."""

    @abstractmethod
    def in_flight(self) -> int:
        """Units submitted whose result has not been returned by `wait`."""

    @abstractmethod
    def collect(self, timeout: float | None) -> list[tuple[str, Result]]:
        """(unit key, result) of the units finished, waiting at most `timeout` for one; called with units in flight."""

    def wait(self, timeout: float | None) -> list[tuple[str, Result]]:
        if not self.in_flight():
            if timeout:
                time.sleep(timeout)  # only units of another run are in flight: poll at this pace
            return []
        return self.collect(timeout)

    def close(self, abort: bool = False) -> None:  # noqa: B027 - optional: an executor without workers has none
        """Stop the workers; `abort` (Ctrl-C, an error) at once: their units resume next time."""

    @classmethod
    def slots(cls, plan: Plan) -> int:
        """Units it will run at once, said without starting anything: what the budget planner's estimates assume
        (the probe runs in one of these slots, so its rates are a slot's)."""
        return 1


class LocalExecutor(Executor):
    """Units one after another in this process (the default on a CPU machine)."""

    name = "local"
    echo = True

    def __init__(self, plan: Plan):
        self.plan, self._results = plan, []
        set_threads(plan.cfg.runtime.threads)

    def submit(self, unit: Unit, force: bool, deadline: float | None = None) -> None:
        self._results.append((unit.key, execute(self.plan, unit.key, force, echo=True, deadline=deadline)))

    def in_flight(self) -> int:
        return len(self._results)

    def collect(self, timeout: float | None) -> list[tuple[str, Result]]:
        out, self._results = self._results, []
        return out


def register(name: str, target: str) -> None:
    """Add an executor: `target` is "module:Class" of an Executor subclass whose constructor takes the plan."""
    EXECUTORS[name] = target


def executor_class(name: str) -> type[Executor]:
    if name not in EXECUTORS:
        raise ValueError(f"runtime.executor: unknown executor {name!r}; one of {sorted(EXECUTORS)} or auto")
    module, _, cls = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by CUDA_VISIBLE_DEVICES or the driver's count (without creating a context)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def chosen_class(plan: Plan) -> type[Executor]:
    rt = plan.cfg.runtime
    kind = rt.executor
    if kind == "auto":
        kind = "processes" if rt.device != "cpu" and len(visible_gpus()) > 1 else "local"
    return executor_class(kind)


def make_executor(plan: Plan) -> Executor:
    cls = chosen_class(plan)
    if cls is not LocalExecutor:
        publish_plan(plan)
    return cls(plan)


def plan_file(plan: Plan):
    return plan.store.root / "plans" / f"{plan.digest}.json"


def publish_plan(plan: Plan) -> None:
    """Written by the scheduler before any worker starts: what `run-unit` rebuilds the plan from (the resolved
    config), and proof for workers that they see its work dir."""
    record = {"host": HOST, "pid": os.getpid(), "units": len(plan.units), "config": plan.cfg.to_dict()}
    atomic_write_json(plan_file(plan), record)


def worker_env(cpus: int, threads: int, gpu: str | None) -> dict[str, str]:
    """Environment of a worker process: its share of the cores, its torch threads, its GPU."""
    env = {"PIPELINE_CPUS": str(cpus), "PIPELINE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}  # fmt: skip
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
