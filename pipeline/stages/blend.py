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

from ..blending import bootstrap_gain, choose_tta, honest_cv, make_blend
from ..logs import log
from ..metrics import GREATER_IS_BETTER, score
from ..plan import FULL
from ..stage import RunContext
from ..store import Unit, atomic_savez, atomic_write_json
from ..tta import merge_policy

NAME = "blend"
VERSION = 3  # 2: honest CV nests the TTA and best-single choices; 3: report.json holds the fitted blender
PARTIAL = None
IMPLICIT = False


def units(plan) -> list[Unit]:
    params = {**dataclasses.asdict(plan.cfg.blend), "metric": plan.cfg.competition.metric}
    inputs = {u.name: u.key for u in plan.all("predict")}
    return [Unit(NAME, plan.cfg.submit.name, params, inputs, VERSION)]


def gather(plan, unit: Unit) -> dict[str, dict]:
    """Per model: oof (V, N, C) averaged over seeds, test (V, n_test, C) averaged over folds and seeds (over its
    full-data units instead when the model has `refit`), views."""
    comp = plan.comp
    n, c = len(comp.train), comp.n_classes
    acc: dict[str, dict] = defaultdict(lambda: {"oof": defaultdict(lambda: None), "test": [], "full": []})
    for name in unit.inputs:
        p = plan.input(unit, name)
        d = plan.load(p)
        model, seed, fold = p.meta["model"], p.meta["seed"], p.meta["fold"]
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


def test_from(m: dict) -> str:
    return "full-data refit" if m["refit"] else "fold models"


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    cfg, comp = plan.cfg, plan.comp
    metric, b = cfg.competition.metric, cfg.blend
    y = comp.train["y"].to_numpy()
    models = gather(plan, unit)
    folds = plan.load(plan.one("folds"))
    names = list(models)
    oofs, tests, tta_report, single = [], [], {}, {}
    for name in names:
        m = models[name]
        table, pol, how = choose_tta(metric, y, m["views"], m["oof"], b.tta, b.merge)
        oofs.append(merge_policy(m["oof"], m["views"], pol, how))
        tests.append(merge_policy(m["test"], m["views"], pol, how))
        tta_report[name] = {"chosen": f"{pol}/{how}", "table": table, "test_from": test_from(m)}
        single[name] = score(metric, y, oofs[-1])
        log(NAME, f"{name}: OOF {metric} {single[name]:.4f} with TTA {pol}/{how}; test from {test_from(m)}")
    blender = make_blend(b.method, metric, b.seed).fit(oofs, y)
    oof_blend, test_blend = blender.predict(oofs), blender.predict(tests)
    # honest: the TTA choices, the blend and the best single model all chosen again on k-1 folds for each fold
    honest, honest_single, fold_weights, fold_best = honest_cv(models, y, folds, b.method, metric, b.tta, b.merge,
                                                               b.seed)  # fmt: skip
    best_name = max(names, key=lambda n: single[n] if GREATER_IS_BETTER[metric] else -single[n])
    gain = bootstrap_gain(metric, y, honest, honest_single, b.bootstrap, b.seed)
    errors = np.stack([1 - o[np.arange(len(y)), y] for o in oofs])
    corr = np.corrcoef(errors) if len(oofs) > 1 else np.ones((1, 1))
    scores = {"oof": score(metric, y, oof_blend), "honest_cv": score(metric, y, honest),
              "best_single": single[best_name], "honest_best_single": score(metric, y, honest_single),
              "oof_logloss": score("logloss", y, oof_blend)}  # fmt: skip
    report = {
        "metric": metric, "method": b.method, "models": names,
        "weights": dict(zip(names, blender.weights_.tolist())),
        "blender": blender.params(),  # what blending test predictions needs (an exported bundle reads it)
        "fold_weights": fold_weights.tolist(), "fold_best_single": fold_best, "single": single,
        "best_single_model": best_name, **scores,
        "honest_gain_vs_best": {"mean": gain[0], "ci95": [gain[1], gain[2]]}, "tta": tta_report,
        "error_correlation": {"models": names, "matrix": np.round(corr, 4).tolist()},
    }  # fmt: skip
    atomic_write_json(out / "report.json", report)
    atomic_savez(
        out / "blend.npz",
        oof_probs=oof_blend,
        honest_probs=honest,
        test_probs=test_blend,
        train_ids=comp.train["id"].to_numpy().astype(str),
        test_ids=comp.test_ids.to_numpy().astype(str),
    )
    log(NAME, f"weights {report['weights']}")
    if len(names) > 1:  # low error correlation = diverse models, where blending gains most
        for name, row in zip(names, corr):
            log(NAME, f"OOF error correlation {name:>16}: " + " ".join(f"{v:+.2f}" for v in row))
    log(
        NAME,
        f"{metric}: blend OOF {scores['oof']:.4f}, honest CV {scores['honest_cv']:.4f}, best single "
        f"{best_name} {scores['best_single']:.4f} (honest {scores['honest_best_single']:.4f}), honest gain "
        f"{gain[0]:+.4f} [{gain[1]:+.4f}, {gain[2]:+.4f}]",
    )
    return {"outputs": ["blend.npz", "report.json"], "scores": scores}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 1.0


def load(plan, unit: Unit) -> dict:
    """{"report": report.json, and the arrays of blend.npz}."""
    d = plan.store.dir(unit)
    return {"report": json.loads((d / "report.json").read_text()), **dict(np.load(d / "blend.npz"))}
