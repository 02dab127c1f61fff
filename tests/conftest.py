"""Tiny real competitions on disk, in each supported layout, built from scikit-learn's digits (3 classes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parent.parent
NAMES = {0: "zero", 1: "one", 2: "two"}  # string classes, as in "Black-grass"


def digits(n_per_class: int = 12, n_test: int = 9, classes=(0, 1, 2)):
    d = load_digits()
    imgs = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    train_idx, test_idx = [], []
    for c in classes:
        idx = np.where(d.target == c)[0]
        train_idx += idx[:n_per_class].tolist()
        test_idx += idx[n_per_class : n_per_class + n_test // len(classes)].tolist()
    return imgs, d.target, np.array(train_idx), np.array(test_idx)


def save(img: np.ndarray, path: Path, mode: str) -> None:
    """Save an 8x8 grayscale digit in one of several image modes and formats."""
    im = Image.fromarray(img, mode="L")
    if mode == "RGB":
        im = im.convert("RGB")
    elif mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("P")
    im.save(path)


def make_csv_competition(root: Path, with_groups: bool = False) -> Path:
    imgs, y, tr, te = digits()
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    modes = ["L", "RGB", "RGBA", "P"]
    ids = []
    for k, i in enumerate(tr):
        ext = ".jpg" if k % 5 == 0 else ".png"
        mode = "RGB" if ext == ".jpg" else modes[k % 4]
        save(imgs[i], root / "train" / f"t{i}{ext}", mode)
        ids.append(f"t{i}" if k % 2 else f"t{i}{ext}")  # ids with and without the extension
    df = pd.DataFrame({"image_id": ids, "digit": y[tr]})
    if with_groups:
        df["patient"] = [f"p{k // 2}" for k in range(len(tr))]
    df.to_csv(root / "train.csv", index=False)
    for i in te:
        save(imgs[i], root / "test" / f"s{i}.png", "L")
    pd.DataFrame({"image_id": [f"s{i}" for i in te], "digit": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"image_id": [f"s{i}" for i in te], "digit": y[te]}).to_csv(root / "labels.csv", index=False)
    return root


def make_folders_competition(root: Path) -> Path:
    imgs, y, tr, te = digits()
    for i in tr:
        d = root / "train" / NAMES[int(y[i])]
        d.mkdir(parents=True, exist_ok=True)
        save(imgs[i], d / f"{i}.png", "RGB")
    (root / "test").mkdir()
    for i in te:
        save(imgs[i], root / "test" / f"{i}.png", "L")
    pd.DataFrame({"file": [f"{i}.png" for i in te], "species": "zero"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    pd.DataFrame({"file": [f"{i}.png" for i in te], "species": [NAMES[int(y[i])] for i in te]}).to_csv(
        root / "labels.csv", index=False
    )
    return root


def make_pixels_competition(root: Path) -> Path:
    imgs, y, tr, te = digits()
    root.mkdir(parents=True)
    cols = [f"pixel{j}" for j in range(64)]
    train = pd.DataFrame(imgs[tr].reshape(len(tr), -1), columns=cols)
    train.insert(0, "label", y[tr])
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame(imgs[te].reshape(len(te), -1), columns=cols).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"ImageId": np.arange(1, len(te) + 1), "Label": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": np.arange(1, len(te) + 1), "Label": y[te]}).to_csv(root / "labels.csv", index=False)
    return root


COCO_CATEGORIES = {0: 7, 1: 3, 2: 11}  # digit -> category id: ids are not class indices


def make_coco_competition(root: Path) -> Path:
    """Train labels in a COCO-style JSON: image ids unlike the file names, every third image annotated twice with its
    category (two boxes of one class), an annotation-free category (no class)."""
    imgs, y, tr, te = digits()
    (root / "train" / "sub").mkdir(parents=True)
    (root / "test").mkdir()
    images, annotations = [], []
    for k, i in enumerate(tr):
        name = f"sub/t{i}.png" if k % 4 == 0 else f"t{i}.png"  # file names may hold a folder
        save(imgs[i], root / "train" / name, "RGB")
        images.append({"id": 1000 + k, "file_name": name, "width": 8, "height": 8})
        for _ in range(2 if k % 3 == 0 else 1):
            annotations.append({"id": len(annotations), "image_id": 1000 + k,
                                "category_id": COCO_CATEGORIES[int(y[i])], "bbox": [0, 0, 8, 8]})  # fmt: skip
    categories = [{"id": COCO_CATEGORIES[d], "name": NAMES[d]} for d in (2, 0, 1)] + [{"id": 99, "name": "nine"}]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "train.json").write_text(json.dumps(doc))
    for i in te:
        save(imgs[i], root / "test" / f"s{i}.png", "L")
    ids = [f"s{i}" for i in te]
    pd.DataFrame({"image_id": ids, "label": "zero"}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"image_id": ids, "label": [NAMES[int(y[i])] for i in te]}).to_csv(root / "labels.csv", index=False)
    return root


LAYOUTS = {
    "csv": (make_csv_competition, {"layout": "csv", "id_col": "image_id", "target_col": "digit"}),
    "folders": (make_folders_competition, {"layout": "folders"}),
    "pixels": (make_pixels_competition, {"layout": "pixels", "target_col": "label"}),
    "coco": (make_coco_competition, {"layout": "coco"}),
}

TINY_TRAIN = {"img_size": 32, "epochs": 2, "frozen_epochs": 1, "batch_size": 16, "lr": 0.01, "augment": "light"}


def write_config(tmp: Path, layout: str, models: list[dict] | None = None, **sections) -> Path:
    make, comp = LAYOUTS[layout]
    root = tmp / f"comp-{layout}"
    if not root.exists():
        make(root)
    cfg = {
        "competition": {"name": f"tiny-{layout}", "root": str(root), "holdout_labels": "labels.csv", **comp},
        "folds": {"n_folds": 3, "seed": 0},
        "train": dict(TINY_TRAIN),
        "models": models or [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none"}],
        "predict": {"views": "hflip", "batch_size": 32},
        "blend": {"bootstrap": 50},
        "runtime": {
            "work_dir": str(tmp / "work"),
            "folds_dir": str(tmp / "folds"),
            "submissions_dir": str(tmp / "submissions"),
            "num_workers": 1,
            "progress": False,
        },
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path = tmp / f"{layout}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `./run.sh ...` as a real process, as a user does."""
    proc = subprocess.run(
        ["./run.sh", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


# One small competition run by every executor test: a fine-tuned model (long enough to be killed mid-training) and
# a head; one torch thread per unit everywhere, so that executors can be compared bit for bit.
EXEC_MODELS = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "epochs": 6},
               {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip


def exec_config(tmp: Path, **runtime) -> Path:
    return write_config(tmp, "csv", models=EXEC_MODELS, runtime={"threads": 1, "workers": 2, **runtime})


def run_outputs(tmp: Path) -> dict:
    """The submission's bytes and every stored OOF and test probability, by unit."""
    (sub,) = sorted((tmp / "submissions").glob("*.csv"))
    out = {"submission": sub.read_bytes()}
    for path in sorted((tmp / "work").glob("*/predict/**/preds.npz")):
        d = np.load(path)
        name = str(path.parent.parent.relative_to(tmp / "work"))
        out[name] = (d["oof_probs"].tobytes(), d["test_probs"].tobytes())
    return out


def unit_logs(tmp: Path, stage: str = "train") -> dict[str, str]:
    return {str(p.parent.parent.relative_to(tmp / "work")): p.read_text()
            for p in (tmp / "work").glob(f"*/{stage}/**/log.txt")}  # fmt: skip


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> dict:
    """The executor tests' config run once by the local executor: what every other executor must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    run_cli("all", "--config", str(exec_config(tmp, executor="local")))
    return run_outputs(tmp)


# One tiny run shared by the tests that read it (status and cache keys, stored views): a fine-tuned model and a head
# on features, ten views cached per image. Tests that add to it use other keys (they never change what it holds).
SHARED_MODELS = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none"},
                 {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """(tmp, config path, stdout of `./run.sh all`)."""
    tmp = tmp_path_factory.mktemp("shared")
    cfg = write_config(tmp, "csv", models=SHARED_MODELS, predict={"views": "ten-crop", "batch_size": 32})
    return tmp, cfg, run_cli("all", "--config", str(cfg)).stdout
