"""`./run.sh export`: a submission's ensemble as a self-contained folder that predicts hidden test images offline
(a Kaggle code competition's notebook) exactly as the pipeline did.

The bundle: `recipe.json` (every model's backbone, preprocessing, views, TTA merge, members; the blend; the
submission's format and classes), the weights of every network it blends (safetensors; fp16 with `--half`), the heads'
coefficients, `infer.py` (the pipeline's own decoding, views, merges and blending, copied as is), `predict.py` (the
command), a README with the notebook cell, `requirements.txt` and `dataset-metadata.json` for `kaggle datasets create`.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from . import kinds
from .config import resolve_path
from .data import ImageDataset
from .folding import fold_rows
from .infer import POLICIES, blend_probs, contrast_views, linear_softmax, merge, with_contrast
from .kinds.snapshots import member_weights
from .metrics import score
from .models import create_model, preprocessing
from .plan import FULL, Plan, require_done
from .runtime import make_loader, prepare_model, run_views
from .store import Unit, atomic_write_json, sha256_file, stable_hash, tmp_name
from .submission import as_submitted

FORMAT_VERSION = 1
HERE = Path(__file__).resolve().parent
PACKAGES = ["torch", "timm", "numpy", "pandas", "pillow", "safetensors"]


class ExportError(RuntimeError):
    pass


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def find_submission(plan: Plan, name: str | None) -> Unit:
    """The submit unit of this config (done), checked to be the one that wrote `name` when a file is named."""
    unit = plan.one("submit")
    require_done(plan.store, unit)
    if name:
        folder = resolve_path(plan.cfg.runtime.submissions_dir)
        path = folder / (name if name.endswith(".json") else f"{name.removesuffix('.csv')}.json")
        if not path.is_file():
            raise ExportError(f"no submission manifest {path}; `./run.sh submissions` lists them")
        made_by = json.loads(path.read_text()).get("unit_key")
        if made_by != unit.key:
            raise ExportError(f"{path.name} was made by another config or settings (unit {made_by}) than "
                              f"{plan.cfg.source or 'this config'} gives ({unit.key}): export with the config (and "
                              f"--set options) that made it")  # fmt: skip
    return unit


def members(plan: Plan, blend: Unit, member: str, refit: bool) -> list[tuple[Unit, Unit]]:
    """(predict unit, train unit) of each unit whose test predictions the blend averaged for a blend member (a model,
    or a model's snapshot `<model>@snap<k>`), in the blend's order."""
    out = []
    for key in blend.inputs.values():
        p = plan.by_key[key]
        if p.meta["member"] == member and (p.meta["fold"] == FULL) == refit:
            out.append((p, plan.input(p, "model")))
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, half: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def spec_of(plan: Plan, blend: Unit, member: str):
    """The model spec of a blend member (a snapshot member is its model's)."""
    return plan.cfg.model(next(p.meta["model"] for p in map(plan.by_key.get, blend.inputs.values())
                               if p.meta["member"] == member))  # fmt: skip


def model_entry(plan: Plan, blend: Unit, report: dict, name: str, out: Path, half: bool) -> dict:
    """One blend member's recipe (a model, or a model's snapshot: its own weights), its weights written under `out`."""
    import timm

    spec, comp = spec_of(plan, blend, name), plan.comp
    if not kinds.get(spec.kind).exportable:
        raise ExportError(f"model {name!r} is of kind {spec.kind}, which export cannot bundle (it predicts from the "
                          f"train features, which a bundle does not hold); blend without it to export (a config "
                          f"whose models leave it out)")  # fmt: skip
    prep = preprocessing(spec)
    policy, how = report["tta"][name]["chosen"].split("/")
    refit = report["tta"][name]["test_from"] == "full-data refit"
    entry = {
        "name": name, "kind": spec.kind, "backbone": spec.backbone, "timm": timm.__version__,
        "n_classes": comp.n_classes, "img_size": spec.img_size, "cache_size": prep["cache_size"],
        "interpolation": prep["interpolation"], "mean": prep["mean"], "std": prep["std"],
        "crop_pct": prep["crop_pct"], "tta": policy, "views": POLICIES[policy], "merge": how,
        "levels": spec.feature_levels, "grid": spec.feature_grid, "contrast": spec.feature_contrast,
        "test_from": "refit" if refit else "folds",
        "members": [],
    }  # fmt: skip
    for p, t in members(plan, blend, name, refit):
        seed, fold = p.meta["seed"], p.meta["fold"]
        tag = f"seed{seed}-" + ("full" if fold == FULL else f"fold{fold}")
        loaded = plan.load(t)
        if spec.kind == "head":
            rel = f"heads/{name}/{tag}.safetensors"
            _save({k: torch.from_numpy(v) for k, v in loaded["head"].items()}, out / rel, half=False)
        else:
            rel = f"weights/{name}/{tag}.safetensors"
            _save(member_weights(loaded, p.params.get("snapshot", 0)), out / rel, half)
        entry["members"].append({"file": rel, "seed": seed, "fold": fold, "sha256": sha256_file(out / rel)})
    if spec.kind == "head":  # the frozen backbone the features came from: built as the features stage builds it
        rel = f"backbones/{spec.backbone}-{stable_hash([spec.weights, spec.backbone, comp.n_classes], 12)}.safetensors"
        if not (out / rel).is_file():
            torch.manual_seed(0)
            _save(create_model(spec, comp.n_classes).state_dict(), out / rel, half)
        entry["backbone_file"] = rel
    return entry


def input_recipe(plan: Plan) -> dict:
    """How test images are found: by id in a folder, or as rows of a pixel CSV (its columns those of train, by name;
    its rows by an id column when it has one, else in the sample's order; the scale the pipeline decided)."""
    c, comp = plan.cfg.competition, plan.comp
    inp = {"layout": c.layout, "image_ext": c.image_ext, "pixels": None}
    if c.layout == "pixels":
        header = pd.read_csv(plan.cfg.root / c.train_csv, dtype=str, nrows=0).columns
        inp["pixels"] = {"shape": list(comp.test_pixels.shape[1:]), "fractions": comp.pixel_fractions,
                         "columns": [x for x in header if x not in (c.target_col, c.id_col)],
                         "id_cols": list(dict.fromkeys([c.id_col, comp.sample.columns[0]]))}  # fmt: skip
    return inp


def recipe(plan: Plan, submit: Unit, out: Path, half: bool) -> dict:
    comp = plan.comp
    blend = plan.input(submit, "blend")
    done = plan.load(blend)
    report, manifest = done["report"], plan.load(submit)["manifest"]
    sample = comp.sample
    fmt = comp.submit_format
    return {
        "format_version": FORMAT_VERSION,
        "competition": plan.cfg.competition.name,
        "metric": plan.cfg.competition.metric,
        "packages": {p: _version(p) for p in PACKAGES},
        "runtime": {"channels_last": plan.cfg.runtime.channels_last, "batch_size": plan.cfg.predict.batch_size},
        "input": input_recipe(plan),
        "submission": {
            "columns": list(sample.columns),
            "format": fmt,
            "classes": comp.classes,
            "n_classes": comp.n_classes,
            "column_classes": [comp.labels.lookup(col) for col in sample.columns[1:]] if fmt == "class_probs" else None,
            "positive": 1,
            "positive_class": comp.classes[1] if comp.n_classes == 2 else None,
        },  # fmt: skip
        "models": [model_entry(plan, blend, report, name, out, half) for name in report["models"]],
        "blend": {"method": report["method"], **report["blender"]},
        "expected": {
            "cv": manifest["cv"],
            "honest_cv": manifest["honest_cv"],
            "holdout": manifest["holdout_score"],
            "unit_key": submit.key,
            "half": half,
        },  # fmt: skip
    }


README = """# {name}: an exported ensemble ({n_models} models, {n_files} weight files)

Predicts a test set offline exactly as the pipeline that trained it would: the same decoding, resizing, TTA views,
merges and blend (`infer.py` is the pipeline's own code, copied as is). Its CV {metric} was {cv:.4f}.

    python predict.py --{input} --sample sample_submission.csv --out submission.csv [--device auto|cpu|cuda]

Needs {packages} (Kaggle's image has them). `recipe.json` records the versions it was exported with; every weight
tensor is checked to load into the architecture that timm builds here, and a mismatch is refused, never half-loaded.

## In a Kaggle notebook (internet off)
Upload this folder as a dataset (`kaggle datasets create -p THIS_FOLDER`, after setting the id in
`dataset-metadata.json`), add it and the competition to the notebook, then run one cell:

    !python /kaggle/input/{slug}/predict.py \\
        --{kaggle_input} \\
        --sample /kaggle/input/COMPETITION/sample_submission.csv \\
        --out /kaggle/working/submission.csv
"""


def write_extras(out: Path, rec: dict) -> None:
    shutil.copyfile(HERE / "infer.py", out / "infer.py")
    shutil.copyfile(HERE / "bundle_predict.py", out / "predict.py")
    slug = f"{rec['competition']}-ensemble"[:50]
    pixels = rec["input"]["layout"] == "pixels"
    (out / "README.md").write_text(README.format(
        name=rec["competition"], n_models=len(rec["models"]), metric=rec["metric"], cv=rec["expected"]["cv"],
        n_files=sum(len(m["members"]) for m in rec["models"]), packages=", ".join(PACKAGES), slug=slug,
        input="pixels test.csv" if pixels else "images TEST_IMAGE_FOLDER",
        kaggle_input="pixels /kaggle/input/COMPETITION/test.csv" if pixels else "images /kaggle/input/COMPETITION/test",
    ))  # fmt: skip
    (out / "requirements.txt").write_text("".join(f"{p}=={v}\n" for p, v in rec["packages"].items() if v))
    atomic_write_json(out / "dataset-metadata.json", {"title": slug, "id": f"YOUR_KAGGLE_USERNAME/{slug}",
                                                      "licenses": [{"name": "CC0-1.0"}]})  # fmt: skip
    atomic_write_json(out / "recipe.json", rec)


def export(plan: Plan, submission: str | None, out: str | None, half: bool) -> Path:
    """Write the bundle of the config's submission; returns its folder. Built beside it and renamed: a killed export
    leaves no bundle that looks complete."""
    submit = find_submission(plan, submission)
    dest = resolve_path(out) if out else plan.store.root / "export" / f"{plan.cfg.submit.name}-{submit.key[:8]}"
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest} exists and is not empty: name another --out, or remove it")
    tmp = dest.with_name(tmp_name(dest.name))
    tmp.mkdir(parents=True)
    try:
        rec = recipe(plan, submit, tmp, half)
        write_extras(tmp, rec)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if half:  # what rounding the weights costs, measured on OOF before anyone uploads it
        d = half_change(plan, submit)
        print(f"[export] --half: OOF {d['metric']} {d['fp32']:.4f} with the fp32 weights, {d['fp16']:.4f} with fp16 "
              f"({d['fp16'] - d['fp32']:+.4f}); {d['labels_changed']} of {d['rows']} OOF labels changed, largest "
              f"probability change {d['max_abs_prob_change']:.1e}", flush=True)  # fmt: skip
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"[export] {dest}: {len(rec['models'])} models, "
          f"{sum(len(m['members']) for m in rec['models'])} member weight files, {size / 2**20:.1f} MiB"
          + (" (fp16)" if half else ""), flush=True)  # fmt: skip
    return dest


def _rounded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as a --half bundle holds them: rounded to fp16, computed in fp32."""
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}


def _forward(plan: Plan, spec, views: list[str], state: dict, rows: np.ndarray, features: bool = False):
    """(V, len(rows), K) of the train rows (sorted) through a network with these weights rounded to fp16."""

    cfg, rt = plan.cfg, plan.cfg.runtime
    device, model, norm = prepare_model(spec, rt, plan.comp.n_classes, state_dict=_rounded(state))
    cache = plan.load(plan.images("train", spec))
    loader = make_loader(ImageDataset(cache, rows), cfg.predict.batch_size, rt.num_workers, device)
    got, out = run_views(model, loader, views, spec.img_size, norm, rt.amp, features=features,
                         levels=spec.feature_levels, grid=spec.feature_grid)  # fmt: skip
    placed = np.empty_like(out)
    placed[:, np.searchsorted(rows, got)] = out  # rows travel with the batches
    return placed


def half_oof(plan: Plan, blend: Unit, report: dict) -> list[np.ndarray]:
    """Each blended model's OOF (N, C) recomputed with its network weights rounded to fp16, its chosen views merged."""

    comp = plan.comp
    n, c = len(comp.train), comp.n_classes
    folds = plan.load(plan.one("folds"))
    out = []
    for name in report["models"]:
        spec = spec_of(plan, blend, name)
        policy, how = report["tta"][name]["chosen"].split("/")
        views = POLICIES[policy]
        per_seed: dict[int, np.ndarray] = {}
        feats = None

        for p, t in members(plan, blend, name, refit=False):
            rows = fold_rows(folds, p.meta["fold"])[1]
            if spec.kind == "head":
                if feats is None:
                    torch.manual_seed(0)
                    feats = _forward(plan, spec, views + contrast_views(views, spec.feature_contrast or []),
                                     create_model(spec, c).state_dict(), np.arange(n), True)  # fmt: skip
                    feats = with_contrast(feats[: len(views)], feats[len(views) :])
                h = plan.load(t)["head"]
                probs = linear_softmax(feats[:, rows], h["coef"], h["intercept"], h["mean"], h["scale"])
            else:
                probs = _forward(plan, spec, views, member_weights(plan.load(t), p.params.get("snapshot", 0)), rows)
            acc = per_seed.setdefault(p.meta["seed"], np.zeros((len(views), n, c)))
            acc[:, rows] = probs.astype(np.float32)
        out.append(merge(np.mean(list(per_seed.values()), axis=0), how))
    return out


def half_change(plan: Plan, submit: Unit) -> dict:
    """The OOF score of the blend with fp32 weights (the stored predictions) and with fp16-rounded ones."""

    blend = plan.input(submit, "blend")
    done = plan.load(blend)  # its oof_probs: the blend of the stored (fp32) predictions
    report = done["report"]
    b, metric, fmt = report["blender"], plan.cfg.competition.metric, plan.comp.submit_format
    y = plan.comp.train["y"].to_numpy()
    full = done["oof_probs"]
    half = blend_probs(report["method"], b["weights"], half_oof(plan, blend, report), b["stack"])
    return {"metric": metric, "fp32": score(metric, y, as_submitted(full, fmt)),
            "fp16": score(metric, y, as_submitted(half, fmt)), "max_abs_prob_change": float(np.abs(full - half).max()),
            "labels_changed": int((full.argmax(1) != half.argmax(1)).sum()), "rows": len(y)}  # fmt: skip
