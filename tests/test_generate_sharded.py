"""Sharded generation: ``torchrun --nproc_per_node=2 -m synthpair generate`` writes the same folder, byte for byte,
as one process — with a data-dependent stop (mask filter, last block cut at n, a sampled block past the stop left
unwritten), after an interruption resumed sharded or by one process, and for a mask-conditioned generator whose
reference segmenter the sharded run trains on rank 0 alone."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthpair.networks import UNetConfig
from synthpair.synthesis.generate import GenerateConfig, generate, read_manifest
from synthpair.training.trainer import TrainConfig, train_generator

NET = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)
TRAIN = dict(steps=2, batch_size=4, preview_every=0, preview_n=0, checkpoint_every=0, log_every=1, net=NET, amp="off")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SYNTHPAIR_THREADS": "1"}

pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny prepared folder, a joint generator and a mask2image generator (2 training steps each)."""
    import torch

    from conftest import write_tiny_prepared

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sharded")
    data = write_tiny_prepared(root / "data")
    joint = train_generator(data, root / "joint", TrainConfig(**TRAIN), progress=False)
    m2i = train_generator(data, root / "m2i", TrainConfig(method="mask2image", **TRAIN), progress=False)
    torch.set_num_threads(threads)
    return {"data": data, "joint": joint, "m2i": m2i}


def _torchrun(run: Path, out: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``synthpair generate`` under torchrun with 2 processes (the ``--`` keeps torchrun's own parser from reading
    synthpair's ``--n`` as an abbreviation of its ``--nnodes``/``--nproc_per_node``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "--",
           "synthpair", "generate", str(run), "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _tree(a), _tree(b)
    assert sorted(ta) == sorted(tb)
    assert [k for k in ta if ta[k] != tb[k]] == []


def _interrupt_after(out: Path, blocks: int, batch: int, seed: int = 0) -> None:
    """Turn a finished folder into the one a crash right after committing ``blocks`` blocks leaves: progress.json
    of that commit, no dataset.json; later manifest lines (one torn) and pair files stay behind as debris that the
    resumed run must discard."""
    next_seed = seed + blocks * batch
    kept = sum(1 for r in read_manifest(out) if r["seed"] < next_seed)
    progress = json.loads((out / "progress.json").read_text())
    progress.update(next_seed=next_seed, kept=kept, attempted=blocks * batch, complete=False)
    (out / "progress.json").write_text(json.dumps(progress, indent=2))
    (out / "dataset.json").unlink()
    (out / "label_accounting.json").unlink()
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"id": "seed0000099", "se')
    (out / "images" / "seed0000099.png").write_bytes(b"partial")


def test_two_processes_write_the_single_process_folder_and_resume(runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["joint"]
    # a mask filter at the median area makes the number of attempts data-dependent
    probe = generate(run, tmp_path / "probe", GenerateConfig(n=16, steps=2, batch_size=4, keep_empty=True),
                     progress=False)
    min_area = sorted(r["mask_area"] for r in read_manifest(probe))[8]
    args = ["--n", "7", "--batch", "4", "--steps", "2", "--min-area", str(min_area)]
    cfg = GenerateConfig(n=7, steps=2, batch_size=4, min_area=min_area)  # = those arguments (one process)
    ref = generate(run, tmp_path / "single", cfg, progress=False)
    sharded = tmp_path / "sharded"
    proc = _torchrun(run, sharded, args)
    _assert_identical(ref, sharded)

    lines = read_manifest(ref)
    state = json.loads((ref / "progress.json").read_text())
    assert len(lines) == 7 and state["complete"] and state["attempted"] > 7  # the filter dropped pairs
    blocks = state["attempted"] // 4
    assert all(r["batch_seeds"] == list(range(r["seed"] // 4 * 4, r["seed"] // 4 * 4 + 4)) for r in lines)
    if blocks % 2 == 1:  # the stop fell on rank 0's block: rank 1 sampled one more, which must stay unwritten
        assert not (sharded / "images" / f"seed{blocks * 4:07d}.png").exists()
    assert "on 2 processes" in proc.stderr and proc.stderr.count("generated 7 pairs") == 1
    assert proc.stdout.count("synthetic pairs:") == 1  # the CLI's closing line: rank 0 only

    # interrupted after the first block: resumed by torchrun (rounds now start at block 1)
    resumed = tmp_path / "resumed-sharded"
    shutil.copytree(sharded, resumed)
    _interrupt_after(resumed, blocks=1, batch=4)
    _torchrun(run, resumed, args)
    _assert_identical(ref, resumed)

    # interrupted after the second block of a sharded run: resumed by one process
    single = tmp_path / "resumed-single"
    shutil.copytree(sharded, single)
    _interrupt_after(single, blocks=2, batch=4)
    generate(run, single, cfg, progress=False)
    _assert_identical(ref, single)


def test_mask_conditioned_sharded_run_trains_the_reference_segmenter_once(runs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    run = runs["m2i"]
    assert not (run / "reference_segmenter").exists()
    args = ["--n", "5", "--batch", "2", "--steps", "2", "--masks", "real", "--set", "segmenter_steps=2"]
    sharded = tmp_path / "sharded"
    proc = _torchrun(run, sharded, args)  # first use: rank 0 trains RUN/reference_segmenter
    assert proc.stderr.count("training the reference segmenter") == 1
    assert (run / "reference_segmenter" / "results.json").is_file()
    ref = generate(run, tmp_path / "single", GenerateConfig(n=5, steps=2, batch_size=2, masks="real",
                                                            segmenter_steps=2), progress=False)
    _assert_identical(ref, sharded)
    lines = read_manifest(sharded)
    assert len(lines) == 5 and all(r["mask_source"] == "real" and r["faithfulness"] is not None for r in lines)


def test_bad_input_is_refused_on_every_rank_before_anything_is_written(runs: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "bad"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "--",
           "synthpair", "generate", str(runs["m2i"]), "--out", str(out), "--n", "4", "--masks", "fancy"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode != 0
    assert proc.stderr.count("synthpair: error: --masks 'fancy': choose real, augmented or joint:RUN") == 2
    assert not out.exists()
