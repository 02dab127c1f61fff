"""Predictions follow ids, never loader order; blend weights never see test predictions."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.app import build_plan
from pipeline.config import load_config
from pipeline.models import create_model, embed, preprocessing
from pipeline.scheduler import ensure_done
from pipeline.store import file_digest
from pipeline.tta import POLICIES

from .conftest import shared_run, write_config  # noqa: F401

pytestmark = pytest.mark.slow
MODELS = [
    {"name": "tiny", "backbone": "test_efficientnet", "weights": "none"},
    {"name": "feat", "backbone": "test_efficientnet", "weights": "none", "kind": "head"},
]


def run_all(cfg_path):
    plan = build_plan(load_config(cfg_path))
    ensure_done(plan, plan.all("blend"))
    return plan


def preds(plan, name="tiny"):
    return [(u, plan.load(u)) for u in plan.all("predict", model=name)]


def decoded(plan, split: str, id_: str, side: int) -> np.ndarray:
    """The image of an id read from the competition's own files (not the pipeline's cache), resized as the cache is:
    (side, side, 3) uint8."""
    c, root = plan.cfg.competition, plan.cfg.root
    if c.layout == "pixels":  # train ids are row numbers; test ids follow sample_submission's rows
        if split == "train":
            row = pd.read_csv(root / c.train_csv).drop(columns=[c.target_col]).iloc[int(id_)]
        else:
            pos = pd.read_csv(root / c.sample_submission, dtype=str).iloc[:, 0].tolist().index(id_)
            row = pd.read_csv(root / c.test_csv).iloc[pos]
        im = Image.fromarray(row.to_numpy().astype(np.uint8).reshape(8, 8), "L")
    else:
        folder = root / (c.train_dir if split == "train" else c.test_dir)
        rel = [
            p
            for p in folder.glob(f"{id_}*")
            if id_ in (p.relative_to(folder).as_posix(), p.relative_to(folder).with_suffix("").as_posix())
        ]
        (path,) = rel  # ids with or without extension
        im = Image.open(path)
    return np.asarray(im.convert("RGB").resize((side, side), Image.BICUBIC))


def view_of(img: np.ndarray, view: str, size: int) -> np.ndarray:
    """A named ten-crop view of an (S, S, 3) image, in numpy: corner or centre crop of `size`, maybe flipped."""
    where, *ops = view.split("_")
    s = img.shape[0]
    top = {"t": 0, "b": s - size, "c": (s - size) // 2}
    t, left = (top["c"], top["c"]) if where == "center" else (top[where[0]], {"l": 0, "r": s - size}[where[1]])
    out = img[t : t + size, left : left + size]
    return out[:, ::-1] if ops == ["hflip"] else out


def single_forward(plan, spec, model, fn):
    """fn(img (H, W, 3) uint8) -> model outputs of that one image, normalised as the pipeline does."""
    prep = preprocessing(spec)
    mean, std = torch.tensor(prep["mean"]).view(3, 1, 1) * 255, torch.tensor(prep["std"]).view(3, 1, 1) * 255

    def one(img):
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)
        with torch.no_grad():
            return fn(model, ((x.float() - mean) / std)[None])[0].numpy()

    return one


def check_every_view(plan, name: str, head: bool = False) -> None:
    """Every stored view's probability of every OOF and test id equals a forward of that view of that id's image,
    computed on its own from the competition's files."""
    spec = plan.cfg.model(name)
    side = preprocessing(spec)["cache_size"]
    index = {i: k for k, i in enumerate(plan.comp.train["id"])}
    if head:  # the features stage's backbone (seeded: weights none), then each fold's stored head
        torch.manual_seed(0)
        backbone = create_model(spec, plan.comp.n_classes).eval()
        embed_one = single_forward(plan, spec, backbone, lambda m, x: embed(m, x, spec.feature_levels))
    covered, spread = [], []
    for u, d in preds(plan, name):
        if head:
            h = plan.load(plan.input(u, "model"))["head"]

            def one(img, h=h):
                z = ((embed_one(img) - h["mean"]) / h["scale"]) @ h["coef"].T + h["intercept"]
                return np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        else:
            model = create_model(spec, plan.comp.n_classes, load_weights=False)
            model.load_state_dict(load_file(str(plan.store.dir(plan.input(u, "model")) / "model.safetensors")))
            one = single_forward(plan, spec, model.eval(), lambda m, x: torch.softmax(m(x), 1))
        for split, ids, probs in (("train", d["oof_ids"], d["oof_probs"]), ("test", d["test_ids"], d["test_probs"])):
            for j, id_ in enumerate(ids):
                img = decoded(plan, split, str(id_), side)
                for v, view in enumerate(d["views"]):
                    np.testing.assert_allclose(probs[v, j], one(view_of(img, view, spec.img_size)), atol=2e-4,
                                               err_msg=f"{u.label} {split} {id_} view {view}")  # fmt: skip
            spread.append(np.ptp(probs, axis=1).max())
        covered += [index[i] for i in d["oof_ids"]]
    assert sorted(covered) == list(range(len(plan.comp.train)))  # every train row exactly once
    assert max(spread) > 1e-3  # images get different predictions: a swapped id would show


@pytest.mark.parametrize("name, head", [("tiny", False), ("tiny-head", True)])
def test_every_stored_view_is_a_forward_of_that_view_of_that_image(shared_run, name, head):  # noqa: F811
    _, cfg, _ = shared_run
    plan = build_plan(load_config(cfg))
    assert preds(plan, name)[0][1]["views"] == POLICIES["ten-crop"]
    check_every_view(plan, name, head)


@pytest.mark.parametrize("layout", ["folders", "pixels"])
def test_folders_and_pixels_layouts_map_each_id_to_its_own_prediction(tmp, layout):
    plan = build_plan(load_config(write_config(tmp, layout, models=MODELS[:1])))
    ensure_done(plan, plan.all("predict"))
    check_every_view(plan, "tiny")


def by_id(plan):
    """{(unit name, test id): per-view probabilities}."""
    return {(u.name, i): p for u, d in preds(plan) for i, p in zip(d["test_ids"], d["test_probs"].swapaxes(0, 1))}


def test_reordered_sample_submission_predictions_follow_ids(tmp):
    cfg_path = write_config(tmp, "csv", models=MODELS[:1])
    plan = run_all(cfg_path)
    before = by_id(plan)
    trained = {u.key for u in plan.all("train")}
    sample_path = plan.cfg.root / "sample_submission.csv"
    sample = pd.read_csv(sample_path, dtype=str)
    sample.iloc[::-1].to_csv(sample_path, index=False)
    plan2 = run_all(cfg_path)
    assert {u.key for u in plan2.all("train")} == trained  # a reordered sample retrains nothing
    for _, d in preds(plan2):
        assert d["test_ids"].tolist() == sample["image_id"].tolist()[::-1]
    after = by_id(plan2)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_allclose(after[k], before[k], atol=1e-6)


def test_blend_weights_never_read_test_predictions(tmp):
    plan = run_all(write_config(tmp, "csv", models=MODELS))
    (b,) = plan.all("blend")
    report = json.loads((plan.store.dir(b) / "report.json").read_text())
    rng = np.random.default_rng(0)
    for u in plan.all("predict"):  # replace every test prediction with noise
        path = plan.store.dir(u) / "preds.npz"
        d = dict(np.load(path))
        noise = rng.random(d["test_probs"].shape)
        d["test_probs"] = (noise / noise.sum(-1, keepdims=True)).astype(np.float32)
        np.savez(path, **d)
        marker = plan.store.marker(u)  # forge the record too: as if predict had written this noise
        marker["files"]["preds.npz"] = file_digest(path)
        (plan.store.dir(u) / "done.json").write_text(json.dumps(marker))
    ensure_done(plan, [], force=[b])
    report2 = json.loads((plan.store.dir(b) / "report.json").read_text())
    assert report2["weights"] == report["weights"] and report2["fold_weights"] == report["fold_weights"]
    assert report2["oof"] == report["oof"] and report2["honest_cv"] == report["honest_cv"]
