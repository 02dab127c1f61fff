"""Training options do what they say, run through the train stage's own parts (setup, train_one_epoch) on a tiny
competition: frozen epochs freeze BatchNorm statistics too, `unfreeze` trains the last stages only, `layer_decay`
sets each stage's learning rate, `accum_steps` and `grad_clip` shape each optimizer step, cutmix pastes a box and
mixes the targets by its area, `patience` stops early, and the `medium` and `heavy` augment presets build and run."""

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.app import build_plan
from pipeline.augment import train_transform
from pipeline.config import load_config
from pipeline.kinds.finetune import setup, train_one_epoch
from pipeline.models import stage_groups
from pipeline.scheduler import ensure_done
from pipeline.training import lr_factor, mix_batch

from .conftest import write_config

TINY = {"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "batch_size": 4, "augment": "none"}


def session(tmp, **options):
    plan = build_plan(load_config(write_config(tmp, "csv", models=[{**TINY, **options}])))
    unit = plan.one("train", model="tiny", seed=0, fold=0)
    ensure_done(plan, [plan.one("folds"), plan.input(unit, "train_images")])
    return setup(plan, unit)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def owner(name: str) -> str:
    """The module a parameter or buffer belongs to (bn1.running_mean -> bn1)."""
    return name.rsplit(".", 1)[0]


def test_frozen_epochs_freeze_backbone_and_batchnorm_statistics_and_unfreeze_trains_the_last_stages(tmp):
    s = session(tmp, epochs=2, frozen_epochs=1, unfreeze=1, layer_decay=0.5, backbone_lr_mult=0.4)
    stages = stage_groups(s.model)  # stem first, classifier last
    head, last, rest = set(stages[-1]), set(stages[-2]), {n for g in stages[:-2] for n in g}
    before = snapshot(s.model)
    train_one_epoch(s, 0)  # frozen: the head only
    moved = changed(before, s.model)
    assert moved and {owner(k) for k in moved} == {owner(n) for n in head}, sorted(moved)[:5]
    assert not any(k.endswith(("running_mean", "running_var")) for k in moved)  # BatchNorm statistics frozen too

    before = snapshot(s.model)
    train_one_epoch(s, 1)  # unfreeze: 1 -> the last backbone stage and the head
    moved = changed(before, s.model)
    frozen_modules, last_modules = {owner(n) for n in rest}, {owner(n) for n in last}
    assert not {k for k in moved if owner(k) in frozen_modules}  # earlier stages: weights and statistics untouched
    assert moved & last and {k for k in moved if owner(k) in last_modules and k.endswith("running_mean")}

    # layer_decay: each backbone stage's learning rate is backbone_lr_mult * layer_decay ** (stages from the top)
    n_backbone = len(stages) - 1
    by_param = {id(p): g for g in s.opt.param_groups for p in g["params"]}
    named = dict(s.model.named_parameters())
    head_lr = by_param[id(named[stages[-1][0]])]["lr"]
    assert head_lr > 0
    for i, names in enumerate(stages[:-1]):
        want = 0.4 * 0.5 ** (n_backbone - 1 - i)
        for n in names:
            assert by_param[id(named[n])]["lr"] == pytest.approx(head_lr * want), (i, n)


def test_accum_steps_and_grad_clip_shape_every_optimizer_step(tmp):
    s = session(tmp, epochs=1, frozen_epochs=0, accum_steps=2, grad_clip=1e-3)
    norms = []

    def record(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    s.opt.register_step_pre_hook(record)
    train_one_epoch(s, 0)
    assert len(s.loader) == 6 and len(norms) == math.ceil(len(s.loader) / 2)  # one step per two batches
    assert max(norms) <= 1e-3 * (1 + 1e-4), norms  # clipped to grad_clip

    s = session(tmp, epochs=1, frozen_epochs=0, accum_steps=1, grad_clip=0.0)
    norms.clear()
    s.opt.register_step_pre_hook(record)
    train_one_epoch(s, 0)
    assert len(norms) == len(s.loader) and min(norms) > 1e-2  # unclipped gradients are far larger


def test_cutmix_pastes_a_box_from_another_image_and_mixes_targets_by_its_area(tmp):
    s = session(tmp, epochs=1, frozen_epochs=0, cutmix=1.0, augment="heavy")
    torch.manual_seed(3)
    x, labels = torch.randn(8, 3, 32, 32), torch.randint(0, s.n_classes, (8,))  # every pixel differs between images
    mixed, target = mix_batch(x, labels, s.n_classes, s.spec, 0.1)
    smooth = torch.full((len(labels), s.n_classes), 0.1 / s.n_classes)
    smooth.scatter_(1, labels[:, None], 0.9 + 0.1 / s.n_classes)
    diff = (mixed != x).any(1)  # (B, H, W): where another image was pasted
    rows, cols = torch.where(diff.any(0).any(1))[0], torch.where(diff.any(0).any(0))[0]
    assert len(rows) and len(cols), "cutmix pasted nothing"
    t, b, left, r = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    area = (b - t) * (r - left) / (x.shape[-2] * x.shape[-1])
    for i in range(len(labels)):
        box = mixed[i, :, t:b, left:r]
        src = [j for j in range(len(labels)) if torch.equal(box, x[j, :, t:b, left:r])]
        assert src, f"row {i}: the box comes from no image of the batch"
        assert torch.equal(mixed[i][:, ~diff.any(0)], x[i][:, ~diff.any(0)])  # outside the box: the image itself
        np.testing.assert_allclose(target[i], (1 - area) * smooth[i] + area * smooth[src[0]], atol=1e-6)
    train_one_epoch(s, 0)  # and a whole epoch runs with it (and the heavy preset)


@pytest.mark.parametrize("preset", ["medium", "heavy"])
def test_augment_presets_build_and_draw(preset):
    img = np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8)
    t = train_transform(preset, 32, 36)
    outs = []
    for seed in range(6):
        t.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = t(image=img)["image"]
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        outs.append(out.tobytes())
    assert len(set(outs)) == 6  # random draws, not a fixed crop


def test_patience_stops_when_the_metric_stops_improving(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=[{**TINY, "epochs": 6, "patience": 1,
                                                                    "lr": 1e-9, "frozen_epochs": 0}])))  # fmt: skip
    unit = plan.one("train", model="tiny", seed=0, fold=0)
    ensure_done(plan, [unit])
    metrics = pd.read_csv(plan.store.dir(unit) / "metrics.csv")
    best = int(metrics["accuracy"].to_numpy().argmax())  # the first epoch with the best score
    assert metrics["best"].to_numpy().nonzero()[0][-1] == best
    assert len(metrics) == best + 2 < 6  # one epoch without improvement (patience 1), then stopped
    assert plan.store.marker(unit)["scores"]["best_epoch"] == best


def test_the_lr_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(step, 10, 2) for step in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0 and factors[-1] < 0.05
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
