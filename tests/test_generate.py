"""The generate stage: manifest provenance, bit-exact replay, mask filter, resume after an interruption."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from synthpair.data.dataset import PreparedDataset, read_png
from synthpair.errors import SynthpairError
from synthpair.networks import UNetConfig
from synthpair.synthesis import generate as gen_mod
from synthpair.synthesis.generate import GenerateConfig, clean_mask, generate, read_manifest, verify_pair
from synthpair.training.trainer import TrainConfig, train_generator

TINY_NET = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)
TINY_TRAIN = TrainConfig(steps=3, batch_size=4, preview_every=0, checkpoint_every=0, log_every=1, net=TINY_NET,
                         amp="off")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("gen")
    data = write_tiny_prepared(root / "data")
    run = train_generator(data, root / "run", TINY_TRAIN, progress=False)
    return data, run


def _cfg(**kw: object) -> GenerateConfig:
    base = GenerateConfig(n=5, steps=3, batch_size=4, min_area=0, min_component=1, keep_empty=True, amp="off")
    return dataclasses.replace(base, **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.png"))}


def test_manifest_records_provenance(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny_run
    syn = generate(run, tmp_path / "syn", _cfg(), progress=False)
    lines = read_manifest(syn)
    assert len(lines) == 5
    train_cases, test_cases = PreparedDataset.open(data).fold_cases(0)
    for i, rec in enumerate(lines):
        assert rec["seed"] == i and rec["id"] == f"seed{i:07d}"
        assert rec["batch_seeds"] == ([0, 1, 2, 3] if i < 4 else [4, 5, 6, 7])
        assert rec["train_cases"] == sorted(train_cases) and not set(rec["train_cases"]) & set(test_cases)
        assert rec["fold"] == 0 and rec["sampler"] == "dpm++2m" and rec["steps"] == 3 and rec["spacing"] == "logsnr"
        assert len(rec["model_sha256"]) == 64 and Path(rec["generator_run"]) == run.resolve()
        assert rec["mask_area"] == int((read_png(syn / "masks" / f"{rec['id']}.png") > 0).sum())
    ds = PreparedDataset.open(syn, require_splits=False)
    assert ds.ids == [r["id"] for r in lines] and ds.size == (16, 16) and ds.channels == 1
    images, masks = ds.load(ds.ids)
    assert images.shape == (5, 1, 16, 16) and set(np.unique(masks)) <= {0, 1}


def test_replay_reproduces_a_pair_bit_for_bit(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny_run
    syn = generate(run, tmp_path / "syn", _cfg(sampler="ddpm"), progress=False)
    assert verify_pair(syn, "seed0000004")
    assert verify_pair(syn, "seed0000001")
    # a tampered file is detected
    path = syn / "images" / "seed0000001.png"
    from synthpair.io import save_png_atomic

    img = read_png(path).copy()
    img[0, 0] ^= 1
    save_png_atomic(path, img)
    assert not verify_pair(syn, "seed0000001")


def test_seeds_are_independent_of_n(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny_run
    a = generate(run, tmp_path / "a", _cfg(n=3), progress=False)
    b = generate(run, tmp_path / "b", _cfg(n=6), progress=False)
    fa, fb = _files(a), _files(b)
    assert all(fb[k] == v for k, v in fa.items())


def test_interrupted_generation_resumes_to_identical_output(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, run = tiny_run
    cfg = _cfg(n=10)
    ref = generate(run, tmp_path / "ref", cfg, progress=False)

    real_sample = gen_mod._sample
    calls = {"n": 0}

    def flaky(*args: object, **kw: object):  # interrupted while sampling the 2nd batch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_sample(*args, **kw)

    monkeypatch.setattr(gen_mod, "_sample", flaky)
    out = tmp_path / "syn"
    with pytest.raises(KeyboardInterrupt):
        generate(run, out, cfg, progress=False)
    assert not (out / "dataset.json").exists()           # unfinished folders are not datasets
    assert len(read_manifest(out)) == 4
    assert not list(out.rglob("*.tmp"))
    # a torn manifest line and a stray file from a crash mid-batch are discarded on resume
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"id": "seed0000004", "se')
    (out / "images" / "seed0000005.png").write_bytes(b"partial")
    monkeypatch.setattr(gen_mod, "_sample", real_sample)
    generate(run, out, cfg, progress=False)
    assert _files(out) == _files(ref)
    assert [json.dumps(r) for r in read_manifest(out)] == [json.dumps(r) for r in read_manifest(ref)]


def test_resume_with_other_settings_is_refused(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny_run
    out = generate(run, tmp_path / "syn", _cfg(n=2), progress=False)
    with pytest.raises(SynthpairError, match=r"other settings \(steps \(3 -> 5\)\)"):
        generate(run, out, _cfg(n=2, steps=5), progress=False)


def test_folder_written_before_spacing_existed_is_uniform(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """A generate_config.json without "spacing" was sampled on the uniform grid: rerunning with it is a resume
    (nothing new written), asking for another spacing names the change."""
    _, run = tiny_run
    out = generate(run, tmp_path / "syn", _cfg(n=2, sampler="ddim", spacing="uniform"), progress=False)
    path = out / "generate_config.json"
    old = json.loads(path.read_text())
    del old["spacing"]
    path.write_text(json.dumps(old))
    before = _files(out)
    generate(run, out, _cfg(n=2, sampler="ddim", spacing="uniform"), progress=False)
    assert _files(out) == before
    with pytest.raises(SynthpairError, match=r"spacing \('uniform' -> 'logsnr'\)"):  # today's default
        generate(run, out, _cfg(n=2, sampler="ddim"), progress=False)
    from synthpair.synthesis.generate import load_generate_config

    assert load_generate_config(path).spacing == "uniform"


def test_filter_drops_small_masks_and_keeps_seed_numbers(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny_run
    everything = read_manifest(generate(run, tmp_path / "all", _cfg(n=8), progress=False))
    threshold = sorted(r["mask_area"] for r in everything)[4]
    kept = read_manifest(generate(run, tmp_path / "kept", _cfg(n=8, keep_empty=False, min_area=threshold,
                                                               max_attempts_factor=1.0), progress=False))
    expected = [r["seed"] for r in everything if r["mask_area"] >= max(threshold, 1)]
    assert [r["seed"] for r in kept] == expected and len(kept) < 8


def test_non_empty_out_and_missing_run_are_errors(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny_run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(SynthpairError, match="not empty"):
        generate(run, tmp_path / "busy", _cfg(), progress=False)
    with pytest.raises(SynthpairError, match="not found"):
        generate(tmp_path / "nope", tmp_path / "o", _cfg(), progress=False)


def test_clean_mask_removes_small_components() -> None:
    m = np.zeros((8, 8), dtype=np.int64)
    m[0, 0] = 1                 # 1-pixel speck
    m[4:7, 4:7] = 1             # 9-pixel blob
    m[0, 5:7] = 2               # 2-pixel component of class 2
    out = clean_mask(m, min_component=3)
    assert out[0, 0] == 0 and out[4:7, 4:7].sum() == 9 and (out == 2).sum() == 0
    assert np.array_equal(clean_mask(m, 1), m)


def test_steps_beyond_the_training_timesteps_are_refused_before_anything_is_written(tiny_run, tmp_path, capsys):
    """Issue 15: the sampler's step count is checked with everything else — no progress.json, manifest or
    generate_config.json left behind, and no reference segmenter trained for a generation that cannot run."""
    from synthpair.cli.main import main

    data, run = tiny_run
    T = json.loads((run / "export" / "config.json").read_text())["diffusion"]["num_timesteps"]
    out = tmp_path / "syn"
    for extra in (["--steps", str(T + 1)], ["--sampler", "ddpm", "--steps", str(T + 5)],
                  ["--steps", str(T + 1), "--min-faithfulness", "0.5"]):
        assert main(["generate", str(run), "--out", str(out), "--n", "2", *extra]) == 2
        err = capsys.readouterr().err
        assert f"must be between 1 and the generator's {T} training timesteps" in err and err.count("\n") == 1
        assert not out.exists()
    assert not (run / "reference_segmenter").exists()


def test_generation_from_a_snapshot_records_it_and_replays(tmp_path, capsys):
    """--snapshot STEP samples RUN/snapshots/step_STEP: its weights' sha256 and 'generator_export' in every
    manifest line, replay exact, another step than the final export gives other images; a missing snapshot is
    one line listing the ones there, with nothing written."""
    from conftest import write_tiny_prepared

    from synthpair.cli.main import main
    from synthpair.networks.export import sha256_file

    data = write_tiny_prepared(tmp_path / "data")
    run = train_generator(data, tmp_path / "run", dataclasses.replace(TINY_TRAIN, steps=4, snapshot_every=2),
                          progress=False)
    snap = run / "snapshots" / "step_2"
    a = generate(run, tmp_path / "a", _cfg(snapshot=2), progress=False)
    final = generate(run, tmp_path / "final", _cfg(), progress=False)
    lines = read_manifest(a)
    assert all(r["generator_export"] == "snapshots/step_2" and r["model_sha256"] == sha256_file(
        snap / "model.safetensors") for r in lines)
    assert "generator_export" not in read_manifest(final)[0]
    assert all(verify_pair(a, r["id"]) for r in lines)
    assert _files(a / "images") != _files(final / "images")
    assert main(["generate", str(run), "--out", str(tmp_path / "b"), "--n", "2", "--steps", "3",
                 "--snapshot", "3"]) == 2
    err = capsys.readouterr().err
    assert "no snapshots/step_3/model.safetensors; snapshots of this run: 2, 4" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_spacing_is_recorded_replays_and_changes_the_samples(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                            spacing: str) -> None:
    """``--spacing`` reaches the sampling loop (other images than uniform from the same seeds), is written into
    every manifest line and replays bit for bit; a line written before spacing existed replays as uniform."""
    _, run = tiny_run
    uni = generate(run, tmp_path / "uni", _cfg(sampler="dpm++2m", steps=6, spacing="uniform"), progress=False)
    spaced = generate(run, tmp_path / "spaced", _cfg(sampler="dpm++2m", steps=6, spacing=spacing), progress=False)
    assert {r["spacing"] for r in read_manifest(uni)} == {"uniform"}
    assert {r["spacing"] for r in read_manifest(spaced)} == {spacing}
    assert _files(uni) != _files(spaced)
    assert verify_pair(spaced, "seed0000003")
    # an old line (no "spacing" key) is replayed with the uniform grid it was made with
    man = uni / "manifest.jsonl"
    lines = [json.loads(x) for x in man.read_text().splitlines()]
    for rec in lines:
        del rec["spacing"]
    man.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert verify_pair(uni, "seed0000002")


def test_unknown_spacing_is_refused_before_anything_is_written(tiny_run, tmp_path, capsys):
    from synthpair.cli.main import main

    _, run = tiny_run
    out = tmp_path / "syn"
    with pytest.raises(SystemExit):  # argparse choices
        main(["generate", str(run), "--out", str(out), "--n", "2", "--spacing", "cubic"])
    assert main(["generate", str(run), "--out", str(out), "--n", "2", "--set", "spacing=cubic"]) == 2
    assert "spacing" in capsys.readouterr().err and not out.exists()
