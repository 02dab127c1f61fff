"""The stage contract: the registry is the one list of stages (a new stage is read by the report and estimated by the
budget without naming it anywhere else), a registry entry that is not a stage is refused, and a stage's run gets
its context instead of fields set on the plan."""

import types

import pytest

from pipeline import budget
from pipeline.config import load_config
from pipeline.plan import build_plan
from pipeline.stage import RunContext
from pipeline.stages import STAGES
from pipeline.store import Unit

from .conftest import write_config

NO_MODELS = []  # images and features have no units: only folds, blend, submit and report


def extra_stage(name: str = "extra") -> types.ModuleType:
    """A stage declared as a module is: one unit reading the folds unit."""
    m = types.ModuleType(name)
    m.NAME, m.VERSION, m.PARTIAL, m.IMPLICIT = name, 1, None, False
    m.units = lambda plan: [Unit(name, "one", {}, {"folds": plan.one("folds").key}, 1)]
    m.run = lambda plan, unit, out, ctx: {"outputs": [], "scores": {"forced": ctx.force}}
    m.load = lambda plan, unit: None
    m.estimate = lambda plan, unit, rates: 42.0
    return m


def with_extra(stage) -> dict:
    names = list(STAGES)
    at = names.index("blend")
    return {**{n: STAGES[n] for n in names[:at]}, stage.NAME: stage, **{n: STAGES[n] for n in names[at:]}}


def test_a_registered_stage_is_read_by_the_report_and_estimated_by_its_own_function(tmp):
    cfg = load_config(write_config(tmp, "csv"))
    stages = with_extra(extra_stage())
    plan = build_plan(cfg, stages)
    (unit,) = plan.all("extra")
    (report,) = plan.all("report")
    assert report.inputs[unit.label] == unit.key  # the report reads it: no list of stages to add it to
    assert "probe/machine" not in report.inputs
    assert budget.estimate(plan, unit, rates={}) == 42.0
    assert plan.stages is stages and plan.state(unit)[0] == "missing"


def test_an_entry_that_is_not_a_stage_is_refused_naming_what_it_lacks(tmp):
    cfg = load_config(write_config(tmp, "csv"))
    broken = extra_stage()
    del broken.estimate
    with pytest.raises(TypeError, match=r"stage 'extra' .*lacks \['estimate'\]"):
        build_plan(cfg, with_extra(broken))


def test_run_context_defaults_and_fence():
    ctx = RunContext()
    assert ctx.deadline is None and not ctx.force and ctx.logger.name == "pipeline"
    ctx.check_fence()  # no claim: nothing to check

    def lost():
        raise RuntimeError("taken over")

    with pytest.raises(RuntimeError, match="taken over"):
        RunContext(fence=lost).check_fence()
