"""Time budgets: the planner's estimates against what the units took, a budget that leaves models out still publishes
a valid submission that says so, a run with more time reuses every finished unit, a training stopped by the deadline
resumes; presets fill a config that holds only the competition."""

import json
import time

import pandas as pd
import pytest
import yaml

from pipeline.app import build_plan
from pipeline.config import LADDER_FILE, ConfigError, load_config, parse_duration
from pipeline.scheduler import ensure_done, run_units

from .conftest import run_cli, write_config

pytestmark = pytest.mark.slow
LADDER = [
    {"name": "head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"},
    {"name": "huge", "backbone": "test_efficientnet", "weights": "none", "epochs": 100000},  # fits only shrunk
]


def test_budget_fills_its_time_shrinks_a_rung_that_does_not_fit_and_a_rerun_reuses_it(tmp):
    cfg = str(write_config(tmp, "csv", models=LADDER))
    t0 = time.time()
    out = run_cli("all", "--config", cfg, "--budget", "120s").stdout
    wall = time.time() - t0
    plan = json.loads((tmp / "work" / "tiny-csv" / "budget.json").read_text())
    # the head fits whole; huge (100,000 epochs) is shrunk to the epochs the time left buys, not passed over
    assert plan["recipe"][0] == "head" and len(plan["recipe"]) == 2, plan
    (small,) = plan["shrunk"]
    epochs = plan["shrunk"][small]
    assert small == plan["recipe"][1] == f"huge-e{epochs}" and 3 <= epochs < 100000, plan
    assert f"next: {small} (shrunk from 100000 epochs)" in out
    # its units ran, named for it (a loaded machine may see the deadline pause them all: then none is done)
    assert f"[train] run    {small}/seed0/fold" in out, out
    # each unit says whether the submission reads it: a left-out model's units do not count as spent on it
    for u in plan["units"]:
        if u["unit"].split("/")[0] not in ("images", "folds", "blend", "submit"):  # shared: read by whichever model
            assert u["submitted"] == (u["model"] in plan["complete"]), u
        elif u["stage"] in ("blend", "submit"):  # they ran after the models, for the submission
            assert u["submitted"], u
    assert wall <= 120 * 1.1, wall
    (manifest,) = [json.loads(p.read_text()) for p in (tmp / "submissions").glob("*.json")]
    assert manifest["models"][0] == "head" and sorted(manifest["models"] + manifest["left_out"]) == sorted(
        plan["recipe"]
    )
    sub = pd.read_csv(next((tmp / "submissions").glob("*.csv")), dtype=str)
    assert len(sub) == 9 and set(sub["digit"]) <= {"0", "1", "2"}
    # the estimates of the units that ran: each within a factor 5 of what it took (or both under 2 s: fixed costs)
    for u in plan["units"]:
        est, act = u["estimated_s"], u["actual_s"]
        assert max(est, act) <= 2.0 or act / 5 <= est <= act * 5, u
    assert "where it went: head" in out and f"{small} " in out.split("where it went:")[-1]
    # status names the full rung the budget did not run: its units are missing
    status = run_cli("status", "--config", cfg, "--budget", "120s").stdout
    assert "missing  train/huge/seed0/fold0" in status

    # a rerun with the same budget reuses the shrunk variant the first run finished (one the deadline stopped is
    # resumed when what is left of it fits, else a smaller one is trained), and trains nothing of what was done
    again = run_cli("all", "--config", cfg, "--budget", "120s").stdout
    if small in manifest["models"]:
        assert json.loads((tmp / "work" / "tiny-csv" / "budget.json").read_text())["recipe"] == plan["recipe"]
    assert "[train] run    head/" not in again and "[features] run" not in again, again


def test_a_training_stopped_by_the_deadline_stays_resumable(tmp):
    models = [{"name": "ft", "backbone": "test_efficientnet", "weights": "none", "epochs": 40}]
    plan = build_plan(load_config(write_config(tmp, "csv", models=models)))
    ensure_done(plan, [plan.one("folds"), *plan.all("images")])
    unit = plan.one("train", model="ft", seed=0, fold=0)
    run_units(plan, [unit], deadline=time.time() + 1.5, estimates={unit.key: 0.0})
    folder = plan.store.dir(unit)
    assert list(folder.glob(".attempt-*/resume.pt")) and not plan.store.is_done(unit)
    log = (folder / "log.txt").read_text()
    assert "== stopped: after epoch" in log and "of 40: another would pass the time budget" in log
    run_units(plan, [unit])  # no deadline: it resumes where it stopped
    assert plan.store.is_done(unit) and "== resume train/ft/seed0/fold0" in (folder / "log.txt").read_text()


def test_a_shrunk_rung_stopped_by_the_deadline_is_the_variant_a_later_run_resumes(tmp):
    from pipeline import budget

    models = [{"name": "ft", "backbone": "test_efficientnet", "weights": "none", "epochs": 40}]
    cfg = load_config(write_config(tmp, "csv", models=models), ["runtime.budget=10m"])
    plan = build_plan(cfg)
    ensure_done(plan, [*plan.all("probe"), plan.one("folds"), *plan.all("images")])
    small = budget.shrunk(cfg.models[0], 12)
    first = build_plan(budget.with_models(cfg, [small]))
    unit = first.one("train", model="ft-e12", seed=0, fold=0)
    assert unit.label == "train/ft-e12/seed0/fold0" and unit.params["epochs"] == 12  # its key says what it is
    stopped = run_units(first, [unit], deadline=time.time() + 0.6, estimates={unit.key: 0.0})  # 12 epochs: 1.4 s
    assert not first.store.is_done(unit) and first.store.partial(unit, "resume.pt") is not None
    assert list(stopped) == [unit.key] and stopped[unit.key] > 0  # the seconds the stopped attempt ran
    # a later run whose time left buys more than 12 epochs, not all 40: the started variant, not a new shrink
    clock = budget.Clock(plan.load(plan.one("probe")), time.time())
    clock.record(first, [unit], "ft-e12", stopped)
    left = clock.cost(plan, "ft") / 2
    pick, _ = budget.fit(plan, cfg.models[0], clock, left)
    assert budget.fit(plan, budget.shrunk(cfg.models[0], 39), clock, left)[0].epochs > 12
    assert pick.name == "ft-e12", pick.name
    assert budget.run_model(plan, pick, clock, deadline=time.time() + 600)[0]
    assert "== resume train/ft-e12/seed0/fold0" in (first.store.dir(unit) / "log.txt").read_text()
    # the account holds both attempts: the time the stopped one ran is not lost from where the budget went, and the
    # unit it was part of counts it with the submission
    account = budget._account(cfg, clock, clock.started, 600.0, [pick], [pick], [], {unit.key})
    rows = [r for r in account["units"] if r["unit"] == unit.label]
    assert [bool(r.get("stopped")) for r in rows] == [True, False] and all(r["submitted"] for r in rows)
    assert account["seconds_per_model"]["ft-e12"] == pytest.approx(sum(r["actual_s"] for r in clock.rows), abs=0.1)
    # calibration: a stopped attempt counts with the attempt that finished its unit; one never finished does not
    g = ("train", "finetune")
    clock.rows = [{"key": "a", "group": g, "estimated_s": 10.0, "actual_s": 6.0},
                  {"key": "a", "group": g, "estimated_s": 0.0, "actual_s": 4.0, "stopped": True},
                  {"key": "b", "group": g, "estimated_s": 0.0, "actual_s": 50.0, "stopped": True}]  # fmt: skip
    assert clock.ratio(g) == pytest.approx(1.0)
    assert f"{stopped[unit.key]:.0f}s of it in attempts the deadline stopped" in budget.where_it_went(account)[0]


def test_a_model_whose_trainings_are_done_when_the_deadline_comes_is_finished_into_the_reserve(tmp, capsys):
    from pipeline import budget

    cfg = load_config(write_config(tmp, "csv", models=LADDER[:1]), ["runtime.budget=10m"])
    plan = build_plan(cfg)
    ensure_done(plan, [*plan.all("probe"), *plan.all("train")])  # the deadline came after its trainings
    clock, spec = budget.Clock(plan.load(plan.one("probe")), time.time()), cfg.models[0]
    rest = clock.cost(plan, "head")
    assert 0 < rest and plan.all("predict") and not any(plan.store.is_done(u) for u in plan.all("predict"))
    assert not budget.run_model(plan, spec, clock, deadline=time.time())[0]  # no reserve to run into: left out
    assert not budget.run_model(plan, spec, clock, deadline=time.time(), last_call=time.time() + rest / 2)[0]
    assert "finishing" not in capsys.readouterr().out  # its rest is not expected to fit in what is left of it
    assert budget.run_model(plan, spec, clock, deadline=time.time(), last_call=time.time() + 600)[0]
    assert "[budget] finishing head into the reserve" in capsys.readouterr().out
    assert all(plan.store.is_done(u) for u in plan.all("predict"))


def test_presets_fill_a_config_that_holds_only_the_competition(tmp):
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump({"competition": {"name": "x", "root": str(tmp)}}))
    ladder = yaml.safe_load(LADDER_FILE.read_text())
    names = [m["name"] for m in ladder["models"]]
    medium = load_config(path)
    assert [m.name for m in medium.models] == names[: ladder["sizes"]["medium"]] and medium.preset == "medium"
    assert medium.models[0].epochs == ladder["train"]["epochs"] and medium.predict.views == ladder["predict"]["views"]
    assert [m.name for m in load_config(path, ["preset=fast"]).models] == names[: ladder["sizes"]["fast"]]
    auto = load_config(path, ["runtime.budget=10m"])
    assert auto.preset == "auto" and [m.name for m in auto.models] == names
    own = load_config(path, ["preset=fast", "predict.views=none"])  # the config's own sections win
    assert own.predict.views == "none" and own.blend.method == ladder["blend"]["method"]
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("600") == 600
    with pytest.raises(ConfigError, match=r"'runtime.budget': 'soon' is not a duration"):
        load_config(path, ["runtime.budget=soon"])
