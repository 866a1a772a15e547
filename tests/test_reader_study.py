"""Reader study: kappa and scoring math against hand-worked numbers, the answers checks, the blinded page (built,
self-contained, nothing of the key inside) and — in headless Chromium (marker ``browser``; skipped when chromium is
absent) — a reader filling in the page by clicks, the Blob download, the answers kept across a reload, and the
downloaded files scored by the CLI against a hand-made expectation."""
from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.errors import SynthpairError
from synthpair.evaluation.reader_study import call_scores, quality_scores, score_reader_study
from synthpair.metrics.agreement import cohen_kappa, fleiss_kappa, percent_agreement, rating_counts
from synthpair.report.reader_study import ReaderStudyConfig, build_reader_study, contour_overlay

# ------------------------------------------------------------------ agreement, by hand


def test_cohen_and_fleiss_kappa_by_hand() -> None:
    a = list("SRRRSS")
    # equal marginals (3 S each): p_o = 4/6, p_e = .5·.5 + .5·.5 = .5 → kappa = (2/3 - 1/2) / (1/2) = 1/3 for both
    b = list("SSRRSR")
    assert cohen_kappa(a, b) == pytest.approx(1 / 3)
    counts, cats = rating_counts([a, b])
    assert cats == ["R", "S"] and counts.tolist() == [[0, 2], [1, 1], [2, 0], [2, 0], [0, 2], [1, 1]]
    assert fleiss_kappa(counts) == pytest.approx(1 / 3)
    assert percent_agreement([a, b]) == pytest.approx(4 / 6)
    # unequal marginals: B says S always. Cohen: p_o = 3/6, p_e = .5·1 + .5·0 = .5 → 0.
    # Fleiss (= Scott's pi): P_bar = 3/6, p_S = 9/12, p_R = 3/12, P_e = 10/16 → (1/2 - 5/8) / (3/8) = -1/3
    b = list("SSSSSS")
    assert cohen_kappa(a, b) == pytest.approx(0.0)
    assert fleiss_kappa(rating_counts([a, b])[0]) == pytest.approx(-1 / 3)
    # three readers, two categories (Fleiss 1971 arithmetic): items rated (3,0), (2,1), (0,3), (1,2)
    counts = np.array([[3, 0], [2, 1], [0, 3], [1, 2]])
    # P_i = 1, 1/3, 1, 1/3 → P_bar = 2/3; p = (6/12, 6/12) → P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert fleiss_kappa(counts) == pytest.approx(1 / 3)
    assert math.isnan(cohen_kappa(list("SS"), list("SS"))) and math.isnan(fleiss_kappa(np.array([[2, 0], [2, 0]])))
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[2, 0], [1, 0]]))


def test_call_and_quality_scores_by_hand() -> None:
    truth = ["synthetic", "real", "synthetic", "real", "synthetic", "real"]
    call = ["synthetic", "real", "real", "real", "synthetic", "synthetic"]
    s = call_scores(truth, call, [5, 4, 2, 3, 4, 1])
    assert s["correct"] == 4 and s["accuracy"] == pytest.approx(4 / 6)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(2 / 3)
    assert s["confidence"] == pytest.approx(19 / 6)
    assert s["p_vs_chance"] == pytest.approx(44 / 64)  # P(X >= 4) + P(X <= 2), X ~ Bin(6, 1/2)
    # exact Mann–Whitney without ties: real (1, 2) vs synthetic (3, 4, 5): U = 0, p = 2 · 1/C(5,2) = 0.2
    q = quality_scores(["real", "real", "synthetic", "synthetic", "synthetic"], [1, 2, 3, 4, 5])
    assert q["U"] == 0 and q["p"] == pytest.approx(0.2)
    assert q["real"]["mean"] == pytest.approx(1.5) and q["synthetic"]["sd"] == pytest.approx(1.0)
    # with ties: normal approximation with tie and continuity correction, by hand
    q = quality_scores(truth, [2, 4, 3, 5, 2, 4])  # real 4, 5, 4 vs synthetic 2, 3, 2: U = 9
    assert q["U"] == 9 and q["p"] == pytest.approx(_mwu_p(9, 3, 3, [2, 2]))


def _mwu_p(u: float, n1: int, n2: int, ties: list[int]) -> float:
    """Two-sided normal-approximation p of Mann–Whitney U with tie correction and continuity correction 0.5."""
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - sum(t ** 3 - t for t in ties) / (n * (n - 1)))
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)
    return math.erfc(z / math.sqrt(2))


# ------------------------------------------------------------------ scoring a hand-made study

TRUTH = ["synthetic", "real", "synthetic", "real", "synthetic", "real"]
READER_A = {"call": ["synthetic", "real", "real", "real", "synthetic", "synthetic"], "confidence": [5, 4, 2, 3, 4, 1],
            "image_quality": [2, 4, 3, 5, 2, 4], "mask_quality": [1, 2, 3, 4, 5, 5]}
READER_B = {"call": ["synthetic", "synthetic", "real", "real", "synthetic", "real"], "confidence": [3] * 6,
            "image_quality": [3] * 6, "mask_quality": [4] * 6}


def write_key(study: Path, truth: list[str], masks: bool = True, study_id: str = "abc123def456") -> Path:
    study.mkdir(parents=True, exist_ok=True)
    items = [{"item": i, "truth": t, "id": f"x{i}", "case": None} for i, t in enumerate(truth, start=1)]
    (study / "key.json").write_text(json.dumps({"format": "synthpair-reader-key", "version": 1, "study_id": study_id,
                                                "masks": masks, "n": len(truth), "items": items}))
    return study


def write_answers(path: Path, reader: str, answers: dict[str, list], study_id: str = "abc123def456",
                  masks: bool = True) -> Path:
    n = len(answers["call"])
    rows = [{"item": i + 1, **{f: answers[f][i] for f in answers}} for i in range(n)]
    if not masks:
        for r in rows:
            r["mask_quality"] = None
    path.write_text(json.dumps({"format": "synthpair-reader-answers", "version": 1, "study_id": study_id,
                                "reader": reader, "saved_at": "2026-01-01T00:00:00Z", "masks": masks,
                                "complete": True, "answers": rows}))
    return path


def test_scores_of_two_readers_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = write_key(tmp_path / "study", TRUTH)
    a = write_answers(tmp_path / "a.json", "Reader A", READER_A)
    b = write_answers(tmp_path / "b.json", "Reader B", READER_B)
    assert main(["reader-study", "score", str(study), str(a), str(b)]) == 0
    assert "Reader A: accuracy 66.7% (real 66.7%, synthetic 66.7%)" in capsys.readouterr().out
    s = json.loads((study / "scores.json").read_text())
    ra, rb = s["readers"]
    assert (ra["reader"], ra["accuracy"], ra["sensitivity"], ra["specificity"]) == ("Reader A", pytest.approx(4 / 6),
                                                                                    pytest.approx(2 / 3),
                                                                                    pytest.approx(2 / 3))
    assert ra["confidence"] == pytest.approx(19 / 6) and ra["p_vs_chance"] == pytest.approx(44 / 64)
    iq = ra["image_quality"]
    assert iq["real"]["mean"] == pytest.approx(13 / 3) and iq["synthetic"]["mean"] == pytest.approx(7 / 3)
    assert iq["U"] == 9 and iq["p"] == pytest.approx(_mwu_p(9, 3, 3, [2, 2]))
    mq = ra["mask_quality"]  # real 2, 4, 5 vs synthetic 1, 3, 5: U = 1 + 2 + 2.5
    assert mq["U"] == 5.5 and mq["p"] == pytest.approx(_mwu_p(5.5, 3, 3, [2]))
    # B: items 1..6 called S S R R S R → correct 1, 4, 5, 6; synthetic 1, 5 of 1, 3, 5; real 4, 6 of 2, 4, 6
    assert rb["accuracy"] == pytest.approx(4 / 6) and rb["sensitivity"] == pytest.approx(2 / 3)
    assert rb["specificity"] == pytest.approx(2 / 3) and rb["confidence"] == 3
    assert rb["image_quality"]["U"] == 4.5 and rb["image_quality"]["p"] == pytest.approx(1.0)  # all tied
    m = s["mean_over_readers"]
    assert m["n_readers"] == 2 and m["accuracy"] == pytest.approx(4 / 6) and m["confidence"] == pytest.approx(37 / 12)
    assert m["image_quality"]["real"] == pytest.approx((13 / 3 + 3) / 2)
    p = s["pooled"]
    assert p["n"] == 12 and p["correct"] == 8 and p["p_vs_chance"] is None
    assert p["image_quality"]["real"]["n"] == 6
    calls = s["agreement"]["call"]  # see test_cohen_and_fleiss_kappa_by_hand: A = SRRRSS, B = SSRRSR
    assert calls["cohen_kappa"] == pytest.approx(1 / 3) and calls["fleiss_kappa"] == pytest.approx(1 / 3)
    assert calls["percent_agreement"] == pytest.approx(4 / 6)
    # image quality as nominal categories: A = 2 4 3 5 2 4, B = 3 always → agree on item 3 only: P_bar = 1/6;
    # p(2) = 2/12, p(3) = 7/12, p(4) = 2/12, p(5) = 1/12 → P_e = 58/144; kappa = (24 - 58) / (144 - 58)
    assert s["agreement"]["image_quality"]["fleiss_kappa"] == pytest.approx(-34 / 86)
    md = (study / "scores.md").read_text()
    assert "| Reader A | 66.7 | 66.7 | 66.7 | 0.688 | 3.17 |" in md
    assert "| avg (mean of readers) | 66.7 | 66.7 | 66.7 | – | 3.08 |" in md
    assert "| pooled (12 answers) |" in md and "Fleiss" in md and "| real / synthetic call | 0.333 | 0.333 | 66.7 |" in md
    assert "4.33 ± 0.58 | 2.33 ± 0.58 | 9.0 |" in md


def test_one_reader_without_masks(tmp_path: Path) -> None:
    study = write_key(tmp_path / "study", TRUTH, masks=False)
    a = write_answers(tmp_path / "a.json", "A", {k: v for k, v in READER_A.items() if k != "mask_quality"},
                      masks=False)
    s = score_reader_study(study, [a])
    assert s["agreement"] is None and s["readers"][0]["mask_quality"] is None
    assert "One reader" in (study / "scores.md").read_text() and "Mask quality" not in (study / "scores.md").read_text()


def _edited(path: Path, fn) -> Path:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))
    return path


def test_answers_refused_with_one_line_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = write_key(tmp_path / "study", TRUTH)
    good = write_answers(tmp_path / "a.json", "Reader A", READER_A)

    def refused(files: list[Path | str], match: str, where: Path | None = None) -> None:
        assert main(["reader-study", "score", str(study), *map(str, files)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err and (where is None or str(where) in err), err

    other = write_answers(tmp_path / "other.json", "Reader B", READER_B, study_id="ffffffffffff")
    refused([good, other], "answers for study 'ffffffffffff'", other)
    dup = write_answers(tmp_path / "dup.json", "  reader a ", READER_B)
    refused([good, dup], "also answered in", dup)
    refused([good, good], "given twice")
    missing = _edited(write_answers(tmp_path / "m.json", "C", READER_B), lambda o: o["answers"].pop(3))
    refused([missing], "image 4: all", missing)
    open_field = _edited(write_answers(tmp_path / "o.json", "C", READER_B),
                         lambda o: o["answers"][1].update(confidence=None))
    refused([open_field], "image 2: confidence", open_field)
    unknown = _edited(write_answers(tmp_path / "u.json", "C", READER_B),
                      lambda o: o["answers"].append({"item": 7, "call": "real"}))
    refused([unknown], "unknown image 7")
    bad = _edited(write_answers(tmp_path / "v.json", "C", READER_B), lambda o: o["answers"][0].update(image_quality=6))
    refused([bad], "image_quality is 6")
    bad = _edited(write_answers(tmp_path / "w.json", "C", READER_B), lambda o: o["answers"][0].update(call="fake"))
    refused([bad], "call is 'fake'")
    nameless = write_answers(tmp_path / "n.json", " ", READER_B)
    refused([nameless], "no reader name")
    (tmp_path / "x.json").write_text(json.dumps({"format": "something"}))
    refused([tmp_path / "x.json"], "not a synthpair reader-study answers file")
    refused([tmp_path / "nope.json"], "not found")
    assert main(["reader-study", "score", str(tmp_path), str(good)]) == 2
    assert "no key.json" in capsys.readouterr().err
    assert not (study / "scores.json").exists() and not (study / "scores.md").exists()
    nomask = write_key(tmp_path / "nomask", TRUTH, masks=False)
    assert main(["reader-study", "score", str(nomask), str(good)]) == 2
    assert "shows no masks" in capsys.readouterr().err


# ------------------------------------------------------------------ building the page


def make_synthetic(root: Path, data: Path, n: int = 6, fold: int = 0, size: int = 16, seed: int = 5) -> Path:
    syn = write_tiny_prepared(root, n=n, seed=seed, size=size)
    train = json.loads((data / "splits.json").read_text())["folds"][fold]["train"]
    (root / "manifest.jsonl").write_text("".join(
        json.dumps({"id": f"img{i:03d}", "seed": 100 + i, "fold": fold, "train_cases": train}) + "\n"
        for i in range(n)))
    return syn


@pytest.fixture
def study_inputs(tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    return tiny_data, make_synthetic(tmp_path / "syn", tiny_data)


def test_page_is_blinded_and_self_contained(study_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    data, syn = study_inputs
    out = build_reader_study(syn, data, tmp_path / "study", ReaderStudyConfig(n=8, seed=1, masks=True))
    assert sorted(p.name for p in out.iterdir()) == ["key.json", "reader_study.html"]
    key = json.loads((out / "key.json").read_text())
    page = (out / "reader_study.html").read_text()
    assert key["n_real"] == 4 and key["n_synthetic"] == 4 and [it["item"] for it in key["items"]] == list(range(1, 9))
    assert key["study_id"] in page and f'data-study-id="{key["study_id"]}"' in page
    train = json.loads((data / "splits.json").read_text())["folds"][0]["train"]
    assert all(it["case"] in train for it in key["items"] if it["truth"] == "real")  # training side of the fold
    assert {it["seed"] for it in key["items"] if it["truth"] == "synthetic"} <= set(range(100, 106))
    # nothing of the key in the page: no ids, cases, seeds, paths, truths
    for it in key["items"]:
        assert it["id"] not in page and (it["case"] is None or it["case"] not in page)
    assert str(data) not in page and str(syn) not in page and "truth" not in page and "key.json" not in page
    # self-contained: every image inline, no URL to fetch, a CSP that blocks fetching
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) == 16 and all(s.startswith("data:image/png;base64,") for s in imgs)  # image + contours each
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "fetch(" not in page
    assert "XMLHttpRequest" not in page and "default-src 'none'" in page
    for field in ("call", "confidence", "image_quality", "mask_quality"):
        assert f'name="{field}-8"' in page
    # same seed → the same study; another seed → another draw and id
    again = build_reader_study(syn, data, tmp_path / "again", ReaderStudyConfig(n=8, seed=1, masks=True))
    assert (again / "reader_study.html").read_text() == page
    other = build_reader_study(syn, data, tmp_path / "other", ReaderStudyConfig(n=8, seed=2, masks=True))
    assert json.loads((other / "key.json").read_text())["study_id"] != key["study_id"]
    # without masks: one image per card, no mask question, unlabelled images allowed
    plain = build_reader_study(syn, data, tmp_path / "plain", ReaderStudyConfig(n=6))
    plain_page = (plain / "reader_study.html").read_text()
    assert len(re.findall(r"<img ", plain_page)) == 6 and "mask_quality-1" not in plain_page


def test_contour_overlay() -> None:
    img = np.full((4, 4), 10, np.uint8)
    mask = np.zeros((4, 4), np.int64)
    mask[1:3, 1:3] = 1
    out = contour_overlay(img, mask, 2)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    ring = np.zeros((8, 8), bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False  # the inner boundary of the upscaled 4×4 square
    assert (out[ring] == (255, 214, 0)).all() and (out[~ring] == 10).all()


def test_build_refusals_write_nothing(study_inputs: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    data, syn = study_inputs
    out = tmp_path / "study"
    base = ["reader-study", str(syn), "--real", str(data), "--out", str(out)]

    def refused(argv: list[str], match: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err, err

    refused([*base, "--n", "30"], "needs 15 real ones")
    refused([*base, "--n", "14"], "6 synthetic image(s) but --n 14 needs 7")
    refused([*base, "--n", "1"], "at least 2 images")
    refused([*base, "--fold", "7"], "--fold 7")
    small = make_synthetic(tmp_path / "small", data, size=8)
    refused(["reader-study", str(small), "--real", str(data), "--out", str(out), "--n", "4"], "8×8")
    mixed = make_synthetic(tmp_path / "mixed", data)
    (mixed / "manifest.jsonl").write_text((mixed / "manifest.jsonl").read_text().replace('"fold": 0, "train', '"fold": 1, "train', 1))
    refused(["reader-study", str(mixed), "--real", str(data), "--out", str(out), "--n", "4"], "pass --fold K")
    refused(["reader-study", str(syn), "--out", str(out)], "needs --real DATA and --out DIR")
    refused(["reader-study", "score", str(out), "a.json", "--n", "3"], "--n belongs to building a study")
    assert not out.exists()
    assert main([*base, "--n", "4"]) == 0
    refused([*base, "--n", "4"], "already exists")
    assert main([*base, "--n", "4", "--overwrite", "--masks"]) == 0


# ------------------------------------------------------------------ the page in headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# clicks through the page's own controls, then presses "Download answers"
FILL = """<script>(function () {
  var plan = PLAN;
  if (plan.reader !== null) {
    var r = document.getElementById("reader"); r.value = plan.reader;
    r.dispatchEvent(new Event("input", {bubbles: true}));
  }
  Object.keys(plan.answers).forEach(function (item) {
    var a = plan.answers[item];
    Object.keys(a).forEach(function (f) {
      document.querySelector('input[data-item="' + item + '"][data-field="' + f + '"][value="' + a[f] + '"]').click();
    });
  });
  document.getElementById("download").click();
})();</script>"""


def _run_chromium(args: list[str], home: Path, out: Path, downloads: int) -> tuple[str, str]:
    """Run headless Chromium with ``--dump-dom`` → (stdout, stderr). Chromium sometimes prints the DOM and then
    does not exit while a download is being saved; so once the DOM is out (and ``downloads`` files are in
    ``home``/Downloads) it gets a few seconds to exit, then its process group — started here — is killed."""
    import signal
    import time

    with open(out / "stdout.txt", "w") as so, open(out / "stderr.txt", "w") as se:
        proc = subprocess.Popen(args, stdout=so, stderr=se, env={**os.environ, "HOME": str(home)},
                                start_new_session=True)
        deadline, dumped = time.monotonic() + 120, None
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
                done = "</html>" in (out / "stdout.txt").read_text(errors="replace")
                saved = len([p for p in (home / "Downloads").glob("*.json")]) >= downloads \
                    if downloads else True
                if done and saved:
                    dumped = dumped or time.monotonic()
                    if time.monotonic() - dumped > 5:
                        break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stdout = (out / "stdout.txt").read_text(errors="replace")
    assert "</html>" in stdout, (out / "stderr.txt").read_text()[-2000:]
    return stdout, (out / "stderr.txt").read_text(errors="replace")


def _open_in_chromium(page: Path, plan: dict, profile: Path, home: Path, tmp: Path, downloads: int = 0
                      ) -> tuple[str, dict | None]:
    """Load a copy of ``page`` with FILL injected at the end of <body> → (DOM after scripts, answers JSON written by
    exportAnswers() into <pre id="answers-json"> or None). Downloads land in ``home``/Downloads (``downloads``: how
    many files should be there afterwards)."""
    run = tmp / f"{profile.name}_{len(list(tmp.iterdir()))}"
    run.mkdir()
    test_page = run / "page.html"
    test_page.write_text(page.read_text().replace("</body>", FILL.replace("PLAN", json.dumps(plan)) + "</body>"))
    dom, stderr = _run_chromium([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                                 "--virtual-time-budget=5000", "--dump-dom", test_page.resolve().as_uri()],
                                home, run, downloads)
    console = [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    m = re.search(r'<pre id="answers-json">(.*?)</pre>', dom, re.S)
    assert m, dom[:500]
    text = html.unescape(m.group(1))
    return dom, (json.loads(text) if text.strip() else None)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test adds it when root + apt)")
def test_readers_fill_the_page_in_chromium_and_the_cli_scores_them(study_inputs: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    data, syn = study_inputs
    study = build_reader_study(syn, data, tmp_path / "study", ReaderStudyConfig(n=8, seed=3, masks=True))
    page = study / "reader_study.html"
    key = json.loads((study / "key.json").read_text())
    truth = {it["item"]: it["truth"] for it in key["items"]}
    flip = {"real": "synthetic", "synthetic": "real"}
    # reader A: right on every image but 2 and 5; reader B: calls every image synthetic
    plan_a = {"reader": "Dr A", "answers": {
        str(i): {"call": flip[truth[i]] if i in (2, 5) else truth[i], "confidence": 1 + i % 5,
                 "image_quality": 5 if truth[i] == "real" else 2, "mask_quality": 3} for i in truth}}
    plan_b = {"reader": "Dr B", "answers": {
        str(i): {"call": "synthetic", "confidence": 4, "image_quality": 3, "mask_quality": 1 + i % 5} for i in truth}}
    tmp = tmp_path / "pages"
    tmp.mkdir()
    # no name yet: nothing exported, the reader is asked for it
    dom, answers = _open_in_chromium(page, {"reader": None, "answers": {"1": {"call": "real"}}},
                                     tmp_path / "profile_0", tmp_path / "home_0", tmp)
    assert answers is None and "Enter your name first." in dom and 'data-complete="false"' in dom
    # the Blob download, then a reload that keeps the answers (localStorage of the same browser profile): export
    # again without clicking. Headless Chromium saves downloads to $HOME/Downloads and localStorage to the profile;
    # on exit (or when killed after the DOM is out, see _run_chromium) it may drop a download still in flight or a
    # localStorage commit not yet flushed, so an attempt missing either gets two more tries in a fresh profile.
    again = None
    for attempt in range(3):
        profile_a, home_a = tmp_path / f"profile_a{attempt}", tmp_path / f"home_a{attempt}"
        dom, answers = _open_in_chromium(page, plan_a, profile_a, home_a, tmp, downloads=1)
        downloaded = home_a / "Downloads" / f"answers_{key['study_id']}_Dr_A.json"
        if not downloaded.is_file():
            continue
        _, again = _open_in_chromium(page, {"reader": None, "answers": {}}, profile_a, home_a, tmp)
        if again is not None:
            break
    assert 'data-complete="true"' in dom and "8 / 8 images answered" in dom
    assert answers["study_id"] == key["study_id"] and answers["reader"] == "Dr A" and answers["complete"] is True
    assert answers["answers"][1] == {"item": 2, **plan_a["answers"]["2"]}
    link = re.search(r'<a id="download-link"[^>]*>', dom).group(0)
    assert 'href="blob:' in link and f'download="answers_{key["study_id"]}_Dr_A.json"' in link
    assert downloaded.is_file() and json.loads(downloaded.read_text())["answers"] == answers["answers"]
    assert again is not None, "a reload in the same profile lost the answers in 3 fresh profiles"
    assert again["reader"] == "Dr A" and again["answers"] == answers["answers"]
    _, answers_b = _open_in_chromium(page, plan_b, tmp_path / "profile_b", tmp_path / "home_b", tmp)
    file_b = tmp_path / "b.json"
    file_b.write_text(json.dumps(answers_b))

    assert main(["reader-study", "score", str(study), str(downloaded), str(file_b)]) == 0
    s = json.loads((study / "scores.json").read_text())
    ra, rb = s["readers"]
    n_real = sum(t == "real" for t in truth.values())
    wrong_real = sum(truth[i] == "real" for i in (2, 5))
    assert ra["reader"] == "Dr A" and ra["correct"] == 6 and ra["accuracy"] == pytest.approx(6 / 8)
    assert ra["specificity"] == pytest.approx((n_real - wrong_real) / n_real)
    assert ra["sensitivity"] == pytest.approx((8 - n_real - (2 - wrong_real)) / (8 - n_real))
    assert ra["confidence"] == pytest.approx(np.mean([1 + i % 5 for i in truth]))
    assert ra["image_quality"]["real"]["mean"] == 5 and ra["image_quality"]["synthetic"]["mean"] == 2
    assert ra["image_quality"]["U"] == n_real * (8 - n_real)  # every real score above every synthetic one
    assert rb["accuracy"] == pytest.approx((8 - n_real) / 8) and rb["sensitivity"] == 1 and rb["specificity"] == 0
    calls_a = [plan_a["answers"][str(i)]["call"] for i in sorted(truth)]
    assert s["agreement"]["call"]["cohen_kappa"] == pytest.approx(cohen_kappa(calls_a, ["synthetic"] * 8))
    assert s["agreement"]["call"]["cohen_kappa"] == pytest.approx(0.0)  # B's calls never vary: p_o = p_e
    assert "| Dr A | " in (study / "scores.md").read_text()
    # Dr A's file again under another name is the same reader; another study's answers are refused
    twin = tmp_path / "twin.json"
    twin.write_text(json.dumps({**answers, "reader": "dr a"}))
    with pytest.raises(SynthpairError, match="also answered in"):
        score_reader_study(study, [downloaded, twin])
    other = build_reader_study(syn, data, tmp_path / "other", ReaderStudyConfig(n=8, seed=4, masks=True))
    with pytest.raises(SynthpairError, match="answers for study"):
        score_reader_study(other, [downloaded])
