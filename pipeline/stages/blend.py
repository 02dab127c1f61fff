"""blend: per model, seeds averaged and the TTA views chosen and merged on OOF; then the models blended with
weights fitted on OOF only (test predictions are never read by a fit). Reports the plain OOF score of the blend;
its honest nested-CV score, in which every choice (each model's TTA policy and merge, the weights or stacker, the
best single model) is made on k-1 folds and applied to the k-th; the best single model's plain and honest scores; a
bootstrap interval of the honest gain over the honest best single model; and the models' diversity.

Outputs: `blend.npz` (oof_probs (N, C), honest_probs (N, C), test_probs (n_test, C), ids) and `report.json`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..blending import SCORES, blend_models
from ..logs import log
from ..plan import FULL
from ..stage import RunContext
from ..store import Unit, atomic_savez, atomic_write_json

NAME = "blend"
VERSION = 3  # 2: honest CV nests the TTA and best-single choices; 3: report.json holds the fitted blender
PARTIAL = None
IMPLICIT = False


def units(plan) -> list[Unit]:
    params = {**dataclasses.asdict(plan.cfg.blend), "metric": plan.cfg.competition.metric}
    inputs = {u.name: u.key for u in plan.all("predict")}
    return [Unit(NAME, plan.cfg.submit.name, params, inputs, VERSION)]


def gather(plan, unit: Unit) -> dict[str, dict]:
    """Per member (a model, or a model's snapshot `<model>@snap<k>`): oof (V, N, C) averaged over seeds, test
    (V, n_test, C) averaged over folds and seeds (over its full-data units instead when the model has `refit`),
    views."""
    comp = plan.comp
    n, c = len(comp.train), comp.n_classes
    acc: dict[str, dict] = defaultdict(lambda: {"oof": defaultdict(lambda: None), "test": [], "full": []})
    for name in unit.inputs:
        p = plan.input(unit, name)
        d = plan.load(p)
        model, seed, fold = p.meta["member"], p.meta["seed"], p.meta["fold"]
        m = acc[model]
        m["views"] = d["views"]
        if fold == FULL:
            m["full"].append(d["test_probs"].astype(np.float64))
            continue
        if m["oof"][seed] is None:
            m["oof"][seed] = (np.zeros((len(m["views"]), n, c)), np.zeros(n, dtype=int))
        oof, seen = m["oof"][seed]
        oof[:, d["oof_rows"]] = d["oof_probs"]
        seen[d["oof_rows"]] += 1
        m["test"].append(d["test_probs"].astype(np.float64))
    out = {}
    for name, m in acc.items():
        for seed, (_, seen) in m["oof"].items():
            if not (seen == 1).all():
                bad = comp.train["id"].to_numpy()[seen != 1][:5].tolist()
                raise ValueError(f"model {name} seed {seed}: OOF must cover every train row once; not so for {bad}")
        oofs = [o for o, _ in m["oof"].values()]
        test = m["full"] or m["test"]
        out[name] = {"views": m["views"], "oof": np.mean(oofs, axis=0), "test": np.mean(test, axis=0),
                     "refit": bool(m["full"])}  # fmt: skip
    return out


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    cfg, comp = plan.cfg, plan.comp
    metric, b = cfg.competition.metric, cfg.blend
    models = gather(plan, unit)
    folds = plan.load(plan.one("folds"))
    arrays, report = blend_models(models, comp.train["y"].to_numpy(), folds, b.method, metric, b.tta, b.merge, b.seed,
                                  b.bootstrap)  # fmt: skip
    for name, tta in report["tta"].items():
        log(NAME, f"{name}: OOF {metric} {report['single'][name]:.4f} with TTA {tta['chosen']}; test from "
                  f"{tta['test_from']}")  # fmt: skip
    atomic_write_json(out / "report.json", report)
    atomic_savez(out / "blend.npz", **arrays, train_ids=comp.train["id"].to_numpy().astype(str),
                 test_ids=comp.test_ids.to_numpy().astype(str))  # fmt: skip
    log(NAME, f"weights {report['weights']}")
    corr = report["error_correlation"]["matrix"]
    if len(corr) > 1:  # low error correlation = diverse models, where blending gains most
        for name, row in zip(report["models"], corr):
            log(NAME, f"OOF error correlation {name:>16}: " + " ".join(f"{v:+.2f}" for v in row))
    gain = [report["honest_gain_vs_best"]["mean"], *report["honest_gain_vs_best"]["ci95"]]
    log(
        NAME,
        f"{metric}: blend OOF {report['oof']:.4f}, honest CV {report['honest_cv']:.4f}, best single "
        f"{report['best_single_model']} {report['best_single']:.4f} (honest {report['honest_best_single']:.4f}), "
        f"honest gain {gain[0]:+.4f} [{gain[1]:+.4f}, {gain[2]:+.4f}]",
    )
    return {"outputs": ["blend.npz", "report.json"], "scores": {k: report[k] for k in SCORES}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 1.0


def load(plan, unit: Unit) -> dict:
    """{"report": report.json, and the arrays of blend.npz}."""
    d = plan.store.dir(unit)
    return {"report": json.loads((d / "report.json").read_text()), **dict(np.load(d / "blend.npz"))}
