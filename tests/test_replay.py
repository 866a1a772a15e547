"""``synthpair replay`` for every writer of a synthetic folder: generate (joint, joint_cluster), the polyp
study's sampled sets (explicit cluster labels, per-cluster joint runs, unconditional Full-Diff) and their
views, inpaint (joint, joint_cluster) and harmonise — each pair is re-created bit for bit from its manifest
line alone, and a tampered stored image is reported as different."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_clustering import write_two_groups

pytestmark = pytest.mark.usefixtures("one_thread")

NET = ["net.channels=[8,16]", "net.attention_levels=[false,false]", "net.norm_num_groups=8",
       "net.num_head_channels=8"]


def _train(data: Path, out: Path, method: str, **kw: object) -> Path:
    from synthpair.config import apply_overrides
    from synthpair.training.trainer import TrainConfig, train_generator

    cfg = apply_overrides(TrainConfig(method=method, fold=0, steps=8, batch_size=4, lr=5e-3, warmup_steps=0, preview_every=0, preview_n=0,
                                      checkpoint_every=0, log_every=1, amp="off", **kw), NET)
    return train_generator(data, out, cfg, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from synthpair.data.clustering import ClusterConfig, cluster_dataset

    root = tmp_path_factory.mktemp("replay")
    data = write_two_groups(root / "data", n=16, size=16)
    cluster_dataset(data, root / "cl", ClusterConfig(k=2, fold=0))
    return {"root": root, "data": data, "cl": root / "cl",
            "joint": _train(data, root / "joint", "joint"),
            "cond": _train(data, root / "cond", "joint_cluster", clusters=str(root / "cl" / "clusters.json"))}


def _replays_all(syn: Path, at_most: int = 3) -> list[str]:
    """Replay (up to ``at_most``) pairs of ``syn``: each must reproduce its stored files exactly."""
    from synthpair.synthesis.generate import verify_pair
    from synthpair.synthesis.manifest import read_manifest

    ids = [r["id"] for r in read_manifest(syn)][:at_most]
    assert ids, f"{syn}: no pairs"
    for pid in ids:
        assert verify_pair(syn, pid), f"{syn.name}/{pid} not reproduced"
    return ids


def _tamper_is_detected(syn: Path, pid: str, tmp_path: Path) -> None:
    import shutil

    from synthpair.data.dataset import read_png
    from synthpair.io import save_png_atomic
    from synthpair.synthesis.generate import verify_pair

    copy = tmp_path / f"tampered_{syn.name}"
    shutil.copytree(syn, copy, symlinks=False)
    img = read_png(copy / "images" / f"{pid}.png").copy()
    img.flat[0] = (int(img.flat[0]) + 1) % 256
    save_png_atomic(copy / "images" / f"{pid}.png", img)
    assert not verify_pair(copy, pid)


def test_polyp_sets_with_explicit_cluster_labels_replay(runs: dict[str, Path], tmp_path: Path) -> None:
    """The study samples each item's pairs for the item's cluster: the replay must use that label, not a
    label-free draw from the prior (which differs for some seeds)."""
    from synthpair.experiments.polyp import sample_for_items
    from synthpair.methods.cluster import labels_for_seeds
    from synthpair.networks.export import read_export_config
    from synthpair.synthesis.manifest import read_manifest

    data, cl = runs["data"], runs["cl"]
    clusters = json.loads((cl / "clusters.json").read_text())
    assign = {k: int(v) for k, v in clusters["assignments"].items()}
    items = sorted(assign)
    syn = sample_for_items(runs["cond"], data, 0, items, 1, tmp_path / "diff", seed=0, clusters=assign, steps=2,
                           batch_size=4, min_area=1, min_component=1)
    recs = read_manifest(syn)
    prior = read_export_config(runs["cond"] / "export")["clusters"]["prior"]
    differs = [r for r in recs if labels_for_seeds([r["seed"]], prior)[0] != r["cluster"]]
    assert differs, "test data: every explicit label equals the prior draw, the test would prove nothing"
    _replays_all(syn, at_most=len(recs))
    _tamper_is_detected(syn, differs[0]["id"], tmp_path)
    # the view of the first copy replays too (symlinked images)
    from synthpair.experiments.polyp import view_set

    _replays_all(view_set(syn, tmp_path / "diff_m1", 1))


def test_polyp_per_cluster_and_unconditional_sets_replay(runs: dict[str, Path], tmp_path: Path) -> None:
    from synthpair.experiments.polyp import sample_for_items

    data, cl = runs["data"], runs["cl"]
    assign = {k: int(v) for k, v in json.loads((cl / "clusters.json").read_text())["assignments"].items()}
    items = sorted(assign)[:6]
    per = sample_for_items({0: runs["joint"], 1: runs["joint"]}, data, 0, items, 1, tmp_path / "pc", seed=0,
                           clusters=assign, steps=2, batch_size=4, min_area=1, min_component=1)
    _replays_all(per)
    full = sample_for_items(runs["joint"], data, 0, items, 1, tmp_path / "full", seed=0, clusters=assign, steps=2,
                            batch_size=4, min_area=1, min_component=1, relation="none")
    _replays_all(full)


INPAINT = dict(mode="fast", steps=3, jump_length=2, resample=2, dilate_px=2, items="5", batch_size=4, device="cpu",
               require_interior=False, min_area=1, min_component=1, per_image=2)


def test_inpaint_and_harmonise_replay(runs: dict[str, Path], tmp_path: Path) -> None:
    """Inpainted pairs (a RePaint block of several sources; a joint run, a joint_cluster run with its drawn
    target cluster, two per-cluster joint runs) and harmonised pairs (a block of the input folder, colour
    matched to the source) replay from their lines; so does ``synthpair replay`` on the CLI."""
    from synthpair.cli.main import main
    from synthpair.synthesis.harmonise import HarmoniseConfig, harmonise
    from synthpair.synthesis.inpaint import InpaintConfig, inpaint
    from synthpair.synthesis.manifest import read_manifest

    data = runs["data"]
    cfg = InpaintConfig(**INPAINT)
    one = inpaint(data, [runs["joint"]], tmp_path / "inp", cfg, progress=False)
    ids = _replays_all(one, at_most=5)
    _tamper_is_detected(one, ids[-1], tmp_path)
    lab = inpaint(data, [runs["cond"]], tmp_path / "inp_cond", cfg, clusters=runs["cl"] / "clusters.json",
                  progress=False)
    assert {r["target_cluster"] for r in read_manifest(lab)} <= {0, 1}
    _replays_all(lab, at_most=4)
    pc = inpaint(data, [runs["joint"], runs["joint"]], tmp_path / "inp_pc", cfg, progress=False)
    _replays_all(pc, at_most=4)
    har = harmonise(one, runs["joint"], tmp_path / "har", HarmoniseConfig(strength=0.5, steps=4, batch_size=3,
                                                                           device="cpu", colour_match=True, seed=2),
                    progress=False)
    hids = _replays_all(har, at_most=5)
    assert main(["replay", str(har), hids[-1]]) == 0
    assert main(["replay", str(lab), read_manifest(lab)[0]["id"]]) == 0
    _tamper_is_detected(har, hids[0], tmp_path)


def test_lines_without_a_recipe_are_refused_with_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    """A folder written before its writer recorded the replay block gets a one-line message, not a traceback."""
    from synthpair.cli.main import main
    from synthpair.errors import SynthpairError
    from synthpair.synthesis.generate import verify_pair
    from synthpair.synthesis.inpaint import InpaintConfig, inpaint
    from synthpair.synthesis.manifest import read_manifest

    syn = inpaint(runs["data"], [runs["joint"]], tmp_path / "inp", InpaintConfig(**{**INPAINT, "items": "1"}),
                  progress=False)
    lines = read_manifest(syn)
    old = [{k: v for k, v in r.items() if k not in ("batch_seeds", "batch_items")} for r in lines]
    (syn / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(SynthpairError, match="inpaint again"):
        verify_pair(syn, lines[0]["id"])
    assert main(["replay", str(syn), lines[0]["id"]]) == 2


def test_replay_runs_with_the_threads_the_line_was_written_with(runs: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every writer records its CPU threads (``cpu_threads``: ``--threads auto`` picks them by load, and the count
    changes float reductions); replay switches to them for the pair and restores the caller's count after. A line
    without the key (older folders) replays with the caller's count."""
    import torch

    import synthpair.synthesis.replay as replay
    from synthpair.synthesis.generate import GenerateConfig, generate, verify_pair
    from synthpair.synthesis.harmonise import HarmoniseConfig, harmonise
    from synthpair.synthesis.inpaint import InpaintConfig, inpaint
    from synthpair.synthesis.manifest import read_manifest

    torch.set_num_threads(1)  # the writers run with one thread (the module's fixture)
    syn = generate(runs["joint"], tmp_path / "gen", GenerateConfig(n=2, steps=2, sampler="ddim", seed=0,
                                                                   segmenter="off", keep_empty=True, min_area=0),
                   progress=False)
    inp = inpaint(runs["data"], [runs["joint"]], tmp_path / "inp", InpaintConfig(**{**INPAINT, "items": "1"}),
                  progress=False)
    torch.set_num_threads(2)
    har = harmonise(inp, runs["joint"], tmp_path / "har", HarmoniseConfig(strength=0.5, steps=2, batch_size=2,
                                                                           device="cpu", seed=0), progress=False)
    assert {r["cpu_threads"] for r in read_manifest(syn) + read_manifest(inp)} == {1}
    assert {r["cpu_threads"] for r in read_manifest(har)} == {2}  # harmonise's own count replaces the input's
    seen: list[int] = []
    inner = replay._replay
    monkeypatch.setattr(replay, "_replay", lambda rec: (seen.append(torch.get_num_threads()), inner(rec))[1])
    torch.set_num_threads(2)
    for folder in (syn, inp):
        assert verify_pair(folder, read_manifest(folder)[0]["id"])
    torch.set_num_threads(1)
    assert verify_pair(har, read_manifest(har)[0]["id"])
    assert seen == [1, 1, 2] and torch.get_num_threads() == 1  # the recorded counts; the caller's count restored
    lines = read_manifest(syn)
    (syn / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "cpu_threads"}) + "\n"
                                                for r in lines))
    torch.set_num_threads(1)
    assert verify_pair(syn, lines[0]["id"]) and seen[-1] == 1
