"""Model kinds: what a model spec's `kind` makes of its backbone. The stages train, predict, features and probe, the
budget planner and the config's validation ask the kind, never test its name.

A kind is a `Kind` (kinds/base.py) in its own module here, found by its name in `KINDS`. It declares:
- `key(plan, spec)`: its key slice, the config fields that change what it trains (a head is not refitted when a
  fine-tuning-only field such as `lr` changes);
- `train_inputs` / `predict_inputs`: the units a train and a predict unit read (images, or with "features" in its
  `KINDS` line the features stage's cached embeddings, for which `feature_levels`/`feature_grid` apply);
- `gpu`: its train and predict units' resources;
- `train(plan, unit, out)`: one seed x fold unit; `load(folder)`: what train wrote; `predict(plan, unit, views,
  va_rows)`: (V, n_val, C) OOF and (V, n_test, C) test probabilities;
- `probe_forward` and `probe_train`: what the probe times; `estimate(stage, spec, sizes)`: a unit's expected seconds;
- `exportable`: whether `./run.sh export` can bundle it.

Adding a kind: its module here, one line in `KINDS`, its tests, and the README's models options.
"""

from __future__ import annotations

from importlib import import_module

# name -> (module in this package, which defines KIND; what it reads: "images", or "features", the features stage's
# cached embeddings, for which the config accepts feature_levels and feature_grid). Modules are imported on first
# use: config validates a kind by this table alone, without loading torch or importing a kind.
KINDS = {
    "finetune": ("finetune", "images"),  # fine-tunes the pretrained network (the default)
    "head": ("head", "features"),  # a softmax (logistic regression) on cached frozen-backbone features
    "knn": ("knn", "features"),  # a cosine k-nearest-neighbour vote on cached frozen-backbone features
}


def reads_features(name: str) -> bool:
    """Whether kind `name` fits on the features stage's cached embeddings (then that stage computes them)."""
    return KINDS[name][1] == "features"


def get(name: str):
    """The Kind registered as `name` (config validation has already checked that it is one)."""
    if name not in KINDS:
        raise KeyError(f"unknown model kind {name!r}; known: {', '.join(KINDS)}")
    return import_module(f".{KINDS[name][0]}", __name__).KIND
