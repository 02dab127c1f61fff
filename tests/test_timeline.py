"""Where the time went, in the report: a timeline of the units of the run per worker (the processes executor's two
workers, the run's own process), units reused from an earlier run counted and not drawn, a marker without a worker
in an "unknown" lane; a budget run's estimates against what each unit took, and the console's shares per model."""

import html
import json
import re
from collections import Counter

import pytest

from .conftest import run_cli, write_config

pytestmark = pytest.mark.slow

MODELS = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none"},
          {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip
NOT_READ = ("probe", "report")  # the report does not draw the probe (not REPORTED) nor itself


def timing(out: str, work) -> tuple[str, dict]:
    """The time section's visible text of the report the command printed, and its facts.json."""
    path = re.search(r"^\[report\] (?:partial )?report.*?: (\S+)$", out, flags=re.M)[1]
    page = open(path).read()
    body = page.split('<section id="timing">')[1].split("</section>")[0]
    assert body.count('<img src="data:image/png;base64,') >= 1
    (key,) = re.findall(r"report ([0-9a-f]{8}), built", page)
    (facts,) = [json.loads(p.read_text()) for p in work.glob(f"report/*/{key}*/facts.json")]
    return html.unescape(re.sub(r"<[^>]+>", " ", body)), facts


def worker_of(unit_dir) -> str:
    """Who ran the unit, as its log says (the last attempt): host:pid."""
    host, pid = re.findall(r"^== (?:run|resume) \S+ on (\S+) pid (\d+)", (unit_dir / "log.txt").read_text(), re.M)[-1]
    return f"{host}:{pid}"


def done_units(work) -> dict:
    """folder -> stage of every done unit of the stages the report reads."""
    found = {}
    for marker in work.glob("*/**/done.json"):
        stage = json.loads(marker.read_text())["stage"]
        if stage not in NOT_READ:
            found[marker.parent] = stage
    return found


def test_timeline_has_one_lane_per_worker_and_leaves_reused_units_out(tmp):
    cfg = str(write_config(tmp, "csv", models=MODELS, runtime={"executor": "processes", "workers": 2, "threads": 1}))
    work = tmp / "work" / "tiny-csv"
    text, facts = timing(run_cli("all", "--config", cfg).stdout, work)
    units = done_units(work)
    want = Counter(worker_of(d) for d in units)
    assert len(want) == 2  # the two worker processes ran the units, not the run's own process
    assert facts["timeline"]["lanes"] == dict(want) and facts["timeline"]["drawn"] == len(units) == 19
    assert facts["timeline"]["reused"] == 0 and "budget" not in facts and "Not a budget run" in text
    for worker, n in want.items():
        assert re.search(rf"{worker} +{n} +\d+\.\d", text), (worker, text)

    # another blend: the run redoes blend and submit only; the rest was reused and is not drawn
    out = run_cli("all", "--config", cfg, "--set", "blend.method=mean", "--set", "runtime.executor=local").stdout
    text, facts = timing(out, work)
    ran = {d: stage for d, stage in done_units(work).items() if d not in units}
    assert sorted(ran.values()) == ["blend", "submit"]
    assert facts["timeline"]["drawn"] == 2 and facts["timeline"]["reused"] == 17
    (main,) = {worker_of(d) for d in ran}
    assert facts["timeline"]["lanes"] == {main: 2} and "17 unit(s) reused from earlier runs" in text

    # a marker written before workers were recorded: its unit is drawn in an "unknown" lane
    blend = next(d for d, stage in ran.items() if stage == "blend")
    marker = json.loads((blend / "done.json").read_text())
    del marker["worker"]
    (blend / "done.json").write_text(json.dumps(marker))
    again = run_cli("report", "--config", cfg, "--set", "blend.method=mean", "--force").stdout
    assert timing(again, work)[1]["timeline"]["lanes"] == {main: 1, "unknown": 1}


def test_budget_run_report_shows_estimates_against_actual_and_the_console_the_shares(tmp):
    cfg = str(write_config(tmp, "csv", models=MODELS))
    out = run_cli("all", "--config", cfg, "--budget", "5m").stdout
    work = tmp / "work" / "tiny-csv"
    text, facts = timing(out, work)
    account = json.loads((work / "budget.json").read_text())
    assert account["final"] and facts["timeline"]["run"] == account["run"]
    assert facts["budget"]["units"] == {u["unit"]: [u["estimated_s"], u["actual_s"]] for u in account["units"]}
    assert len(account["units"]) == 19 and all(u["submitted"] for u in account["units"])  # both models, blend, submit
    for u in account["units"]:  # the per-unit table: its estimate, what it took, their ratio
        ratio = f"{u['actual_s'] / u['estimated_s']:.2f}" if u["estimated_s"] else "n/a"
        row = rf"{re.escape(u['unit'])} +{u['model']} +{u['estimated_s']:.2f} +{u['actual_s']:.2f} +{ratio} +yes"
        assert re.search(row, text), u["unit"]
    assert re.search(r"train +finetune +3 +\d+\.\d\d +\d+\.\d\d", text)  # per stage and kind
    for model, s in account["seconds_per_model"].items():
        assert re.search(rf"{model} +{s:.1f} +{100 * s / 300:.0f} % +yes", text), model
    kept = sum(u["actual_s"] for u in account["units"])
    share = f"{kept:.0f}s +{100 * kept / 300:.0f} % of the budget, 100 % of the units' time"
    assert re.search(rf"in the submission +{share}", text)
    per_model = ", ".join(f"{m} {s:.0f}s \\(\\d+ %\\)" for m, s in account["seconds_per_model"].items())
    assert re.search(rf"^\[budget\] where it went: {per_model}$", out, flags=re.M), out
    assert re.search(r"^\[budget\] units that end in the submission took \d+s: \d+ % of the budget, 100 % of the "
                     r"units' time$", out, flags=re.M)  # fmt: skip


def test_an_attempt_the_deadline_stopped_is_counted_apart_from_the_estimates():
    from pipeline.report_timing import budget_html

    unit = {"model": "ft", "stage": "train", "kind": "finetune"}
    first, second = "train/ft/seed0/fold0", "train/ft/seed0/fold1"
    rows = [{**unit, "unit": first, "estimated_s": 0.0, "actual_s": 4.0, "stopped": True},
            {**unit, "unit": first, "estimated_s": 10.0, "actual_s": 7.0},  # resumed, and done
            {**unit, "unit": second, "estimated_s": 0.0, "actual_s": 3.0, "stopped": True}]  # fmt: skip
    account = {"run": "r1", "budget_s": 300.0, "spent_s": 290.0, "final": True, "complete": ["ft"],
               "calibration": {"train/finetune": 0.7}, "seconds_per_model": {"ft": 14.0}, "units": rows}  # fmt: skip
    page, facts = budget_html(account, "r1", {first})
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    cut = " (attempt stopped at the deadline)"
    assert facts["budget"]["units"] == {first + cut: [0.0, 4.0], first: [10.0, 7.0], second + cut: [0.0, 3.0]}
    # what ran counts every attempt; the submission, the attempts of its units; the estimates, finished units only
    assert facts["budget"]["units_s"] == 14.0 and facts["budget"]["submitted_s"] == 11.0
    assert "7s of it in attempts stopped at the deadline" in text
    assert re.search(r"train +finetune +1 +10\.00 +7\.00 +0\.70", text)  # per stage and kind: the finished unit
    assert re.search(rf"{re.escape(first + cut)} +ft +0\.00 +4\.00 +n/a +yes", text)
    assert re.search(rf"{re.escape(second + cut)} +ft +0\.00 +3\.00 +n/a +no", text)
