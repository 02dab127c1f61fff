"""train: one unit per model x seed x fold. Fine-tunes a pretrained timm backbone with a new head, or (kind: head)
fits a softmax head on cached frozen-backbone features.

Fine-tuning: head-only epochs with the backbone and its BatchNorm statistics frozen, then the last `unfreeze` stages
(or all) with layer-wise decayed learning rates; AdamW, warmup + cosine per phase, label smoothing, optional
mixup/cutmix and EMA, gradient clipping and accumulation, early stopping, best-epoch weights. Every random draw is a
pure function of (seed, fold, epoch), and `resume.pt` is written atomically after each epoch, so a killed training
resumes at its last finished epoch and ends identical to an uninterrupted one (CPU, deterministic settings).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from ..augment import train_transform
from ..data import ImageDataset
from ..executor import require_done, run_units
from ..metrics import better, score
from ..models import create_model, preprocessing, stage_groups
from ..plan import ModelUnit, Plan, ensure_images, read_folds
from ..runtime import (
    Normalizer,
    amp_context,
    derive_seed,
    make_loader,
    pick_device,
    place_model,
    progress,
    run_views,
    setup_torch,
)
from ..store import atomic_write

NAME = "train"


class EpochSampler(torch.utils.data.Sampler):
    """Yields (position, sample seed): order and augmentation seeds are a pure function of (seed, fold, epoch)."""

    def __init__(self, n: int, seed: int, fold: int):
        self.n, self.seed, self.fold, self.epoch = n, seed, fold, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng(derive_seed(self.seed, self.fold, self.epoch))
        order = rng.permutation(self.n)
        seeds = rng.integers(0, 2**31 - 1, self.n)
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.n


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup then cosine to zero, over one phase of `steps` optimizer steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def param_groups(model: torch.nn.Module, spec) -> tuple[list[dict], list[list[str]]]:
    """AdamW groups: per stage (layer-wise decayed lr) x (decay | no decay for biases and norms)."""
    stages = stage_groups(model)
    named = dict(model.named_parameters())
    groups = []
    n_backbone = len(stages) - 1
    for i, names in enumerate(stages):
        mult = 1.0 if i == n_backbone else spec.backbone_lr_mult * spec.layer_decay ** (n_backbone - 1 - i)
        for decay in (True, False):
            params = [named[n] for n in names if (named[n].ndim > 1) == decay]
            if params:
                groups.append({"params": params, "lr_mult": mult, "weight_decay": spec.weight_decay if decay else 0.0})
    return groups, stages


def set_trainable(model: torch.nn.Module, trainable: set[str]) -> None:
    """requires_grad for the named parameters only; modules whose own parameters are all frozen go to eval mode
    (BatchNorm statistics frozen with their weights)."""
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    for mname, module in model.named_modules():
        own = [f"{mname}.{n}" if mname else n for n, _ in module.named_parameters(recurse=False)]
        if own and not any(n in trainable for n in own):
            module.eval()


def mix_batch(x: torch.Tensor, y: torch.Tensor, n_classes: int, spec, smoothing: float):
    """Soft targets with label smoothing, and mixup or cutmix (torch RNG, seeded per epoch)."""
    target = torch.full((len(y), n_classes), smoothing / n_classes, device=x.device)
    target.scatter_(1, y[:, None], 1 - smoothing + smoothing / n_classes)
    alphas = [a for a in (spec.mixup, spec.cutmix) if a > 0]
    if not alphas:
        return x, target
    use_cutmix = spec.cutmix > 0 and (spec.mixup <= 0 or torch.rand(()) < 0.5)
    alpha = spec.cutmix if use_cutmix else spec.mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(y), device=x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        t, b, left, r = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., t:b, left:r] = x[perm][..., t:b, left:r]
        lam = 1 - (b - t) * (r - left) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


def train_finetune(plan: Plan, mu: ModelUnit, out) -> dict:
    cfg, comp, spec, seed, fold = plan.cfg, plan.comp, mu.spec, mu.seed, mu.fold
    rt = cfg.runtime
    device = pick_device(rt)
    setup_torch(rt, device)
    prep = preprocessing(spec)
    folds = read_folds(plan)
    y_all = comp.train["y"].to_numpy()
    tr_rows, va_rows = np.where(folds != fold)[0], np.where(folds == fold)[0]
    cache = ensure_images(plan, "train", spec)

    torch.manual_seed(derive_seed(seed, fold, 7))  # the new head's initialisation depends on the seed only
    model = place_model(create_model(spec, comp.n_classes), rt, device)
    groups, stages = param_groups(model, spec)
    opt = torch.optim.AdamW(groups, lr=spec.lr)
    use_fp16 = device.type == "cuda" and rt.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
    ema = None
    if spec.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=spec.ema_decay)
    head = set(stages[-1])
    backbone_stages = stages[:-1] if spec.unfreeze < 0 else stages[:-1][len(stages) - 1 - spec.unfreeze :]
    tuned = head | {n for s in backbone_stages for n in s}
    fwd_model = torch.compile(model) if spec.compile else model

    start, best, best_epoch, history = 0, None, -1, []
    resume = out / "resume.pt"
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if state["params"] != mu.unit.params:  # only if a resume.pt was moved by hand: keys make this impossible
            changed = sorted(k for k in state["params"] if state["params"][k] != mu.unit.params.get(k))
            raise RuntimeError(f"{resume} was written with other settings (changed: {changed}); refusing to resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, best, best_epoch, history = state["epoch"] + 1, state["best"], state["best_epoch"], state["history"]

    norm = Normalizer(prep["mean"], prep["std"], device, rt.channels_last)
    ds = ImageDataset(cache, tr_rows, y_all, train_transform(spec.augment, spec.img_size, prep["cache_size"]))
    sampler = EpochSampler(len(tr_rows), seed, fold)
    loader = make_loader(ds, spec.batch_size, rt.num_workers, device, sampler=sampler)
    held_out = len(va_rows) > 0  # a full-data (refit) unit has none: no validation, it keeps its last epoch
    if held_out:
        val_loader = make_loader(ImageDataset(cache, va_rows, y_all), cfg.predict.batch_size, rt.num_workers, device)
    steps_per_epoch = math.ceil(len(loader) / spec.accum_steps)
    frozen = min(spec.frozen_epochs, spec.epochs)
    for epoch in range(start, spec.epochs):
        phase_start, phase_len = (0, frozen) if epoch < frozen else (frozen, spec.epochs - frozen)
        set_trainable(model, head if epoch < frozen else tuned)
        torch.manual_seed(derive_seed(seed, fold, epoch, 1))
        sampler.set_epoch(epoch)
        warmup = int(spec.warmup_epochs * steps_per_epoch)
        losses, wait, n_images, t_epoch = [], 0.0, 0, time.perf_counter()
        batches = iter(progress(loader, len(loader), f"{mu.unit.name} e{epoch}", rt.progress))
        for i in range(len(loader)):
            t_wait = time.perf_counter()
            images, labels, _ = next(batches)
            wait += time.perf_counter() - t_wait
            n_images += len(labels)
            step = (epoch - phase_start) * steps_per_epoch + i // spec.accum_steps
            for g in opt.param_groups:
                g["lr"] = spec.lr * g["lr_mult"] * lr_factor(step, phase_len * steps_per_epoch, warmup)
            x, target = mix_batch(norm(images), labels.to(device), comp.n_classes, spec, spec.label_smoothing)
            with amp_context(device, rt.amp):
                logits = fwd_model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), target) / spec.accum_steps
            scaler.scale(loss).backward()
            losses.append(float(loss.detach()) * spec.accum_steps)
            if (i + 1) % spec.accum_steps == 0 or i + 1 == len(loader):
                if spec.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t_epoch
        eval_model = ema.module if ema is not None else model
        if held_out:
            rows, probs = run_views(eval_model, val_loader, ["center"], spec.img_size, norm, rt.amp)
            val = score(cfg.competition.metric, y_all[rows], probs[0])
            improved = best is None or better(cfg.competition.metric, val, best)
        else:
            val, improved = None, epoch == spec.epochs - 1
        if improved:
            best, best_epoch = val, epoch
            weights = {k: v.detach().cpu().contiguous() for k, v in eval_model.state_dict().items()}
            atomic_write(out / "model.safetensors", lambda p, w=weights: save_file(w, str(p)))
        history.append({"epoch": epoch, "phase": "frozen" if epoch < frozen else "tuned",
                        "train_loss": float(np.mean(losses)), cfg.competition.metric: val, "best": improved,
                        "images_per_s": n_images / train_seconds, "data_wait_share": wait / train_seconds})  # fmt: skip
        atomic_write(out / "metrics.csv", lambda p: pd.DataFrame(history).to_csv(p, index=False))
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else {}, "epoch": epoch, "best": best,
            "best_epoch": best_epoch, "history": history, "params": mu.unit.params,
        }  # fmt: skip
        atomic_write(resume, lambda p, s=state: torch.save(s, p))
        if spec.patience and held_out and epoch - best_epoch >= spec.patience:
            break
    return {
        "outputs": ["model.safetensors", "metrics.csv"],
        "scores": {cfg.competition.metric: best, "best_epoch": best_epoch},
        "cleanup": ["resume.pt"],
    }


def train_head(plan: Plan, mu: ModelUnit, out) -> dict:
    """Multinomial logistic regression on standardised centre-view features of the fold's training rows."""
    from sklearn.linear_model import LogisticRegression

    cfg, comp, spec = plan.cfg, plan.comp, mu.spec
    feat_unit = plan.features[spec.name]
    require_done(plan.store, feat_unit)
    feats = np.load(plan.store.dir(feat_unit) / "features.npz")
    x = feats["train"][list(feats["views"]).index("center")].astype(np.float64)
    folds = read_folds(plan)
    y = comp.train["y"].to_numpy()
    tr, va = folds != mu.fold, folds == mu.fold
    mean, scale = x[tr].mean(0), x[tr].std(0) + 1e-6
    clf = LogisticRegression(C=spec.head_c, max_iter=3000, random_state=mu.seed)
    clf.fit((x[tr] - mean) / scale, y[tr])
    probs = np.zeros((va.sum(), comp.n_classes))
    val = None  # a full-data (refit) unit has no held-out rows
    if va.any():
        probs[:, clf.classes_] = clf.predict_proba((x[va] - mean) / scale)
        val = score(cfg.competition.metric, y[va], probs)
    coef = np.zeros((comp.n_classes, x.shape[1]))
    intercept = np.full(comp.n_classes, -1e4)  # a class absent from this fold's training rows gets no mass
    if comp.n_classes == 2 and clf.coef_.shape[0] == 1:
        coef[1], intercept[1], intercept[0] = clf.coef_[0], clf.intercept_[0], 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in
               {"coef": coef, "intercept": intercept, "mean": mean, "scale": scale}.items()}  # fmt: skip
    atomic_write(out / "head.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write(
        out / "metrics.csv", lambda p: pd.DataFrame([{"epoch": 0, cfg.competition.metric: val}]).to_csv(p, index=False)
    )
    return {"outputs": ["head.safetensors", "metrics.csv"], "scores": {cfg.competition.metric: val}}


def run(plan: Plan, force: bool = False) -> None:
    require_done(plan.store, plan.folds)
    by_key = {mu.unit.key: mu for mu in plan.train}

    def work(unit, out):
        mu = by_key[unit.key]
        return (train_head if mu.spec.kind == "head" else train_finetune)(plan, mu, out)

    run_units(plan.store, [mu.unit for mu in plan.train], work, force=force, config=plan.cfg.to_dict(),
              partial="resume.pt")  # fmt: skip
