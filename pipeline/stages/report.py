"""report: one self-contained HTML page per submission, built only from what the run's units recorded (markers,
metrics.csv, preds.npz, the blend report and arrays, the submission, a budget run's budget.json): summary, learning
curves, models, TTA, errors, calibration, the most confident mistakes, blend diversity, the test predictions' class
distribution, and where the time went (pipeline.report_timing). It never recomputes a network output.

Its unit reads every unit before it, so its key is their keys. On a partial run `./run.sh report` gets `narrow`'s
unit instead: the inputs that are done (its own key), the rest listed on the page as missing, and each section says
what it still needs. Outputs: `report.html` and `facts.json` (the numbers the page shows). `after` publishes the
page beside its submission in submissions/ (same name, .html) and prints its path.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import report_plots as plots
from .. import reporting as rp
from ..budget import BUDGET_FILE
from ..config import resolve_path
from ..logs import log
from ..metrics import score
from ..plan import FULL
from ..report_timing import timing_panel
from ..stage import RunContext
from ..store import DONE, Unit, atomic_write_json, atomic_write_text, sha256_file
from ..tta import merge_policy

NAME = "report"
VERSION = 1
PARTIAL = None
IMPLICIT = False
N_MISTAKES = 24


def units(plan) -> list[Unit]:
    """One unit reading every unit of the stages before it (in registry order) but those not REPORTED."""
    reads = _read_stages(plan)
    inputs = {u.label: u.key for u in plan.units if u.stage in reads}
    return [Unit(NAME, plan.cfg.submit.name, {"missing": []}, inputs, VERSION)]


def _read_stages(plan) -> list[str]:
    """The stages whose units the report reads, in registry order."""
    return [s for s, m in plan.stages.items() if s != NAME and getattr(m, "REPORTED", True)]


def narrow(plan, unit: Unit, missing: list[Unit]) -> Unit:
    """The report of what is done: the inputs that are, and the labels of those that are not."""
    gone = {u.key for u in missing}
    inputs = {k: v for k, v in unit.inputs.items() if v not in gone}
    return Unit(NAME, unit.name, {"missing": sorted(u.label for u in missing)}, inputs, VERSION)


class Run:
    """The done inputs of a report unit, by stage, and what the sections share."""

    def __init__(self, plan, unit: Unit):
        self.plan, self.unit, self.comp, self.metric = plan, unit, plan.comp, plan.cfg.competition.metric
        self.y = self.comp.train["y"].to_numpy()
        self.done: dict[str, list[Unit]] = defaultdict(list)
        for name in unit.inputs:
            u = plan.input(unit, name)
            self.done[u.stage].append(u)
        self.blend = plan.load(self.done["blend"][0]) if self.done["blend"] else None
        self.submit = plan.load(self.done["submit"][0]) if self.done["submit"] else None
        self.facts: dict = {"missing": unit.params["missing"], "metric": self.metric}

    def chosen(self, model: str) -> tuple[str, str]:
        """The model's TTA policy and merge as the blend chose them; the centre view alone before a blend."""
        if self.blend and model in self.blend["report"]["tta"]:
            return tuple(self.blend["report"]["tta"][model]["chosen"].split("/"))
        return "none", "mean"

    def needs(self, what: str) -> str:
        return rp.para(f"Needs {what}, which is not done yet: run `./run.sh all`.", "note")


def summary(r: Run) -> str:
    comp, plan, rep = r.comp, r.plan, r.blend["report"] if r.blend else None
    boxes = []
    if rep:
        lo, hi = rp.bootstrap_interval(r.metric, r.y, r.blend["honest_probs"], r.done["blend"][0].params["bootstrap"])
        gain = rep["honest_gain_vs_best"]
        r.facts.update(cv=rep["oof"], honest_cv=rep["honest_cv"], honest_ci95=[lo, hi], best_single=rep["best_single"])
        boxes += [
            rp.kpi(f"CV {r.metric} (blend OOF)", rp.fmt(rep["oof"]), f"{rep['method']} blend of {len(rep['models'])}"),
            rp.kpi("honest CV (nested)", rp.fmt(rep["honest_cv"]), f"95% bootstrap {rp.fmt(lo)} to {rp.fmt(hi)}"),
            rp.kpi("best single model", rp.fmt(rep["best_single"]), rep["best_single_model"]),
            rp.kpi("honest gain vs best", f"{gain['mean']:+.4f}", "95% {:+.4f} to {:+.4f}".format(*gain["ci95"])),
        ]
    r.facts["holdout_score"] = held = r.submit["manifest"]["holdout_score"] if r.submit else None
    if held is not None:
        boxes.append(rp.kpi(f"held-out test {r.metric}", rp.fmt(held), f"{len(comp.test_ids)} labelled test images"))
    rows = [["competition", comp.name], ["task", plan.cfg.competition.task], ["metric", r.metric],
            ["classes", comp.n_classes], ["train / test images", f"{len(comp.train)} / {len(comp.test_ids)}"],
            ["folds", plan.cfg.folds.n_folds], ["models", ", ".join(m.name for m in plan.cfg.models)]]  # fmt: skip
    if r.submit:
        r.facts["submission_sha256"] = sha = sha256_file(r.submit["submission"])
        m = r.submit["manifest"]
        where = r.submit["submission"].relative_to(plan.store.root.parent)  # as runtime.work_dir holds it
        rows += [["submission", f"the CSV of the same name beside this page; in the work dir: {where}"],
                 ["submission sha256", sha], ["created", m["created"]],
                 ["CV / honest CV of its contents", f"{rp.fmt(m['cv'])} / {rp.fmt(m['honest_cv'])}"]]  # fmt: skip
    head = f'<div class="kpis">{"".join(boxes)}</div>' if boxes else r.needs("the blend")
    spent = rp.time_panel({stage: [plan.store.marker(u) for u in r.done[stage]] for stage in _read_stages(plan)})
    return head + rp.table([], rows, cls="kv") + spent


def curves(r: Run) -> str:
    by_model = defaultdict(list)
    for t in r.done["train"]:
        by_model[t.meta["model"]].append(t)
    if not by_model:
        return r.needs("training (`./run.sh train`)")
    out = []
    for model, trained in by_model.items():
        runs, rows = [], []
        for t in trained:
            m, marker = r.plan.load(t)["metrics"], r.plan.store.marker(t)
            label, best = t.name.split("/", 1)[1], marker["scores"].get("best_epoch", int(m["epoch"].iloc[-1]))
            col = {k: m[k].to_numpy(float) if k in m else None for k in ("train_loss", r.metric, "images_per_s")}
            if col["train_loss"] is not None:  # a fine-tuning: epochs to plot
                run = {"label": label, "epoch": m["epoch"].to_numpy(), "val": col[r.metric], "best_epoch": best}
                runs.append({**run, "train_loss": col["train_loss"], "images_per_s": col["images_per_s"]})
            speed = f"{np.median(col['images_per_s']):.0f}" if col["images_per_s"] is not None else "n/a"
            wait = f"{100 * m['data_wait_share'].mean():.1f} %" if "data_wait_share" in m else "n/a"
            rows.append([label, len(m), best, marker["scores"].get(r.metric), speed, wait, f"{marker['seconds']:.1f}"])
        out.append(f"<h3>{rp.esc(model)}</h3>")
        if runs:
            out.append(rp.img(plots.learning_curves(runs, r.metric), f"learning curves of {model}"))
        else:
            kind = r.plan.cfg.model(model).kind
            out.append(rp.para(f"Fitted on cached features in one step (kind: {kind}): no epochs to plot.", "note"))
        header = ["unit", "epochs", "best epoch", f"best {r.metric}", "images/s (median)", "data wait", "seconds"]
        out.append(rp.table(header, rows))
    return "".join(out)


def fold_probs(r: Run) -> dict:
    """member (a model or its snapshot) -> seed -> fold -> (OOF rows, probs merged as the blend merges its views)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for p in r.done["predict"]:
        if p.meta["fold"] == FULL:
            continue
        d = r.plan.load(p)
        pol, how = r.chosen(p.meta["member"])
        merged = merge_policy(d["oof_probs"], d["views"], pol, how)
        out[p.meta["member"]][p.meta["seed"]][p.meta["fold"]] = (d["oof_rows"], merged)
    return out


def models(r: Run) -> str:
    probs, rep, k = fold_probs(r), r.blend["report"] if r.blend else None, r.plan.cfg.folds.n_folds
    if not probs:
        return r.needs("predictions (`./run.sh predict`)")
    names, oof, spreads, rows, grid = [], [], [], [], []
    r.facts["fold_scores"] = {}
    model_of = {p.meta["member"]: r.plan.cfg.model(p.meta["model"]) for p in r.done["predict"]}
    for name, spec in [(m, model_of[m]) for m in sorted(probs, key=list(model_of).index)]:
        by_seed = sorted(probs[name].items())
        scores = {s: {f: score(r.metric, r.y[rows_], p) for f, (rows_, p) in sorted(fs.items())} for s, fs in by_seed}
        r.facts["fold_scores"][name] = scores
        seed_oofs = []
        for s, fs in by_seed:  # the seed's OOF over the folds done
            covered, p = (np.concatenate([fs[f][i] for f in sorted(fs)]) for i in (0, 1))
            seed_oofs.append(score(r.metric, r.y[covered], p))
            grid.append([f"{name} seed {s}", *[scores[s].get(f) for f in range(k)], seed_oofs[-1]])
        flat = [v for fs in scores.values() for v in fs.values()]
        nested = [w[rep["models"].index(name)] for w in rep["fold_weights"]] if rep else []
        blended = [rep["single"][name], rep["weights"][name]] if rep else [None, None]
        spread = [float(np.mean(flat)), float(np.std(flat)), min(flat), max(flat)]
        nested_range = f"{min(nested):.2f} to {max(nested):.2f}" if nested else "n/a"
        rows.append([name, spec.kind, spec.backbone, len(scores), len(flat), blended[0], *spread, blended[1],
                     nested_range, "/".join(r.chosen(name))])  # fmt: skip
        names.append(name)
        oof.append(blended[0] if rep else float(np.mean(seed_oofs)))  # before a blend: the mean of its seeds' OOF
        spreads.append(flat)
    weights = [rep["weights"][n] for n in names] if rep else None
    chart = plots.model_scores(names, oof, spreads, weights, rep["oof"] if rep else None, r.metric)
    header = ["model", "kind", "backbone", "seeds", "folds done", f"OOF {r.metric}", "fold mean", "fold sd", "min",
              "max", "weight", "nested-CV weights", "TTA"]  # fmt: skip
    note = ("Scores use each model's TTA policy as the blend chose it (the centre view before a blend); a seed's OOF "
            "covers the folds done.")  # fmt: skip
    per_fold = rp.table(["model / seed", *[f"fold {f}" for f in range(k)], "seed OOF"], grid)
    chart_html = rp.img(chart, "OOF score per model and blend weights")
    return chart_html + rp.table(header, rows) + "<h3>Per seed and fold</h3>" + per_fold + rp.para(note, "note")


def mistakes(r: Run):
    caches = sorted((u for u in r.done["images"] if u.meta["split"] == "train"), key=lambda u: -u.meta["size"])
    pixels = np.load(r.plan.load(caches[0]), mmap_mode="r") if caches else None
    ids = r.comp.train["id"].to_numpy()
    return rp.mistakes_panel(r.y, r.blend["oof_probs"], r.comp.classes, ids, pixels, N_MISTAKES)


def diversity(r: Run) -> str:
    ec = r.blend["report"]["error_correlation"]
    return rp.diversity_panel(ec["models"], np.array(ec["matrix"]))


def timing(r: Run) -> tuple[str, dict]:
    """The timeline of the run that finished the newest unit read here, and a budget run's estimates."""
    path = r.plan.store.root / BUDGET_FILE
    account = json.loads(path.read_text()) if path.is_file() else None
    return timing_panel({u.label: r.plan.store.marker(u) for us in r.done.values() for u in us}, account)


# (id, title, builder, needs the blend): a builder returns the section's HTML, or (HTML, numbers for facts.json)
SECTIONS = [
    ("summary", "Summary", summary, False),
    ("curves", "Learning curves", curves, False),
    ("models", "Models", models, False),
    ("tta", "Test-time augmentation", lambda r: rp.tta_panel(r.blend["report"]["tta"], r.metric), True),
    ("errors", "OOF errors", lambda r: rp.errors_panel(r.y, r.blend["oof_probs"], r.comp.classes), True),
    ("calibration", "Calibration", lambda r: rp.calibration_panel(
        r.y, r.blend["oof_probs"], r.blend["report"]["method"] == "rank"), True),
    ("mistakes", "Most confident mistakes", mistakes, True),
    ("diversity", "Blend diversity", diversity, True),
    ("shift", "Test predictions vs train labels", lambda r: rp.shift_panel(
        r.y, r.blend["test_probs"], r.comp.classes), True),
    ("timing", "Time: timeline and budget", timing, False),
]  # fmt: skip


def render(r: Run, sid: str, build, needs_blend: bool) -> str:
    """A section's HTML; a section that fails says why on the page (and in facts.json) instead of failing the unit,
    since `all` publishes the submission only after every unit, this one included, is done."""
    if needs_blend and not r.blend:
        return r.needs("the blend")
    try:
        out = build(r)
    except Exception as err:  # noqa: BLE001 - shown on the page and logged, with the unit's name
        r.facts.setdefault("errors", {})[sid] = f"{type(err).__name__}: {err}"
        log(NAME, f"WARNING section {sid} failed: {type(err).__name__}: {err}")
        return rp.para(f"This section failed: {type(err).__name__}: {err}", "note")
    if isinstance(out, tuple):
        r.facts.update(out[1])
        return out[0]
    return out


def missing_box(r: Run) -> str:
    if not r.facts["missing"]:
        return ""
    by_label = {u.label: u for u in r.plan.units}
    rows = []
    for label in r.facts["missing"]:  # as `./run.sh status` says it: missing, stale (and why), partial
        state, why = r.plan.state(by_label[label]) if label in by_label else ("missing", "")
        rows.append([label, f"{state} {why}".strip()])
    return rp.missing_panel(rows)


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    r = Run(plan, unit)
    sections = [(sid, title, render(r, sid, build, needs_blend)) for sid, title, build, needs_blend in SECTIONS]
    cv = f"CV {r.metric} {rp.fmt(r.facts['cv'])}" if "cv" in r.facts else "no blend yet"
    partial = f"; partial: {len(r.facts['missing'])} unit(s) not done" if r.facts["missing"] else ""
    title = f"{plan.comp.name} / {unit.name}: {cv}"
    sub = f"report {unit.key[:8]}, built {time.strftime('%Y-%m-%d %H:%M:%S')} from recorded artifacts{partial}"
    atomic_write_text(out / "report.html", rp.page(title, sub, sections, missing_box(r)))
    atomic_write_json(out / "facts.json", r.facts)
    return {"outputs": ["report.html", "facts.json"], "scores": {"missing": len(r.facts["missing"])}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 1.0


def load(plan, unit: Unit) -> dict:
    """{"html": path of report.html, "facts": the numbers it shows}."""
    d = plan.store.dir(unit)
    return {"html": d / "report.html", "facts": json.loads((d / "facts.json").read_text())}


def after(plan, units: list[Unit], **_) -> None:
    """Publish the page beside its submission (the published CSV whose manifest names the submit unit) and say where
    it is; a partial report stays in the work dir."""
    (unit,) = units
    done = plan.load(unit)
    missing, dest = done["facts"]["missing"], done["html"]
    submit = [plan.by_key[k] for k in unit.inputs.values() if plan.by_key[k].stage == "submit"]
    folder = resolve_path(plan.cfg.runtime.submissions_dir)
    for path in sorted(folder.glob("*.json")) if submit and not missing else []:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):  # not a manifest of this pipeline
            continue
        if isinstance(manifest, dict) and manifest.get("unit_key") == submit[0].key and manifest.get("file"):
            dest = folder / Path(manifest["file"]).with_suffix(".html").name
            atomic_write_text(dest, done["html"].read_text())
            break
    what = f"partial report ({len(missing)} unit(s) not done)" if missing else "report"
    log(NAME, f"{what}: {dest}")
    if done["facts"].get("errors"):  # not kept as done: the next run builds it again
        (plan.store.dir(unit) / DONE).unlink(missing_ok=True)
        log(NAME, f"WARNING {len(done['facts']['errors'])} section(s) failed (the page says why); the next "
                  f"`./run.sh report` builds it again")  # fmt: skip
