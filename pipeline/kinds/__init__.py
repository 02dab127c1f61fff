"""Model kinds: what a model spec's `kind` makes of its backbone. The stages train, predict, features and probe, the
budget planner and the config's validation ask the kind, never test its name.

A kind is a `Kind` (kinds/base.py) in its own module here, found by its name in `KINDS` (pipeline/kind_table.py:
a module of its own, so that the config checks a kind without importing the kinds, which import it). It declares:
- `key(plan, spec)`: its key slice, the config fields that change what it trains (a head is not refitted when a
  fine-tuning-only field such as `lr` changes);
- `train_inputs` / `predict_inputs`: the units a train and a predict unit read (images, or with "features" in its
  `KINDS` line the features stage's cached embeddings, for which `feature_levels`/`feature_grid` apply);
- `gpu`: its train and predict units' resources;
- `train(plan, unit, out)`: one seed x fold unit; `load(folder)`: what train wrote; `predict(plan, unit, views,
  va_rows)`: (V, n_val, C) OOF and (V, n_test, C) test probabilities;
- `probe_forward` and `probe_train`: what the probe times; `estimate(stage, spec, sizes)`: a unit's expected seconds;
- `exportable`: whether `./run.sh export` can bundle it.

Adding a kind: its module here, one line in `kind_table.KINDS`, its tests, and the README's models options.
"""

from __future__ import annotations

from importlib import import_module

from ..kind_table import KINDS, reads_features  # noqa: F401 - the registry's table, read by config too


def get(name: str):
    """The Kind registered as `name` (config validation has already checked that it is one)."""
    if name not in KINDS:
        raise KeyError(f"unknown model kind {name!r}; known: {', '.join(KINDS)}")
    return import_module(f".{KINDS[name][0]}", __name__).KIND
