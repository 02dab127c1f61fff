"""The stage registry joined to the core: the plans the CLI, the workers, benches and tests build, and the unit
command. The only module of the core's side that imports pipeline.stages (the CLI names stages too).

`python -m pipeline run-unit --plan PLAN --key KEY` runs one unit of the plan the scheduler published
(work/<competition>/plans/<digest>.json, `executor.publish_plan`) and prints its `Result` as one JSON line: how a
batch-system executor (SLURM, Kubernetes) runs a unit. With `--serve` instead of `--key` it answers one request per
line on stdin (the `processes` executor's workers); Ray tasks call `run_unit` itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import plan as plans
from .attempt import Result, execute, set_threads
from .config import Config
from .models import set_offline
from .plan import Plan
from .stages import STAGES
from .store import HOST, stable_hash


def build_plan(cfg: Config) -> Plan:
    """The plan of a config over the registered stages."""
    return plans.build_plan(cfg, STAGES)


_plans: dict[tuple[str, str], Plan] = {}


def plan_for(cfg_dict: dict, digest: str) -> Plan:
    """The plan of a resolved config, built once per process, checked to be the scheduler's own: a worker that sees
    other data, weights or another work dir than the scheduler fails here, naming this host."""
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


def run_unit(plan_path, key: str, force: bool = False, deadline: float | None = None) -> Result:
    """Run one unit of a published plan in this process (its lines go to the unit's log only)."""
    try:
        record = json.loads(Path(plan_path).read_text())
        plan = plan_for(record["config"], Path(plan_path).stem)
    except Exception as err:  # noqa: BLE001 - this unit's failure, naming the host
        msg = str(err) if isinstance(err, RuntimeError) else f"on host {HOST}: cannot read the plan {plan_path}: {err}"
        return Result("error", msg, error=type(err).__name__)
    if key not in plan.by_key:
        return Result("error", f"no unit with key {key} in the plan {plan_path}", error="KeyError")
    return execute(plan, key, force, echo=False, deadline=deadline)


def _watch_parent(ppid: int) -> None:
    """A serving worker ends when the run that started it is gone (killed), so it never trains on unattended."""
    while True:
        if os.getppid() != ppid:
            os._exit(1)
        time.sleep(1.0)


def serve(plan_path: str) -> int:
    """Answer requests {"key", "force", "deadline"} on stdin, one Result JSON line each on the original stdout; fd 1
    itself goes to stderr, so that nothing a library writes there can break an answer."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: it stops the workers
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    for line in sys.stdin:
        req = json.loads(line)
        res = run_unit(plan_path, req["key"], req["force"], req["deadline"])
        answers.write(json.dumps(res.to_dict()) + "\n")
    return 0


def main(plan_path: str, key: str | None, force: bool, deadline: float | None, serving: bool) -> int:
    """`run-unit`: exit 0 when the unit is done (now or before), 1 otherwise; the Result is on stdout."""
    set_threads(int(os.environ.get("PIPELINE_THREADS", "0")))
    if serving:
        return serve(plan_path)
    res = run_unit(plan_path, key, force, deadline)
    print(json.dumps(res.to_dict()), flush=True)
    return 0 if res.state in ("done", "skip") else 1
