"""The report from a tiny real run: every section present with the blend report's numbers, published beside the
submission, cached like any unit; a partial run's report says what is missing; the page renders in real headless
Chromium (Debian's `chromium` package; .ci/run installs it)."""

import hashlib
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.data import load_competition

from .conftest import run_cli, write_config

pytestmark = pytest.mark.slow

MODELS = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none"},
          {"name": "tiny-head", "backbone": "test_efficientnet", "weights": "none", "kind": "head"}]  # fmt: skip
SECTIONS = ["summary", "curves", "models", "tta", "errors", "calibration", "mistakes", "diversity", "shift", "timing"]


def f4(v: float) -> str:
    return f"{v:.4f}"


def sections(page: str) -> dict[str, str]:
    """Section id -> its visible text (tags dropped, entities decoded), in page order."""
    found = re.findall(r'<section id="(\w+)"><h2>.*?</h2>(.*?)</section>', page, flags=re.S)
    return {sid: html.unescape(re.sub(r"<[^>]+>", " ", body)) for sid, body in found}


def pngs(body: str) -> int:
    return body.count('<img src="data:image/png;base64,')


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A fine-tuned model and a head on features, 3 folds, run end to end once."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = str(write_config(tmp, "csv", models=MODELS))
    train = pd.read_csv(tmp / "comp-csv" / "train.csv")
    train.loc[::9, "digit"] = (train.loc[::9, "digit"] + 1) % 3  # 4 wrong labels: confident OOF mistakes to show
    train.to_csv(tmp / "comp-csv" / "train.csv", index=False)
    return tmp, cfg, run_cli("all", "--config", cfg).stdout


def published(tmp):
    (sub,) = sorted((tmp / "submissions").glob("*.csv"))
    return sub, sub.with_suffix(".html")


def test_all_ends_with_the_report_beside_the_submission_with_the_blend_reports_numbers(finished):
    tmp, cfg, out = finished
    sub, page_path = published(tmp)
    assert page_path.is_file() and out.index(f"[report] report: {page_path}\n") > out.index("[submit] submission:")
    page = page_path.read_text()
    assert not re.search(r'(?:src|href)="(?!data:image/png;base64,|#)', page)  # self-contained: nothing to fetch
    s = sections(page)
    assert list(s) == SECTIONS and "This section failed" not in page
    work = tmp / "work" / "tiny-csv"
    (rep_path,) = work.glob("blend/*/*/report.json")
    rep = json.loads(rep_path.read_text())
    (facts_path,) = work.glob("report/*/*/facts.json")
    facts = json.loads(facts_path.read_text())
    assert "errors" not in facts
    manifest = json.loads(sub.with_suffix(".json").read_text())

    # 1. summary: CV, honest CV with its interval, held-out score, the submission's sha256, time per stage
    for v in (rep["oof"], rep["honest_cv"], rep["best_single"], manifest["holdout_score"], *facts["honest_ci95"]):
        assert f4(v) in s["summary"]
    assert facts["cv"] == rep["oof"] and facts["honest_cv"] == rep["honest_cv"]
    assert facts["honest_ci95"][0] <= rep["honest_cv"] <= facts["honest_ci95"][1]
    assert hashlib.sha256(sub.read_bytes()).hexdigest() in s["summary"]
    for stage in ("folds", "features", "train", "predict", "blend", "submit"):
        assert re.search(rf"\b{stage} +\d+ +\d+\.\d", s["summary"]), stage
    # 2. learning curves: every fold of both models, a plot for the fine-tuned one
    for model in ("tiny", "tiny-head"):
        assert all(f"seed0/fold{k}" in s["curves"] for k in range(3)) and model in s["curves"]
    assert pngs(page.split('id="curves"')[1].split("</section>")[0]) == 1
    # 3. models: OOF per model and blend weights as the blend report has them; fold scores
    for model in ("tiny", "tiny-head"):
        assert f4(rep["single"][model]) in s["models"] and f4(rep["weights"][model]) in s["models"]
        assert all(f4(v) in s["models"] for v in facts["fold_scores"][model]["0"].values())
    # 4. TTA: every policy x merge row of each model's table, and the chosen one
    for t in rep["tta"].values():
        assert t["chosen"] in s["tta"]
        for row in t["table"]:
            assert f4(row["accuracy"]) in s["tta"] and f4(row["logloss"]) in s["tta"]
    # 5. confusion of the blended OOF predictions, per class
    blend = np.load(rep_path.parent / "blend.npz")
    comp = load_competition(load_config(cfg))
    probs, y, ids = blend["oof_probs"], comp.train["y"].to_numpy(), comp.train["id"].to_numpy()
    pred = probs.argmax(1)
    assert np.array_equal(facts["confusion"], [[np.sum((y == t) & (pred == p)) for p in range(3)] for t in range(3)])
    assert np.trace(facts["confusion"]) / len(y) == pytest.approx(rep["oof"])
    assert all(w in s["errors"] for w in ("precision", "recall", "F1"))
    # 6. calibration: the expected calibration error of the blended OOF probabilities, computed here again
    conf, bins = probs.max(1), np.clip(np.ceil(probs.max(1) * 10).astype(int) - 1, 0, 9)
    ece = sum(abs((pred == y)[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() for b in np.unique(bins))
    assert facts["ece"] == pytest.approx(ece / len(y)) and f4(facts["ece"]) in s["calibration"]
    # 7. mistakes: the misclassified OOF rows the blend was surest of, with their ids
    wrong = np.where(pred != y)[0]
    assert len(wrong) >= 2  # the flipped labels, at least
    assert facts["mistakes"] == [ids[i] for i in wrong[np.argsort(-conf[wrong], kind="stable")]][:24]
    assert all(i in s["mistakes"] for i in facts["mistakes"])
    # 8. diversity: the error correlation of the blend report
    for row in rep["error_correlation"]["matrix"]:
        assert all(f4(v) in s["diversity"] for v in row)
    # 9. test predictions vs train labels
    assert sum(facts["test_predicted"]) == 9 and f4(facts["total_variation"]) in s["shift"]
    # 10. time: every unit of the run in the timeline (no budget: no estimates)
    assert facts["timeline"]["drawn"] == 19 and facts["timeline"]["reused"] == 0 and "budget" not in facts
    # one plot each: curves (the head has none), models, confusion (no ROC: 3 classes), reliability, mistakes,
    # correlation, shift, timeline
    assert pngs(page) == 8


def test_report_is_a_cached_unit_redone_when_an_input_changes(finished):
    tmp, cfg, _ = finished
    again = run_cli("report", "--config", cfg).stdout
    name = load_config(cfg).submit.name
    assert f"[report] skip   {name} (done)" in again and f"[report] report: {published(tmp)[1]}" in again
    other = run_cli("all", "--config", cfg, "--set", "blend.method=mean").stdout
    assert re.findall(r"^\[(\w+)\] run +", other, flags=re.M) == ["blend", "submit", "report"]
    pages = sorted((tmp / "submissions").glob("*.html"))
    assert len(pages) == 2 and all(p.with_suffix(".csv").is_file() for p in pages)


def test_partial_run_report_shows_what_is_done_and_lists_what_is_not(finished):
    tmp, cfg, _ = finished
    before = sorted((tmp / "submissions").glob("*"))
    out = run_cli("report", "--config", cfg, "--set", "models.tiny.seeds=[0, 1]").stdout
    assert not re.search(r"^\[(?!report)\w+\] run", out, flags=re.M), out  # nothing but the report ran
    m = re.search(r"^\[report\] partial report \((\d+) unit\(s\) not done\): (\S+)$", out, flags=re.M)
    assert m and int(m[1]) == 3 + 3 + 1 + 1, out  # seed 1's train and predict units, the blend and the submission
    page = open(m[2]).read()
    assert sorted((tmp / "submissions").glob("*")) == before  # a partial report is not published
    s = sections(page)
    assert list(s) == SECTIONS
    missing = html.unescape(page.split('<section class="missing">')[1].split("</section>")[0])
    name = load_config(cfg).submit.name
    for label in ["train/tiny/seed1/fold0", "predict/tiny/seed1/fold2", f"blend/{name}", f"submit/{name}"]:
        assert re.search(rf"{label}\s*</td><td>(missing|stale)", missing), label
    assert "seed0/fold0" in s["curves"] and "Needs the blend" in s["tta"] and "Needs the blend" in s["shift"]
    assert "This section failed" not in page


def test_report_of_a_run_not_started(tmp):
    cfg = str(write_config(tmp, "pixels"))
    out = run_cli("report", "--config", cfg).stdout
    assert re.findall(r"^\[(\w+)\] run", out, flags=re.M) == ["report"]  # no image cache built for it
    page = open(re.search(r"^\[report\] partial report .*: (\S+)$", out, flags=re.M)[1]).read()
    s = sections(page)
    assert list(s) == SECTIONS and "Needs training" in s["curves"] and "Needs predictions" in s["models"]
    assert "This section failed" not in page


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]  # fmt: skip
# appended to a copy of the page: after load, the DOM says how many images the browser decoded
PROBE = """<script>window.addEventListener("load", () => { const im = [...document.images];
document.body.dataset.images = im.filter(i => i.complete && i.naturalWidth > 0).length + "/" + im.length; });
</script></body>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("PIPELINE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    return exe


def browse(exe: str, profile, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir()
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180, check=True)  # fmt: skip


def test_report_renders_in_headless_chromium(finished, tmp):
    exe = chromium()
    page_path = sorted((finished[0] / "submissions").glob("*.html"))[0]
    page = page_path.read_text()
    probe = tmp / "probe.html"
    probe.write_text(page.replace("</body>", PROBE))
    dom = browse(exe, tmp / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    n = pngs(page)
    assert f'data-images="{n}/{n}"' in dom, dom[-2000:]  # every embedded PNG decoded with a width

    shot = tmp / "shot.png"
    browse(exe, tmp / "profile-shot", f"--screenshot={shot}", "--window-size=1200,5000", page_path.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    coloured = int(((pixels.max(2) - pixels.min(2)) > 80).sum())  # plot colours, not the page's greys
    assert colours > 2000 and coloured > 30000, (colours, coloured)
