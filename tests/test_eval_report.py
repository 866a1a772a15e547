"""The run report: built from a tiny (fake) run folder, every section present, self-contained; and opened in
headless Chromium (marker ``browser``; skipped when chromium is absent): no console errors, images load,
screenshot saved (to ``$SYNTHPAIR_ARTIFACTS`` when set, else the test's tmp folder)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_prepared
from synthpair.io import write_json_atomic, write_text_atomic
from synthpair.metrics.segmentation import METRICS

SECTIONS = ("Dataset summary", "Real and synthetic pairs", "Generation metrics", "Segmentation", "Curves",
            "Memorisation", "Config and versions")


def make_fake_run(root: Path) -> Path:
    """A run folder with the layout of ``synthpair run`` (pipeline.py), filled with tiny made-up results."""
    run = root / "run"
    data = write_tiny_prepared(run / "data", n=12, size=24, folds=3, seed=0)
    syn = write_tiny_prepared(run / "synthetic" / "fold_0", n=8, size=24, folds=3, seed=5)
    ids = [f"img{i:03d}" for i in range(8)]
    shutil.copy(data / "images" / "img001.png", syn / "images" / "img002.png")  # one memorised copy
    write_text_atomic(syn / "manifest.jsonl", "".join(json.dumps({"id": i, "seed": k}) + "\n" for k, i in enumerate(ids)))
    write_text_atomic(run / "generator" / "fold_0" / "metrics.jsonl",
                      "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 20)))
    rng = np.random.default_rng(0)
    test_ids = {0: ["img000", "img003", "img006", "img009"], 1: ["img001", "img004", "img007", "img010"]}
    for setting, shift in (("real", 0.0), ("ratio_0.5", 0.02), ("ratio_1", 0.03)):
        for k, cases in test_ids.items():
            fold = run / "segment" / setting / f"fold_{k}"
            rows = [{"id": i, "fold": k, **{m: float(rng.uniform(0.5, 0.9) + shift) for m in METRICS}} for i in cases]
            write_json_atomic(fold / "results.json", {"distance_unit": "pixel", "per_case": rows})
            write_text_atomic(fold / f"fold_{k}" / "loss.jsonl",
                              "".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 10)))
    write_json_atomic(run / "config.json", {"folds": [0], "ratios": [0.5, 1.0], "marker": "config-marker-123"})
    write_json_atomic(run / "env.json", {"synthpair": "0.1.0", "torch": "env-marker-456"})
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthpair.report.build import build_report

    run = make_fake_run(tmp_path_factory.mktemp("report"))
    assert build_report(run) == run / "report" / "results.md"
    return run / "report"


def test_report_html_has_every_section_and_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}</h2>" in page, title
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) >= 5 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "@import" not in page
    assert "FD-radiomics" in page and "real-vs-real baseline" in page and "KID-radiomics" in page
    assert "Dice ↑" in page and "HD95 (pixel) ↓" in page and "Wilcoxon" in page
    assert "Dice vs synthetic ratio" in page and "generator: diffusion loss" not in page  # figure is an image
    assert "config-marker-123" in page and "env-marker-456" in page
    assert "Mask statistics" in page and "compactness" in page
    assert "Spread across folds" in page


def test_report_tables_and_memorised_copy(report: Path) -> None:
    for name in ("results.json", "results.csv", "results.md", "per_case.csv", "generation.json", "generation.csv",
                 "generation.md", "memorisation.csv"):
        assert (report / name).stat().st_size > 50, name
    gen = json.loads((report / "generation.json").read_text())["fold_0"]
    rr = gen["distribution"]["real_half_vs_real_half"]
    assert rr["n_real"] == 4 and rr["n_other"] == 4  # fold 0 trains on 8 of the 12 images
    copy = next(r for r in gen["memorisation"]["rows"] if r["id"] == "img002")
    assert copy["flagged"] and copy["ssim_nn_id"] == "img001" and copy["ssim"] == pytest.approx(1.0)
    res = json.loads((report / "results.json").read_text())
    assert res["settings"]["real+synthetic r=0.5"]["vs_real_only"]["dice"]["n"] == 8  # 2 folds × 4 cases
    assert res["settings"]["real-only"]["across_folds"]["dice"]["n"] == 2
    for fig in ("real_pairs.png", "synthetic_pairs_fold_0.png", "loss_curves.png", "dice_vs_ratio.png",
                "memorisation_fold_0.png"):
        assert (report / "figures" / fig).stat().st_size > 500, fig


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make install adds it when root + apt)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    url = (report / "report.html").resolve().as_uri()
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'(data-images-[a-z]+)="([^"]*)"', body.group(0)))
    assert attrs.get("data-images-loaded") == "true", attrs
    assert int(attrs["data-images-total"]) >= 5 and attrs["data-images-ok"] == attrs["data-images-total"]
    out_dir = Path(os.environ.get("SYNTHPAIR_ARTIFACTS", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "report_screenshot.png"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--hide-scrollbars",
                           "--window-size=1280,3000", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 3000) and len(set(im.convert("L").resize((64, 150)).getdata())) > 20
