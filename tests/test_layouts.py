import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.data import DataError, load_competition, read_image

from .conftest import write_config


@pytest.mark.parametrize("layout", ["csv", "folders", "pixels"])
def test_layout_loads(tmp, layout):
    comp = load_competition(load_config(write_config(tmp, layout)))
    assert len(comp.train) == 36 and comp.n_classes == 3
    assert len(comp.test_ids) == 9 and comp.test_ids.tolist() == comp.sample.iloc[:, 0].tolist()
    assert (comp.train["y"].to_numpy() == [comp.classes.index(t) for t in comp.train["target"]]).all()
    if layout == "folders":
        assert comp.classes == ["one", "two", "zero"]  # string classes from folder names
    else:
        assert comp.classes == ["0", "1", "2"]


def test_csv_ids_with_and_without_extension_and_all_modes(tmp):
    comp = load_competition(load_config(write_config(tmp, "csv")))
    assert any(i.endswith(".png") for i in comp.train["id"]) and any("." not in i for i in comp.train["id"])
    for path in comp.train_sources[:10]:
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_pixels_layout_image_size(tmp):
    comp = load_competition(load_config(write_config(tmp, "pixels")))
    assert comp.train_pixels.shape == (36, 8, 8) and comp.test_pixels.shape == (9, 8, 8)


def test_missing_image_names_the_id(tmp):
    cfg = load_config(write_config(tmp, "csv"))
    sample = pd.read_csv(cfg.root / "sample_submission.csv", dtype=str)
    sample.loc[len(sample)] = ["ghost", "0"]
    sample.to_csv(cfg.root / "sample_submission.csv", index=False)
    with pytest.raises(DataError, match="ghost"):
        load_competition(cfg)


def test_duplicate_train_ids_are_refused(tmp):
    cfg = load_config(write_config(tmp, "csv"))
    train = pd.read_csv(cfg.root / "train.csv", dtype=str)
    pd.concat([train, train.iloc[:1]]).to_csv(cfg.root / "train.csv", index=False)
    with pytest.raises(DataError, match="unique"):
        load_competition(cfg)


def test_missing_column_is_named(tmp):
    cfg = load_config(write_config(tmp, "csv", competition={"target_col": "nope"}))
    with pytest.raises(DataError, match="nope"):
        load_competition(cfg)


def test_rgba_is_composited_on_white(tmp):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp / "a.png")
    assert (read_image(str(tmp / "a.png")) == 255).all()
