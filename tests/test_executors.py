"""Same answer everywhere: the local, processes and Ray executors (a local instance, and a 2-node cluster) give
byte-identical submissions and identical OOF probabilities for the same config; `status` shows claimed units."""

import os
import re

import pytest

from .conftest import exec_config, reference_run, run_cli, run_outputs, unit_logs  # noqa: F401

pytestmark = pytest.mark.slow


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k], f"{k} differs"


def test_processes_executor_matches_local(tmp, reference_run):  # noqa: F811
    out = run_cli("all", "--config", str(exec_config(tmp, executor="processes"))).stdout
    assert "executor processes: 2 worker processes" in out
    assert_same(run_outputs(tmp), reference_run)
    pids = {re.search(r"pid (\d+)", log).group(1) for log in unit_logs(tmp).values()}
    assert len(pids) == 2  # the units ran in the two workers, not in the run's own process


def test_ray_local_instance_matches_local(tmp, reference_run):  # noqa: F811
    out = run_cli("all", "--config", str(exec_config(tmp, executor="ray"))).stdout
    assert "executor ray: Ray cluster with" in out
    assert_same(run_outputs(tmp), reference_run)


def test_ray_two_node_cluster_matches_local(tmp, reference_run):  # noqa: F811
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = run_cli("all", "--config", str(exec_config(tmp, executor="ray")),
                      env={"RAY_ADDRESS": cluster.address}).stdout  # fmt: skip
        assert "Ray cluster with 2 CPUs" in out
    finally:
        cluster.shutdown()
    assert_same(run_outputs(tmp), reference_run)
    hosts_pids = {re.search(r"pid (\d+)", log).group(1) for log in unit_logs(tmp).values()}
    assert len(hosts_pids) >= 2  # both nodes' workers ran units


def test_status_shows_a_claimed_unit_as_running(tmp):
    import json
    import time

    from pipeline import claims
    from pipeline.app import build_plan
    from pipeline.config import load_config

    cfg = str(exec_config(tmp))
    plan = build_plan(load_config(cfg))
    unit = plan.one("train", model="tiny", seed=0, fold=1)
    d = plan.store.dir(unit)
    d.mkdir(parents=True)
    rec = {"host": "gpu-node-7", "pid": 4242, "token": "x", "started": time.time(), "heartbeat": time.time()}
    (d / claims.CLAIM).write_text(json.dumps(rec))
    status = run_cli("status", "--config", cfg).stdout
    assert re.search(r"^running +train/tiny/seed0/fold1 +\(gpu-node-7, pid 4242\)", status, flags=re.M), status
    rec["heartbeat"] = time.time() - 1000  # timestamps of another host are never compared with this clock:
    (d / claims.CLAIM).write_text(json.dumps(rec))  # a one-shot status cannot watch it change, so it is running
    assert re.search(r"^running +train/tiny/seed0/fold1", run_cli("status", "--config", cfg).stdout, flags=re.M)
    assert os.path.exists(d / claims.CLAIM)  # status only reads


def test_a_worker_that_sees_other_files_fails_naming_its_host(tmp):
    from PIL import Image

    from pipeline import app, executor
    from pipeline.app import build_plan
    from pipeline.config import load_config
    from pipeline.store import HOST

    cfg = load_config(exec_config(tmp))
    plan = build_plan(cfg)
    app._plans.clear()
    with pytest.raises(RuntimeError, match=rf"on host {HOST}: .*is not the scheduler's .*shared filesystem"):
        app.plan_for(cfg.to_dict(), plan.digest)  # its work dir holds no plan published by the scheduler
    executor.publish_plan(plan)
    assert app.plan_for(cfg.to_dict(), plan.digest).digest == plan.digest
    app._plans.clear()  # a fresh worker, on a node where one training image differs
    Image.new("L", (8, 8), 255).save(plan.comp.train_sources[0])
    with pytest.raises(RuntimeError, match=rf"on host {HOST}: the plan built here differs from the scheduler's"):
        app.plan_for(cfg.to_dict(), plan.digest)


def test_every_executor_sleeps_its_timeout_when_nothing_is_in_flight(tmp):
    """A run that waits on units another run holds polls at the pace it asks for: Ray's own wait returns at once
    with no task in flight, which made such a run spin."""
    import time

    from pipeline import executor
    from pipeline.app import build_plan
    from pipeline.config import load_config

    plan = build_plan(load_config(exec_config(tmp)))
    executor.publish_plan(plan)
    for name in executor.EXECUTORS:
        ex = executor.executor_class(name)(plan)
        try:
            t0 = time.monotonic()
            assert ex.wait(0.6) == []
            assert time.monotonic() - t0 >= 0.55, name
        finally:
            ex.close()


def test_run_unit_command_runs_one_unit_of_the_published_plan(tmp):
    """What a batch-system executor (SLURM, Kubernetes) runs: one unit, its Result as one JSON line."""
    import json
    import subprocess
    import sys

    from pipeline import executor
    from pipeline.app import build_plan
    from pipeline.config import load_config

    plan = build_plan(load_config(exec_config(tmp)))
    executor.publish_plan(plan)
    folds = plan.one("folds")
    cmd = [sys.executable, "-m", "pipeline", "run-unit", "--plan", str(executor.plan_file(plan)), "--key", folds.key]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert first.returncode == 0, first.stderr
    res = json.loads(first.stdout.strip().splitlines()[-1])
    assert res["state"] == "done" and res["pid"] != os.getpid() and plan.store.is_done(folds)
    log = (plan.store.dir(folds) / "log.txt").read_text()
    assert re.search(rf"== run folds/tiny-csv on \S+ pid {res['pid']} ", log), log
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["state"] == "skip"
    bad = subprocess.run([*cmd[:-1], "nope"], capture_output=True, text=True)
    assert bad.returncode != 0
