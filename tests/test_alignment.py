"""Predictions follow ids, never loader order; blend weights never see test predictions."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.models import create_model, preprocessing
from pipeline.plan import build_plan
from pipeline.scheduler import ensure_done
from pipeline.store import file_digest

from .conftest import write_config

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


def test_stored_probabilities_belong_to_their_ids(tmp):
    plan = run_all(write_config(tmp, "csv", models=MODELS))
    spec = plan.cfg.models[0]
    prep = preprocessing(spec)
    images = {s: np.load(plan.load(plan.images(s, spec))) for s in ("train", "test")}
    index = {i: k for k, i in enumerate(plan.comp.train["id"])}
    mean, std = torch.tensor(prep["mean"]).view(3, 1, 1) * 255, torch.tensor(prep["std"]).view(3, 1, 1) * 255
    off = (prep["cache_size"] - spec.img_size) // 2
    covered = []
    for u, d in preds(plan):
        model = create_model(spec, plan.comp.n_classes, load_weights=False)
        model.load_state_dict(load_file(str(plan.store.dir(plan.input(u, "model")) / "model.safetensors")))
        model.eval()

        def one(img, model=model):  # the centre view of a single image, computed on its own
            x = torch.from_numpy(img[off : off + spec.img_size, off : off + spec.img_size].copy()).permute(2, 0, 1)
            with torch.no_grad():
                return torch.softmax(model(((x.float() - mean) / std)[None]), 1)[0].numpy()

        for j, id_ in enumerate(d["oof_ids"]):
            np.testing.assert_allclose(d["oof_probs"][0, j], one(images["train"][index[id_]]), atol=1e-4)
        for j in range(len(d["test_ids"])):
            np.testing.assert_allclose(d["test_probs"][0, j], one(images["test"][j]), atol=1e-4)
        covered += list(d["oof_ids"])
    assert sorted(covered) == sorted(plan.comp.train["id"])  # every train row exactly once


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
