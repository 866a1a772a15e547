"""The label-scarce study (issue 11): mixing ``pretrain`` (synthetic pre-training then real fine-tuning in one
budget), ``min_faithfulness`` (synthetic pairs filtered by their manifest faithfulness), and ``synthpair experiment
label-scarce`` end to end on a tiny prepared dataset made with a split file (views → synth → seg → curve → table),
its resumability, its refusals and ``--dry-run``.

Everything runs on 16×16 images with tiny networks and 2–4 steps."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_prepared
from data_helpers import write_png_folder
from synthpair.cli.main import _parse_mix, main
from synthpair.data.dataset import PreparedDataset
from synthpair.diffusion import DiffusionConfig
from synthpair.errors import SynthpairError
from synthpair.networks.unet import UNetConfig
from synthpair.segmentation.mixing import PretrainMixing, make_mixing
from synthpair.segmentation.ddfeatures import FeatureConfig
from synthpair.segmentation.train import SegmentConfig, segment, setting_name
from synthpair.training.trainer import TrainConfig
from test_segmentation_train import write_syn

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ pretrain
def _pools(n_real: int = 5, n_syn: int = 3, size: int = 4):
    """Real item r: constant image r + 1 (> 0); synthetic pair j: constant −(j + 1) (< 0): a batch's images
    tell which pool and which item each slot came from."""
    rx = (torch.arange(n_real, dtype=torch.float32) + 1).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    sx = -(torch.arange(n_syn, dtype=torch.float32) + 1).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    ry = torch.zeros(n_real, size, size, dtype=torch.long)
    sy = torch.ones(n_syn, size, size, dtype=torch.long)
    return rx, ry, sx, sy


def _is_permutation_stream(idx: list[int], n: int) -> bool:
    """Epoch-style: every complete block of ``n`` draws is a permutation of the pool, the rest has no repeat."""
    blocks = [idx[i:i + n] for i in range(0, len(idx), n)]
    return all(sorted(b) == list(range(n)) for b in blocks[:-1]) and len(set(blocks[-1])) == len(blocks[-1])


@pytest.mark.parametrize("steps,fraction", [(10, 0.3), (7, 0.5), (5, 0.5), (9, 0.75)])
def test_pretrain_draws_synthetic_then_real_batches(steps, fraction):
    rx, ry, sx, sy = _pools()
    mix = make_mixing("pretrain", real_images=rx, real_masks=ry, syn_images=sx, syn_masks=sy, batch_size=2,
                      steps=steps, pretrain_fraction=fraction)
    assert isinstance(mix, PretrainMixing)
    switch = round(fraction * steps)                     # Python's round, as documented
    gen = torch.Generator().manual_seed(0)
    batches = [mix.batch(step, gen) for step in range(steps)]
    kinds = ["syn" if bool((b.images < 0).all()) else "real" if bool((b.images > 0).all()) else "mixed"
             for b in batches]
    assert kinds == ["syn"] * switch + ["real"] * (steps - switch)
    for b in batches:                                     # each pair keeps its own mask
        assert torch.equal(b.masks, (b.images[:, 0] < 0).long())
        assert b.syn_images is None and b.real_weight is None
    syn_idx = [int(-v) - 1 for b in batches[:switch] for v in b.images[:, 0, 0, 0]]
    real_idx = [int(v) - 1 for b in batches[switch:] for v in b.images[:, 0, 0, 0]]
    assert _is_permutation_stream(syn_idx, len(sx)) and _is_permutation_stream(real_idx, len(rx))
    assert mix.describe() == {"strategy": "pretrain", "fraction": fraction, "synthetic_steps": switch,
                              "n_real": 5, "n_synthetic": 3, "forward_passes_per_slot": 1}
    # deterministic given the generator
    again = make_mixing("pretrain", real_images=rx, real_masks=ry, syn_images=sx, syn_masks=sy, batch_size=2,
                        steps=steps, pretrain_fraction=fraction)
    gen = torch.Generator().manual_seed(0)
    assert all(torch.equal(again.batch(s, gen).images, b.images) for s, b in enumerate(batches))


def test_pretrain_refusals():
    rx, ry, sx, sy = _pools()
    for fraction in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"pretrain fraction must be in \(0, 1\)"):
            PretrainMixing(rx, ry, sx, sy, batch_size=2, steps=10, fraction=fraction)
        with pytest.raises(ValueError, match=r"pretrain_fraction must be in \(0, 1\)"):
            SegmentConfig(mixing="pretrain", pretrain_fraction=fraction)
    with pytest.raises(ValueError, match="non-empty synthetic pool"):
        PretrainMixing(rx, ry, sx[:0], sy[:0], batch_size=2, steps=10, fraction=0.5)
    with pytest.raises(ValueError, match="pretrain needs a synthetic pool"):
        make_mixing("pretrain", real_images=rx, real_masks=ry, batch_size=2, steps=10)
    # a fraction that rounds to no synthetic step, or to no real step, is not "pre-train then fine-tune"
    for steps, fraction in [(4, 0.1), (4, 0.9), (1, 0.5)]:
        with pytest.raises(ValueError, match="at least one synthetic and one real step"):
            PretrainMixing(rx, ry, sx, sy, batch_size=2, steps=steps, fraction=fraction)
        with pytest.raises(ValueError, match="at least one synthetic and one real step"):
            SegmentConfig(mixing="pretrain", pretrain_fraction=fraction, steps=steps)
    with pytest.raises(ValueError, match="at least one synthetic and one real step"):  # make_mixing without steps
        make_mixing("pretrain", real_images=rx, real_masks=ry, syn_images=sx, syn_masks=sy, batch_size=2)
    with pytest.raises(ValueError, match="only used by mixing='ratio'"):
        SegmentConfig(mixing="pretrain", ratio=0.5)


def test_pretrain_config_names_and_cli_grammar():
    assert setting_name(SegmentConfig(mixing="pretrain", pretrain_fraction=0.5)) == "synthetic-pretrain f=0.5"
    assert setting_name(SegmentConfig(mixing="pretrain", pretrain_fraction=0.25, n_real=16, augment="deepstack")
                        ) == "synthetic-pretrain f=0.25 n=16 +deepstack"
    assert setting_name(SegmentConfig(ratio=0.5, min_faithfulness=0.5)) == "real+synthetic r=0.5 faith>=0.5"
    assert setting_name(SegmentConfig(model="ddpm_unet", augment="deepstack",
                                      features=FeatureConfig(generator="RUN"))) == "ddpm_unet real-only +deepstack"
    assert setting_name(SegmentConfig(model="attention_unet")) == "attention_unet real-only"
    assert SegmentConfig(mixing="pretrain").needs_synthetic
    assert _parse_mix("pretrain:fraction=0.25") == {"mixing": "pretrain", "ratio": 0.0, "pretrain_fraction": 0.25}
    assert _parse_mix("pretrain") == {"mixing": "pretrain", "ratio": 0.0}
    for bad, msg in [("pretrain:f=0.5", "pretrain takes fraction=…"), ("pretrain:fraction=x", "must be a number")]:
        with pytest.raises(SynthpairError, match=msg):
            _parse_mix(bad)


def _fold0_syn(data: Path, root: Path, n: int = 6, faithfulness: list | None = None) -> Path:
    """A hand-written SYN folder whose generator saw fold 0's training cases (so no label-budget excess), with
    manifest ``faithfulness`` values when given."""
    train_cases, _ = PreparedDataset.open(data).fold_cases(0)
    syn = write_syn(root, train_cases, n=n)
    if faithfulness is not None:
        path = syn / "manifest.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for rec, f in zip(lines, faithfulness):
            rec["faithfulness"] = f
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return syn


def test_segment_with_pretrain_mixing(tiny_data, tmp_path, capsys):
    syn = _fold0_syn(tiny_data, tmp_path / "syn")
    cfg = SegmentConfig(steps=4, batch_size=4, mixing="pretrain", pretrain_fraction=0.5)
    res = segment(tiny_data, tmp_path / "seg", cfg, synthetic_dir=syn, progress=False)
    assert res["setting"] == "synthetic-pretrain f=0.5"
    fold = res["folds"][0]
    assert fold["mixing"] == {"strategy": "pretrain", "fraction": 0.5, "synthetic_steps": 2, "n_real": 8,
                              "n_synthetic": 6, "forward_passes_per_slot": 1}
    assert fold["n_train_real"] == 8 and fold["n_synthetic"] == 6
    assert res["config"]["mixing"] == "pretrain" and res["config"]["pretrain_fraction"] == 0.5
    losses = [json.loads(x) for x in (tmp_path / "seg" / "fold_0" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(x["loss"]) for x in losses)
    # the same through the CLI grammar
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "cli"), "--synthetic", str(syn), "--mix",
                 "pretrain:fraction=0.5", "--steps", "4", "--set", "batch_size=4"]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli["setting"] == res["setting"] and cli["folds"][0]["mixing"] == fold["mixing"]
    assert cli["per_case"] == res["per_case"]
    capsys.readouterr()
    # refused before anything is written: no synthetic folder; a fraction leaving no real step
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "x"), "--mix", "pretrain:fraction=0.5",
                 "--steps", "4"]) == 2
    assert "needs --synthetic SYN" in capsys.readouterr().err
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "x"), "--synthetic", str(syn), "--mix",
                 "pretrain:fraction=0.9", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "rounds to 4 synthetic steps" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ min_faithfulness
FAITH = [0.2, 0.5, 0.8, 0.9, 0.1, 0.6]   # >= 0.5: syn001, syn002, syn003, syn005


def test_min_faithfulness_keeps_only_pairs_at_or_above_the_threshold(tiny_data, tmp_path, monkeypatch):
    syn = _fold0_syn(tiny_data, tmp_path / "syn", faithfulness=FAITH)
    loaded: list[list[str]] = []
    load = PreparedDataset.load

    def spy_load(ds, ids):                               # which pairs segment reads from the SYN folder
        if Path(ds.root).resolve() == syn.resolve():
            loaded.append(list(ids))
        return load(ds, ids)

    monkeypatch.setattr(PreparedDataset, "load", spy_load)
    cfg = SegmentConfig(steps=2, batch_size=4, ratio=1.0, min_faithfulness=0.5)
    res = segment(tiny_data, tmp_path / "seg", cfg, synthetic_dir=syn, progress=False)
    assert res["setting"] == "real+synthetic r=1 faith>=0.5"
    assert res["folds"][0]["n_synthetic"] == 4 and res["folds"][0]["mixing"]["n_synthetic"] == 4
    assert loaded == [["syn001", "syn002", "syn003", "syn005"]]
    # without the filter every pair is used
    res = segment(tiny_data, tmp_path / "all", SegmentConfig(steps=2, batch_size=4, ratio=1.0), synthetic_dir=syn,
                  progress=False)
    assert res["folds"][0]["n_synthetic"] == 6
    # pretrain mixing takes the filter too
    res = segment(tiny_data, tmp_path / "pre", SegmentConfig(steps=2, batch_size=4, mixing="pretrain",
                                                              min_faithfulness=0.85), synthetic_dir=syn, progress=False)
    assert res["setting"] == "synthetic-pretrain f=0.5 faith>=0.85" and res["folds"][0]["n_synthetic"] == 1


def test_min_faithfulness_refusals(tiny_data, tmp_path):
    def refused(syn, cfg, *needles):
        out = tmp_path / "refused"
        with pytest.raises(SynthpairError) as err:
            segment(tiny_data, out, cfg, synthetic_dir=syn, progress=False)
        msg = str(err.value)
        assert "\n" not in msg and all(n in msg for n in needles), msg
        assert not out.exists()

    unscored = _fold0_syn(tiny_data, tmp_path / "unscored", faithfulness=[0.9, 0.9, 0.9, None, 0.9, 0.9])
    refused(unscored, SegmentConfig(steps=2, ratio=1.0, min_faithfulness=0.5),
            "1 pair(s) have no faithfulness score (e.g. syn003)", "--segmenter auto")
    plain = _fold0_syn(tiny_data, tmp_path / "plain")          # no faithfulness field at all
    refused(plain, SegmentConfig(steps=2, ratio=1.0, min_faithfulness=0.5), "6 pair(s) have no faithfulness score")
    scored = _fold0_syn(tiny_data, tmp_path / "scored", faithfulness=FAITH)
    refused(scored, SegmentConfig(steps=2, ratio=1.0, min_faithfulness=0.95),
            "no pair has faithfulness >= 0.95", "lower min_faithfulness")
    # a real-only setting has no synthetic pair to filter
    refused(None, SegmentConfig(steps=2, min_faithfulness=0.5), "min_faithfulness=0.5 filters synthetic pairs",
            "real-only")
    with pytest.raises(ValueError, match=r"min_faithfulness must be a Dice in \[0, 1\]"):
        SegmentConfig(min_faithfulness=1.5)


def test_min_faithfulness_cli_flag(tiny_data, tmp_path, capsys):
    syn = _fold0_syn(tiny_data, tmp_path / "syn", faithfulness=FAITH)
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "a"), "--synthetic", str(syn),
                 "--min-faithfulness", "0.5", "--steps", "2", "--set", "batch_size=4"]) == 0
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["setting"] == "real+synthetic r=0.5 faith>=0.5" and res["folds"][0]["n_synthetic"] == 4
    assert res["config"]["min_faithfulness"] == 0.5
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "b"), "--synthetic", str(syn), "--mix",
                 "pretrain:fraction=0.5", "--min-faithfulness", "0.8", "--steps", "2", "--set", "batch_size=4"]) == 0
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["setting"] == "synthetic-pretrain f=0.5 faith>=0.8" and res["folds"][0]["n_synthetic"] == 2
    capsys.readouterr()
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "c"), "--min-faithfulness", "0.5",
                 "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "filters synthetic pairs" in err and err.count("\n") == 1 and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------ the study end to end
NET = UNetConfig(channels=(8, 8, 8), attention_levels=(False, False, True), num_head_channels=8, norm_num_groups=8)
T = 500   # the default feature timesteps (10 .. 400) exist
GEN = TrainConfig(method="image", steps=4, batch_size=4, log_every=1, preview_every=0, preview_n=0,
                  checkpoint_every=0, amp="off", warmup_steps=1, net=NET, diffusion=DiffusionConfig(num_timesteps=T),
                  snapshot_every=2)
IDS = [f"img_{i:02d}" for i in range(16)]
TEST, POOL = IDS[:4], IDS[4:]
SUBSETS = {"seed0_N4": POOL[:4], "seed0_N8": POOL[:8], "seed1_N4": POOL[6:10], "seed1_N8": POOL[4:12]}
ROWS = ["real-classic", "real-noaug", "ddpm-unet", "ddpm-pixel", "syn-ratio", "syn-ratio-logsnr"]


def study_args(data: Path, gen: Path, out: Path, *extra: str, n=("4", "8"), seeds=("0", "1"), rows=ROWS,
               seg_steps: str = "2") -> list[str]:
    return ["experiment", "label-scarce", "--data", f"tiny={data}", "--generator", f"tiny={gen}", "--out", str(out),
            "--n", *n, "--seeds", *seeds, "--rows", *rows, "--seg-steps", seg_steps, "--seg-batch", "4",
            "--m2i-steps", "2", "--syn-n", "4", "--curve-n", "4", "--curve-seeds", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 16-image source (4 test, 12 pool; nested subsets seed0/1 × N4/N8) prepared with a split file → a 4-step
    image-only generator with snapshots at steps 2 and 4 → the study with 6 rows at N = 4, 8 × seeds 0, 1 and the
    curve over both snapshots. Shrunk for speed: the reference segmenter of the faithfulness scores trains 2 steps,
    and the ddpm_* rows' feature analysis probes 3 blocks × 2 timesteps with 2 folds and 8-unit heads."""
    from synthpair.experiments import label_scarce as ls
    from synthpair.segmentation import reference as faithfulness  # trains the --segmenter auto one
    from synthpair.training.trainer import train_generator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("label_scarce")
    src = write_png_folder(root / "src", n=16)
    split = root / "label-scarce.json"
    split.write_text(json.dumps({"test": TEST, "pool": POOL, "train_subsets": SUBSETS}))
    data, gen, out = root / "data", root / "gen", root / "out"
    try:
        assert main(["prepare", str(src), "--out", str(data), "--size", "16", "--splits", str(split)]) == 0
        train_generator(data, gen, GEN, progress=False)
        reference = faithfulness.train_reference_segmenter
        segment_config = ls.Study.segment_config

        def small_features(self, *a, **k):
            cfg = segment_config(self, *a, **k)
            if not cfg.model.startswith("ddpm"):
                return cfg
            fc = dataclasses.replace(cfg.features, candidate_blocks=("down1", "mid", "up1"),
                                     candidate_timesteps=(0, 20), analysis_folds=2, n_blocks=2, n_timesteps=1,
                                     hidden=8, ensemble=2)
            return dataclasses.replace(cfg, features=fc)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(faithfulness, "train_reference_segmenter", lambda *a, **k: reference(*a, **{**k, "steps": 2}))
            mp.setattr(ls.Study, "segment_config", small_features)
            assert main(study_args(data, gen, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "gen": gen, "out": out}


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_study_views_and_label_honest_synthetic_pairs(study):
    ds = PreparedDataset.open(study["data"])
    assert ds.split(0) == (POOL, TEST) and ds.subsets == SUBSETS
    views = study["out"] / "tiny" / "views"
    assert sorted(p.name for p in views.iterdir()) == sorted(SUBSETS)
    for name, items in SUBSETS.items():
        view = PreparedDataset.open(views / name)
        info = view.info
        assert info["label_budget"]["subset"] == name and info["label_budget"]["labelled_items"] == items
        assert info["counts"]["labelled_training"] == len(items) and info["counts"]["test"] == len(TEST)
        assert view.split(0) == (items, TEST)
        assert sorted(p.stem for p in (views / name / "masks").iterdir()) == sorted(items + TEST)
        assert sorted(view.unlabelled_ids) == sorted(set(POOL) - set(items))
        # the synthetic pairs' chain (mask2image fine-tune from the image-only run, mask source, faithfulness
        # segmenter) saw exactly the view's labelled items
        syn = study["out"] / "tiny" / "synth" / name / "syn"
        acc = json.loads((syn / "label_accounting.json").read_text())
        assert acc["mask_items"] == sorted(items) and acc["num_mask_items"] == len(items)
        assert {s["role"] for s in acc["sources"]} >= {"generator", "mask source", "faithfulness segmenter"}
        manifest = [json.loads(x) for x in (syn / "manifest.jsonl").read_text().splitlines()]
        assert len(manifest) == 4 and all(m["faithfulness"] is not None for m in manifest)
        # the log-SNR variant: the same mask2image run, seeds and masks, other timesteps
        spaced = [json.loads(x) for x in (syn.parent / "syn_logsnr" / "manifest.jsonl").read_text().splitlines()]
        assert [m["seed"] for m in spaced] == [m["seed"] for m in manifest]
        assert {(m["sampler"], m["spacing"]) for m in manifest} == {("ddim", "uniform")}
        assert {(m["sampler"], m["spacing"]) for m in spaced} == {("dpm++2m", "logsnr")}
        assert {m["generator_run"] for m in spaced} == {m["generator_run"] for m in manifest}
        m2i = json.loads((study["out"] / "tiny" / "synth" / name / "m2i" / "training_cases.json").read_text())
        assert m2i["init_from"]["export"] == str((study["gen"] / "export").resolve())


@pytest.mark.slow
def test_study_results_rows_seeds_and_paired_comparisons(study):
    out = study["out"]
    res = json.loads((out / "results.json").read_text())
    dsec = res["datasets"]["tiny"]
    assert sorted(dsec["n"]) == ["4", "8"]
    for n in ("4", "8"):
        assert list(dsec["n"][n]) == ROWS
        for row, e in dsec["n"][n].items():
            assert e["seeds"] == [0, 1], (n, row)
            for m in ("dice", "iou", "hd95"):
                assert e["summary"][m]["n"] == 2 and set(e["summary"][m]["per_seed"]) == {"0", "1"}
            seg = [json.loads((out / "tiny" / "seg" / f"seed{s}_N{n}" / row / "results.json").read_text())
                   for s in (0, 1)]
            assert all(r["folds"][0]["n_train_real"] == int(n) and r["folds"][0]["n_test"] == 4 for r in seg)
            assert e["summary"]["dice"]["mean"] == pytest.approx(
                sum(r["summary"]["dice"]["mean"] for r in seg) / 2)
            assert e["cpu_minutes_segmenter"] is not None
        # each synthetic row is charged the mask2image run + the generation of the pairs it reads
        cost = json.loads((out / "tiny" / "cost.json").read_text())
        for row, folder in (("syn-ratio", "syn"), ("syn-ratio-logsnr", "syn_logsnr")):
            want = sum(cost[f"tiny/synth/seed{s}_N{n}/{k}"] for s in (0, 1) for k in ("m2i", folder)) / 2 / 60
            assert dsec["n"][n][row]["cpu_minutes_generator_per_seed"] == pytest.approx(want)
            if row == "real-classic":
                assert "vs_baseline" not in e
                continue
            vs = e["vs_baseline"]
            assert vs["seeds"] == [0, 1] and vs["paired"]["n"] == len(TEST) and vs["paired"]["metric"] == "dice"
            assert vs["delta_dice"]["n"] == 2
        syn_row = json.loads((out / "tiny" / "seg" / f"seed0_N{n}" / "syn-ratio" / "results.json").read_text())
        assert syn_row["synthetic"] == str((out / "tiny" / "synth" / f"seed0_N{n}" / "syn").resolve())
        assert not syn_row["generator_saw_more_labels"] and syn_row["folds"][0]["n_synthetic"] == 4
        assert "cpu_minutes_generator_per_seed" in dsec["n"][n]["syn-ratio"]
        pixel = json.loads((out / "tiny" / "seg" / f"seed0_N{n}" / "ddpm-pixel" / "results.json").read_text())
        feats = pixel["folds"][0]["features"]
        assert feats["generator"] == str((study["gen"] / "export").resolve()) and len(feats["blocks"]) == 2
        assert (out / "tiny" / "seg" / f"seed0_N{n}" / "ddpm-pixel" / "fold_0" / "feature_analysis.json").is_file()
    # the curve: ddpm-unet at N = 4 on both snapshots of the image-only run
    pts = dsec["curve"]["points"]
    assert [p["snapshot"] for p in pts] == ["step_2", "step_4"] and [p["step"] for p in pts] == [2, 4]
    for p in pts:
        r = json.loads((out / "tiny" / "curve" / p["snapshot"] / "seed0_N4" / "ddpm-unet" / "results.json").read_text())
        assert r["folds"][0]["features"]["generator"] == str((study["gen"] / "snapshots" / p["snapshot"]).resolve())
        assert p["dice"]["mean"] == pytest.approx(r["summary"]["dice"]["mean"])
        assert p["seeds"] == [0] and p["per_seed_dice"]["0"] == pytest.approx(r["summary"]["dice"]["mean"])
    assert dsec["curve"]["common_seeds"] == [0]
    cost = json.loads((out / "tiny" / "cost.json").read_text())
    for key in ["tiny/views/seed0_N4", "tiny/synth/seed1_N8/m2i", "tiny/synth/seed1_N8/syn",
                "tiny/seg/seed1_N8/ddpm-pixel", "tiny/curve/step_2/seed0_N4/ddpm-unet"]:
        assert key in cost and cost[key] >= 0, key
    assert len([k for k in cost if "/seg/" in k]) == 2 * 2 * len(ROWS)
    md = (out / "results.md").read_text()
    assert "### N = 4" in md and "### N = 8" in md and "(baseline)" in md and "step_4" in md
    assert "(1 seed)" in md and "± 0.000" not in md.split("against the image-only generator")[1]
    assert {p.name for p in (out / "figures").iterdir()} == {"dice_vs_n_tiny.png", "curve_tiny.png",
                                                             "feature_analysis_tiny.png"}
    assert (out / "report.html").read_text().count("<img") == 3


@pytest.mark.slow
def test_study_rerun_does_no_new_work(study, monkeypatch, capsys):
    from synthpair.data import budget
    from synthpair.segmentation import train as train_mod
    from synthpair.synthesis import generate as gen_mod
    from synthpair.training import trainer

    def never(*a, **k):
        raise AssertionError("a finished stage ran again")

    for mod, name in [(train_mod, "segment"), (trainer, "train_generator"), (gen_mod, "generate"),
                      (budget, "make_budget_view")]:
        monkeypatch.setattr(mod, name, never)
    out = study["out"]
    before = _tree(out / "tiny")
    results = json.loads((out / "results.json").read_text())
    assert main(study_args(study["data"], study["gen"], out)) == 0
    assert _tree(out / "tiny") == before                      # every run folder and cost.json untouched
    assert json.loads((out / "results.json").read_text()) == results
    # a rerun with fewer seeds is the same study: nothing to do, and the table still covers both seeds
    assert main(study_args(study["data"], study["gen"], out, seeds=("0",))) == 0
    assert _tree(out / "tiny") == before
    again = json.loads((out / "results.json").read_text())
    assert again["datasets"] == results["datasets"]
    assert json.loads((out / "config.json").read_text())["seeds"] == [0, 1]
    capsys.readouterr()


@pytest.mark.slow
def test_study_refusals_and_dry_run(study, capsys):
    out = study["out"]
    config = (out / "config.json").read_text()
    before = _tree(out)
    # other settings in the same --out
    assert main(study_args(study["data"], study["gen"], out, seg_steps="3")) == 2
    err = capsys.readouterr().err
    assert "holds a study with other settings" in err and err.count("\n") == 1
    assert (out / "config.json").read_text() == config and _tree(out) == before
    # a label budget the split file has no subset for (nothing written)
    fresh = study["root"] / "fresh"
    assert main(study_args(study["data"], study["gen"], fresh, n=("5",))) == 2
    err = capsys.readouterr().err
    assert "no labelled subset seed0_N5" in err and err.count("\n") == 1 and not fresh.exists()
    # the curve's subset is checked up front too
    assert main([*study_args(study["data"], study["gen"], fresh), "--curve-n", "16"]) == 2
    err = capsys.readouterr().err
    assert "no labelled subset seed0_N16" in err and "--curve-n" in err and not fresh.exists()
    # --dry-run: the resolved config and the plan, nothing written
    assert main([*study_args(study["data"], study["gen"], fresh), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not fresh.exists()
    assert '"seg_steps": 2' in printed and "todo tiny seed0_N4 real-classic" in printed
    assert sum(line.startswith("todo ") for line in printed.splitlines()) == 2 * 2 * len(ROWS)
    assert main([*study_args(study["data"], study["gen"], out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert sum(line.startswith("done ") for line in printed.splitlines()) == 2 * 2 * len(ROWS)
    assert _tree(out) == before


def test_curve_table_never_mixes_seed_counts_unmarked():
    """The main snapshot has every study seed, the others one: each point shows its seeds, one seed prints
    "(1 seed)" instead of a ± 0.000 spread, and a like-for-like column averages only the seeds every point has."""
    from synthpair.experiments.label_scarce_table import markdown
    from synthpair.metrics.statistics import mean_sd

    pts = [{"snapshot": "step_1000", "generator_cpu_minutes": 8.2, "seeds": [0], "per_seed_dice": {"0": 0.578},
            "dice": mean_sd([0.578]), "dice_common_seeds": mean_sd([0.578])},
           {"snapshot": "step_6000", "generator_cpu_minutes": 52.1, "seeds": [0, 1, 2],
            "per_seed_dice": {"0": 0.585, "1": 0.62, "2": 0.655}, "dice": mean_sd([0.585, 0.62, 0.655]),
            "dice_common_seeds": mean_sd([0.585])}]
    res = {"config": {"seg_steps": 10, "seg_batch": 2, "seeds": [0, 1, 2]},
           "datasets": {"busi": {"n": {}, "curve": {"row": "ddpm-unet", "n": 16, "common_seeds": [0], "points": pts}}}}
    md = markdown(res)
    assert "| step_1000 | 8.2 | 1 | 0.578 (1 seed) | 0.578 (1 seed) | 0: 0.578 |" in md
    assert "| step_6000 | 52.1 | 3 | 0.620 ± 0.035 | 0.585 (1 seed) | 0: 0.585, 1: 0.620, 2: 0.655 |" in md
    assert "every point has (0)" in md
