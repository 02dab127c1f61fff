"""Pseudo-labelling (`pseudo_from`, `pseudo_threshold`) for the kinds on features: fold k's pseudo-labels come only
from the source's fold-k units, so no held-out label comes back into its own fold and the OOF score stays honest."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.app import build_plan
from pipeline.config import ConfigError, load_config
from pipeline.folding import fold_rows
from pipeline.kinds.pseudo import FIT_ROWS
from pipeline.plan import FULL

from .conftest import digits, run_cli, save, write_config

pytestmark = pytest.mark.slow

BACKBONE = {"backbone": "test_efficientnet", "weights": "none", "kind": "head", "feature_grid": 2}


def make_copies_competition(root: Path, n_train: int = 90, seed: int = 0) -> Path:
    """Train images with random labels (no signal), and a test set of byte-identical copies of every train image:
    a model whose pseudo-labels saw a row's label hands that label to the row's copy."""
    imgs, _, tr, _ = digits(n_per_class=n_train // 3, n_test=0)
    labels = np.random.default_rng(seed).integers(0, 3, len(tr))
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for i in tr:
        save(imgs[i], root / "train" / f"t{i}.png", "L")
        save(imgs[i], root / "test" / f"c{i}.png", "L")
    pd.DataFrame({"image_id": [f"t{i}" for i in tr], "digit": labels}).to_csv(root / "train.csv", index=False)
    ids = [f"c{i}" for i in tr]
    pd.DataFrame({"image_id": ids, "digit": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"image_id": ids, "digit": labels}).to_csv(root / "labels.csv", index=False)
    return root


def oof_accuracy(plan, model: str) -> float:
    """Centre-view OOF accuracy of a model's fold units, read from their predict units."""
    y, hits = plan.comp.train["y"].to_numpy(), []
    for u in plan.all("predict", model=model):
        if u.meta["fold"] != FULL:
            d = plan.load(u)
            hits += (d["oof_probs"][d["views"].index("center")].argmax(1) == y[d["oof_rows"]]).tolist()
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def copies_run(tmp_path_factory):
    """A memorising head on random labels, and a second round pseudo-labelled by it, run end to end; (plan, stdout)."""
    tmp = tmp_path_factory.mktemp("pseudo-copies")
    make_copies_competition(tmp / "comp-csv")
    models = [{"name": "src", **BACKBONE, "head_c": 1e4},
              {"name": "pl", **BACKBONE, "head_c": 1e4, "pseudo_from": "src", "pseudo_threshold": 0.5}]  # fmt: skip
    cfg = write_config(tmp, "csv", models=models, runtime={"threads": 1})
    out = run_cli("all", "--config", str(cfg)).stdout
    return build_plan(load_config(cfg)), out


def test_no_held_out_label_comes_back_through_pseudo_labels(copies_run):
    plan, _ = copies_run
    src, pl = oof_accuracy(plan, "src"), oof_accuracy(plan, "pl")
    # no signal: both near chance (1/3; sd ~0.05 over 90 rows). Had fold k's pseudo-labels come from units that
    # trained on fold k's rows, the copies would carry fold k's labels and round 2 would score near 1.
    assert src < 0.55 and pl < 0.55, (src, pl)
    used = [plan.store.marker(u)["scores"]["pseudo_rows"] for u in plan.all("train", model="pl")]
    assert all(n > 30 for n in used), used  # pseudo-labels were used: the bound above is not vacuous


def test_a_folds_held_out_rows_never_train_its_unit(copies_run):
    plan, _ = copies_run
    folds = plan.load(plan.one("folds"))
    for unit in plan.all("train", model="pl"):
        fold = unit.meta["fold"]
        va = fold_rows(folds, fold)[1]
        rec = np.load(plan.store.dir(unit) / FIT_ROWS)
        assert np.intersect1d(rec["train_rows"], va).size == 0
        assert len(rec["train_rows"]) + len(va) == len(plan.comp.train)
        sources = [plan.input(unit, n) for n in unit.inputs if n.startswith("pseudo")]
        want = {"model": "src", "seed": 0, "fold": fold, "member": "src"}
        assert sources and all(s.stage == "predict" and s.meta == want for s in sources)
        assert all(np.array_equal(np.sort(plan.load(s)["oof_rows"]), np.sort(va)) for s in sources)


def test_the_sources_key_reaches_round_two_and_config_is_checked(tmp):
    make_copies_competition(tmp / "comp-csv", n_train=9)
    models = [{"name": "src", **BACKBONE}, {"name": "pl", **BACKBONE, "pseudo_from": "src"}]
    cfg = load_config(write_config(tmp, "csv", models=models))
    before = {u.name: u.key for u in build_plan(cfg).all("train", model="pl")}
    cfg.models[0].head_c = 7.0  # the source changes: round 2 is redone, through its inputs
    after = {u.name: u.key for u in build_plan(cfg).all("train", model="pl")}
    assert before.keys() == after.keys() and not set(before.values()) & set(after.values())
    cfg.models[1].refit = True  # a full-data unit has no held-out rows: the source's every fold labels it
    plan = build_plan(cfg)
    full = plan.one("train", model="pl", fold=FULL)
    assert sorted(plan.input(full, n).name for n in full.inputs if n.startswith("pseudo")) == [
        f"src/seed0/fold{k}" for k in range(3)]  # fmt: skip
    for bad, msg in [({"pseudo_from": "nope"}, r"models\[1\]\.pseudo_from': no model named 'nope'"),
                     ({"pseudo_from": "pl"}, r"would come from the model itself \(pl <- pl\)"),
                     ({"pseudo_threshold": 0.0}, r"models\[1\]\.pseudo_threshold': 0\.0 is out of range"),
                     ({"kind": "finetune"}, r"for the kinds on cached features only")]:  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            load_config(write_config(tmp, "csv", models=[models[0], {**models[1], **bad}]))
    cycle = [{**models[0], "pseudo_from": "pl"}, models[1]]
    with pytest.raises(ConfigError, match=r"pseudo-labels would come from the model itself \(src <- pl <- src\)"):
        load_config(write_config(tmp, "csv", models=cycle))


def ran(stdout: str, stage: str) -> list[str]:
    return re.findall(rf"^\[{stage}\] (?:run|resume) +(\S+)", stdout, flags=re.M)


def test_pseudo_labelled_head_and_knn_end_to_end_then_cached(tmp):
    """Real signal (digits 0 and 1, a binary task scored by auc): a head with refit labels a head (refit too) and a
    knn; all train, predict, blend and submit; the full-data unit reads the source's full-data unit; `train` alone
    runs the source's predictions it reads; a second run does no work."""
    models = [{"name": "src", **BACKBONE, "refit": True},
              {"name": "pl", **BACKBONE, "pseudo_from": "src", "pseudo_threshold": 0.5, "refit": True},
              {"name": "plk", **BACKBONE, "kind": "knn", "pseudo_from": "src", "pseudo_threshold": 0.5}]  # fmt: skip
    cfg = write_config(tmp, "csv", models=models, competition={"task": "binary", "metric": "auc"},
                       runtime={"threads": 1}, blend={"method": "mean", "bootstrap": 20})  # fmt: skip
    comp = tmp / "comp-csv"  # two classes of digits (as tests/test_bad_inputs.py's binary_config)
    for name in ("train.csv", "labels.csv"):
        d = pd.read_csv(comp / name, dtype=str)
        d[d["digit"] != "2"].to_csv(comp / name, index=False)
    kept = pd.read_csv(comp / "labels.csv", dtype=str)["image_id"]
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    sample[sample["image_id"].isin(kept)].to_csv(comp / "sample_submission.csv", index=False)
    run_cli("folds", "--config", str(cfg))
    run_cli("features", "--config", str(cfg))
    alone = run_cli("train", "--config", str(cfg)).stdout  # the round: the source's predictions run with it
    assert {"pl/seed0/full", "plk/seed0/fold0"} <= set(ran(alone, "train")), alone
    assert set(ran(alone, "predict")) == {f"src/seed0/{f}" for f in ("fold0", "fold1", "fold2", "full")}, alone
    first = run_cli("all", "--config", str(cfg)).stdout
    assert ran(first, "train") == [] and "pl/seed0/full" in ran(first, "predict"), first
    assert re.search(r"^\[blend\] pl: OOF auc", first, flags=re.M) and "held-out test auc" in first
    plan = build_plan(load_config(cfg))
    full = plan.one("train", model="pl", fold=FULL)
    assert [plan.input(full, n).name for n in full.inputs if n.startswith("pseudo")] == ["src/seed0/full"]
    n_test = len(plan.comp.test_ids)
    for unit in plan.all("train", model="plk"):
        n = plan.store.marker(unit)["scores"]["pseudo_rows"]
        assert 0 < n <= n_test and len(plan.load(unit)["knn"]["test_rows"]) == n
        assert set(np.load(plan.store.dir(unit) / FIT_ROWS)["pseudo_labels"]) <= {0, 1}
    (sub,) = sorted((tmp / "submissions").glob("*.csv"))
    assert len(pd.read_csv(sub)) == n_test
    again = run_cli("all", "--config", str(cfg)).stdout
    assert not re.search(r"^\[\w+\] (run|resume) ", again, flags=re.M), again
