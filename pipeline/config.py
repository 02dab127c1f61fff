"""Configuration as data with a schema (schema.py holds every default): YAML and `--set` overrides are checked
against it here.

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

from . import kind_table as kinds
from .config_parsing import LADDER_FILE, apply_override, parse_duration, with_preset
from .schema import (
    CHOICES,
    CONTRAST_OPS,
    NAME_KEYS,
    RANGES,
    REPO,
    SAFE_NAME,
    TRAIN_KEYS,
    Blend,
    CompetitionSpec,
    ConfigError,
    Folds,
    ModelSpec,
    Predict,
    Runtime,
    Submit,
    model_params,
    resolve_path,
)  # fmt: skip

# the names other modules import from here
__all__ = ["LADDER_FILE", "REPO", "Config", "ConfigError", "ModelSpec", "Runtime", "load_config", "model_params",
           "parse_duration", "resolve_path", "apply_override"]  # fmt: skip


DEFAULT_CONFIG = REPO / "configs" / "default.yaml"


@dataclass
class Config:
    competition: CompetitionSpec = field(default_factory=CompetitionSpec)
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
    _check_pseudo(specs)
    return specs


def _check_pseudo(specs: list[ModelSpec]) -> None:
    """pseudo_from: on a kind on features, naming another model of this config (so of this competition), no cycle."""
    by_name = {s.name: s for s in specs}
    for i, spec in enumerate(specs):
        if spec.pseudo_from is None:
            continue
        where = f"config key 'models[{i}].pseudo_from'"
        if not kinds.reads_features(spec.kind):
            raise ConfigError(f"{where}: pseudo-labels are for the kinds on cached features only "
                              f"({', '.join(k for k in kinds.KINDS if kinds.reads_features(k))}); "
                              f"model {spec.name!r} is of kind {spec.kind}")  # fmt: skip
        if spec.pseudo_from not in by_name:
            raise ConfigError(f"{where}: no model named {spec.pseudo_from!r} in this config "
                              f"(models: {', '.join(by_name)})")  # fmt: skip
        chain, name = [spec.name], spec.pseudo_from
        while name is not None:  # a model may learn from a pseudo-labelled one, never from itself through others
            if name in chain:
                raise ConfigError(f"{where}: pseudo-labels would come from the model itself "
                                  f"({' <- '.join([*chain, name])}); name another model")  # fmt: skip
            chain.append(name)
            name = by_name[name].pseudo_from


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
    _check_snapshots(spec, where)
    _check_contrast(spec, where, on_features)
    if spec.feature_levels is not None and (not kinds.reads_features(spec.kind) or not spec.feature_levels):
        raise ConfigError(f"config key '{where}.feature_levels': a non-empty list of feature levels, for the kinds "
                          f"on cached features only ({', '.join(on_features)}); got {spec.feature_levels!r} on kind "
                          f"{spec.kind}")  # fmt: skip


def _check_contrast(spec: ModelSpec, where: str, on_features: list[str]) -> None:
    """feature_contrast: distinct operations a view can take, on a kind that reads cached features."""
    ops = spec.feature_contrast
    if ops is None:
        return
    if (
        not kinds.reads_features(spec.kind)
        or not isinstance(ops, list)
        or not ops
        or len(set(ops)) < len(ops)
        or not set(ops) <= set(CONTRAST_OPS)
    ):
        raise ConfigError(f"config key '{where}.feature_contrast': a list of distinct operations among "
                          f"{', '.join(CONTRAST_OPS)}, for the kinds on cached features only "
                          f"({', '.join(on_features)}); got {ops!r} on kind {spec.kind}")  # fmt: skip


def _check_snapshots(spec: ModelSpec, where: str) -> None:
    """Snapshots need a kind with epochs, and as many epochs besides the best as they keep, early stopping included
    (it stops after `patience` epochs without a better one, so at least patience + 1 epochs run)."""
    n = spec.snapshots
    if not n:
        return
    if spec.kind not in kinds.SNAPSHOTS:
        raise ConfigError(f"config key '{where}.snapshots': for the kinds that train in epochs only "
                          f"({', '.join(sorted(kinds.SNAPSHOTS))}); got {n} on kind {spec.kind}")  # fmt: skip
    if n >= spec.epochs:
        raise ConfigError(f"config key '{where}.snapshots': {n} snapshots besides the best epoch need at least "
                          f"{n + 1} epochs; got epochs: {spec.epochs}")  # fmt: skip
    if spec.patience and n > spec.patience:
        raise ConfigError(f"config key '{where}.snapshots': {n} is more than patience ({spec.patience}): early "
                          f"stopping may end after {spec.patience + 1} epochs; keep snapshots <= patience")  # fmt: skip


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
    raw = with_preset(dict(raw))
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


def check_embedded(c: CompetitionSpec) -> None:
    """An embedded data set is built and published under its own name only: a config copied from default.yaml for
    another competition (a new name, a mistyped root) must not build digits and publish them under the new name."""
    if c.embedded and c.name != c.embedded:
        raise ConfigError(f"config key 'competition.embedded': {c.embedded!r} builds scikit-learn's {c.embedded} as "
                          f"competition {c.embedded!r}, but this config names competition {c.name!r} (root "
                          f"{c.root}): remove `embedded` for your own competition's data")  # fmt: skip
