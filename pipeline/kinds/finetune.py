"""kind: finetune (the default). Fine-tunes a pretrained timm backbone with a new head.

Head-only epochs with the backbone and its BatchNorm statistics frozen, then the last `unfreeze` stages (or all)
with layer-wise decayed learning rates; AdamW, warmup + cosine per phase, label smoothing, optional mixup/cutmix and
EMA, gradient clipping and accumulation, early stopping, best-epoch weights. Every random draw is a pure function of
(seed, fold, epoch), and `resume.pt` is written atomically after each epoch, so a killed training resumes at its last
finished epoch and ends identical to an uninterrupted one (CPU, deterministic settings). At each epoch's end it also
stops, committing nothing, if its claim was taken over meanwhile (ctx.check_fence).
Output `model.safetensors` (the best epoch's weights) and `metrics.csv` (one row per epoch); with `snapshots: N`
also the N next-best epochs' weights and `snapshots.json` (kinds/snapshots.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..augment import train_transform
from ..config import model_params
from ..data import ImageDataset
from ..folding import fold_rows
from ..logs import log
from ..metrics import better, score, selection_metric
from ..models import preprocessing, weights_id
from ..runtime import Normalizer, amp_context, derive_seed, make_loader, prepare_model, progress, run_views
from ..stage import BudgetStop, RunContext
from ..store import Unit, atomic_write
from ..training import EpochSampler, lr_factor, mix_batch, param_groups, set_trainable
from . import snapshots
from .base import Kind

PARTIAL = "resume.pt"  # written after every epoch; its presence means a resumable, unfinished unit


@dataclass
class Session:
    """One fine-tuning unit in progress: what setup builds and every epoch reads or updates."""

    spec: object
    unit: Unit
    device: torch.device
    model: torch.nn.Module
    norm: Normalizer
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: object | None
    head: set[str]  # parameter names trained in the frozen epochs
    tuned: set[str]  # and after them
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    val_loader: torch.utils.data.DataLoader | None  # None for a full-data (refit) unit: nothing held out
    y: np.ndarray  # (n_train,) class index per train row
    metric: str  # what chooses the best epoch: the competition's metric, or log loss where it is undefined
    n_classes: int
    amp: bool
    progress: bool
    fwd_model: object = None  # the model, compiled when spec.compile
    start: int = 0  # the next epoch to run
    best: float | None = None
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # snapshots: the N + 1 best epochs so far, best first


def setup(plan, unit: Unit) -> Session:
    """Model with a new head (seeded), AdamW over per-stage groups, scaler, EMA, loaders of the fold's rows."""
    cfg, comp, rt = plan.cfg, plan.comp, plan.cfg.runtime
    spec, seed, fold = cfg.model(unit.meta["model"]), unit.meta["seed"], unit.meta["fold"]
    folds = plan.load_input(unit, "folds")
    tr_rows, va_rows = fold_rows(folds, fold)
    cache = plan.load_input(unit, "train_images")
    device, model, norm = prepare_model(spec, rt, comp.n_classes, seed=derive_seed(seed, fold, 7))
    groups, stages = param_groups(model, spec)
    use_fp16 = device.type == "cuda" and rt.amp and not torch.cuda.is_bf16_supported()
    ema = None
    if spec.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=spec.ema_decay)
    head = set(stages[-1])
    backbone_stages = stages[:-1] if spec.unfreeze < 0 else stages[:-1][len(stages) - 1 - spec.unfreeze :]
    y = comp.train["y"].to_numpy()
    prep = preprocessing(spec)
    ds = ImageDataset(cache, tr_rows, y, train_transform(spec.augment, spec.img_size, prep["cache_size"]))
    sampler = EpochSampler(len(tr_rows), seed, fold)
    val_loader = None
    if len(va_rows):
        val_loader = make_loader(ImageDataset(cache, va_rows, y), cfg.predict.batch_size, rt.num_workers, device)
    metric = selection_metric(cfg.competition.metric, y[va_rows], comp.n_classes)
    if metric != cfg.competition.metric:
        log("train", f"{unit.name}: {cfg.competition.metric} is undefined on this fold's held-out rows (a class has no "
                  f"example there); its best epoch is chosen by {metric}")  # fmt: skip
    return Session(
        spec, unit, device, model, norm, torch.optim.AdamW(groups, lr=spec.lr),
        torch.amp.GradScaler("cuda", enabled=use_fp16), ema, head, head | {n for s in backbone_stages for n in s},
        make_loader(ds, spec.batch_size, rt.num_workers, device, sampler=sampler), sampler, val_loader, y,
        metric, comp.n_classes, rt.amp, rt.progress,
        fwd_model=torch.compile(model) if spec.compile else model,
    )  # fmt: skip


def resume(s: Session, path: Path) -> None:
    """Continue from the state saved after the last finished epoch (weights, optimizer, scaler, EMA, history)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["params"] != s.unit.params:  # only if a resume.pt was moved by hand: keys make this impossible
        changed = sorted(k for k in state["params"] if state["params"][k] != s.unit.params.get(k))
        raise RuntimeError(f"{path} was written with other settings (changed: {changed}); refusing to resume")
    s.model.load_state_dict(state["model"])
    s.opt.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    if s.ema is not None:
        s.ema.load_state_dict(state["ema"])
    s.start, s.best, s.best_epoch, s.history = state["epoch"] + 1, state["best"], state["best_epoch"], state["history"]
    s.kept = list(state.get("kept", []))


def train_one_epoch(s: Session, epoch: int) -> dict:
    """One pass over the fold's training rows; returns the epoch's loss, images/s and data-wait share."""
    spec, seed, fold = s.spec, s.unit.meta["seed"], s.unit.meta["fold"]
    frozen = min(spec.frozen_epochs, spec.epochs)
    phase_start, phase_len = (0, frozen) if epoch < frozen else (frozen, spec.epochs - frozen)
    set_trainable(s.model, s.head if epoch < frozen else s.tuned)
    torch.manual_seed(derive_seed(seed, fold, epoch, 1))  # dropout, mixup and cutmix draws of this epoch
    s.sampler.set_epoch(epoch)
    steps_per_epoch = math.ceil(len(s.loader) / spec.accum_steps)
    warmup = int(spec.warmup_epochs * steps_per_epoch)
    losses, wait, n_images, t_epoch = [], 0.0, 0, time.perf_counter()
    batches = iter(progress(s.loader, len(s.loader), f"{s.unit.name} e{epoch}", s.progress))
    for i in range(len(s.loader)):
        t_wait = time.perf_counter()
        images, labels, _ = next(batches)
        wait += time.perf_counter() - t_wait
        n_images += len(labels)
        step = (epoch - phase_start) * steps_per_epoch + i // spec.accum_steps
        for g in s.opt.param_groups:
            g["lr"] = spec.lr * g["lr_mult"] * lr_factor(step, phase_len * steps_per_epoch, warmup)
        x, target = mix_batch(s.norm(images), labels.to(s.device), s.n_classes, spec, spec.label_smoothing)
        with amp_context(s.device, s.amp):
            logits = s.fwd_model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), target) / spec.accum_steps
        s.scaler.scale(loss).backward()
        losses.append(float(loss.detach()) * spec.accum_steps)
        if (i + 1) % spec.accum_steps == 0 or i + 1 == len(s.loader):
            if spec.grad_clip > 0:
                s.scaler.unscale_(s.opt)
                torch.nn.utils.clip_grad_norm_(s.model.parameters(), spec.grad_clip)
            s.scaler.step(s.opt)
            s.scaler.update()
            s.opt.zero_grad(set_to_none=True)
            if s.ema is not None:
                s.ema.update(s.model)
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t_epoch
    return {"epoch": epoch, "phase": "frozen" if epoch < frozen else "tuned", "train_loss": float(np.mean(losses)),
            "images_per_s": n_images / seconds, "data_wait_share": wait / seconds}  # fmt: skip


def evaluate(s: Session, model: torch.nn.Module) -> float | None:
    """The metric on the fold's held-out rows (centre view); None for a full-data unit."""
    if s.val_loader is None:
        return None
    rows, probs = run_views(model, s.val_loader, ["center"], s.spec.img_size, s.norm, s.amp)
    return score(s.metric, s.y[rows], probs[0])


def save_state(s: Session, out: Path, epoch: int) -> None:
    """metrics.csv and resume.pt after every epoch, each written atomically."""
    atomic_write(out / "metrics.csv", lambda p: pd.DataFrame(s.history).to_csv(p, index=False))
    state = {
        "model": s.model.state_dict(), "optimizer": s.opt.state_dict(), "scaler": s.scaler.state_dict(),
        "ema": s.ema.state_dict() if s.ema is not None else {}, "epoch": epoch, "best": s.best,
        "best_epoch": s.best_epoch, "history": s.history, "params": s.unit.params, "kept": s.kept,
    }  # fmt: skip
    atomic_write(out / PARTIAL, lambda p: torch.save(state, p))


def stopped_early(s: Session) -> bool:
    """Whether the state resumed from had already stopped early: a resume must not train past the stop."""
    last = s.start - 1
    return bool(s.spec.patience) and s.best is not None and last >= 0 and last - s.best_epoch >= s.spec.patience


def train_finetune(plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
    s = setup(plan, unit)
    if (out / PARTIAL).exists():
        resume(s, out / PARTIAL)
    spec = s.spec
    n_snap = spec.snapshots if s.val_loader is not None else 0  # a full-data unit has no score to rank epochs by
    snapshots.prune(out, s.kept)  # files a killed attempt wrote after the state it left
    for epoch in range(spec.epochs if stopped_early(s) else s.start, spec.epochs):
        t_epoch = time.time()
        row = train_one_epoch(s, epoch)
        eval_model = s.ema.module if s.ema is not None else s.model
        val = evaluate(s, eval_model)
        # with nothing held out (refit) the last epoch is kept
        improved = epoch == spec.epochs - 1 if val is None else (s.best is None or better(s.metric, val, s.best))
        weights = {k: v.detach().cpu().contiguous() for k, v in eval_model.state_dict().items()}
        if improved:
            s.best, s.best_epoch = val, epoch
            atomic_write(out / "model.safetensors", lambda p, w=weights: save_file(w, str(p)))
        s.history.append({**row, s.metric: val, "best": improved})
        if n_snap:
            s.kept = snapshots.keep(out, s.history, s.metric, n_snap, epoch, weights)
        save_state(s, out, epoch)
        snapshots.prune(out, s.kept)  # after the state that names the new set: a kill never loses a kept file
        ctx.check_fence()  # taken over while paused: stop here, commit nothing
        if spec.patience and val is not None and epoch - s.best_epoch >= spec.patience:
            break
        if ctx.deadline and epoch + 1 < spec.epochs and time.time() + (time.time() - t_epoch) > ctx.deadline:
            raise BudgetStop(f"after epoch {epoch + 1} of {spec.epochs}: another would pass the time budget; a run "
                             f"with more time resumes it here")  # fmt: skip
    outputs, scores = ["model.safetensors", "metrics.csv"], {s.metric: s.best, "best_epoch": s.best_epoch}
    if n_snap:
        outputs += snapshots.finish(out, s.kept, s.best_epoch, s.metric, s.history)
        scores["snapshot_epochs"] = [e for e in s.kept if e != s.best_epoch]
    return {"outputs": outputs, "scores": scores}


def predict_network(plan, unit: Unit, views: list[str], va_rows: np.ndarray):
    """The fold's network on its held-out rows and on every test image, every view asked for."""
    cfg, rt = plan.cfg, plan.cfg.runtime
    spec = cfg.model(unit.meta["model"])
    # a snapshot member's predict unit reads its train unit's k-th snapshot instead of the best epoch
    state = snapshots.member_weights(plan.load_input(unit, "model"), unit.params.get("snapshot", 0))
    device, model, norm = prepare_model(spec, rt, plan.comp.n_classes, state_dict=state)
    model.eval()
    out = []
    for split, rows in (("train", va_rows), ("test", np.arange(len(plan.comp.test_ids)))):
        if not len(rows):  # a full-data (refit) unit has no OOF rows
            out.append(np.zeros((len(views), 0, plan.comp.n_classes), np.float32))
            continue
        cache = plan.load_input(unit, f"{split}_images")
        loader = make_loader(ImageDataset(cache, rows), cfg.predict.batch_size, rt.num_workers, device)
        got_rows, probs = run_views(model, loader, views, spec.img_size, norm, rt.amp,
                                    desc=f"{unit.name} {split}", show=rt.progress)  # fmt: skip
        order = {r: i for i, r in enumerate(got_rows.tolist())}
        out.append(probs[:, [order[r] for r in rows.tolist()]])  # back to the requested row order, by row id
    return out[0], out[1]


EPOCH_S = 0.3  # seconds an epoch takes besides its images, measured on 2-core CPUs with tiny folds: 0.5-1.1 s on a slow
# day, 0.1 s on 2026-12-07 (the same machine 2.3x faster); between them, so an estimate errs by at most 3-4x here


class FineTune(Kind):
    name = "finetune"

    def key(self, plan, spec) -> dict:
        return {**model_params(spec), "weights_id": weights_id(spec.weights, spec.backbone),
                "prep": preprocessing(spec), "metric": plan.cfg.competition.metric,
                "n_classes": plan.comp.n_classes}  # fmt: skip

    def train_inputs(self, plan, spec) -> dict[str, str]:
        return {"train_images": plan.images("train", spec).key}

    def predict_inputs(self, plan, spec, train_unit) -> dict[str, str]:
        return {"model": train_unit.key, "train_images": plan.images("train", spec).key,
                "test_images": plan.images("test", spec).key}  # fmt: skip

    def train(self, plan, unit: Unit, out: Path, ctx: RunContext) -> dict:
        return train_finetune(plan, unit, out, ctx)

    def load(self, folder: Path) -> dict:
        """The best epoch's weights; "snapshot": k -> snapshot k's weights, read when asked (models.snapshots)."""
        return {"state_dict": load_file(str(folder / "model.safetensors")),
                "snapshot": lambda k: snapshots.load_snapshot(folder, k)}  # fmt: skip

    def predict(self, plan, unit: Unit, views: list[str], va_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict_network(plan, unit, views, va_rows)

    def estimate(self, stage: str, spec, sizes: dict) -> float:
        fwd, n_val = sizes["fwd"], sizes["n_val"]
        if stage == "train":  # EPOCH_S: what an epoch costs besides its images (loaders, the resume state, metrics)
            per_epoch = EPOCH_S + (sizes["n_train"] - n_val) / sizes["train_rate"] + n_val / fwd
            return sizes["setup"] + spec.epochs * per_epoch
        return sizes["setup"] + (n_val + sizes["n_test"]) * sizes["views"] / fwd


KIND = FineTune()
