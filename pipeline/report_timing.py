"""The report's time section, from what the units' markers and a budget run's `budget.json` recorded.

Timeline: the units of one run, the run that finished the newest unit the report reads (each marker records the id
of the command that ran it, `run`, and the process, `worker`: host and pid). Units reused from an earlier run are
not drawn as if they ran now: they are counted beside the plot. A marker of an earlier version, without `worker`, is
drawn in an "unknown" lane; one without `run` belongs to an "unknown" run. Budget: when `budget.json` is that same
run's, each unit's estimated against its actual seconds, totals per stage and kind, the budget used, the share that
went to units that end in the submission, and the seconds per model.
"""

from __future__ import annotations

from collections import defaultdict

from . import report_plots as plots
from .reporting import esc, img, kpi, para, table

UNKNOWN = "unknown"


def this_run(markers: dict[str, dict]) -> tuple[str | None, dict[str, dict], dict[str, dict]]:
    """(the run drawn, its units' markers, the markers of units reused from other runs), by unit label."""
    timed = {k: m for k, m in markers.items() if "started_at" in m and "finished_at" in m}
    if not timed:
        return None, {}, markers
    run = max(timed.values(), key=lambda m: m["finished_at"]).get("run")
    ran = {k: m for k, m in timed.items() if m.get("run") == run}
    return run, ran, {k: m for k, m in markers.items() if k not in ran}


def lanes(ran: dict[str, dict]) -> dict[str, list[tuple[str, dict]]]:
    """worker -> its (label, marker), by start; workers in the order they started their first unit."""
    by_worker: dict[str, list] = defaultdict(list)
    for label, m in sorted(ran.items(), key=lambda kv: kv[1]["started_at"]):
        by_worker[m.get("worker") or UNKNOWN].append((label, m))
    return dict(by_worker)


def timeline_html(markers: dict[str, dict]) -> tuple[str, dict]:
    run, ran, reused = this_run(markers)
    if not ran:
        return para("No unit the report reads recorded when it ran.", "note"), {"timeline": None}
    t0 = min(m["started_at"] for m in ran.values())
    wall = max(m["finished_at"] for m in ran.values()) - t0
    by_lane = lanes(ran)
    bars = [(i, m["started_at"] - t0, m["finished_at"] - m["started_at"], label.split("/", 1)[0],
             label.split("/", 1)[1]) for i, rows in enumerate(by_lane.values()) for label, m in rows]  # fmt: skip
    rows = []
    for worker, units in by_lane.items():
        busy = sum(m["finished_at"] - m["started_at"] for _, m in units)
        rows.append([worker, len(units), f"{busy:.1f}", f"{100 * busy / wall:.0f} %" if wall > 0 else "n/a"])
    again = sum(m.get("seconds", 0) for m in reused.values())
    note = (f"Run {run or UNKNOWN}: {len(ran)} unit(s) on {len(by_lane)} worker(s) over {wall:.1f}s (x: seconds since "
            f"its first unit started; the report itself is not drawn). {len(reused)} unit(s) reused from earlier "
            f"runs (their own {again:.1f}s) are not drawn.")  # fmt: skip
    html = (para(note) + img(plots.timeline(list(by_lane), bars), "timeline of the units per worker")
            + table(["worker (host:pid)", "units", "busy seconds", "busy share of the wall time"], rows))  # fmt: skip
    facts = {"run": run, "lanes": {w: len(u) for w, u in by_lane.items()}, "drawn": len(ran), "reused": len(reused),
             "wall_s": round(wall, 3)}  # fmt: skip
    return html, {"timeline": facts}


def budget_html(account: dict | None, run: str | None, submitted: set[str]) -> tuple[str, dict]:
    """The planner's estimates against what the units of a budget run took; `submitted`: the labels the report
    reads (the units of the submission)."""
    if account is None:
        return para("Not a budget run: `./run.sh all --budget 10m` shows the planner's estimate against what each "
                    "unit took here.", "note"), {}  # fmt: skip
    if account.get("run") is None or account.get("run") != run:
        return para(f"budget.json in the work dir is another run's ({account.get('run')}), not the run drawn above: "
                    "not shown.", "note"), {}  # fmt: skip
    total, units = account["budget_s"], account["units"]
    act, est = sum(u["actual_s"] for u in units), sum(u["estimated_s"] for u in units)
    kept = sum(u["actual_s"] for u in units if u["unit"] in submitted)
    cut = sum(u["actual_s"] for u in units if u.get("stopped"))
    spent = "spent" if account.get("final") else "spent before the report"
    share = f"{100 * account['spent_s'] / total:.0f} %"
    boxes = [kpi("budget", f"{total:.0f}s", f"{spent}: {account['spent_s']:.0f}s ({share})"),
             kpi("units that ran", f"{act:.0f}s", f"estimated {est:.0f}s" + (f"; {cut:.0f}s of it in attempts "
                 "stopped at the deadline" if cut else "")),
             kpi("on units in the submission", f"{kept:.0f}s", f"{100 * kept / total:.0f} % of the budget, "
                 f"{100 * kept / act if act else 0:.0f} % of the units' time")]  # fmt: skip
    html = (f'<div class="kpis">{"".join(boxes)}</div>' + _per_model(account)
            + img(plots.estimate_vs_actual([u for u in units if not u.get("stopped")]),
                  "estimated against actual seconds") + _per_group(account)
            + _per_unit(units, submitted))  # fmt: skip
    facts = {"budget_s": total, "spent_s": account["spent_s"], "units_s": round(act, 3), "estimated_s": round(est, 3),
             "submitted_s": round(kept, 3), "seconds_per_model": account["seconds_per_model"],
             "units": {_label(u): [u["estimated_s"], u["actual_s"]] for u in units}}  # fmt: skip
    return html, {"budget": facts}


def _per_model(account: dict) -> str:
    total = account["budget_s"]
    rows = [[n, f"{s:.1f}", f"{100 * s / total:.0f} %", "yes" if n in account["complete"] else "no (left out)"]
            for n, s in account["seconds_per_model"].items()]  # fmt: skip
    return table(["model", "seconds", "share of the budget", "submitted"], rows)


def _per_group(account: dict) -> str:
    groups: dict[tuple, list] = defaultdict(list)
    for u in account["units"]:
        if u.get("stopped"):  # no estimate of its own: in the per-unit table
            continue
        groups[(u.get("stage", u["unit"].split("/")[0]), u.get("kind", ""))].append(u)
    rows = []
    for (stage, kind), g in sorted(groups.items()):
        ratio = account["calibration"].get(f"{stage}/{kind}" if kind else stage)
        est, act = sum(u["estimated_s"] for u in g), sum(u["actual_s"] for u in g)
        rows.append([stage, kind or "-", len(g), f"{est:.2f}", f"{act:.2f}", f"{ratio:.2f}" if ratio else "n/a"])
    header = ["stage", "kind", "units", "estimated s", "actual s", "calibration (actual / estimated, bounded)"]
    return "<h3>Per stage and kind</h3>" + table(header, rows)


def _per_unit(units: list[dict], submitted: set[str]) -> str:
    rows = [[_label(u), u["model"], f"{u['estimated_s']:.2f}", f"{u['actual_s']:.2f}",
             f"{u['actual_s'] / u['estimated_s']:.2f}" if u["estimated_s"] else "n/a",
             "yes" if u["unit"] in submitted else "no"] for u in units]  # fmt: skip
    header = ["unit", "model", "estimated s", "actual s", "actual / estimated", "in the submission"]
    return "<h3>Per unit</h3>" + table(header, rows)


def _label(u: dict) -> str:
    """A unit's label; an attempt a deadline stopped (it stays resumable) is said to be one."""
    return u["unit"] + (" (attempt stopped at the deadline)" if u.get("stopped") else "")


def timing_panel(markers: dict[str, dict], account: dict | None) -> tuple[str, dict]:
    """markers: the done units the report reads, by label; account: budget.json, if there is one."""
    run = this_run(markers)[0]
    line, facts = timeline_html(markers)
    spent, more = budget_html(account, run, set(markers))
    return (f"<h3>Timeline of the run {esc(run or UNKNOWN)}</h3>" + line + "<h3>Estimated against actual</h3>"
            + spent), {**facts, **more}  # fmt: skip
