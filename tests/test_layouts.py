import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.app import build_plan
from pipeline.config import load_config
from pipeline.data import DataError, load_competition, read_image
from pipeline.layouts import LAYOUTS
from pipeline.models import preprocessing
from pipeline.scheduler import ensure_done
from pipeline.schema import CHOICES

from .conftest import NAMES, digits, make_csv_competition, write_config


@pytest.mark.parametrize("layout", ["csv", "folders", "pixels", "coco"])
def test_layout_loads_each_row_from_its_own_file(tmp, layout):
    """The loaded table against the files and the digits they were made from: each train row's pixels and class are
    those of the digit written for its id, each test id's pixels those of its file, in sample_submission order."""
    comp = load_competition(load_config(write_config(tmp, layout)))
    imgs, y, tr, te = digits()
    root = tmp / f"comp-{layout}"
    assert len(comp.train) == 36 and comp.n_classes == 3 and len(comp.test_ids) == 9
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert comp.test_ids.tolist() == sample.iloc[:, 0].tolist()

    def pixels(split, k):
        if layout == "pixels":
            return (comp.train_pixels if split == "train" else comp.test_pixels)[comp.sources(split)[k]]
        return read_image(comp.sources(split)[k])[..., 0]

    def digit_of(split, k) -> int:  # which digits image the files say row k is
        if layout == "pixels":
            return int((tr if split == "train" else te)[k])
        name = Path(comp.sources(split)[k]).stem
        return int(name.lstrip("ts"))

    lossy = 40 if layout == "csv" else 0  # the csv layout writes some train images as JPEG
    for k, id_ in enumerate(comp.train["id"]):
        i = digit_of("train", k)
        np.testing.assert_allclose(pixels("train", k), imgs[i], atol=lossy, err_msg=id_)
        assert comp.classes[comp.train["y"][k]] == (NAMES[int(y[i])] if layout in ("folders", "coco") else str(y[i]))
        if layout == "csv":
            assert Path(comp.sources("train")[k]).stem == id_.rsplit(".", 1)[0]
        if layout in ("folders", "coco"):
            assert comp.sources("train")[k] == str(root / "train" / id_)
    for k, id_ in enumerate(comp.test_ids):
        np.testing.assert_array_equal(pixels("test", k), imgs[digit_of("test", k)], err_msg=id_)
        if layout != "pixels":
            assert Path(comp.sources("test")[k]).name in (id_, f"{id_}.png")
    assert sorted(digit_of("train", k) for k in range(36)) == sorted(tr.tolist())  # every digit once
    assert [digit_of("test", k) for k in range(9)] == te.tolist()  # in sample_submission's order


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


@pytest.mark.slow
def test_16_bit_and_transparent_palette_images_and_groups_through_a_whole_run(tmp):
    root = make_csv_competition(tmp / "comp-csv", with_groups=True)  # write_config keeps it: groups p0, p0, p1, ...
    imgs, _, tr, te = digits()
    wide, clear = tr[1:4], te[:2]  # train PNGs as 16-bit PNGs; test images as palettes with a transparent index
    expected = {}
    for i in wide:
        values = imgs[i].astype(np.uint16) * 4000  # up to 64000 of 65535
        Image.fromarray(values).save(root / "train" / f"t{i}.png")
        assert Image.open(root / "train" / f"t{i}.png").mode.startswith("I;16")
        expected[("train", f"t{i}")] = np.rint(values / values.max() * 255).astype(np.uint8)  # by its own maximum
    for i in clear:
        pal = Image.fromarray(imgs[i], "P")
        pal.putpalette([v for g in range(256) for v in (g, g, g)])
        pal.save(root / "test" / f"s{i}.png", transparency=0)  # index 0 (the background) is transparent
        expected[("test", f"s{i}")] = np.where(imgs[i] == 0, 255, imgs[i]).astype(np.uint8)  # on white
    plan = build_plan(load_config(write_config(tmp, "csv", competition={"group_col": "patient"})))
    ensure_done(plan, plan.all("submit"))

    spec = plan.cfg.models[0]
    side = preprocessing(spec)["cache_size"]
    for split in ("train", "test"):
        cache = np.load(plan.load(plan.images(split, spec)))
        ids = [Path(s).stem for s in plan.comp.sources(split)]
        for (where, id_), gray in expected.items():
            if where == split:
                want = np.asarray(Image.fromarray(gray, "L").convert("RGB").resize((side, side), Image.BICUBIC))
                np.testing.assert_array_equal(cache[ids.index(id_)], want, err_msg=id_)
    folds = plan.load(plan.one("folds"))
    groups = plan.comp.train["group"].to_numpy()
    assert all(len(set(folds[groups == g])) == 1 for g in set(groups))  # no patient in two folds
    assert len(set(folds)) == 3
    manifest = plan.load(plan.one("submit"))["manifest"]
    sub = pd.read_csv(plan.load(plan.one("submit"))["submission"], dtype=str)
    labels = pd.read_csv(root / "labels.csv", dtype=str).set_index("image_id").loc[sub["image_id"], "digit"]
    assert manifest["holdout_score"] == pytest.approx((sub["digit"].to_numpy() == labels.to_numpy()).mean())


def coco_edit(tmp, edit) -> object:
    """The coco competition's config, its train.json changed by edit(doc) first."""
    cfg = load_config(write_config(tmp, "coco"))
    path = cfg.root / "train.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return cfg


def test_coco_classes_are_category_names_and_repeated_boxes_one_class(tmp):
    comp = load_competition(load_config(write_config(tmp, "coco")))
    assert comp.classes == ["one", "two", "zero"]  # names, sorted; the category ids 3, 11, 7 are only links
    doc = json.loads((tmp / "comp-coco" / "train.json").read_text())
    assert len(doc["annotations"]) > len(doc["images"])  # images annotated twice with one category: one row each
    assert comp.train["id"].tolist() == [e["file_name"] for e in doc["images"]]
    assert any("nine" in n for n in comp.notes)  # a category without images is said, not a class


def _add(doc, key, entry):
    doc[key].append(entry)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: _add(d, "annotations", {"image_id": 1001, "category_id": 3}),
         r"1 image\(s\) are annotated with more than one .*'t\d+\.png' \(image id 1001\): \['one', 'zero'\]"),
        (lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 1002]),
         r"1 image\(s\) have no annotation.*'t\d+\.png' \(image id 1002\)"),
        (lambda d: _add(d, "annotations", {"image_id": 5, "category_id": 7}),
         r"annotations\[\d+\] names image_id 5, which no entry of `images` has"),
        (lambda d: _add(d, "annotations", {"image_id": 1001, "category_id": 42}),
         r"names category_id 42, which no entry of `categories` has"),
        (lambda d: _add(d, "categories", {"id": 50, "name": "zero"}), r"categories name 'zero' is given twice"),
        (lambda d: d["categories"][0].update(name=" zero"), r"categories name 'zero' is given twice \(compared"),
        (lambda d: _add(d, "images", {"id": 1001, "file_name": "x.png"}), r"images id 1001 is given twice"),
        (lambda d: d["images"][3].update(file_name="gone.png"), r"not found in .*'gone.png' \(image id 1003\)"),
        (lambda d: d.pop("categories"), r"expected a list under 'categories'"),
        (lambda d: d["annotations"][0].pop("category_id"), r"annotations\[0\] must be a mapping with"),
        (lambda d: d["annotations"][0].update(image_id=[1000]), r"annotations\[0\] names image_id \[1000\]"),
    ],
)  # fmt: skip
def test_coco_json_problems_name_the_file_and_image(tmp, edit, message):
    cfg = coco_edit(tmp, edit)
    with pytest.raises(DataError, match=message) as err:
        load_competition(cfg)
    assert "train.json" in str(err.value)


def test_coco_json_that_is_not_json_is_refused(tmp):
    cfg = load_config(write_config(tmp, "coco"))
    (cfg.root / "train.json").write_text('{"images": [')
    with pytest.raises(DataError, match="train.json could not be read as JSON"):
        load_competition(cfg)


def test_every_layout_of_the_table_is_a_config_choice():
    assert set(LAYOUTS) == CHOICES["competition.layout"]


def test_group_col_on_a_layout_without_groups_is_refused(tmp):
    cfg = load_config(write_config(tmp, "coco", competition={"group_col": "patient"}))
    with pytest.raises(DataError, match="group_col 'patient': the coco layout has no group column"):
        load_competition(cfg)
