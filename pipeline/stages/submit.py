"""submit: the blended test probabilities as a CSV in sample_submission.csv's exact format, validated, published as
`submissions/<competition>-<name>-cv<score>-<key>.csv` with a JSON manifest beside it. Scores the held-out labels
when the competition has them (the embedded default does)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import resolve_path
from ..logs import log
from ..metrics import score
from ..stage import RunContext
from ..store import Unit, atomic_write, atomic_write_json, sha256_file, stable_hash
from ..submission import as_submitted, make_submission, validate_submission

NAME = "submit"
VERSION = 1
PARTIAL = None
IMPLICIT = False
# the packages whose versions can change this submission (ttach is a benchmark's only: not recorded)
PACKAGES = ["torch", "timm", "albumentations", "scikit-learn", "scipy", "numpy", "pandas", "pillow"]


def holdout_score(plan, probs: np.ndarray) -> float | None:
    """The metric on the held-out test labels (when the competition has them), of what the submission holds."""
    y = plan.comp.holdout_y  # read and checked when the competition was loaded; keyed in the submit unit
    return None if y is None else score(plan.cfg.competition.metric, y, probs)


def sample_params(comp) -> dict:
    """What decides the file's format besides the config: the sample's header and its target columns' value types,
    the resolved format, and (two classes) which class a probability column is for."""
    types = ["number" if v.map(_is_number).all() else "text" for _, v in comp.sample.iloc[:, 1:].items()]
    out = {"columns": list(comp.sample.columns), "types": types, "format": comp.submit_format}
    if comp.n_classes == 2:
        out["positive_class"] = comp.classes[1]
    return out


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def units(plan) -> list[Unit]:
    c, blend = plan.cfg.competition, plan.one("blend")
    params = {
        "name": plan.cfg.submit.name,
        "format": c.submit_format,
        "task": c.task,
        "sample": sample_params(plan.comp),
    }
    if plan.cfg.submit.left_out:  # only then: the keys of every run without a budget stay as they were
        params["left_out"] = plan.cfg.submit.left_out
    inputs = {"blend": blend.key, **plan.tables}
    if plan.comp.holdout_y is not None:  # the held-out labels' content: an edited file is scored again
        inputs["holdout_labels"] = stable_hash(plan.comp.holdout_y.tolist())
    return [Unit(NAME, plan.cfg.submit.name, params, inputs, VERSION)]


def run(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    cfg, comp = plan.cfg, plan.comp
    c = cfg.competition
    blend = plan.load_input(unit, "blend")
    report = blend["report"]
    if not np.array_equal(blend["test_ids"], comp.test_ids.to_numpy().astype(str)):
        raise ValueError("the blend's test ids differ from sample_submission.csv; rerun `./run.sh blend --force`")
    fmt = comp.submit_format
    sub = make_submission(comp.sample, comp.labels, blend["test_probs"], fmt)
    validate_submission(sub, comp.sample, fmt, comp.classes)
    atomic_write(out / "submission.csv", lambda p: sub.to_csv(p, index=False))
    # every score reported is the score of what the file holds (hard labels score as one-hot rows)
    y = comp.train["y"].to_numpy()
    cv, honest = (score(c.metric, y, as_submitted(blend[k], fmt)) for k in ("oof_probs", "honest_probs"))
    held = holdout_score(plan, as_submitted(blend["test_probs"], fmt))
    manifest = {
        "competition": c.name, "name": cfg.submit.name, "format": fmt, "metric": c.metric,
        "cv": cv, "honest_cv": honest, "cv_of_probabilities": report["oof"], "best_single": report["best_single"],
        "models": report["models"], "weights": report["weights"], "per_model_cv": report["single"],
        "tta": {m: t["chosen"] for m, t in report["tta"].items()}, "blend_method": report["method"],
        "config_hash": stable_hash(cfg.to_dict()), "config_file": cfg.source, "unit_key": unit.key,
        "holdout_score": held, "left_out": cfg.submit.left_out,
        "positive_class": comp.classes[1] if comp.n_classes == 2 else None, "classes": comp.classes,
        "packages": {p: _version(p) for p in PACKAGES}, "created": pd.Timestamp.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    atomic_write_json(out / "manifest.json", manifest)
    return {"outputs": ["submission.csv", "manifest.json"], "scores": {"cv": cv, "holdout": held}}


def estimate(plan, unit: Unit, rates: dict) -> float:
    return 1.0


def load(plan, unit: Unit) -> dict:
    """{"submission": path of submission.csv, "manifest": manifest.json}."""
    d = plan.store.dir(unit)
    return {"submission": d / "submission.csv", "manifest": json.loads((d / "manifest.json").read_text())}


def after(plan, units: list[Unit], kaggle: str | None = None, **_) -> None:
    """Publish the done submission to submissions/ (named by its unit key) and say where it is and how it scored."""
    cfg, c = plan.cfg, plan.cfg.competition
    (unit,) = units
    done = plan.load(unit)
    manifest = done["manifest"]
    stem = f"{c.name}-{cfg.submit.name}-cv{manifest['cv']:.4f}-{unit.key[:8]}"
    dest = resolve_path(cfg.runtime.submissions_dir) / f"{stem}.csv"
    publish(done["submission"], dest, {**manifest, "file": dest.name})
    log(NAME, f"submission: {dest} ({_what(manifest)}; CV {c.metric} {manifest['cv']:.4f}, honest "
              f"{manifest['honest_cv']:.4f}, of the file's contents)")  # fmt: skip
    if manifest.get("left_out"):
        log(NAME, f"left out of this submission (the time budget ran out): {manifest['left_out']}")
    if manifest["holdout_score"] is not None:
        log(NAME, f"held-out test {c.metric}: {manifest['holdout_score']:.4f} ({len(plan.comp.test_ids)} images)")
    if kaggle:
        upload(dest, kaggle, f"{cfg.submit.name} cv={manifest['cv']:.4f} honest={manifest['honest_cv']:.4f}")


def _what(manifest: dict) -> str:
    """What the file holds, in words: labels, probabilities of 'fake', class probabilities."""
    if manifest["format"] == "probability":
        return f"probabilities of {manifest.get('positive_class')!r}"
    return {"label": "labels", "class_probs": "class probabilities"}.get(manifest["format"], manifest["format"])


def publish(src: Path, dest: Path, manifest: dict) -> bool:
    """Copy the done CSV to dest with its manifest (naming the CSV's sha256) beside it, unless both are there and
    describe these bytes: a run killed between the two files, or a submission of the same name redone (--force),
    publishes again. The old manifest goes first and the new one comes last, so that a manifest never describes other
    bytes than its CSV's. Returns whether it published."""
    want = {**manifest, "sha256": sha256_file(src)}
    meta = dest.with_suffix(".json")
    try:
        same = json.loads(meta.read_text()) == want and sha256_file(dest) == want["sha256"]
    except (OSError, ValueError):
        same = False
    if same:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    atomic_write(dest, lambda p: shutil.copyfile(src, p))
    atomic_write_json(meta, want)
    return True


def upload(path, competition: str, message: str) -> None:
    if shutil.which("kaggle") is None:
        raise RuntimeError("--kaggle needs the official Kaggle CLI: pip install kaggle, and ~/.kaggle/kaggle.json")
    subprocess.run(["kaggle", "competitions", "submit", "-c", competition, "-f", str(path), "-m", message], check=True)


def list_submissions(folder) -> None:
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            m = json.loads(path.read_text())
            if not {"created", "file", "metric", "cv", "honest_cv", "best_single", "weights"} <= set(m):
                raise ValueError("not a manifest of this pipeline")
        except (OSError, ValueError) as err:
            print(f"warning: skipping {path}: {err}", file=sys.stderr)
            continue
        rows.append(m)
    if not rows:
        print("no submissions yet: run ./run.sh all")
        return
    for m in sorted(rows, key=lambda m: m.get("created", ""), reverse=True):
        w = ", ".join(f"{k}:{v:.2f}" for k, v in m["weights"].items())
        held = f" held-out {m['holdout_score']:.4f}" if m.get("holdout_score") is not None else ""
        print(f"{m['created']}  {m['file']}\n    {m['metric']} CV {m['cv']:.4f}  honest {m['honest_cv']:.4f}  "
              f"best single {m['best_single']:.4f}{held}\n    {m['blend_method']}: {w}")  # fmt: skip


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
