"""synthpair experiment polyp: tiny end-to-end run (clusters → joint_cluster / per-cluster / full generators →
sampled, harmonised sets → full-synthetic and small-data studies), resume, provenance, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_clustering import write_two_groups

TINY = ["--k", "2", "--net-channels", "8", "16", "--gen-steps", "4", "--gen-batch", "4", "--sample-steps", "2",
        "--seg-steps", "2", "--seg-batch", "4", "--seeds", "0", "--real-sizes", "4", "--no-progress"]


@pytest.mark.slow
def test_polyp_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthpair.cli.main import main
    from synthpair.data.dataset import PreparedDataset
    from synthpair.synthesis.manifest import read_manifest

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_two_groups(tmp_path / "data", n=16, size=16)
    out = tmp_path / "exp"
    assert main(["experiment", "polyp", str(data), "--out", str(out), "--per-cluster", *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    train, test = PreparedDataset.open(data).split(0)
    clusters = json.loads((out / "clusters" / "clusters.json").read_text())
    assert set(clusters["assignments"]) == set(train)
    # generators: one cluster-conditioned, one per cluster (on its items only), one full
    assert json.loads((out / "gen" / "cond" / "export" / "config.json").read_text())["clusters"]["k"] == 2
    for c in range(2):
        items = json.loads((out / "gen" / f"cluster_{c}" / "training_cases.json").read_text())["items"]
        assert sorted(items) == sorted(i for i, v in clusters["assignments"].items() if v == c)
    # Diff: one pair per training image, sampled for that image's cluster; never a test case anywhere
    recs = read_manifest(out / "syn" / "diff")
    info = json.loads((out / "syn" / "diff" / "dataset.json").read_text())
    sources = [r["source_item"] for r in recs]
    assert len(set(sources)) == len(sources) == len(train) - info["unfilled_slots"] and set(sources) <= set(train)
    assert all(r["cluster"] == clusters["assignments"][r["source_item"]] for r in recs)
    assert all(r["method"] == "joint_cluster" for r in recs)
    test_cases = {PreparedDataset.open(data).case_of(i) for i in test}
    for name in ("diff", "full", "diff_pc", "styled"):
        for r in read_manifest(out / "syn" / name):
            assert not set(r["train_cases"]) & test_cases and r["source_case"] not in test_cases
    assert {r["method"] for r in read_manifest(out / "syn" / "diff_pc")} == {"joint"}
    # tables: Table 6 rows and the small-data rows, Dice/IoU in [0, 1]
    full = res["full_synthetic"]
    assert set(full) == {"Real", "Diff", "Styled-Diff", "Full-Diff", "Diff (per-cluster)"}
    for row in full.values():
        cells = [row["all"]] if "all" in row else list(row.values())
        for cell in cells:
            assert 0.0 <= cell["dice"]["mean"] <= 1.0 and 0.0 <= cell["iou"]["mean"] <= 1.0
    small = res["small_data"]["rows"]["4"]
    assert small["real"]["dice"]["n"] == 1 and small["synthetic"]["dice"]["n"] == 1
    seg = json.loads((out / "seg" / "small" / "n4_styled_s0" / "results.json").read_text())
    assert seg["config"]["mixing"] == "replace" and seg["config"]["n_real"] == 4
    gen = res["generation"]
    assert gen["diff"]["clusters"]["agreement"] is not None and gen["diff_pc"]["clusters"]["agreement"] is not None
    assert all(gen[k]["fd"] is not None and gen[k]["fd"] >= 0 for k in ("diff", "full", "styled", "diff_pc"))
    md = (out / "results.md").read_text()
    assert "Styled-Diff" in md and "| 4 |" in md
    # resume: everything is skipped, same numbers
    mtime = (out / "seg" / "full" / "real_s0" / "results.json").stat().st_mtime
    assert main(["experiment", "polyp", str(data), "--out", str(out), "--per-cluster", *TINY]) == 0
    assert (out / "seg" / "full" / "real_s0" / "results.json").stat().st_mtime == mtime
    assert json.loads((out / "results.json").read_text())["full_synthetic"] == full
    # other generator settings in the same folder → one-line error
    bad = [a if a != "4" else "5" for a in TINY]
    assert main(["experiment", "polyp", str(data), "--out", str(out), *bad]) == 2


def test_bad_arguments(tmp_path: Path) -> None:
    from synthpair.cli.main import main

    data = write_two_groups(tmp_path / "data", n=8, size=16)
    assert main(["experiment", "polyp", str(data), "--out", str(tmp_path / "e"), "--samples", "4"]) == 2
    assert main(["experiment", "polyp", str(data), "--out", str(tmp_path / "e"), "--replace-p", "2"]) == 2


def test_set_metrics_on_a_copy_of_the_real_pairs(tmp_path: Path) -> None:
    """A 'synthetic' set that is the real training pairs themselves: FD ≈ 0 against them, every pair lands in
    its own cluster (two well-separated groups), and a view keeps only the first copy of each item."""
    import numpy as np

    from synthpair.data.clustering import ClusterConfig, cluster_dataset
    from synthpair.data.dataset import PreparedDataset, dataset_info, write_dataset_json, write_pair
    from synthpair.experiments.polyp import set_metrics, view_set
    from synthpair.io import write_text_atomic

    data = write_two_groups(tmp_path / "data", n=16, size=16)
    cl = cluster_dataset(data, tmp_path / "cl", ClusterConfig(k=2, fold=0))
    ds = PreparedDataset.open(data)
    train, _ = ds.split(0)
    images, masks = ds.load(train)
    syn = tmp_path / "syn"
    lines, items = [], []
    for copy in range(2):
        for i, (it, im, m) in enumerate(zip(train, images, masks)):
            pid = f"p{copy}_{i}"
            write_pair(syn, pid, im, m)
            lines.append(json.dumps({"id": pid, "source_item": it, "copy": copy, "train_cases": [],
                                     "cluster": cl["assignments"][it]}))
            items.append({"id": pid, "case": f"synthetic:{pid}"})
    write_text_atomic(syn / "manifest.jsonl", "\n".join(lines) + "\n")
    write_dataset_json(syn, dataset_info(name="copy", modality="x", channels=3, labels={"background": 0, "polyp": 1},
                                         size=(16, 16), normalisation={}, items=items))
    view = view_set(syn, tmp_path / "syn_m1", 1)
    assert len(PreparedDataset.open(view, require_splits=False).ids) == len(train)
    res = set_metrics(data, 0, cl, view)
    assert res["n"] == len(train)
    assert res["fd"] == pytest.approx(0.0, abs=1e-6)
    assert res["clusters"]["agreement"] == 1.0
    assert [r["n"] for r in res["clusters"]["per_cluster"]] == cl["sizes"]
    assert np.isfinite(res["fd_real_half_vs_half"]) and res["fd_real_half_vs_half"] > 0
