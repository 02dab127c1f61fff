"""The table of model kinds (pipeline/kinds): the one line a new kind adds. Apart from the kinds' package, so that
the config's schema checks a kind by name without importing a kind (which imports the config)."""

from __future__ import annotations

# name -> (module in pipeline/kinds, which defines KIND; what it reads: "images", or "features", the features stage's
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


# kinds that train in epochs, ranked by a validation score: `models.snapshots` keeps the next-best epochs as members
SNAPSHOTS = {"finetune"}
