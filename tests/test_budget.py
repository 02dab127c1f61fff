"""Time budgets: the planner's estimates against what the units took, a budget that leaves models out still publishes
a valid submission that says so, a run with more time reuses every finished unit, a training stopped by the deadline
resumes; presets fill a config that holds only the competition."""

import json
import time

import pandas as pd
import pytest
import yaml

from pipeline.config import LADDER_FILE, ConfigError, load_config, parse_duration
from pipeline.plan import build_plan
from pipeline.scheduler import ensure_done, run_units

from .conftest import run_cli, write_config

pytestmark = pytest.mark.slow
LADDER = [
    {"name": "head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"},
    {"name": "ft", "backbone": "test_efficientnet", "weights": "none", "epochs": 3},
    {"name": "huge", "backbone": "test_efficientnet", "weights": "none", "epochs": 100000},  # never fits
]


def test_budget_plans_a_prefix_publishes_what_finished_and_a_longer_budget_reuses_it(tmp):
    cfg = str(write_config(tmp, "csv", models=LADDER))
    t0 = time.time()
    out = run_cli("all", "--config", cfg, "--budget", "90s").stdout
    wall = time.time() - t0
    plan = json.loads((tmp / "work" / "tiny-csv" / "budget.json").read_text())
    assert plan["recipe"] == ["head", "ft"] and plan["not_this_time"] == ["huge"], plan
    assert wall <= 90 * 1.1, wall
    (manifest,) = [json.loads(p.read_text()) for p in (tmp / "submissions").glob("*.json")]
    assert manifest["models"] == ["head", "ft"] and manifest["left_out"] == ["huge"]
    assert "left out of this submission (the time budget ran out): ['huge']" in out
    sub = pd.read_csv(next((tmp / "submissions").glob("*.csv")), dtype=str)
    assert len(sub) == 9 and set(sub["digit"]) <= {"0", "1", "2"}
    # the estimates of the units that ran: each within a factor 5 of what it took (or both under a second)
    for u in plan["units"]:
        est, act = u["estimated_s"], u["actual_s"]
        assert max(est, act) <= 1.0 or act / 5 <= est <= act * 5, u
    # status names the model the budget left out: its units are missing
    status = run_cli("status", "--config", cfg, "--budget", "90s").stdout
    assert "missing  train/huge/seed0/fold0" in status

    # a run with the same budget trains nothing again: every unit of the recipe is reused
    again = run_cli("all", "--config", cfg, "--budget", "90s").stdout
    assert "[train] run" not in again and "[predict] run" not in again, again


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
