#!/usr/bin/env python3
"""Predict a hidden test set with an exported ensemble, offline, as the pipeline that trained it would.

    python predict.py --images DIR --sample sample_submission.csv --out submission.csv [--device auto|cpu|cuda]
                      [--batch-size N] [--workers N] [--probs FILE.npy]
    python predict.py --pixels test.csv --sample ... (a competition whose images are rows of pixel columns)

`./run.sh export` writes this file into a bundle beside `recipe.json` (every model, view, merge and blend weight),
the weights (safetensors) and `infer.py`: the pipeline's own decoding, views, merges and blending, copied as is.
Needs torch, timm, numpy, pandas, pillow and safetensors; no project code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import infer  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

FORMAT_VERSION = 1  # the newest recipe format this file reads


class BundleError(Exception):
    """What stops a prediction, said to the user: which file, id or column, and what was expected."""


def load_recipe(folder: Path) -> dict:
    path = folder / "recipe.json"
    if not path.is_file():
        raise BundleError(f"{path} not found: run predict.py from an exported bundle (./run.sh export)")
    recipe = json.loads(path.read_text())
    if recipe.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(
            f"{path} has format {recipe['format_version']}, newer than this predict.py reads "
            f"({FORMAT_VERSION}): export the bundle again, so that predict.py and recipe.json match"
        )
    return recipe


def check_versions(recipe: dict) -> None:
    """Say where the installed packages differ from the ones the bundle was exported with (the tensor check in
    load_network refuses what would change the model)."""
    import timm

    have = {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    for name, want in recipe["packages"].items():
        if name in have and want and have[name].split("+")[0] != want.split("+")[0]:
            print(
                f"[predict] note: {name} {have[name]} here, {want} at export; every tensor is still checked to load",
                flush=True,
            )


def read_sample(path: Path, recipe: dict) -> pd.DataFrame:
    sub = recipe["submission"]
    try:
        sample = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"sample submission {path} could not be read as CSV: {err}") from None
    if list(sample.columns) != sub["columns"]:
        raise BundleError(
            f"{path}: columns {list(sample.columns)}, but the ensemble was trained for a submission with "
            f"columns {sub['columns']} ({sub['format']}s): is this the right competition's sample?"
        )
    ids = sample.iloc[:, 0]
    if not len(ids):
        raise BundleError(f"{path} lists no ids: nothing to predict")
    if ids.duplicated().any():
        raise BundleError(f"{path}: duplicated ids, first: {ids[ids.duplicated()].tolist()[:5]}")
    return sample


def image_sources(args, recipe: dict, ids: list[str]) -> tuple[list, np.ndarray | None]:
    """Per sample row: a file path, or an index into the test pixel array."""
    inp = recipe["input"]
    if inp["layout"] != "pixels":
        if not args.images:
            raise BundleError("--images DIR is needed: the folder of the test images")
        return infer.find_images(ids, args.images, inp["image_ext"], "test"), None
    if not args.pixels:
        raise BundleError("--pixels test.csv is needed: this competition's images are rows of pixel columns")
    df = pd.read_csv(args.pixels, dtype=str, keep_default_na=False)
    pix = inp["pixels"]
    missing = [c for c in pix["columns"] if c not in df.columns]
    if missing:
        raise BundleError(f"{args.pixels}: pixel columns {missing[:5]} of the training CSV are missing (columns are "
                          f"matched by name)")  # fmt: skip
    id_col = next((c for c in pix["id_cols"] if c in df.columns and c not in pix["columns"]), None)
    if id_col is None and len(df) != len(ids):
        raise BundleError(f"{args.pixels} has {len(df)} rows but the sample lists {len(ids)} ids")
    if id_col is not None:  # rows by id, compared as the pipeline compares them
        row_of = {infer.id_key(v): r for r, v in enumerate(df[id_col])}
        absent = [i for i in ids if infer.id_key(i) not in row_of]
        if absent:
            raise BundleError(f"{args.pixels}: column {id_col!r} has no row for sample ids {absent[:5]}")
        df = df.iloc[[row_of[infer.id_key(i)] for i in ids]]
    values = df[pix["columns"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    if np.isnan(values).any() or values.min() < 0 or values.max() > 255:
        raise BundleError(f"{args.pixels}: pixel cells must be numbers in 0..255 (or 0..1)")
    if pix["fractions"] != (values.max() <= 1.0) and values.max() > 0:
        raise BundleError(f"{args.pixels}: pixel values lie in 0..{values.max():g}, but the training CSVs' in "
                          f"{'0..1' if pix['fractions'] else '0..255'}: give them on that scale")  # fmt: skip
    h, w = pix["shape"]
    return list(range(len(df))), np.rint(values * (255.0 if pix["fractions"] else 1.0)).astype(np.uint8).reshape(
        -1, h, w
    )


class Images(torch.utils.data.Dataset):
    """Each image decoded once and resized to every side a model reads: ({"SIDE-FILTER": (S, S, 3) uint8}, row)."""

    def __init__(self, sources: list, pixels: np.ndarray | None, sizes: list[tuple[int, str]]):
        self.sources, self.pixels, self.sizes = sources, pixels, sizes

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        im = infer.decode(self.sources[i], self.pixels)
        return {f"{s}-{f}": torch.from_numpy(infer.resize(im, s, f).copy()) for s, f in self.sizes}, i


def load_network(entry: dict, file: Path, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The timm architecture rebuilt, every stored tensor loaded into it (strict: a timm that names or shapes
    them otherwise is refused, never half-loaded)."""
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(entry["backbone"], pretrained=False, num_classes=entry["n_classes"])
    try:
        model.load_state_dict(load_file(str(file)), strict=True)
    except RuntimeError as err:
        raise BundleError(
            f"{file}: timm {timm.__version__} builds {entry['backbone']} with other tensors than timm "
            f"{entry['timm']} did at export ({str(err).splitlines()[0]} ...): install timm=="
            f"{entry['timm']} (e.g. from a dataset of its wheel)"
        ) from None
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def load_members(recipe: dict, device: torch.device, channels_last: bool) -> list[dict]:
    """Per model: its networks (one per seed and fold, or one backbone for heads) and heads, ready on the device."""
    from safetensors.torch import load_file

    out = []
    for entry in recipe["models"]:
        m = {"entry": entry, "norm": infer.Normalizer(entry["mean"], entry["std"], device, channels_last)}
        if entry["kind"] == "head":
            m["backbone"] = load_network(entry, HERE / entry["backbone_file"], device, channels_last)
            m["heads"] = [{k: v.numpy() for k, v in load_file(str(HERE / f["file"])).items()} for f in entry["members"]]
        else:
            m["networks"] = [load_network(entry, HERE / f["file"], device, channels_last) for f in entry["members"]]
        out.append(m)
    return out


def predict_batch(m: dict, images: dict, amp: bool, channels_last: bool) -> list[np.ndarray]:
    """One batch through one model: per member (V, B, C) float32, as the pipeline stores them."""
    e = m["entry"]
    x = m["norm"](images[f"{e['cache_size']}-{e['interpolation']}"])
    if e["kind"] == "head":
        views = e["views"] + infer.contrast_views(e["views"], e.get("contrast") or [])
        feats = infer.forward_views(m["backbone"], x, views, e["img_size"], amp, channels_last, features=True,
                                    levels=e["levels"], grid=e["grid"])  # fmt: skip
        v = len(e["views"])
        feats = infer.with_contrast(feats[:v], feats[v:]).astype(np.float64)  # float32 differences, as stored
        return [infer.linear_softmax(feats, h["coef"], h["intercept"], h["mean"], h["scale"]).astype(np.float32)
                for h in m["heads"]]  # fmt: skip
    return [infer.forward_views(net, x, e["views"], e["img_size"], amp, channels_last) for net in m["networks"]]


def predict(recipe: dict, sources: list, pixels, args) -> np.ndarray:
    """(n, C) blended probabilities in the sample's row order."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    # the pipeline's own settings: channels_last changes a CPU convolution's last bits too
    channels_last, amp = recipe["runtime"]["channels_last"], device.type == "cuda" and not args.no_amp
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    models = load_members(recipe, device, channels_last)
    sizes = sorted({(e["cache_size"], e["interpolation"]) for e in recipe["models"]})
    loader = torch.utils.data.DataLoader(Images(sources, pixels, sizes), batch_size=args.batch_size,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")  # fmt: skip
    n, c = len(sources), recipe["submission"]["n_classes"]
    outs = [[np.zeros((len(m["entry"]["views"]), n, c), np.float32) for _ in m["entry"]["members"]] for m in models]
    t0, done, shown = time.perf_counter(), 0, 0
    with torch.no_grad():
        for images, rows in loader:
            rows = rows.numpy()  # rows travel with the batch: outputs are placed by row, never by loader order
            for m, out in zip(models, outs):
                for o, probs in zip(out, predict_batch(m, images, amp, channels_last)):
                    o[:, rows] = probs
            done += len(rows)
            if done * 10 // n > shown or done == n:
                shown = done * 10 // n
                print(f"[predict] {done}/{n} images, {done / (time.perf_counter() - t0):.1f} images/s", flush=True)
    merged = []
    for m, out in zip(models, outs):  # members averaged (seeds and folds), then the model's views merged
        e = m["entry"]
        merged.append(infer.merge(np.mean([o.astype(np.float64) for o in out], axis=0), e["merge"]))
    b = recipe["blend"]
    return infer.blend_probs(b["method"], b["weights"], merged, b["stack"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Predict a submission with an exported ensemble (offline)")
    p.add_argument("--images", help="folder of the test images")
    p.add_argument("--pixels", help="test CSV of pixel columns (competitions whose images are pixel rows)")
    p.add_argument("--sample", required=True, help="sample_submission.csv: the ids and columns to write")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the pipeline's predict.batch_size)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding worker processes")
    p.add_argument("--no-amp", action="store_true", help="CUDA: full float32 (AMP bf16/fp16 otherwise)")
    p.add_argument("--probs", help="also save the blended probabilities, (n, classes) float64, as .npy")
    args = p.parse_args(argv)
    try:
        recipe = load_recipe(HERE)
        check_versions(recipe)
        sample = read_sample(Path(args.sample), recipe)
        sources, pixels = image_sources(args, recipe, sample.iloc[:, 0].tolist())
        args.batch_size = args.batch_size or recipe["runtime"]["batch_size"]
        t0 = time.perf_counter()
        probs = predict(recipe, sources, pixels, args)
        sub = recipe["submission"]
        frame = infer.submission_frame(sample, probs, sub["format"], sub["classes"], sub["column_classes"],
                                       sub["positive"])  # fmt: skip
    except (BundleError, infer.InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, out)  # never a half-written submission
    if args.probs:
        np.save(args.probs, probs)
    seconds = time.perf_counter() - t0
    print(f"[predict] wrote {out}: {len(frame)} rows ({sub['format']}s), {len(frame) / seconds:.1f} images/s over "
          f"{seconds:.1f} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
