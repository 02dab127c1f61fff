"""Run one unit anywhere, and the executors that do it: `local` here; `processes` (pipeline.pool) and `ray`
(pipeline.raycluster) elsewhere. An executor only runs units; it knows nothing of what a stage does.

`execute(plan, key)` is the one way a unit runs, in any process: skip it when done, take its claim (or report who
holds it), write `unit.json` and `config.json`, run the stage's function into this attempt's own staging folder
(`.attempt-<token>`, seeded with a copy of a dead attempt's resumable state), then commit under the claim's fence:
outputs moved into the unit's folder, staging and scratch state removed, `done.json` written last; release the claim.
An attempt whose claim was taken over while it was paused commits nothing and answers "lost". Every attempt is
appended to the unit's `log.txt`; in a worker process its stdout and stderr go there too. Failures come back as a
result naming the unit, never as a traceback on the console (the traceback is in the log).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from . import claims
from .config import Config
from .plan import Plan
from .store import ATTEMPT, DONE, HOST, Store, Unit, atomic_write, atomic_write_json, tmp_owner

LOG = "log.txt"


class BudgetStop(Exception):
    """A unit stopped at a safe point because the run's time budget ends before its next step; it stays partial."""


class UnitFailed(RuntimeError):
    """A unit raised; the message names it, says what went wrong and where its log is."""


class _Current:
    """The unit in progress in this process: its log file, the lines logged, whether to echo them."""

    def __init__(self, file, echo: bool):
        self.file, self.echo, self.lines = file, echo, []


_current: _Current | None = None


def log(stage: str, msg: str) -> None:
    """One console line `[stage] msg`; inside a unit also appended to its log (and, in a worker, sent back with the
    result so that the scheduler prints it)."""
    line = f"[{stage}] {msg}"
    cur = _current
    if cur is None or cur.echo:
        print(line, flush=True)
    if cur is not None:
        cur.lines.append(line)
        print(line, file=cur.file, flush=True)


def format_scores(scores: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items())


def set_threads(n: int) -> None:
    """torch and BLAS threads of this process (the same count gives the same bits on CPU)."""
    if n <= 0:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


@contextlib.contextmanager
def _unit_log(path, echo: bool):
    global _current
    with open(path, "a") as f:
        prev, _current = _current, _Current(f, echo)
        try:
            if echo:
                yield _current
            else:  # a worker: everything the unit prints belongs to its log
                with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    yield _current
        finally:
            _current = prev


def execute(plan: Plan, key: str, force: bool = False, echo: bool = True, deadline: float | None = None) -> dict:
    """Run the unit with this key unless it is done or claimed. Returns {"state": done | skip | busy | stopped |
    lost | error, ...}. A training checks `deadline` (epoch seconds) and its claim at every epoch's end."""
    from .stages import STAGES

    store, unit = plan.store, plan.by_key[key]
    if store.is_done(unit):
        return {"state": "skip"}
    got = claims.acquire(store.dir(unit), plan.cfg.runtime.claim_timeout)
    if not isinstance(got, claims.Claim):
        return {"state": "busy", "owner": claims.owner(got)}
    stage = STAGES[unit.stage]
    with got, _unit_log(store.dir(unit) / LOG, echo) as cur:
        if store.is_done(unit):  # finished by another process between the check and the claim
            return {"state": "skip"}
        staging, verb = _stage_attempt(store, unit, stage.PARTIAL, got.token)
        print(f"== {verb} {unit.label} on {HOST} pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
              f"(attempt {got.token[:8]})", file=cur.file, flush=True)  # fmt: skip
        started = time.time()
        if force:
            plan.forced.add(key)
        plan.deadline, plan.fence, plan.reads = deadline, got.check, {}
        try:
            store.begin(unit, plan.cfg.to_dict())
            result = stage.run(plan, unit, staging)
            result.pop("cleanup", None)
            marker = store.finish(
                unit,
                started,
                **result,
                staging=staging,
                fence=got.fenced,
                attempt=got.token,
                scratch=(stage.PARTIAL,) if stage.PARTIAL else (),
                upstream=_upstream(plan, unit),
            )
        except BudgetStop as stop:
            print(f"== stopped: {stop}", file=cur.file, flush=True)
            return {"state": "stopped", "message": str(stop), "lines": cur.lines}
        except Exception as err:  # noqa: BLE001 - reported to the scheduler with the unit's name
            lost = err if isinstance(err, claims.LostClaim) else _lost(got)
            if lost is not None:  # a paused owner woke up after a take-over: the new owner's work stands
                if store.is_done(unit):  # what it wrote since the new owner's commit removed its folder: no one's
                    shutil.rmtree(staging, ignore_errors=True)
                print(f"== lost: {lost}", file=cur.file, flush=True)
                return {"state": "lost", "message": str(lost), "lines": cur.lines}
            traceback.print_exc(file=cur.file)
            cur.file.flush()
            return {"state": "error", "message": str(err) or type(err).__name__, "error": type(err).__name__,
                    "log": str(store.dir(unit) / LOG), "lines": cur.lines}  # fmt: skip
        finally:
            plan.forced.discard(key)
            plan.deadline, plan.fence, plan.reads = None, None, None
        print(f"== done in {marker['seconds']:.1f}s {format_scores(marker['scores'])} (attempt {got.token[:8]})",
              file=cur.file, flush=True)  # fmt: skip
        return {"state": "done", "verb": verb, "marker": marker, "lines": cur.lines, "host": HOST, "pid": os.getpid()}


def _lost(claim: claims.Claim) -> claims.LostClaim | None:
    try:
        claim.check()
    except claims.LostClaim as lost:
        return lost
    return None


def _stage_attempt(store: Store, unit: Unit, partial: str | None, token: str) -> tuple[Path, str]:
    """This attempt's staging folder (where only it writes) and its verb: "resume" when it starts from the newest
    resumable state of a dead attempt, copied (never shared). A unit whose marker is there but does not count (a
    broken output, a redone input, an unreadable marker) starts from nothing."""
    if (store.dir(unit) / DONE).exists():
        store.reset(unit, partial)
    source = store.partial(unit, partial)
    staging = store.dir(unit) / f"{ATTEMPT}{token}"
    staging.mkdir()
    if source is None:
        return staging, "run"
    names = [p.name for p in source.iterdir() if p.is_file() and tmp_owner(p.name) is None and p.name != partial]
    for name in [*names, partial]:  # the resumable state last: a copy cut off midway is never resumed from
        atomic_write(staging / name, lambda p, n=name: shutil.copyfile(source / n, p))
    return staging, "resume"


def _upstream(plan: Plan, unit: Unit) -> dict[str, str]:
    """The attempt of every input unit, as read (or as done now): a redo of one of them redoes this unit."""
    out = {}
    for k in plan.deps[unit.key]:
        dep = plan.by_key[k]
        attempt = (plan.reads or {}).get(k) or (plan.store.read_marker(dep) or {}).get("attempt")
        if attempt:
            out[str(plan.store.dir(dep).relative_to(plan.store.root))] = attempt
    return out


_plans: dict[tuple[str, str], Plan] = {}


def plan_for(cfg_dict: dict, digest: str) -> Plan:
    """The plan of a resolved config, built once per process, checked to be the scheduler's own: a worker that sees
    other data, weights or another work dir than the scheduler fails here, naming this host."""
    from .models import set_offline
    from .plan import build_plan
    from .store import stable_hash

    k = (stable_hash(cfg_dict), digest)
    if k not in _plans:
        cfg = Config.from_dict(cfg_dict)
        set_offline(cfg.runtime.offline)
        try:
            plan = build_plan(cfg)
        except Exception as err:
            raise RuntimeError(f"on host {HOST}: {err} (the work dir and data must be on a filesystem every "
                               f"worker sees, at the same path)") from None  # fmt: skip
        marker = plan.store.root / "plans" / f"{digest}.json"
        if plan.digest != digest or not marker.is_file():
            raise RuntimeError(
                f"on host {HOST}: the plan built here differs from the scheduler's, or its work dir "
                f"{plan.store.root} is not the scheduler's (no {marker}): the data, weights and work dir must be "
                f"the same files on every machine (a shared filesystem, the same paths)"
            )
        _plans[k] = plan
    return _plans[k]


def publish_plan(plan: Plan) -> None:
    """Written by the scheduler before any worker starts: proof for workers that they see its work dir."""
    record = {"host": HOST, "pid": os.getpid(), "units": len(plan.units), "config": plan.cfg.to_dict()}
    atomic_write_json(plan.store.root / "plans" / f"{plan.digest}.json", record)


class LocalExecutor:
    """Units one after another in this process (today's behaviour; the default on a CPU machine)."""

    name = "local"
    echo = True

    def __init__(self, plan: Plan):
        self.plan, self.capacity, self._results = plan, 1, []
        set_threads(plan.cfg.runtime.threads)

    def submit(self, unit: Unit, force: bool, deadline: float | None = None) -> None:
        self._results.append((unit.key, execute(self.plan, unit.key, force, echo=True, deadline=deadline)))

    def wait(self, timeout: float | None) -> list[tuple[str, dict]]:
        out, self._results = self._results, []
        if not out and timeout:
            time.sleep(timeout)  # only units of another run are in flight: poll at this pace
        return out

    def close(self, abort: bool = False) -> None:
        pass


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by CUDA_VISIBLE_DEVICES or the driver's count (without creating a context)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def make_executor(plan: Plan):
    rt = plan.cfg.runtime
    kind = rt.executor
    if kind == "auto":
        kind = "processes" if rt.device != "cpu" and len(visible_gpus()) > 1 else "local"
    if kind == "local":
        return LocalExecutor(plan)
    publish_plan(plan)
    if kind == "processes":
        from .pool import ProcessesExecutor

        return ProcessesExecutor(plan)
    from .raycluster import RayExecutor

    return RayExecutor(plan)


def worker_env(cpus: int, threads: int, gpu: str | None) -> dict[str, str]:
    """Environment of a worker process: its share of the cores, its torch threads, its GPU."""
    env = {"PIPELINE_CPUS": str(cpus), "PIPELINE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}  # fmt: skip
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
