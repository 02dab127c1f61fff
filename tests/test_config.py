import pytest

from pipeline.config import REPO, ConfigError, load_config

from .conftest import run_cli


def write(tmp, text):
    p = tmp / "c.yaml"
    p.write_text(text)
    return p


BASE = "competition: {name: x}\nmodels: [{name: m, backbone: test_efficientnet, weights: none}]\n"


def test_defaults_and_model_merge(tmp):
    cfg = load_config(write(tmp, BASE + "train: {img_size: 40, epochs: 3}\n"))
    (m,) = cfg.models
    assert (m.img_size, m.epochs, m.batch_size) == (40, 3, 32)  # batch_size: the schema default


def test_unknown_key_is_named(tmp):
    with pytest.raises(ConfigError, match="'folds.nfolds'"):
        load_config(write(tmp, BASE + "folds: {nfolds: 3}\n"))
    with pytest.raises(ConfigError, match="'train.epoch'"):
        load_config(write(tmp, BASE + "train: {epoch: 3}\n"))
    with pytest.raises(ConfigError, match=r"models\[0\]\.lrr"):
        load_config(write(tmp, "models: [{name: m, lrr: 1}]\n"))


def test_wrong_type_and_choice_are_named(tmp):
    with pytest.raises(ConfigError, match="'folds.n_folds': expected int"):
        load_config(write(tmp, BASE + "folds: {n_folds: five}\n"))
    with pytest.raises(ConfigError, match="'blend.method'"):
        load_config(write(tmp, BASE + "blend: {method: magic}\n"))


def test_set_overrides_by_index_and_name(tmp):
    cfg = load_config(write(tmp, BASE), ["folds.n_folds=7", "models.0.seeds=[1, 2]", "models.m.lr=0.5"])
    assert cfg.folds.n_folds == 7
    assert cfg.models[0].seeds == [1, 2]
    assert cfg.models[0].lr == 0.5
    # YAML 1.1 reads 3e-3 (no dot) as a string: accepted for float keys, still refused for ints and words
    assert load_config(write(tmp, BASE), ["train.lr=3e-3"]).models[0].lr == 0.003
    with pytest.raises(ConfigError, match=r"models\[0\]\.epochs': expected int"):
        load_config(write(tmp, BASE), ["train.epochs=1e3"])
    with pytest.raises(ConfigError, match=r"models\[0\]\.lr': expected float"):
        load_config(write(tmp, BASE), ["train.lr=fast"])
    with pytest.raises(ConfigError, match="'nosuch'"):
        load_config(write(tmp, BASE), ["models.nosuch.lr=1"])


def test_per_model_file_holds_overrides(tmp):
    (tmp / "m.yaml").write_text("epochs: 9\nlr: 0.1\n")
    cfg = load_config(write(tmp, "models: [{name: a, base: m.yaml, lr: 0.2}]\n"))
    assert (cfg.models[0].epochs, cfg.models[0].lr) == (9, 0.2)


def test_default_config_loads():
    cfg = load_config(None)
    assert cfg.competition.embedded == "digits" and cfg.models


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert load_config(path).models


def test_budget_is_refused_by_a_single_stage_command():
    """--budget plans a whole run (`all`; `status` lists that plan): a stage alone would run without a deadline."""
    proc = run_cli("train", "--budget", "5m", check=False)
    assert proc.returncode == 2 and "--budget is for `all`" in proc.stderr and "./run.sh all --budget 5m" in proc.stderr
