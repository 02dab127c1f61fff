"""Model kinds (pipeline/kinds): each kind's key slice, the shared logistic regression, and the knn kind end to end on
real features of a timm test model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline import kinds
from pipeline.app import build_plan
from pipeline.config import ConfigError, load_config
from pipeline.infer import linear_softmax
from pipeline.kinds import knn as knn_kind
from pipeline.logreg import StandardLogReg

from .conftest import run_cli, write_config

MODELS = [{"name": "ft", "backbone": "test_efficientnet", "weights": "none"},
          {"name": "head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"},
          {"name": "knn", "backbone": "test_efficientnet", "weights": "none", "kind": "knn"}]  # fmt: skip


def train_keys(cfg) -> dict[str, set[str]]:
    plan = build_plan(cfg)
    return {m.name: {u.key for u in plan.all("train", model=m.name)} for m in cfg.models}


def with_model_fields(cfg, **fields):
    return dataclasses.replace(cfg, models=[dataclasses.replace(m, **fields) for m in cfg.models])


def test_a_fine_tuning_field_redoes_the_network_only_and_head_c_the_head_only(tmp):
    cfg = load_config(write_config(tmp, "csv", models=MODELS))
    before = train_keys(cfg)
    for change in ({"lr": 0.5}, {"epochs": 7}, {"augment": "heavy"}, {"mixup": 0.2}):
        after = train_keys(with_model_fields(cfg, **change))
        assert after["ft"].isdisjoint(before["ft"]), change
        assert after["head"] == before["head"] and after["knn"] == before["knn"], change
    after = train_keys(with_model_fields(cfg, head_c=0.1))  # (the network's key keeps every field, as it always has)
    assert after["head"].isdisjoint(before["head"]) and after["knn"] == before["knn"]
    after = train_keys(with_model_fields(cfg, img_size=40))  # through the features unit they read: all refitted
    assert all(after[m].isdisjoint(before[m]) for m in before)


def test_models_on_the_same_features_share_one_features_unit_per_split(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=MODELS)))
    assert [u.meta["models"] for u in plan.all("features")] == [["head", "knn"], ["head", "knn"]]
    head, knn = plan.one("train", model="head", fold=0), plan.one("train", model="knn", fold=0)
    assert head.inputs["features"] == knn.inputs["features"]
    assert not head.gpu and not knn.gpu and plan.one("train", model="ft", fold=0).gpu


def test_config_names_the_registered_kinds_and_where_feature_options_apply(tmp):
    with pytest.raises(ConfigError, match=r"models\[0\]\.kind': 'svm' is not one of finetune, head, knn"):
        load_config(write_config(tmp, "csv", models=[{**MODELS[0], "kind": "svm"}]))
    with pytest.raises(ConfigError, match=r"\.feature_grid': for the kinds on cached features only \(head, knn\)"):
        load_config(write_config(tmp, "csv", models=[{**MODELS[0], "feature_grid": 2}]))
    assert set(kinds.KINDS) == {"finetune", "head", "knn"} and kinds.get("knn").name == "knn"


@pytest.fixture(scope="module")
def knn_run(tmp_path_factory):
    """A head and a knn on the same real features of a timm test model, run end to end; (tmp, plan)."""
    tmp = tmp_path_factory.mktemp("knn")
    cfg = write_config(tmp, "csv", models=MODELS[1:], runtime={"threads": 1})
    out = run_cli("all", "--config", str(cfg)).stdout
    assert "[blend] knn: OOF accuracy" in out, out
    return tmp, build_plan(load_config(cfg))


def brute_force_knn(train_x, y, fit_rows, query_x, k, n_classes):
    """Cosine kNN written out row by row: centred on the fit rows, similarity-weighted votes plus one even vote."""
    mean = train_x[fit_rows].mean(0)
    ref = train_x[fit_rows] - mean
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    out = []
    for q in query_x:
        q = (q - mean) / np.linalg.norm(q - mean)
        sims = ref @ q
        top = np.argsort(-sims, kind="stable")[:k]
        votes = np.full(n_classes, 1.0 / n_classes)
        for j in top:
            votes[y[fit_rows][j]] += max(sims[j], 0.0)
        out.append(votes / votes.sum())
    return np.array(out)


def test_knn_predictions_are_a_cosine_vote_with_k_from_the_training_rows_only(knn_run):
    tmp, plan = knn_run
    feats = plan.load(plan.one("features", split="train"))
    test_feats = plan.load(plan.one("features", split="test"))
    y, folds, n_classes = plan.comp.train["y"].to_numpy(), plan.load(plan.one("folds")), plan.comp.n_classes
    for fold in range(plan.cfg.folds.n_folds):
        stored = plan.load(plan.one("train", model="knn", fold=fold))["knn"]
        fit_rows, k = np.where(folds != fold)[0], int(stored["k"][0])
        assert np.array_equal(stored["rows"], fit_rows) and k in knn_kind.K_GRID
        # leave-one-out on the fit rows alone chose k: it does not move when the held-out fold's labels are wrong
        y_wrong = y.copy()
        y_wrong[folds == fold] = (y_wrong[folds == fold] + 1) % n_classes
        x = feats["feats"][1][feats["views"].index("center")].astype(np.float64)
        ref = knn_kind.unit_rows(x[fit_rows], x[fit_rows].mean(0))
        assert knn_kind.choose_k(ref, y_wrong[fit_rows], n_classes)[0] == k
        preds = plan.load(plan.one("predict", model="knn", fold=fold))
        for v, view in enumerate(preds["views"]):
            i = feats["views"].index(view)
            want = brute_force_knn(x, y, fit_rows, feats["feats"][1][i][preds["oof_rows"]].astype(np.float64), k,
                                   n_classes)  # fmt: skip
            np.testing.assert_allclose(preds["oof_probs"][v], want, atol=1e-6)
            want = brute_force_knn(x, y, fit_rows, test_feats["feats"][1][i].astype(np.float64), k, n_classes)
            np.testing.assert_allclose(preds["test_probs"][v], want, atol=1e-6)
        assert preds["oof_probs"].min() > 0  # the even vote: log loss stays finite


def test_knn_is_blended_and_reported_and_export_refuses_it_by_name(knn_run):
    tmp, plan = knn_run
    blend = plan.load(plan.one("blend"))
    assert set(blend["report"]["models"]) == {"head", "knn"}
    metrics = pd.read_csv(plan.store.dir(plan.one("train", model="knn", fold=0)) / "metrics.csv")
    assert {"accuracy", "k", "loo_logloss"} <= set(metrics.columns)
    proc = run_cli("export", "--config", str(tmp / "csv.yaml"), "--out", str(tmp / "bundle"), check=False)
    assert proc.returncode != 0 and "model 'knn' is of kind knn, which export cannot bundle" in proc.stderr, proc


def test_the_logistic_regression_applies_as_infer_does_and_gives_an_absent_class_no_mass(knn_run):
    _, plan = knn_run
    feats = plan.load(plan.one("features", split="train"))
    x = feats["feats"][1][feats["views"].index("center")].astype(np.float64)
    y = plan.comp.train["y"].to_numpy()
    fit = y != 2  # class 2 absent from the fit rows
    lr = StandardLogReg(3, c=0.3, max_iter=3000, seed=0).fit(x[fit], y[fit])
    probs = lr.predict_proba(x)
    np.testing.assert_allclose(linear_softmax(x, **lr.arrays()), probs, atol=1e-9)
    assert probs[:, 2].max() < 1e-12 and lr.coef_.shape == (3, x.shape[1])
    head = plan.load(plan.one("train", model="head", fold=0))["head"]  # the head kind stores the same fit
    folds = plan.load(plan.one("folds"))
    same = StandardLogReg(3, c=1.0, max_iter=3000, seed=0).fit(x[folds != 0], y[folds != 0]).arrays()
    assert all(np.array_equal(head[k], same[k]) for k in same)
