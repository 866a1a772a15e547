"""Trainer: RUN folder contents, exact resume, config-mismatch errors, EMA math, export round trip, DDP."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_prepared
from synthpair.diffusion import DiffusionConfig
from synthpair.errors import SynthpairError
from synthpair.networks import UNetConfig
from synthpair.training import TrainConfig, train_generator
from synthpair.training.ema import ema_decay_at, ema_update, make_ema

# constant LR: these tests resume runs to MORE steps, exact only with the constant schedule (a cosine run resumes to
# its own steps: test_cosine_run_interrupted_resumes_exactly)
TINY = TrainConfig(steps=6, batch_size=4, log_every=1, preview_every=0, preview_n=4, preview_steps=3,
                   checkpoint_every=0, amp="off", warmup_steps=2, lr=2e-4, lr_schedule="constant",
                   net=UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8,
                                  norm_num_groups=8),
                   diffusion=DiffusionConfig(num_timesteps=50))


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "export" / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_prepared(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> Path:
    return train_generator(data, tmp_path_factory.mktemp("runs") / "straight", TINY, progress=False)


def test_run_folder_contract(straight_run, data):
    for name in ("config.json", "env.json", "log.txt", "metrics.jsonl", "training_cases.json",
                 "checkpoints/state.pt", "samples/step_6.png", "export/config.json", "export/model.safetensors",
                 "export/version.json"):
        assert (straight_run / name).is_file(), name
    assert [s for s, _ in _losses(straight_run)] == list(range(1, 7))
    cases = json.loads((straight_run / "training_cases.json").read_text())
    splits = json.loads((data / "splits.json").read_text())
    assert cases["cases"] == sorted(splits["folds"][0]["train"]) and cases["fold"] == 0
    state = torch.load(straight_run / "checkpoints" / "state.pt", weights_only=True)
    assert state["step"] == 6 and {"model", "ema", "optimizer", "scheduler", "generator"} <= set(state)
    exp = json.loads((straight_run / "export" / "config.json").read_text())
    assert exp["method"] == "joint" and exp["data"] == {"channels": 1, "num_classes": 2, "size": [16, 16]}


def test_resume_is_exact(straight_run, data, tmp_path):
    run = tmp_path / "halves"
    train_generator(data, run, dataclasses.replace(TINY, steps=3), progress=False)
    assert len(_losses(run)) == 3
    train_generator(data, run, TINY, resume=True, progress=False)
    assert _losses(run) == _losses(straight_run)  # identical per-step losses (exact floats)
    a, b = _weights(run), _weights(straight_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_config_names_keys(straight_run, data, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(straight_run, run)
    with pytest.raises(SynthpairError, match=r"state\.pt.*lr") as err:
        train_generator(data, run, dataclasses.replace(TINY, lr=1e-3, steps=8), resume=True, progress=False)
    assert "\n" not in str(err.value)


def test_new_run_into_non_empty_out_fails(straight_run, data):
    with pytest.raises(SynthpairError, match="not empty"):
        train_generator(data, straight_run, TINY, progress=False)


def test_ema_update_by_hand():
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema = make_ema(lin)
    with torch.no_grad():
        lin.weight.fill_(4.0)
    d = ema_decay_at(0, 0.999)
    assert d == pytest.approx(1 / 10)  # warm-up: (1+0)/(10+0)
    ema_update(ema, lin, d)
    assert ema.weight.item() == pytest.approx(0.1 * 2.0 + 0.9 * 4.0)
    assert ema_decay_at(10_000, 0.999) == 0.999 and ema_decay_at(0, 0.9, warmup=False) == 0.9


def test_export_round_trip_and_synthesize_batch(straight_run):
    from synthpair.methods import synthesize_batch
    from synthpair.methods.export import load_export

    model, cfg = load_export(straight_run / "export")
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([3, 40])
    from synthpair.methods import DataInfo, get_method

    ema_state = torch.load(straight_run / "checkpoints" / "state.pt", weights_only=True)["ema"]
    ref = get_method("joint").build_network(DataInfo(1, 2, (16, 16)), TINY.net)
    ref.load_state_dict(ema_state)
    ref.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), ref(x, t))  # the export holds exactly the EMA weights
    a = synthesize_batch((model, cfg), [3, 1, 4], steps=4, amp="off")
    b = synthesize_batch(straight_run / "export", [3, 1, 4], steps=4, amp="off")
    assert a[0].shape == (3, 1, 16, 16) and a[1].shape == (3, 16, 16) and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    alone = synthesize_batch((model, cfg), [1], steps=4, amp="off")  # pair 1 depends only on its seed
    assert torch.allclose(alone[0][0], a[0][1], atol=1e-4)
    c = synthesize_batch((model, cfg), [3, 1, 4], sampler="ddpm", steps=4, amp="off")
    d = synthesize_batch((model, cfg), [3, 1, 4], sampler="ddpm", steps=4, amp="off")
    assert torch.equal(c[0], d[0]) and not torch.equal(c[0], a[0])


def test_load_export_errors(straight_run, tmp_path):
    import shutil

    from synthpair.methods.export import load_export

    with pytest.raises(SynthpairError, match="not found"):
        load_export(tmp_path / "nope")
    bad = tmp_path / "export"
    shutil.copytree(straight_run / "export", bad)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(SynthpairError, match="sha256"):
        load_export(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(SynthpairError, match="weights file missing"):
        load_export(bad)


@pytest.mark.ddp
def test_ddp_two_processes(data, straight_run, tmp_path):
    run = tmp_path / "ddp"
    sets = ["steps=2", "batch_size=4", "log_every=1", "preview_n=2", "preview_steps=2", "amp=off",
            "net.channels=8,16", "net.attention_levels=false,true", "net.num_head_channels=8",
            "net.norm_num_groups=8", "diffusion.num_timesteps=50"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "synthpair", "train", str(data), "--method", "joint", "--out", str(run), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s for s, _ in _losses(run)] == [1, 2]  # one metrics line per step: rank 0 alone wrote
    # rows rank::2 of the same global batch on each rank, averaged → the single-process loss of step 1
    assert _losses(run)[0][1] == pytest.approx(_losses(straight_run)[0][1], rel=1e-5)
    assert (run / "export" / "model.safetensors").is_file()
    log = (run / "log.txt").read_text()
    assert log.count("start:") == 1 and "world=2" in log
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "env.json", "export", "log.txt",
                                                     "metrics.jsonl", "samples", "training_cases.json"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_the_update_is_deferred_and_resumes_exactly(straight_run, data, tmp_path, monkeypatch,
                                                                  signame):
    """A real SIGINT (Ctrl-C) or SIGTERM (kill) arriving inside the optimizer/EMA update waits for it to finish,
    then checkpoints."""
    import os
    import signal

    from synthpair.training import trainer as trainer_mod

    signum = getattr(signal, signame)
    real = trainer_mod.ema_update
    calls = {"n": 0}

    def signal_inside_third_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signum)  # delivered while the update is half done
        return real(*args, **kwargs)

    run = tmp_path / signame
    # a job started with '&' by a non-interactive shell ignores SIGINT (and keeps ignoring it inside the update);
    # a terminal's Ctrl-C is what is tested here
    previous = signal.signal(signum, signal.default_int_handler if signame == "SIGINT" else signal.SIG_DFL)
    try:
        handler_before = signal.getsignal(signum)
        monkeypatch.setattr(trainer_mod, "ema_update", signal_inside_third_update)
        with pytest.raises(KeyboardInterrupt):
            train_generator(data, run, TINY, progress=False)
        monkeypatch.setattr(trainer_mod, "ema_update", real)
        assert signal.getsignal(signum) is handler_before  # handler restored
    finally:
        signal.signal(signum, previous)
    assert torch.load(run / "checkpoints" / "state.pt", weights_only=True)["step"] == 3
    train_generator(data, run, TINY, resume=True, progress=False)
    assert _losses(run) == _losses(straight_run)
    w, ref = _weights(run), _weights(straight_run)
    assert all(torch.equal(w[k], ref[k]) for k in ref)


def _interrupt_after_three_steps_then_resume(data, run, cfg, monkeypatch) -> None:
    """Train ``cfg`` into ``run`` with a KeyboardInterrupt raised in the 4th training loss (the checkpoint holds
    step 3), then resume it to its own steps."""
    from synthpair.methods.joint import JointMethod

    real = JointMethod.training_loss
    calls = {"n": 0}

    def interrupt_on_fourth(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(JointMethod, "training_loss", interrupt_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        train_generator(data, run, cfg, progress=False)
    monkeypatch.setattr(JointMethod, "training_loss", real)
    assert torch.load(run / "checkpoints" / "state.pt", weights_only=True)["step"] == 3
    train_generator(data, run, cfg, resume=True, progress=False)


def test_ctrl_c_checkpoint_resumes_exactly(straight_run, data, tmp_path, monkeypatch):
    run = tmp_path / "interrupted"
    _interrupt_after_three_steps_then_resume(data, run, TINY, monkeypatch)
    assert _losses(run) == _losses(straight_run)


def test_cosine_run_interrupted_resumes_exactly(data, tmp_path, monkeypatch):
    """The default schedule (cosine over ``steps``): a run interrupted after step 3 and resumed to its own 6 steps
    gives the straight run's losses and weights bit for bit."""
    cfg = dataclasses.replace(TINY, lr=1e-3, lr_schedule="cosine")
    assert TrainConfig().lr_schedule == "cosine"
    straight = train_generator(data, tmp_path / "straight", cfg, progress=False)
    run = tmp_path / "interrupted"
    _interrupt_after_three_steps_then_resume(data, run, cfg, monkeypatch)
    assert _losses(run) == _losses(straight)
    w, ref = _weights(run), _weights(straight)
    assert all(torch.equal(w[k], ref[k]) for k in ref)


def test_resume_accepts_checkpoint_written_before_a_config_field_existed(straight_run, data, tmp_path):
    """A checkpoint whose stored config lacks a section added later (left at its default) still resumes;
    the same section set to a non-default value is a config change and is refused."""
    import shutil

    run = tmp_path / "old"
    shutil.copytree(straight_run, run)
    path = run / "checkpoints" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["diffusion"]["sigma_data"]  # as written by a version without DiffusionConfig.sigma_data
    state["config_hash"] = "written-by-an-older-version"
    torch.save(state, path)
    train_generator(data, run, dataclasses.replace(TINY, steps=TINY.steps + 1), resume=True, progress=False)
    assert len(_losses(run)) == TINY.steps + 1
    torch.save(state, path)
    changed = dataclasses.replace(TINY, steps=TINY.steps + 1,
                                  diffusion=dataclasses.replace(TINY.diffusion, sigma_data=0.25))
    with pytest.raises(SynthpairError, match=r"diffusion\.sigma_data"):
        train_generator(data, run, changed, resume=True, progress=False)


def test_runs_written_with_every_methods_sections_load_and_resume(straight_run, data, tmp_path):
    """Before issue 13 every config.json and checkpoint carried all six method sections (cond, control, pig,
    prompt, lora, finetune). Such a joint run loads without them (even a foreign section changed from its
    defaults: the run never read it), resumes, and its new config.json holds only what joint reads."""
    import shutil

    from synthpair.config import to_dict
    from synthpair.training.trainer import METHOD_SECTIONS, load_train_config

    run = tmp_path / "old"
    shutil.copytree(straight_run, run)
    legacy = {k: to_dict(t()) for k, t in METHOD_SECTIONS.items()}
    legacy["cond"]["mask_mode"] = "concat"  # ignored by a joint run, as it always was
    cfg_file = run / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **legacy}))
    path = run / "checkpoints" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = {**state["config"], **legacy}
    state["config_hash"] = "written-by-an-older-version"
    torch.save(state, path)
    assert load_train_config(cfg_file) == TINY
    train_generator(data, run, dataclasses.replace(load_train_config(cfg_file), steps=TINY.steps + 1),
                    resume=True, progress=False)
    assert len(_losses(run)) == TINY.steps + 1
    assert not set(METHOD_SECTIONS) & set(json.loads(cfg_file.read_text()))


def test_a_run_carries_only_its_methods_sections():
    """Each method's own sections are filled with their defaults; another method's section is refused in one line
    when set, and never written."""
    from synthpair.config import apply_overrides, to_dict
    from synthpair.networks.conditional import CondConfig

    assert TINY.cond is None and TINY.prompt is None and "cond" not in to_dict(TINY)
    p = dataclasses.replace(TINY, method="prompt")
    assert p.prompt is not None and p.lora is not None and p.finetune is not None and p.cond is None
    assert {"prompt", "lora", "finetune"} <= set(to_dict(p)) and "control" not in to_dict(p)
    assert dataclasses.replace(TINY, method="dsdm").cond == CondConfig()
    assert dataclasses.replace(TINY, method="mask2image").cond is None  # its conditioning is fixed
    assert apply_overrides(TINY, ["method=dsdm", "cond.mask_mode=concat"]).cond.mask_mode == "concat"
    with pytest.raises(SynthpairError, match=r"train\.cond: method joint does not read this section .* \(dsdm\)"):
        apply_overrides(TINY, ["cond.mask_mode=concat"])
    with pytest.raises(SynthpairError, match=r"train\.prompt: method dsdm does not read"):
        dataclasses.replace(p, method="dsdm", prompt=dataclasses.replace(p.prompt, dim=8))
    assert dataclasses.replace(p, method="joint").prompt is None  # sections left at their defaults simply go


def test_min_snr_and_lognormal_timesteps_train_and_resume_exactly(straight_run, data, tmp_path):
    """The convergence options (diffusion.loss_weighting=min_snr, diffusion.timestep_sampling=lognormal) change
    the objective — other losses than the default run from the same seed — and resume bit-exactly."""
    cfg = dataclasses.replace(TINY, diffusion=DiffusionConfig(num_timesteps=50, loss_weighting="min_snr",
                                                              timestep_sampling="lognormal"))
    whole = train_generator(data, tmp_path / "whole", cfg, progress=False)
    halves = tmp_path / "halves"
    train_generator(data, halves, dataclasses.replace(cfg, steps=3), progress=False)
    train_generator(data, halves, cfg, resume=True, progress=False)
    assert _losses(halves) == _losses(whole)
    assert [l for _, l in _losses(whole)] != [l for _, l in _losses(straight_run)]
    saved = json.loads((whole / "export" / "config.json").read_text())["diffusion"]
    assert saved["loss_weighting"] == "min_snr" and saved["timestep_sampling"] == "lognormal"


def test_keys_a_run_predates_take_their_value_of_that_time(straight_run, data, tmp_path):
    """TRAIN_LEGACY: a run written before diffusion.loss_weighting existed trained with uniform weighting —
    its config.json loads as uniform, it resumes as uniform, and resuming it with min-SNR is a named change."""
    import shutil

    from synthpair.config import with_legacy
    from synthpair.training.trainer import TRAIN_LEGACY, load_train_config

    assert with_legacy({"diffusion": {"prediction": "v"}, "lr": 1.0}, {"diffusion.loss_weighting": "uniform",
                                                                       "lr": 2.0, "pig.image_from": "x"}) == \
        {"diffusion": {"prediction": "v", "loss_weighting": "uniform"}, "lr": 1.0}
    run = tmp_path / "old"
    shutil.copytree(straight_run, run)
    cfg_file = run / "config.json"
    saved = json.loads(cfg_file.read_text())
    del saved["diffusion"]["loss_weighting"], saved["diffusion"]["timestep_sampling"]
    cfg_file.write_text(json.dumps(saved))
    assert load_train_config(cfg_file).diffusion.loss_weighting == TRAIN_LEGACY["diffusion.loss_weighting"]
    path = run / "checkpoints" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["diffusion"]["loss_weighting"], state["config"]["diffusion"]["timestep_sampling"]
    state["config_hash"] = "written-by-an-older-version"
    torch.save(state, path)
    min_snr = dataclasses.replace(TINY, steps=TINY.steps + 1,
                                  diffusion=dataclasses.replace(TINY.diffusion, loss_weighting="min_snr"))
    with pytest.raises(SynthpairError, match=r"diffusion\.loss_weighting \('uniform' -> 'min_snr'\)"):
        train_generator(data, run, min_snr, resume=True, progress=False)
    train_generator(data, run, dataclasses.replace(TINY, steps=TINY.steps + 1), resume=True, progress=False)
    assert len(_losses(run)) == TINY.steps + 1


def test_lr_factor_by_hand():
    """constant: linear warm-up then 1 (the schedule of every earlier run); cosine: warm-up, then
    (1 + cos(pi p)) / 2 from 1 at the end of the warm-up to min_ratio at the last step."""
    from synthpair.training.lr import lr_factor

    assert [lr_factor(s, warmup_steps=2, steps=6) for s in range(6)] == [0.5, 1, 1, 1, 1, 1]
    cos = [lr_factor(s, warmup_steps=2, steps=6, schedule="cosine") for s in range(6)]
    assert cos == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.25, 0.0])  # p = 0, 0, 0, 1/3, 2/3, 1
    half = [lr_factor(s, warmup_steps=0, steps=3, schedule="cosine", min_ratio=0.1) for s in range(3)]
    assert half == pytest.approx([1.0, 0.1 + 0.9 * 0.5, 0.1])
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_factor(0, warmup_steps=0, steps=3, schedule="step")  # type: ignore[arg-type]
    with pytest.raises(SynthpairError, match="lr_schedule"):
        dataclasses.replace(TINY, lr_schedule="step")
    with pytest.raises(SynthpairError, match="lr_min_ratio"):
        dataclasses.replace(TINY, lr_min_ratio=1.5)


def test_cosine_schedule_logs_its_rates_and_refuses_to_resume_to_other_steps(data, tmp_path):
    """The trainer applies lr_factor step by step (metrics.jsonl logs after step s the rate of the next one,
    ``lr · lr_factor(s)``), and resuming a cosine run to more steps — other rates — is refused in one line naming
    ``steps`` (a constant-schedule run may grow: test_resume_is_exact)."""
    from synthpair.training.lr import lr_factor

    cfg = dataclasses.replace(TINY, lr=1e-3, lr_schedule="cosine", lr_min_ratio=0.1)
    whole = train_generator(data, tmp_path / "whole", cfg, progress=False)
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx(
        [1e-3 * lr_factor(s, warmup_steps=2, steps=6, schedule="cosine", min_ratio=0.1) for s in range(1, 7)])
    assert rows[1]["lr"] > rows[2]["lr"] > rows[3]["lr"] > rows[4]["lr"] == pytest.approx(1e-4)  # last step: min
    import shutil

    halves = tmp_path / "halves"
    shutil.copytree(whole, halves)
    with pytest.raises(SynthpairError, match=r"state\.pt.*steps \(6 -> 8\).*resumes only to its own steps") as err:
        train_generator(data, halves, dataclasses.replace(cfg, steps=8), resume=True, progress=False)
    assert "\n" not in str(err.value)


def test_cli_applies_the_method_before_set_so_its_sections_are_reachable(tmp_path, capsys):
    """``synthpair train --method dsdm --set cond.mask_mode=concat`` gets past the config (and stops at the missing
    data); the same ``--set`` on a joint run is refused in one line naming the section, nothing written."""
    from synthpair.cli.main import main

    missing = tmp_path / "no_such_data"
    assert main(["train", str(missing), "--out", str(tmp_path / "a"), "--method", "dsdm",
                 "--set", "cond.mask_mode=concat", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no_such_data" in err and "cond" not in err
    assert main(["train", str(missing), "--out", str(tmp_path / "b"), "--set", "cond.mask_mode=concat",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.cond: method joint does not read this section" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_run_config_without_prediction_keeps_v_while_new_runs_default_to_edm(tmp_path):
    """The default prediction became EDM's preconditioning (issue 12); a saved run config that names no prediction
    was written when v was the default, so it loads as v (TRAIN_LEGACY) — a user's new config gets edm."""
    from synthpair.config import to_dict
    from synthpair.training.trainer import load_train_config

    assert TrainConfig().diffusion.prediction == "edm" and TrainConfig().diffusion.sigma_data == 0.5
    d = to_dict(TINY)
    del d["diffusion"]["prediction"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert load_train_config(tmp_path / "config.json").diffusion.prediction == "v"


def test_a_joint_edm_run_preconditions_masks_with_their_own_sigma_data(straight_run, data, tmp_path):
    """A joint state's one-hot mask channels ({-1, +1}, RMS 1) get sigma_d = mask_sigma_data (1: v's
    preconditioning) and the image channels sigma_data: the trainer writes the per-channel values into the run's
    config and export (what sampling reads); a run config written before mask_sigma_data existed loads it as None
    (every channel sigma_data, as those runs trained); an image-only run has no per-channel values. config.json
    keeps the user's settings (resume compares those)."""
    from synthpair.config import to_dict
    from synthpair.training.trainer import load_train_config

    saved = json.loads((straight_run / "export" / "config.json").read_text())["diffusion"]
    assert saved["prediction"] == "edm" and saved["channel_sigma_data"] == [0.5, 1.0]
    assert json.loads((straight_run / "config.json").read_text())["diffusion"]["channel_sigma_data"] == []
    d = to_dict(TINY)
    del d["diffusion"]["mask_sigma_data"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert load_train_config(tmp_path / "config.json").diffusion.mask_sigma_data is None
    img = train_generator(data, tmp_path / "image", dataclasses.replace(TINY, method="image", steps=1), progress=False)
    assert json.loads((img / "export" / "config.json").read_text())["diffusion"]["channel_sigma_data"] == []
