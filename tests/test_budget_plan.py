"""The budget planner's arithmetic on real plans and a real probe: a model's expected time counts the units the
executor runs at once (and the share of the cores each gets), and a model an earlier run left part-done is taken
first, so its missing folds finish before anything new starts."""

import dataclasses
import json

import pytest

from pipeline.app import build_plan
from pipeline.budget import MIN_SIZE, SIZE_STEP, Clock, _part_done, estimate, fit, model_targets, resized
from pipeline.config import load_config
from pipeline.models import create_model
from pipeline.pool import ProcessesExecutor
from pipeline.rates import model_rates
from pipeline.scheduler import ensure_done

from .conftest import run_cli, write_config

HEADS = [
    {"name": "a", "backbone": "test_efficientnet", "weights": "none", "kind": "head"},
    {"name": "b", "backbone": "test_efficientnet", "weights": "none", "kind": "head", "img_size": 40},
]


def test_a_models_expected_time_counts_what_the_executor_runs_at_once(tmp):
    grid2 = {**HEADS[0], "name": "a2", "feature_grid": 2}
    plan = build_plan(load_config(write_config(tmp, "csv", models=[HEADS[0], grid2], runtime={"budget": "600s"})))
    ensure_done(plan, plan.all("probe") + plan.all("folds"))
    rates = plan.load(plan.one("probe"))
    # the probe says how wide the features are; a 2 x 2 grid's head fits 4x the features, and is expected to take longer
    model = create_model(plan.cfg.models[0], plan.comp.n_classes)
    assert rates["dims"] == {"test_efficientnet@32": model.num_features}
    fit = {m: estimate(plan, plan.one("train", model=m, fold=0), rates) for m in ("a", "a2")}
    assert fit["a2"] - 0.2 == pytest.approx(4 * (fit["a"] - 0.2))
    todo = [u for u in model_targets(plan, "a") if not plan.store.is_done(u)]
    serial = Clock(rates, 0.0)
    one_at_a_time = sum(serial.seconds(plan, u) for u in todo)
    assert serial.cost(plan, "a") == pytest.approx(one_at_a_time)
    # two slots (two workers, or two GPUs): the two splits' features, then the folds' heads, run side by side
    two = Clock(rates, 0.0, 2).cost(plan, "a")
    assert one_at_a_time / 2 <= two < 0.8 * one_at_a_time


def test_a_budget_run_with_worker_processes_plans_for_both_and_the_workers_build_the_same_plan(tmp):
    runtime = {"executor": "processes", "workers": 2, "device": "cpu"}
    cfg = write_config(tmp, "csv", models=HEADS[:1], runtime=runtime)
    plan = build_plan(load_config(cfg))
    assert ProcessesExecutor.slots(plan) == 2
    assert not (plan.store.root / "plans").exists()  # said without starting or publishing anything
    # the probe's key does not hold the threads of the process that builds the plan (the scheduler has 2, a worker
    # 1): were it so, the workers' plan would differ from the scheduler's and every unit would fail
    out = run_cli("all", "--config", str(cfg), "--budget", "600s").stdout
    assert "executor processes: 2 worker processes" in out and "next: a" in out, out
    assert json.loads((tmp / "work" / "tiny-csv" / "budget.json").read_text())["complete"] == ["a"]


def test_a_model_left_part_done_is_finished_before_anything_new_starts(tmp):
    cfg = write_config(tmp, "csv", models=HEADS)
    plan = build_plan(load_config(cfg))
    ensure_done(plan, [plan.one("train", model="b", fold=0)])  # an earlier run stopped after b's first fold
    out = run_cli("all", "--config", str(cfg), "--budget", "600s").stdout
    recipe = json.loads((tmp / "work" / "tiny-csv" / "budget.json").read_text())["recipe"]
    assert recipe == ["b", "a"], (recipe, out)
    assert out.index("next: b") < out.index("next: a")
    # both submitted: every unit that ran is one the submission reads, the shared image caches and folds included
    units = json.loads((tmp / "work" / "tiny-csv" / "budget.json").read_text())["units"]
    assert units and all(u["submitted"] for u in units), units
    # blend and submit end in it too (they ran after the models); the report does not, and is not counted
    stages = {u["stage"] for u in units}
    assert {"blend", "submit"} <= stages and "report" not in stages, stages


def test_a_head_whose_features_do_not_fit_reads_them_at_a_smaller_size_named_for_it_and_a_rerun_keeps_it(tmp):
    big = {**HEADS[0], "name": "big", "img_size": 96}
    plan = build_plan(load_config(write_config(tmp, "csv", models=[big], runtime={"budget": "600s"})))
    ensure_done(plan, plan.all("probe") + plan.all("folds"))
    clock, spec = Clock(plan.load(plan.one("probe")), 0.0), plan.cfg.models[0]
    full = clock.cost(plan, "big")
    least = clock.cost(clock.alone(plan, resized(spec, MIN_SIZE)), f"big-s{MIN_SIZE}")
    up = MIN_SIZE + SIZE_STEP
    nxt = clock.cost(clock.alone(plan, resized(spec, up)), f"big-s{up}")
    assert least < nxt < full  # the probe timed 96 px only; fewer pixels are expected to take less
    only = (least + nxt) / 2  # the smallest size fits, the next does not (a fast probe makes them nearly alike)
    assert fit(plan, spec, clock, 0.9 * least) is None  # not even the smallest fits
    pick, cost = fit(plan, spec, clock, only)
    assert (pick.name, pick.img_size) == (f"big-s{MIN_SIZE}", MIN_SIZE) and cost <= only
    # a model already taken that it would copy but for its name (the ladder's lite2-mid160 at 128 px is lite2-mid128)
    same, other = dataclasses.replace(pick, name="small"), dataclasses.replace(pick, name="small", head_c=9.0)
    assert fit(plan, spec, clock, only, taken=[same]) is None
    assert fit(plan, spec, clock, only, taken=[other]) == (pick, cost)
    small = clock.alone(plan, pick)
    (feats,) = {u.key: u for u in small.units if u.stage == "features" and u.meta["split"] == "train"}.values()
    assert feats.params["img_size"] == MIN_SIZE and feats.key not in {u.key for u in plan.units}
    # with more time a fresh plan would take a larger size; a rerun resumes the variant an earlier run started
    below = (nxt + full) / 2  # every smaller size fits, 96 px does not
    mid, _ = fit(plan, spec, clock, below)
    assert MIN_SIZE < mid.img_size < 96
    ensure_done(small, [small.one("train", model=pick.name, fold=0)])
    assert fit(plan, spec, clock, below)[0].name == pick.name
    assert _part_done(plan, spec, clock)  # and it goes first


def test_the_probe_times_one_size_of_a_backbone_and_levels_and_scales_the_others_by_their_pixels(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=HEADS, runtime={"budget": "600s"})))
    ensure_done(plan, plan.all("probe"))
    rates = plan.load(plan.one("probe"))
    assert sorted(rates["eval"]) == ["test_efficientnet@32"]  # b (40 px) is not timed: the probe's seconds are spent
    a, b = (model_rates(plan, plan.one("train", model=m, fold=0), rates) for m in ("a", "b"))
    assert b.fwd == pytest.approx(a.fwd * (32 / 40) ** 2) and (b.dim, b.setup) == (a.dim, a.setup)
