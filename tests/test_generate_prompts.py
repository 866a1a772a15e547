"""'synthpair generate' on a prompt generator (EMIT-Diff's text-guided synthesis, issue 15): --prompt (cycled over
the seeds), the run's training prompts by default, --aug-prompt appended, the prompt in every manifest line, an
exact replay, and one-line refusals before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.diffusion import DiffusionConfig
from synthpair.networks.prompt import PromptConfig
from synthpair.networks.unet import UNetConfig
from synthpair.synthesis.generate import verify_pair
from synthpair.synthesis.manifest import read_manifest
from synthpair.training import TrainConfig, train_generator

pytestmark = pytest.mark.usefixtures("one_thread")

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt_gen")
    data = write_tiny_prepared(root / "d", n=6)
    base = dict(steps=3, batch_size=3, log_every=1, preview_every=0, preview_n=0, checkpoint_every=0, amp="off",
                warmup_steps=1, device="cpu", net=NET, diffusion=DiffusionConfig(num_timesteps=20))
    prompt = train_generator(data, root / "prompt", TrainConfig(
        method="prompt", prompt=PromptConfig(dim=16, max_len=6, heads=2, aug_prob=0.5, drop_prob=0.3), **base),
        progress=False)
    joint = train_generator(data, root / "joint", TrainConfig(method="joint", **base), progress=False)
    return {"data": data, "prompt": prompt, "joint": joint}


def _generate(run: Path, out: Path, *extra: str) -> int:
    return main(["generate", str(run), "--out", str(out), "--n", "3", "--steps", "2", "--batch", "2", *extra])


def _image(folder: Path, pid: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "images" / f"{pid}.png"))


def test_prompts_cycle_over_seeds_with_the_phrase_and_replay_exactly(runs, tmp_path, monkeypatch):
    training = json.loads((runs["prompt"] / "export" / "config.json").read_text())["training_prompts"]
    a, b = training[0], "tiny, low contrast"  # b: words of the vocabulary (augmentation phrases), not a training prompt
    out = tmp_path / "syn"
    assert _generate(runs["prompt"], out, "--prompt", a, "--prompt", b, "--aug-prompt", "smooth") == 0
    lines = read_manifest(out)
    assert [r["seed"] for r in lines] == [0, 1, 2]
    assert [r["prompt"] for r in lines] == [f"{a}, smooth", f"{b}, smooth", f"{a}, smooth"]
    assert all(r["prompt_list"] == [a, b] and r["aug_phrase"] == "smooth" and r["prompt_first_seed"] == 0
               for r in lines)
    assert all(r["guidance"] == 2.0 for r in lines)  # a CFG-trained prompt model's default scale
    assert not (out / "masks").exists() or not any((out / "masks").iterdir())  # images only
    assert all(verify_pair(out, r["id"]) for r in lines)
    # the tokens the network received are the recorded prompts' (a 3-step model barely reacts to its prompt, so
    # this is checked at the network's input rather than on the pixels)
    import synthpair.methods as methods_pkg
    from synthpair.methods import get_method
    from synthpair.methods.export import load_export

    seen = []
    real = methods_pkg.synthesize_batch

    def spy(*args, **kwargs):
        seen.append(kwargs["cond"].tokens.clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(methods_pkg, "synthesize_batch", spy)
    again = tmp_path / "syn_again"
    assert _generate(runs["prompt"], again, "--prompt", a, "--prompt", b, "--aug-prompt", "smooth") == 0
    net, _ = load_export(runs["prompt"] / "export")
    expected = get_method("prompt").encode_prompts(net, [r["prompt"] for r in lines])
    import torch

    assert torch.equal(torch.cat(seen)[:3], expected)
    assert all(np.array_equal(_image(again, r["id"]), _image(out, r["id"])) for r in lines)  # deterministic


def test_default_prompts_are_the_training_prompts(runs, tmp_path):
    training = sorted(json.loads((runs["prompt"] / "export" / "config.json").read_text())["training_prompts"])
    out = tmp_path / "syn"
    assert _generate(runs["prompt"], out) == 0
    lines = read_manifest(out)
    assert lines[0]["prompt_list"] == training and lines[0]["aug_phrase"] is None
    assert [r["prompt"] for r in lines] == [training[i % len(training)] for i in range(3)]


def test_refusals_name_the_fix_and_write_nothing(runs, tmp_path, capsys):
    out = tmp_path / "syn"
    assert _generate(runs["joint"], out, "--prompt", "tiny") == 2
    assert "--prompt/--aug-prompt apply to 'prompt'" in capsys.readouterr().err and not out.exists()
    assert _generate(runs["prompt"], out, "--prompt", "tiny, polyp") == 2
    err = capsys.readouterr().err
    assert "unknown word 'polyp'" in err and err.count("\n") == 1 and not out.exists()
    assert _generate(runs["prompt"], out, "--prompt", " ") == 2
    assert "empty prompt" in capsys.readouterr().err and not out.exists()
    assert _generate(runs["prompt"], out, "--masks", "augmented") == 2
    assert "do not apply" in capsys.readouterr().err and not out.exists()
