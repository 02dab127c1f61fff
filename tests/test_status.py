"""What a changed setting redoes, and what `./run.sh status` says about it: stale units with the reason (a setting, an
input, a stage version), a stale upstream stage refused when a later stage runs alone, `--force`, settings that are
in no key, and a published fold assignment that differs."""

import re

import numpy as np
import pytest

from pipeline import __main__ as cli
from pipeline.app import build_plan
from pipeline.config import load_config
from pipeline.scheduler import ensure_done
from pipeline.stages import predict as predict_stage
from pipeline.tta import POLICIES, merge

from .conftest import run_cli, shared_run, write_config  # noqa: F401

pytestmark = pytest.mark.slow
DOWNSTREAM = {"blend", "submit", "report"}  # what reads every prediction (report: when that stage exists)


def lines(status: str, state: str, label: str) -> list[str]:
    return re.findall(rf"^{state} +{re.escape(label)} +(.*)$", status, flags=re.M)


def not_done(plan) -> list:
    return [u for u in plan.units if not plan.store.is_done(u)]


def test_status_says_which_setting_or_input_changed(shared_run):  # noqa: F811
    tmp, cfg, _ = shared_run
    out = run_cli("status", "--config", str(cfg), "--set", "models.tiny.lr=0.02", "--set", "folds.seed=1").stdout
    assert lines(out, "stale", "folds/tiny-csv") == ["seed: 0 -> 1"]
    assert lines(out, "stale", "train/tiny/seed0/fold0") == ["lr: 0.01 -> 0.02"]  # its own setting first
    assert lines(out, "stale", "train/tiny-head/seed0/fold0") == ["input folds changed"]
    assert lines(out, "done", "images/train/34px-bicubic") == [""]  # the images do not depend on either


def test_status_names_a_bumped_stage_version(shared_run, monkeypatch, capsys):  # noqa: F811
    tmp, cfg, _ = shared_run
    monkeypatch.setattr(predict_stage, "VERSION", predict_stage.VERSION + 1)  # as a developer bumping it would
    assert cli.main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    want = f"stage version {predict_stage.VERSION - 1} -> {predict_stage.VERSION}"
    assert lines(out, "stale", "predict/tiny/seed0/fold2") == [want]
    assert lines(out, "stale", "predict/tiny-head/seed0/fold0") == [want]
    assert lines(out, "stale", "blend/blend")  # its inputs changed (or, when other blends were made, its settings)
    assert lines(out, "done", "train/tiny/seed0/fold2") == [""]


def test_a_stale_upstream_stage_is_refused_when_a_later_stage_runs_alone(shared_run):  # noqa: F811
    tmp, cfg, _ = shared_run
    proc = run_cli("predict", "--config", str(cfg), "--set", "models.tiny.lr=0.02", check=False)
    assert proc.returncode == 1
    assert re.search(r"error: train/tiny/seed0/fold\d is not done: run `./run.sh train`", proc.stderr), proc.stderr
    assert not re.search(r"^\[\w+\] (run|resume) ", proc.stdout, flags=re.M), proc.stdout


def test_changing_lr_redoes_that_model_only_and_runtime_settings_change_no_key(shared_run):  # noqa: F811
    tmp, cfg, _ = shared_run
    plan = build_plan(load_config(cfg, ["models.tiny.lr=0.02"]))
    redo = not_done(plan)
    assert sorted(u.label for u in redo if u.stage == "train") == [f"train/tiny/seed0/fold{k}" for k in range(3)]
    assert sorted(u.label for u in redo if u.stage == "predict") == [f"predict/tiny/seed0/fold{k}" for k in range(3)]
    assert {u.stage for u in redo} - {"train", "predict"} <= DOWNSTREAM
    same = build_plan(load_config(cfg, ["runtime.num_workers=0", "predict.batch_size=5", "runtime.progress=true"]))
    assert [u.key for u in same.units] == [u.key for u in build_plan(load_config(cfg)).units]
    assert not not_done(same)


def chosen_oof(plan, model: str, policy: str, how: str) -> np.ndarray:
    """A model's OOF probabilities under a TTA policy and merge, from its stored predictions (one seed)."""
    n, c = len(plan.comp.train), plan.comp.n_classes
    oof = np.zeros((n, c))
    for p in plan.all("predict", model=model):
        d = plan.load(p)
        idx = [d["views"].index(v) for v in POLICIES[policy]]
        oof[d["oof_rows"]] = merge(d["oof_probs"][idx], how)
    return oof


@pytest.mark.parametrize("tta, how", [("hflip", "gmean"), ("five-crop", "mean")])
def test_changing_the_tta_policy_or_merge_redoes_blend_and_submit_only(shared_run, tta, how):  # noqa: F811
    tmp, cfg, _ = shared_run
    plan = build_plan(load_config(cfg, [f"blend.tta={tta}", f"blend.merge={how}"]))
    redo = not_done(plan)
    assert {"blend", "submit"} <= {u.stage for u in redo} <= DOWNSTREAM
    (blend,) = plan.all("blend")
    ensure_done(plan, [blend])
    done = plan.load(blend)
    report = done["report"]
    assert {m: t["chosen"] for m, t in report["tta"].items()} == {"tiny": f"{tta}/{how}", "tiny-head": f"{tta}/{how}"}
    want = sum(w * chosen_oof(plan, m, tta, how) for m, w in report["weights"].items())
    np.testing.assert_allclose(done["oof_probs"], want / want.sum(1, keepdims=True), atol=1e-6)


def test_force_redoes_the_named_stage_only_and_gives_the_same_outputs(shared_run):  # noqa: F811
    tmp, cfg, _ = shared_run
    plan = build_plan(load_config(cfg))
    before = {u.label: plan.load(u) for u in plan.all("predict")}
    markers = {u.label: plan.store.marker(u)["finished_at"] for u in plan.all("predict")}
    out = run_cli("predict", "--config", str(cfg), "--force").stdout
    ran = re.findall(r"^\[predict\] run +(\S+)", out, flags=re.M)
    assert sorted(ran) == sorted(u.name for u in plan.all("predict"))
    assert not re.search(r"^\[(train|features|folds|blend)\] (run|resume) ", out, flags=re.M), out
    for u in plan.all("predict"):
        assert plan.store.marker(u)["finished_at"] > markers[u.label]  # redone, not skipped
        for k, v in plan.load(u).items():  # and identical
            np.testing.assert_array_equal(v, before[u.label][k], err_msg=f"{u.label} {k}")


def test_a_different_published_fold_assignment_is_refused_unless_forced(tmp):
    cfg = str(write_config(tmp, "csv"))
    run_cli("folds", "--config", cfg)
    published = tmp / "folds" / "tiny-csv.csv"
    first = published.read_text()
    proc = run_cli("folds", "--config", cfg, "--set", "folds.seed=1", check=False)
    assert proc.returncode == 1 and f"{published} holds another fold assignment than this config gives" in proc.stderr
    assert "./run.sh folds --force" in proc.stderr and published.read_text() == first
    run_cli("folds", "--config", cfg, "--set", "folds.seed=1", "--force")
    plan = build_plan(load_config(cfg, ["folds.seed=1"]))
    assert published.read_text() != first
    assert published.read_text() == plan.store.dir(plan.one("folds")).joinpath("folds.csv").read_text()
