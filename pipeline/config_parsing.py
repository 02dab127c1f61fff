"""Text to config values: `--set key=value` overrides, the preset ladder merged under a config, durations."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .schema import CHOICES, REPO, ConfigError

LADDER_FILE = REPO / "configs" / "presets" / "ladder.yaml"  # the recipes of `preset:` fast | medium | best | auto


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


def with_preset(raw: dict) -> dict:
    """Merge a preset under the config: its sections are defaults the config's own sections override (a config's
    models replace the preset's). Without models and preset, a config gets `medium` (`auto` with a budget)."""
    preset = raw.get("preset")
    if preset is None and "models" not in raw:
        preset = "auto" if (raw.get("runtime") or {}).get("budget") else "medium"
    if preset is None:
        return raw
    if preset not in CHOICES["preset"]:
        raise ConfigError(f"config key 'preset': {preset!r} is not one of fast, medium, best, auto")
    ladder = yaml.safe_load(LADDER_FILE.read_text())
    base = {k: v for k, v in ladder.items() if k not in ("sizes", "models")}
    models = ladder["models"] if preset in ("best", "auto") else ladder["models"][: ladder["sizes"][preset]]
    merged = {**base, **{k: v for k, v in raw.items() if k not in base}}
    for k, v in base.items():
        if k in raw:
            merged[k] = {**v, **raw[k]} if isinstance(v, dict) and isinstance(raw[k], dict) else raw[k]
    merged.setdefault("models", models)
    merged["preset"] = preset
    return merged
