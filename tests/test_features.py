"""Frozen-backbone features: pooled feature levels are stored per image id and view; bad levels are refused."""

import numpy as np
import pytest
import torch

from pipeline.app import build_plan
from pipeline.config import ConfigError, load_config
from pipeline.executor import UnitFailed
from pipeline.kinds.base import load_features
from pipeline.models import create_model, embed, preprocessing
from pipeline.scheduler import ensure_done

from .conftest import write_config

LEVELS = [1, -1]


def head(**kw):
    return {"name": "mid", "backbone": "test_efficientnet", "weights": "none", "kind": "head", **kw}


def centre_input(plan, spec, k: int) -> torch.Tensor:
    """(1, 3, size, size): train image k as the features stage feeds it (cached, centre-cropped, normalised)."""
    prep = preprocessing(spec)
    images = np.load(plan.load(plan.images("train", spec)))
    off = (prep["cache_size"] - spec.img_size) // 2
    mean, std = torch.tensor(prep["mean"]).view(3, 1, 1) * 255, torch.tensor(prep["std"]).view(3, 1, 1) * 255
    x = torch.from_numpy(images[k, off : off + spec.img_size, off : off + spec.img_size].copy()).permute(2, 0, 1)
    return ((x.float() - mean) / std)[None]


def test_feature_levels_are_pooled_intermediates_of_each_image(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=[head(feature_levels=LEVELS), head(name="last")])))
    ensure_done(plan, plan.all("features"))
    spec = plan.cfg.models[0]
    torch.manual_seed(0)  # as the features stage does: with weights none, the same random backbone
    model = create_model(spec, plan.comp.n_classes).eval()
    channels = [f["num_chs"] for f in model.feature_info]
    stored = plan.load(plan.one("features", model="mid", split="train"))
    assert list(stored["views"]) == ["center", "center_hflip"]
    assert stored["feats"][1].shape == (2, len(plan.comp.train), channels[1] + channels[-1])
    last = plan.load(plan.one("features", model="last", split="train"))
    assert last["feats"][1].shape[-1] == model.num_features  # unset: the pooled pre-logits, as before levels existed
    # row k of the stored centre view is image k, pooled per level: recompute a few on their own
    for k in (0, 7, len(plan.comp.train) - 1):
        x = centre_input(plan, spec, k)
        with torch.no_grad():
            inter = model.forward_intermediates(x, indices=LEVELS, intermediates_only=True)
            want = torch.cat([t.mean((2, 3)) for t in inter], 1)[0]
            assert torch.allclose(embed(model, x, LEVELS)[0], want)
        np.testing.assert_allclose(stored["feats"][1][0, k], want.numpy(), atol=1e-4)
    ensure_done(plan, plan.all("train"))  # heads fit on them like on any features
    assert all(plan.store.is_done(u) for u in plan.all("train"))


def test_bad_feature_levels_name_the_model_and_the_range(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=[head(feature_levels=[0, 9])])))
    with pytest.raises(UnitFailed, match=r"model mid \(test_efficientnet\): feature_levels \[9\] out of range"):
        ensure_done(plan, plan.all("features"))
    with pytest.raises(ConfigError, match=r"models\[0\]\.feature_levels'.*for the kinds on cached features only"):
        load_config(write_config(tmp, "csv", models=[{**head(feature_levels=[1]), "kind": "finetune"}]))


def test_feature_grid_keeps_where_things_are_and_every_grid_comes_from_one_forward_pass(tmp):
    models = [head(feature_levels=LEVELS, feature_grid=2), head(name="global", feature_levels=LEVELS)]
    plan = build_plan(load_config(write_config(tmp, "csv", models=models)))
    # one features unit per split serves the grid head and the globally pooled one: one forward pass, not two
    for split in ("train", "test"):
        (unit,) = plan.all("features", split=split)
        assert unit.meta["models"] == ["mid", "global"]
    # a plan of the global head alone (as the budget planner builds one model at a time) reads the same unit
    alone = build_plan(load_config(write_config(tmp, "csv", models=[models[1]])))
    both, one = plan.one("features", split="train"), alone.one("features", split="train")
    assert one.key == both.key and alone.store.dir(one) == plan.store.dir(both)  # found done in the same folder
    ensure_done(plan, plan.all("features"))
    spec = plan.cfg.models[0]
    torch.manual_seed(0)
    model = create_model(spec, plan.comp.n_classes).eval()
    stored = plan.load(plan.one("features", model="mid", split="train"))
    channels = [f["num_chs"] for f in model.feature_info]
    assert stored["feats"][2].shape == (2, len(plan.comp.train), 4 * (channels[1] + channels[-1]))
    assert stored["feats"][1].shape == (2, len(plan.comp.train), channels[1] + channels[-1])
    x = centre_input(plan, spec, 3)
    with torch.no_grad():
        inter = model.forward_intermediates(x, indices=LEVELS, intermediates_only=True)
    h, w = inter[0].shape[-2:]
    quarters = [inter[0][..., i * h // 2 : (i + 1) * h // 2, j * w // 2 : (j + 1) * w // 2].mean((2, 3))
                for i in range(2) for j in range(2)]  # fmt: skip
    # level 1's cells, channel-major: channel c's top-left, top-right, bottom-left, bottom-right means
    want = torch.stack(quarters, -1).flatten(1)[0]
    np.testing.assert_allclose(stored["feats"][2][0, 3, : 4 * channels[1]], want.numpy(), atol=1e-4)
    # the global head's columns are the same forward pass averaged over the whole map
    np.testing.assert_allclose(stored["feats"][1][0, 3], torch.cat([t.mean((2, 3)) for t in inter], 1)[0], atol=1e-4)
    # the two heads learn different things from it: their train units' keys differ, and both fit
    assert plan.one("train", model="mid", fold=0).key != plan.one("train", model="global", fold=0).key
    ensure_done(plan, plan.all("train"))
    with pytest.raises(ConfigError, match=r"models\[0\]\.feature_grid': for the kinds on cached features only"):
        load_config(write_config(tmp, "csv", models=[{**head(feature_grid=2), "kind": "finetune"}]))


def test_feature_contrast_reads_the_shared_plain_unit_and_one_of_flipped_views_appended_as_differences(tmp):
    models = [head(name="plain", feature_levels=LEVELS), head(feature_levels=LEVELS, feature_contrast=["vflip"])]
    plan = build_plan(load_config(write_config(tmp, "csv", models=models)))
    plain, flipped = sorted(plan.all("features", split="train"), key=lambda u: bool(u.meta["contrast"]))
    # the plain views stay one unit for both models; the flipped views are a unit of their own, named for them
    assert plain.meta["models"] == ["plain", "mid"] and flipped.meta["models"] == ["mid"]
    assert flipped.params["views"] == ["center_vflip", "center_hflip_vflip"] and flipped.name.endswith("-vflip/train")
    alone = build_plan(load_config(write_config(tmp, "csv", models=models[:1])))
    assert alone.one("features", split="train").key == plain.key  # a plan without the contrast model: the same unit
    ensure_done(plan, plan.all("features"))
    mid = plan.one("train", model="mid", fold=0)
    got = load_features(plan, mid, "features")
    base = plan.load(plain)["feats"][1]
    n, d = base.shape[1:]
    assert got["views"] == ["center", "center_hflip"] and got["feats"][1].shape == (2, n, 2 * d)
    np.testing.assert_array_equal(got["feats"][1][..., :d], base)
    # the second half of image k's centre row: its features less those of the image upside down, recomputed here
    spec = plan.cfg.model("mid")
    torch.manual_seed(0)
    model = create_model(spec, plan.comp.n_classes).eval()
    x = centre_input(plan, spec, 5)
    with torch.no_grad():
        want = embed(model, x, LEVELS) - embed(model, x.flip(-2), LEVELS)
    np.testing.assert_allclose(got["feats"][1][0, 5, d:], want[0].numpy(), atol=1e-4)
    assert np.abs(got["feats"][1][0, :, d:]).max() > 1e-3  # the flip changes the features: the columns say something
    ensure_done(plan, plan.all("train"))  # the head fits on both halves
    assert plan.load(plan.one("train", model="mid", fold=0))["head"]["coef"].shape[1] == 2 * d
    for bad, kind in ((["vflip"], "finetune"), (["upside"], "head"), (["vflip", "vflip"], "head"), ([], "head")):
        with pytest.raises(ConfigError, match=r"models\[0\]\.feature_contrast': a list of distinct operations"):
            load_config(write_config(tmp, "csv", models=[{**head(feature_contrast=bad), "kind": kind}]))
