"""Few labels, many images (issue 10), model side: what every stage loads (unlabelled items never reach a stage
that needs masks), the ``image`` method and ``init_from`` across methods (the pretrained output is reproduced
where the new inputs are zero), label accounting through an ``init_from`` chain into ``generate`` and the
refusal in ``segment``, and the global ``--threads`` option."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_prepared
from synthpair.data.budget import BudgetConfig, make_budget_view
from synthpair.data.dataset import PreparedDataset, write_pair
from synthpair.diffusion import DiffusionConfig
from synthpair.diffusion.cond import Cond
from synthpair.errors import SynthpairError
from synthpair.methods import DataInfo, get_method
from synthpair.networks.conditional import CondConfig
from synthpair.networks.transfer import transfer_weights
from synthpair.networks.unet import UNetConfig
from synthpair.segmentation.train import SegmentConfig, segment
from synthpair.synthesis.generate import GenerateConfig, generate
from synthpair.training.trainer import TrainConfig, train_generator

pytestmark = pytest.mark.usefixtures("one_thread")

NET = UNetConfig(channels=(8, 8), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)
TINY = TrainConfig(method="image", steps=2, batch_size=4, log_every=1, preview_every=0, preview_n=0,
                   checkpoint_every=0, amp="off", warmup_steps=1, net=NET, diffusion=DiffusionConfig(num_timesteps=20))
SEG = SegmentConfig(steps=2, batch_size=4, eval_batch=8)
GEN = GenerateConfig(n=4, steps=2, batch_size=4, segmenter="off", amp="off", min_area=0, min_component=1,
                     keep_empty=True)


def _add_unlabelled(data: Path, n: int, seed: int = 7) -> Path:
    """Append ``n`` image-only items (no mask file, ``labelled: false``) to a prepared folder."""
    info = json.loads((data / "dataset.json").read_text())
    rng = np.random.default_rng(seed)
    for k in range(n):
        write_pair(data, f"unl{k}", np.clip(rng.normal(-0.3, 0.3, (1, 16, 16)), -1, 1), None)
        info["items"].append({"id": f"unl{k}", "case": f"ucase{k}", "labelled": False, "spacing": None,
                              "slice_index": None, "foreground_fraction": None})
    (data / "dataset.json").write_text(json.dumps(info))
    return data


class LoadSpy:
    """Records every ``PreparedDataset.load`` request: (dataset root, ids, that dataset's unlabelled ids)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, list[str], set[str]]] = []

    def install(self, mp: pytest.MonkeyPatch) -> "LoadSpy":
        orig = PreparedDataset.load

        def load(ds, ids):
            self.calls.append((Path(ds.root), list(ids), set(ds.unlabelled_ids)))
            return orig(ds, ids)

        mp.setattr(PreparedDataset, "load", load)
        return self

    def requested(self) -> set[str]:
        return {i for _, ids, _ in self.calls for i in ids}

    def assert_no_unlabelled(self) -> None:
        for root, ids, unl in self.calls:
            assert not set(ids) & unl, f"{root}: a mask-using stage asked for unlabelled items {set(ids) & unl}"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """DATA (12 labelled items, 3 folds, + 2 unlabelled) → budget views N=6 and N=3 of fold 0 → an ``image`` run
    on the N=6 view → ``mask2image`` and ``joint`` runs initialised from it → a mask2image generation; every
    ``PreparedDataset.load`` call recorded per stage."""
    root = tmp_path_factory.mktemp("chain")
    data = _add_unlabelled(write_tiny_prepared(root / "data", n=12, folds=3), 2)
    v6 = make_budget_view(data, root / "v6", BudgetConfig(n=6, seed=0), progress=False)
    v3 = make_budget_view(data, root / "v3", BudgetConfig(n=3, seed=0), progress=False)
    out: dict = {"root": root, "data": data, "v6": v6, "v3": v3, "spies": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, fn in [
            ("image", lambda: train_generator(v6, root / "image", TINY, progress=False)),
            ("mask2image", lambda: train_generator(
                v6, root / "m2i", dataclasses.replace(TINY, method="mask2image", init_from=str(root / "image")),
                progress=False)),
            ("joint", lambda: train_generator(
                v6, root / "joint", dataclasses.replace(TINY, method="joint", init_from=str(root / "image" / "export")),
                progress=False)),
            ("generate", lambda: generate(root / "m2i", root / "syn", GEN, progress=False)),
        ]:
            spy = LoadSpy()
            with pytest.MonkeyPatch.context() as mp:
                spy.install(mp)
                out[name] = fn()
            out["spies"][name] = spy
    finally:
        torch.set_num_threads(threads)
    return out


def _tc(run: Path) -> dict:
    return json.loads((run / "training_cases.json").read_text())


# ------------------------------------------------------------------------- 1. what each stage loads
def test_image_method_learns_from_unlabelled_images_without_masks(chain):
    v6 = PreparedDataset.open(chain["v6"])
    assert chain["spies"]["image"].calls == []  # image-only: load_images, never load
    tc = _tc(chain["image"])
    assert tc["mask_items"] == [] and tc["num_mask_items"] == 0
    assert tc["image_items"] == sorted(v6.image_train_ids(0))
    assert set(v6.unlabelled_ids) <= set(tc["image_items"]) and {"unl0", "unl1"} <= set(tc["image_items"])
    assert len(tc["image_items"]) == 8 + 2  # the 8 training items of fold 0 (6 labelled, 2 hidden) + 2 unlabelled
    assert not set(tc["image_items"]) & set(v6.split(0)[1])  # never a test item
    cfg = json.loads((chain["image"] / "export" / "config.json").read_text())
    assert cfg["method"] == "image" and cfg["cpu_seconds"] >= 0
    metrics = [json.loads(ln) for ln in (chain["image"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["cpu_s"] >= 0 for m in metrics)


def test_image_method_without_unlabelled(chain, tmp_path):
    run = train_generator(chain["v6"], tmp_path / "run", dataclasses.replace(TINY, unlabelled=False), progress=False)
    v6 = PreparedDataset.open(chain["v6"])
    assert _tc(run)["image_items"] == sorted(v6.split(0)[0])


@pytest.mark.parametrize("stage", ["mask2image", "joint"])
def test_mask_using_trainers_never_request_unlabelled_items(chain, stage):
    v6 = PreparedDataset.open(chain["v6"])
    spy = chain["spies"][stage]
    assert spy.calls, "the trainer loads its pairs through PreparedDataset.load"
    spy.assert_no_unlabelled()
    assert spy.requested() == set(v6.split(0)[0])  # exactly the 6 labelled training items
    tc = _tc(chain[stage])
    assert tc["items"] == v6.split(0)[0]
    # masks: its own 6 labelled items; images: those plus the image run's (the init_from chain)
    assert tc["mask_items"] == sorted(v6.split(0)[0])
    assert tc["image_items"] == _tc(chain["image"])["image_items"]
    assert tc["init_from"]["method"] == "image" and tc["init_from"]["mapping"]["mode"] == "transfer"
    assert set(_tc(chain["image"])["cases"]) <= set(tc["cases"])


def test_generate_mask_source_never_requests_unlabelled_items(chain):
    v6 = PreparedDataset.open(chain["v6"])
    spy = chain["spies"]["generate"]
    spy.assert_no_unlabelled()
    assert spy.requested() == set(v6.split(0)[0])


def test_segment_never_requests_unlabelled_items(chain, tmp_path):
    v6 = PreparedDataset.open(chain["v6"])
    with pytest.MonkeyPatch.context() as mp:
        spy = LoadSpy().install(mp)
        res = segment(chain["v6"], tmp_path / "seg", dataclasses.replace(SEG, n_real=4), progress=False)
    spy.assert_no_unlabelled()
    train, test = v6.split(0)
    assert spy.requested() <= set(train) | set(test) and set(test) <= spy.requested()
    assert len(spy.requested() & set(train)) == 4
    assert res["folds"][0]["n_train_real"] == 4 and res["folds"][0]["n_test"] == len(test)
    assert not {r["id"] for r in res["per_case"]} & set(v6.unlabelled_ids)


def test_mask_using_trainer_refuses_an_unlabelled_item_list(chain, tmp_path):
    items = tmp_path / "items.json"
    items.write_text(json.dumps(["unl0"]))
    out = tmp_path / "run"
    with pytest.raises(SynthpairError) as exc:
        train_generator(chain["v6"], out, dataclasses.replace(TINY, method="joint", items=str(items)),
                        progress=False)
    assert "\n" not in str(exc.value) and "'unl0'" in str(exc.value) and "items.json" in str(exc.value)
    assert not out.exists()
    # the image-only method may list it
    run = train_generator(chain["v6"], tmp_path / "img", dataclasses.replace(TINY, steps=1, items=str(items)),
                          progress=False)
    assert _tc(run)["image_items"] == ["unl0"]


# ------------------------------------------------------------- 5. label accounting through init_from
def test_accounting_through_init_chain_into_generate(chain):
    v6 = PreparedDataset.open(chain["v6"])
    labelled = sorted(v6.split(0)[0])
    acc = json.loads((chain["generate"] / "label_accounting.json").read_text())
    assert acc["format"] == "synthpair-label-accounting"
    assert acc["mask_items"] == labelled and acc["num_mask_items"] == 6
    assert set(acc["image_items"]) == set(_tc(chain["image"])["image_items"])
    roles = {s["role"]: s for s in acc["sources"]}
    assert roles["generator"]["mask_items"] == 6 and roles["generator"]["image_items"] == 10
    assert roles["mask source"]["mask_items"] == 6 and "faithfulness segmenter" not in roles
    lines = [json.loads(ln) for ln in (chain["generate"] / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(r["label_accounting"] == "label_accounting.json" and r["num_mask_items_seen"] == 6
                                   for r in lines)
    assert all(r["source_item"] in labelled for r in lines)
    info = json.loads((chain["generate"] / "dataset.json").read_text())
    assert info["label_accounting"]["num_mask_items"] == 6


def test_segment_accepts_pairs_within_its_budget(chain, tmp_path):
    res = segment(chain["v6"], tmp_path / "seg", dataclasses.replace(SEG, ratio=0.5),
                  synthetic_dir=chain["generate"], progress=False)
    assert res["generator_saw_more_labels"] is False and "more labels" not in res["setting"]
    check = res["folds"][0]["label_accounting"]["synthetic_check"]
    assert check == {"segmenter_mask_items": 6, "synthetic_mask_items": 6, "outside": 0, "outside_cases": 0,
                     "generator_saw_more_labels": False}


def test_segment_refuses_pairs_beyond_a_smaller_budget(chain, tmp_path):
    out = tmp_path / "seg"
    with pytest.raises(SynthpairError) as exc:
        segment(chain["v3"], out, dataclasses.replace(SEG, ratio=0.5), synthetic_dir=chain["generate"],
                progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and str(chain["generate"]) in msg
    assert "masks of 3 item(s)" in msg and "3 labelled training items" in msg and "--allow-more-labels" in msg
    assert not out.exists()
    res = segment(chain["v3"], out, dataclasses.replace(SEG, ratio=0.5, allow_label_excess=True),
                  synthetic_dir=chain["generate"], progress=False)
    assert res["generator_saw_more_labels"] is True
    assert res["setting"] == "real+synthetic r=0.5 [generator saw more labels]"
    assert res["folds"][0]["label_accounting"]["synthetic_check"]["outside"] == 3
    saved = json.loads((out / "results.json").read_text())
    assert saved["generator_saw_more_labels"] is True and saved["config"]["allow_label_excess"] is True


def test_segment_cli_allow_more_labels(chain, tmp_path, capsys):
    from synthpair.cli.main import main

    base = ["segment", str(chain["v3"]), "--synthetic", str(chain["generate"]), "--steps", "2",
            "--set", "batch_size=4", "--set", "eval_batch=8"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--allow-more-labels" in err and not (tmp_path / "a").exists()
    assert main([*base, "--out", str(tmp_path / "b"), "--allow-more-labels"]) == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["generator_saw_more_labels"] is True


@pytest.fixture(scope="module")
def image_syn(chain):
    """Four images from the image-only run (no masks)."""
    return generate(chain["image"], chain["root"] / "image_syn", GEN, progress=False)


def test_image_only_generation_is_unlabelled_and_refused_by_segment(chain, image_syn, tmp_path):
    syn = image_syn
    ds = PreparedDataset.open(syn, require_splits=False)
    assert len(ds.unlabelled_ids) == 4 and not list((syn / "masks").glob("*.png"))
    acc = json.loads((syn / "label_accounting.json").read_text())
    assert acc["mask_items"] == [] and len(acc["image_items"]) == 10
    with pytest.raises(SynthpairError, match="no mask") as exc:
        segment(chain["v6"], tmp_path / "seg", dataclasses.replace(SEG, ratio=0.5), synthetic_dir=syn, progress=False)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("fold", [0, None])
def test_evaluate_images_of_an_image_only_generation(chain, image_syn, fold):
    """FD/KID of an image-only generator (its documented use) against the real images: no mask statistics, and a
    real folder holding unlabelled items is read too (regression: both were refused as 'a stage that needs
    masks')."""
    import warnings

    from synthpair.evaluation.images import EvalConfig, evaluate_images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_images(chain["v6"], image_syn, cfg=EvalConfig(kid_subset_size=4, diversity_pairs=4,
                                                                     lpips_pairs=2), fold=fold)
    v6 = PreparedDataset.open(chain["v6"])
    n_real = len(v6.split(0)[0]) if fold == 0 else len(v6.ids)
    assert res["counts"] == {"real": n_real, "synthetic": 4} and res["masks"] is None
    assert res["distribution"]["synthetic_vs_real"]["fd"] is not None
    assert res["distribution"]["real_half_vs_real_half"]["n_real"] == n_real // 2


def test_image_only_generation_refuses_faithfulness_options(chain, tmp_path):
    """Regression: --min-faithfulness on an image-only generator trained a reference segmenter and then crashed
    with a TypeError; now a one-line refusal before anything is written."""
    for cfg in (dataclasses.replace(GEN, segmenter="auto", min_faithfulness=0.5),
                dataclasses.replace(GEN, segmenter=str(tmp_path / "some_seg"))):
        out = tmp_path / "syn"
        with pytest.raises(SynthpairError) as exc:
            generate(chain["image"], out, cfg, progress=False)
        msg = str(exc.value)
        assert "\n" not in msg and str(chain["image"]) in msg and "without masks" in msg
        assert not out.exists() and not (chain["image"] / "reference_segmenter").exists()


# ------------------------------------------------------------- 6. image-only → mask-aware initialisation
INFO = DataInfo(1, 2, (16, 16))


def _source(seed: int = 0) -> torch.nn.Module:
    """An image-only network with every weight perturbed (MONAI zero-initialises the output layer, so an untrained
    network would answer zeros and every comparison would hold trivially)."""
    torch.manual_seed(seed)
    net = get_method("image").build_network(INFO, NET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((3, 1, 16, 16), generator=g)
    t = torch.tensor([0, 7, 19])
    masks = (torch.rand((3, 16, 16), generator=g) > 0.6).long()
    return x, t, masks


def _target(method: str, cond: CondConfig | None = None) -> torch.nn.Module:
    torch.manual_seed(123)
    return get_method(method).build_network(INFO, NET, cond_cfg=cond)


@torch.no_grad()
def test_image_to_joint_reproduces_the_image_prediction():
    src = _source()
    x, t, masks = _inputs()
    ref = src(x, t)
    assert ref.abs().max() > 1e-3
    tgt = _target("joint")
    assert not torch.allclose(tgt.eval()(torch.cat([x, torch.zeros_like(x)], 1), t)[:, :1], ref)
    report = transfer_weights(tgt, src.state_dict())
    assert report["new"] == 0 and report["unused"] == 0 and report["adapted"] >= 1
    assert any("conv_in" in k for k in report["adapted_keys"])
    tgt.eval()
    out = tgt(torch.cat([x, torch.zeros_like(x)], 1), t)
    assert out.shape == (3, 2, 16, 16)
    torch.testing.assert_close(out[:, :1], ref, rtol=0, atol=1e-6)
    # the new mask input columns are zero: any mask channel leaves the image prediction unchanged at init
    out_mask = tgt(torch.cat([x, masks[:, None].float() * 2 - 1], 1), t)
    torch.testing.assert_close(out_mask[:, :1], ref, rtol=0, atol=1e-6)
    w = tgt.unet.conv_in.conv.weight
    assert torch.equal(w[:, 1:], torch.zeros_like(w[:, 1:]))
    torch.testing.assert_close(w[:, :1], src.unet.conv_in.conv.weight)


@torch.no_grad()
def test_image_to_mask2image_reproduces_the_image_prediction():
    src = _source()
    x, t, masks = _inputs()
    ref = src(x, t)
    tgt = _target("mask2image")
    report = transfer_weights(tgt, src.state_dict())
    assert report["new"] == 0 and report["unused"] == 0
    tgt.eval()
    out = tgt(x, t, Cond(mask_channels=torch.zeros((3, 1, 16, 16))))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(tgt(x, t, Cond(mask=masks)), ref, rtol=0, atol=1e-6)


@torch.no_grad()
def test_image_to_dsdm_spade_equals_the_source_for_any_mask():
    src = _source()
    x, t, masks = _inputs()
    ref = src(x, t)
    cc = CondConfig(reference=False, spade_hidden=8)
    tgt = _target("dsdm", cc)
    report = transfer_weights(tgt, src.state_dict())
    assert any("param_free_norm" in k for k in report["adapted_keys"])
    assert any("mlp_gamma" in k for k in report["adapted_keys"])
    assert report["unused"] == 0
    tgt.eval()
    for m in (masks, torch.zeros_like(masks), torch.ones_like(masks), 1 - masks):
        out = tgt(x, t, Cond(mask=m))
        assert out.shape == (3, 2, 16, 16)  # learned variance: 2C outputs; the first C are the prediction
        torch.testing.assert_close(out[:, :1], ref, rtol=0, atol=1e-5)


def test_transfer_of_an_unrelated_network_is_refused():
    with pytest.raises(ValueError, match="no tensor"):
        transfer_weights(_target("joint"), {"encoder.weight": torch.zeros(3, 3)})


def test_init_from_through_the_trainer_starts_from_the_image_weights(chain):
    """The mask2image run's log and training_cases.json record how the image run's weights were mapped."""
    log = (chain["mask2image"] / "log.txt").read_text()
    assert "init_from image -> mask2image" in log and "adapted" in log
    mp = _tc(chain["mask2image"])["init_from"]["mapping"]
    assert mp["copied"] > 0 and mp["unused"] == 0 and mp["new"] == 0


def test_prompt_run_starts_from_an_image_run(chain, tmp_path):
    """Regression: method prompt refused every non-prompt init_from, so image-only pre-training could not start a
    prompt (EMIT-Diff) run; now the shared U-Net weights transfer and the vocabulary is the run's own. LoRA needs
    a prompt base (its export reloads the base network strictly) and is still refused with one line."""
    from synthpair.networks.lora import LoRAConfig

    run = train_generator(chain["v6"], tmp_path / "prompt",
                          dataclasses.replace(TINY, method="prompt", steps=1, init_from=str(chain["image"])),
                          progress=False)
    tc = _tc(run)
    assert tc["init_from"]["method"] == "image" and tc["init_from"]["mapping"]["mode"] == "transfer"
    assert tc["init_from"]["mapping"]["copied"] > 0
    assert tc["mask_items"] == [] and set(tc["image_items"]) == set(_tc(chain["image"])["image_items"])
    out = tmp_path / "lora"
    with pytest.raises(SynthpairError) as exc:
        train_generator(chain["v6"], out, dataclasses.replace(TINY, method="prompt", steps=1,
                                                              init_from=str(chain["image"]),
                                                              lora=LoRAConfig(enabled=True)), progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "'image' run" in msg and "without LoRA" in msg and not out.exists()


@pytest.mark.parametrize("kind", ["size", "channels"])
def test_init_from_another_size_or_channel_count_is_refused(chain, tmp_path, kind):
    other = (write_tiny_prepared(tmp_path / "d", n=6, size=8, folds=2) if kind == "size"
             else write_tiny_prepared(tmp_path / "d", n=6, channels=3, folds=2))
    out = tmp_path / "run"
    with pytest.raises(SynthpairError) as exc:
        train_generator(other, out, dataclasses.replace(TINY, method="mask2image", init_from=str(chain["image"])),
                        progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and str(chain["image"] / "export") in msg and "init_from" in msg
    assert ("1-channel 16×16" in msg) and (("1-channel 8×8" if kind == "size" else "3-channel 16×16") in msg)
    assert not out.exists()


def test_init_from_a_mask_run_of_another_label_set_is_refused(chain, tmp_path):
    other = write_tiny_prepared(tmp_path / "d", n=6, num_classes=3, folds=2)
    out = tmp_path / "run"
    with pytest.raises(SynthpairError, match="2 labels but this data has 3") as exc:
        train_generator(other, out, dataclasses.replace(TINY, method="joint", init_from=str(chain["joint"])),
                        progress=False)
    assert "\n" not in str(exc.value) and not out.exists()
    # an image-only run has no label set: it may start a run on 3-class data
    run = train_generator(other, tmp_path / "ok", dataclasses.replace(TINY, method="joint", steps=1,
                                                                      init_from=str(chain["image"])), progress=False)
    assert _tc(run)["init_from"]["method"] == "image"


# ---------------------------------------------------------------------------------------- 7. --threads
def test_threads_option_is_honoured(tmp_path, monkeypatch):
    from synthpair.cli.main import main

    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    monkeypatch.delenv("SYNTHPAIR_THREADS", raising=False)
    torch.set_num_threads(2)
    assert main(["--threads", "1", "budget", str(data), "--out", str(tmp_path / "v1"), "--n", "2"]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(1)
    assert main(["--threads", "2", "budget", str(data), "--out", str(tmp_path / "v2"), "--n", "2"]) == 0
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("SYNTHPAIR_THREADS", "1")
    assert main(["budget", str(data), "--out", str(tmp_path / "v3"), "--n", "2"]) == 0
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["0", "-3"])
def test_threads_below_one_is_refused(tmp_path, capsys, monkeypatch, value):
    from synthpair.cli.main import main

    monkeypatch.delenv("SYNTHPAIR_THREADS", raising=False)
    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    torch.set_num_threads(1)
    out = tmp_path / "v"
    assert main(["--threads", value, "budget", str(data), "--out", str(out), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--threads" in err and ">= 1" in err
    assert not out.exists() and torch.get_num_threads() == 1


def test_threads_env_not_a_number_is_refused(tmp_path, capsys, monkeypatch):
    from synthpair.cli.main import main

    monkeypatch.setenv("SYNTHPAIR_THREADS", "many")
    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    assert main(["budget", str(data), "--out", str(tmp_path / "v"), "--n", "2"]) == 2
    assert "SYNTHPAIR_THREADS='many'" in capsys.readouterr().err and not (tmp_path / "v").exists()


def test_threads_auto_leaves_busy_cores_free(tmp_path, monkeypatch):
    """--threads auto = the cores other processes leave free (at least one); busy cores read from /proc/loadavg."""
    import os

    import synthpair.env as env
    from synthpair.cli.main import main

    monkeypatch.delenv("SYNTHPAIR_THREADS", raising=False)
    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    cpus = os.cpu_count() or 1
    assert 0 <= env.busy_cores(samples=3, interval=0.0) <= cpus  # the real reading (/proc/loadavg)
    old = torch.get_num_threads()
    try:
        monkeypatch.setattr(env, "busy_cores", lambda *a, **k: 1)
        assert main(["--threads", "auto", "budget", str(data), "--out", str(tmp_path / "v1"), "--n", "2"]) == 0
        assert torch.get_num_threads() == max(1, cpus - 1)
        monkeypatch.setattr(env, "busy_cores", lambda *a, **k: cpus + 5)
        monkeypatch.setenv("SYNTHPAIR_THREADS", "auto")
        assert main(["budget", str(data), "--out", str(tmp_path / "v2"), "--n", "2"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
