"""DreamBooth, HyperNetwork and Embedding fine-tuning of a prompt run (networks/finetune.py, methods/finetune.py;
issue 15 item 4): which tensors train and which stay bit-identical, step 0 = the base, DreamBooth's prior images
(made by the base, recorded, reused on resume), partial exports, generate + replay from them, one-line refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import write_tiny_prepared
from synthpair.diffusion import DiffusionConfig
from synthpair.diffusion.cond import Cond
from synthpair.errors import SynthpairError
from synthpair.networks.finetune import (FinetuneConfig, HyperLinear, NewRowsEmbedding, hyper_state_dict,
                                         inject_hypernetwork, inject_new_rows, merge_new_rows)
from synthpair.networks.lora import LoRAConfig
from synthpair.networks.prompt import PromptConfig, PromptUNet
from synthpair.networks.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)
PC = PromptConfig(dim=16, max_len=6, heads=2)


def _net(seed: int = 0) -> PromptUNet:
    torch.manual_seed(seed)
    net = PromptUNet(NET, 1, 1, 12, PC)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # MONAI zero-inits output/attention projections; make every layer matter
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _inputs(tokens: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    g = torch.Generator().manual_seed(1)
    tok = torch.tensor(tokens or [[2, 3, 4, 0, 0, 0], [5, 0, 0, 0, 0, 0]])
    return torch.randn(tok.shape[0], 1, 16, 16, generator=g), torch.tensor([5, 30][: tok.shape[0]]), Cond(tokens=tok)


def _step(net: nn.Module, lr: float = 0.05, tokens: list[list[int]] | None = None) -> None:
    x, t, c = _inputs(tokens)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    loss = net(x, t, c).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


# ------------------------------------------------------------------------------------------- modules
def test_hypernetwork_wraps_cross_attention_kv_only_step0_is_base_and_only_it_trains() -> None:
    net = _net()
    x, t, c = _inputs()
    with torch.no_grad():
        before = net(x, t, c)
    base = {k: v.clone() for k, v in net.state_dict().items()}
    wrapped = inject_hypernetwork(net, FinetuneConfig(mode="hypernetwork", hyper_hidden=(2.0,)))
    # cross-attention (attn2) keys and values of the 4 transformer blocks; no self-attention, no queries
    assert len(wrapped) == 8 and all(n.rsplit(".", 2)[-2] == "attn2" for n in wrapped)
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {"to_k", "to_v"}
    with torch.no_grad():
        assert torch.equal(net(x, t, c), before)  # zero-initialised output layer: exactly the base at step 0
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(hyper_state_dict(net))
    mlp = next(m for m in net.modules() if isinstance(m, HyperLinear)).hyper.net
    assert [tuple(m.weight.shape) for m in mlp if isinstance(m, nn.Linear)] == [(32, 16), (16, 32)]
    _step(net)
    after = net.state_dict()
    for k, v in base.items():  # every base tensor bit-identical (wrapped ones moved under .base)
        key = k if k in after else k.replace(".to_k.", ".to_k.base.").replace(".to_v.", ".to_v.base.")
        assert torch.equal(after[key], v), k
    assert all(after[k].abs().sum() > 0 for k in after if k.endswith("net.2.weight"))  # the output layers moved
    with torch.no_grad():
        assert not torch.allclose(net(x, t, c), before)
    with pytest.raises(ValueError, match="already has a hypernetwork"):
        inject_hypernetwork(net, FinetuneConfig(mode="hypernetwork"))


def test_new_rows_start_from_the_init_word_train_alone_and_merge_exactly() -> None:
    net = _net()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        base_out = net(*_inputs([[2, 3, 4, 0, 0, 0], [5, 0, 0, 0, 0, 0]]))
    table = net.text.token.weight.detach().clone()
    emb = inject_new_rows(net, [9, 10], init_row=3)
    assert isinstance(net.text.token, NewRowsEmbedding)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"text.token.new"}
    with torch.no_grad():
        # a prompt with a new word = the base's output for the prompt with the init word in its place
        assert torch.equal(net(*_inputs([[2, 9, 4, 0, 0, 0], [10, 0, 0, 0, 0, 0]])),
                           net(*_inputs([[2, 3, 4, 0, 0, 0], [3, 0, 0, 0, 0, 0]])))
        assert torch.equal(net(*_inputs([[2, 3, 4, 0, 0, 0], [5, 0, 0, 0, 0, 0]])), base_out)  # base words
    _step(net, lr=0.5, tokens=[[2, 9, 4, 0, 0, 0], [10, 9, 0, 0, 0, 0]])
    assert torch.equal(emb.base.weight, table)  # the frozen table is untouched
    assert not torch.equal(emb.new[0], table[3]) and not torch.equal(emb.new[1], table[3])
    tok = [[2, 9, 4, 0, 0, 0], [10, 5, 0, 0, 0, 0]]
    with torch.no_grad():
        wrapped = net(*_inputs(tok))
        merge_new_rows(net)
        assert type(net.text.token) is nn.Embedding
        assert torch.equal(net(*_inputs(tok)), wrapped)
    changed = (net.text.token.weight != table).any(dim=1).nonzero().flatten().tolist()
    assert changed == [9, 10]


def test_config_errors() -> None:
    from synthpair.training import TrainConfig

    with pytest.raises(SynthpairError, match="finetune.mode='textual'"):
        FinetuneConfig(mode="textual")
    with pytest.raises(SynthpairError, match="finetune.identifier"):
        FinetuneConfig(identifier="Two Words")
    with pytest.raises(SynthpairError, match=r"\{identifier\} and \{prompt\}"):
        FinetuneConfig(template="{prompt}")
    with pytest.raises(SynthpairError, match="needs a base run: add --set init_from=BASE_RUN"):
        TrainConfig(method="prompt", finetune=FinetuneConfig(mode="embedding", init_word="tiny"))
    with pytest.raises(SynthpairError, match="choose one"):
        TrainConfig(method="prompt", init_from="somewhere", lora=LoRAConfig(enabled=True),
                    finetune=FinetuneConfig(mode="hypernetwork"))
    from synthpair.config import apply_overrides

    with pytest.raises(SynthpairError, match="needs a base run"):  # through --set, in any order
        apply_overrides(TrainConfig(method="prompt"), ["finetune.mode=dreambooth"])
    ok = apply_overrides(TrainConfig(method="prompt"), ["finetune.mode=dreambooth", "init_from=X"])
    assert ok.finetune.mode == "dreambooth" and TrainConfig(method="prompt").finetune.enabled is False
    assert TrainConfig().finetune is None  # only prompt runs carry the section (issue 13)


# ------------------------------------------------------------------------------------------ end to end
TINY = dict(steps=2, batch_size=4, log_every=1, preview_every=0, preview_n=0, preview_steps=2,
            checkpoint_every=0, amp="off", warmup_steps=1, device="cpu", lr=0.01,
            lr_schedule="constant")  # the dreambooth run is resumed 1 -> 2 steps: exact with a constant LR only
PRIOR = ["finetune.prior_n=5", "finetune.prior_steps=2", "finetune.prior_batch=2", "finetune.prior_weight=0.5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from synthpair.config import apply_overrides
    from synthpair.training import TrainConfig, train_generator

    torch.set_num_threads(1)  # as the tests (one_thread is function-scoped): resumed runs are compared bit for bit
    tmp = tmp_path_factory.mktemp("finetune_e2e")
    data = write_tiny_prepared(tmp / "data", n=8)
    base_cfg = TrainConfig(method="prompt", net=NET, diffusion=DiffusionConfig(num_timesteps=30),
                           prompt=PromptConfig(dim=16, max_len=6, heads=2, aug_prob=0.3, drop_prob=0.2), **TINY)
    train_generator(data, tmp / "base", apply_overrides(base_cfg, ["steps=3"]), progress=False)
    init = f"init_from={tmp / 'base'}"
    cfgs = {
        "dreambooth": [init, "finetune.mode=dreambooth", *PRIOR],
        # a finding word the base never saw ('cyst'): its row trains beside the hypernetwork / as an embedding
        "hypernetwork": [init, "finetune.mode=hypernetwork", 'prompt.default_prompt="tiny, class1, cyst"'],
        "embedding": [init, "finetune.mode=embedding", "finetune.init_word=class1", "lr=0.05",
                      'prompt.default_prompt="tiny, class1, cyst"'],
    }
    out: dict[str, Path] = {"data": data, "base": tmp / "base", "tmp": tmp}
    for name, sets in cfgs.items():
        out[name] = train_generator(data, tmp / name, apply_overrides(base_cfg, sets), progress=False)
        out[f"{name}_cfg"] = apply_overrides(base_cfg, sets)  # type: ignore[assignment]
    return out


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "state.pt", map_location="cpu", weights_only=True)["model"]


def _base_weights(runs) -> dict[str, torch.Tensor]:
    return load_file(str(runs["base"] / "export" / "model.safetensors"))


def test_hypernetwork_run_trains_the_mlps_and_new_rows_only(runs) -> None:
    base, model = _base_weights(runs), _state(runs["hypernetwork"])
    export = json.loads((runs["hypernetwork"] / "export" / "config.json").read_text())
    ft = export["finetune"]
    assert ft["partial"] and ft["new_words"] == ["cyst"] and ft["config"]["mode"] == "hypernetwork"
    assert ft["base_export"] == str((runs["base"] / "export").resolve())
    assert export["training_prompts"] == ["tiny, class1, cyst"]  # no identifier in hypernetwork prompts
    vocab = export["vocabulary"]
    for k, v in base.items():
        key = (k.replace("attn2.to_k.", "attn2.to_k.base.").replace("attn2.to_v.", "attn2.to_v.base.")
               .replace("text.token.weight", "text.token.base.weight"))
        assert torch.equal(model[key], v), k  # the training model's base tensors are bit-identical
    hyper = {k for k in model if ".hyper.net." in k}
    assert len(hyper) == 8 * 4 and any(model[k].abs().sum() > 0 for k in hyper if k.endswith("net.2.weight"))
    assert model["text.token.rows"].tolist() == [vocab.index("cyst")]
    assert not torch.equal(model["text.token.new"][0], base["text.token.weight"][vocab.index("cyst")])
    saved = load_file(str(runs["hypernetwork"] / "export" / "model.safetensors"))
    assert set(saved) == hyper | {"text.token.new", "text.token.rows"}  # partial export
    log = (runs["hypernetwork"] / "log.txt").read_text()
    n_train = sum(model[k].numel() for k in hyper) + model["text.token.new"].numel()
    assert f"finetune: mode hypernetwork, 8 key/value projections wrapped; new words cyst (rows trained); " \
           f"{n_train} trainable parameters" in log and f"trainable={n_train}" in log
    assert ft["trainable_parameters"] == n_train


def test_embedding_run_trains_only_the_new_rows(runs) -> None:
    base, model = _base_weights(runs), _state(runs["embedding"])
    export = json.loads((runs["embedding"] / "export" / "config.json").read_text())
    vocab = export["vocabulary"]
    assert export["finetune"]["new_words"] == ["cyst", "sks"]  # appended after the base's words, sorted
    assert vocab[:len(vocab) - 2] == json.loads((runs["base"] / "export" / "config.json").read_text())["vocabulary"]
    assert export["training_prompts"] == ["sks tiny, class1, cyst"]
    assert set(model) == {k for k in base if k != "text.token.weight"} | {"text.token.base.weight", "text.token.new",
                                                                          "text.token.rows"}
    for k, v in base.items():
        assert torch.equal(model[k if k != "text.token.weight" else "text.token.base.weight"], v), k
    rows = [vocab.index("cyst"), vocab.index("sks")]
    assert model["text.token.rows"].tolist() == rows
    init = base["text.token.weight"][vocab.index("class1")]
    assert all(not torch.equal(model["text.token.new"][i], init) for i in range(2))  # moved from the init word
    assert (model["text.token.new"] - init).abs().max() < 1.0  # ... but started there (2 steps, lr 0.05)
    saved = load_file(str(runs["embedding"] / "export" / "model.safetensors"))
    assert set(saved) == {"text.token.new", "text.token.rows"}


def test_dreambooth_prior_made_by_the_base_recorded_and_full_finetune(runs) -> None:
    from synthpair.diffusion.schedule import NoiseSchedule
    from synthpair.methods import DataInfo, get_method
    from synthpair.methods.export import load_export

    run = runs["dreambooth"]
    prior = json.loads((run / "prior" / "prior.json").read_text())
    assert prior["seeds"] == [0, 1, 2, 3, 4] and prior["prompts"] == ["tiny, class1"] * 5
    assert prior["base_weights_sha256"] == json.loads((run / "export" / "config.json").read_text())[
        "finetune"]["base_weights_sha256"]
    recorded = load_file(str(run / "prior" / "images.safetensors"))["images"]
    assert recorded.shape == (5, 1, 16, 16)
    base, cfg = load_export(runs["base"] / "export")
    m = get_method("prompt")
    with torch.no_grad():
        again, _ = m.sample(base, NoiseSchedule(DiffusionConfig(num_timesteps=30)), prior["seeds"],
                            data=DataInfo.from_dict(cfg["data"]), sampler="dpm++2m", spacing="logsnr", steps=2,
                            guidance=prior["guidance"], prompts=prior["prompts"])
    assert prior["guidance"] == 2.0 and torch.allclose(again, recorded, atol=1e-6)  # the base made them
    export = json.loads((run / "export" / "config.json").read_text())
    assert export["training_prompts"] == ["sks tiny, class1"] and export["finetune"]["class_prompts"] == ["tiny, class1"]
    assert export["vocabulary"][-1] == "sks" and export["finetune"]["partial"] is False
    full, bw = load_file(str(run / "export" / "model.safetensors")), _base_weights(runs)
    assert set(full) == set(bw)  # a full fine-tune exports every weight
    moved = [k for k in bw if not torch.equal(full[k], bw[k])]
    assert len(moved) > 0.8 * len(bw)
    assert "prior class images made by the base" in (run / "log.txt").read_text()


def test_dreambooth_resume_reuses_the_prior_and_matches_a_straight_run(runs, monkeypatch) -> None:
    from synthpair.config import apply_overrides
    from synthpair.methods.prompt import PromptMethod
    from synthpair.training import train_generator

    cfg = runs["dreambooth_cfg"]
    tmp = runs["tmp"]
    train_generator(runs["data"], tmp / "db_part", apply_overrides(cfg, ["steps=1"]), progress=False)
    first = load_file(str(tmp / "db_part" / "prior" / "images.safetensors"))["images"]

    def no_sampling(*a, **k):
        raise AssertionError("prior images were generated again on resume")

    monkeypatch.setattr(PromptMethod, "sample", no_sampling)
    train_generator(runs["data"], tmp / "db_part", cfg, resume=True, progress=False)  # 1 -> 2 steps
    monkeypatch.undo()
    assert "prior class images reused" in (tmp / "db_part" / "log.txt").read_text()
    assert torch.equal(load_file(str(tmp / "db_part" / "prior" / "images.safetensors"))["images"], first)
    straight = load_file(str(runs["dreambooth"] / "export" / "model.safetensors"))
    resumed = load_file(str(tmp / "db_part" / "export" / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # same prior draws, same weights
    # resuming with other prior settings is refused in one line
    import shutil

    shutil.copytree(tmp / "db_part", tmp / "db_other")
    (tmp / "db_other" / "export").rename(tmp / "db_other" / "export_old")
    prior = json.loads((tmp / "db_other" / "prior" / "prior.json").read_text())
    prior["seeds"] = [9] * 5
    (tmp / "db_other" / "prior" / "prior.json").write_text(json.dumps(prior))
    with pytest.raises(SynthpairError, match="prior images were made with other settings"):
        train_generator(runs["data"], tmp / "db_other", apply_overrides(cfg, ["steps=3"]), resume=True,
                        progress=False)


@pytest.mark.parametrize("mode", ["hypernetwork", "embedding"])
def test_partial_export_reloads_generates_and_replays_exactly(runs, mode, tmp_path) -> None:
    from synthpair.cli.main import main
    from synthpair.diffusion.schedule import NoiseSchedule
    from synthpair.methods import DataInfo, get_method
    from synthpair.methods.export import load_export
    from synthpair.synthesis.generate import verify_pair
    from synthpair.synthesis.manifest import read_manifest

    run = runs[mode]
    loaded, cfg = load_export(run / "export")
    # the same model by hand: base export + the modules + the exported tensors, nothing merged
    by_hand, _ = load_export(runs["base"] / "export")
    state = load_file(str(run / "export" / "model.safetensors"))
    fc = FinetuneConfig(**{**cfg["finetune"]["config"],
                           "hyper_hidden": tuple(cfg["finetune"]["config"]["hyper_hidden"]),
                           "class_prompts": tuple(cfg["finetune"]["config"]["class_prompts"])})
    if mode == "hypernetwork":
        inject_hypernetwork(by_hand, fc)
    inject_new_rows(by_hand, state["text.token.rows"].tolist(), None)
    by_hand.load_state_dict({**by_hand.state_dict(), **state})
    by_hand.vocabulary = loaded.vocabulary
    m = get_method("prompt")
    prompt = cfg["training_prompts"][0]
    kw = dict(data=DataInfo.from_dict(cfg["data"]), steps=3, prompts=[prompt] * 2)
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=30))
    with torch.no_grad():
        a, _ = m.sample(loaded, sched, [4, 5], **kw)
        b, _ = m.sample(by_hand, sched, [4, 5], **kw)
        base_model, _ = load_export(runs["base"] / "export")
        c, _ = m.sample(base_model, sched, [4, 5], data=kw["data"], steps=3, prompts=["tiny, class1"] * 2)
        d, _ = m.sample(loaded, sched, [4, 5], data=kw["data"], steps=3, prompts=["tiny, class1"] * 2)
    assert torch.equal(a, b)
    if mode == "embedding":  # base words keep the base's embedding: a base prompt gives the base's images
        assert torch.equal(c, d)
    else:
        assert not torch.equal(c, d)  # the hypernetwork changes every prompt's keys/values
    out = tmp_path / "syn"
    assert main(["generate", str(run), "--out", str(out), "--n", "2", "--steps", "2", "--prompt", prompt]) == 0
    lines = read_manifest(out)
    assert [r["prompt"] for r in lines] == [prompt, prompt] and all(verify_pair(out, r["id"]) for r in lines)
    # a partial export over another base (same shapes, other weights) is refused
    import shutil

    for legacy in (False, True):  # the base named by network.json; by config.json in an export that predates it
        moved = tmp_path / f"moved{int(legacy)}"
        shutil.copytree(run / "export", moved)
        name = "config.json" if legacy else "network.json"
        other = json.loads((moved / name).read_text())
        if legacy:
            (moved / "network.json").unlink()
        record = other["finetune"] if legacy else other["config"]["partial"]
        assert legacy or record["kind"] == "finetune"
        record["base_export"] = str((runs["dreambooth"] / "export").resolve())
        (moved / name).write_text(json.dumps(other))
        with pytest.raises(SynthpairError, match="fine-tuning checkpoint for another base model"):
            load_export(moved)


@pytest.mark.parametrize("sets, message", [
    (["finetune.mode=embedding", "finetune.init_word=tiny", "finetune.identifier=tiny"],
     "finetune.identifier='tiny': already a word of the base run's vocabulary"),
    (["finetune.mode=embedding", "finetune.init_word=zebra"], "finetune.init_word='zebra': not a word of the base"),
    (["finetune.mode=embedding"], "give finetune.init_word"),
    (["finetune.mode=dreambooth", 'prompt.default_prompt="tiny, class1, cyst"'],
     "finetune.class_prompts: 'tiny, class1, cyst' has words the base run never learnt \\(cyst\\)"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, sets, message) -> None:
    from synthpair.config import apply_overrides
    from synthpair.training import train_generator

    cfg = apply_overrides(runs["dreambooth_cfg"], ["finetune.mode=off", *sets])
    out = runs["tmp"] / "refused"
    with pytest.raises(SynthpairError, match=message) as err:
        train_generator(runs["data"], out, cfg, progress=False)
    assert "\n" not in str(err.value) and not out.exists()


def test_finetune_mode_on_another_method_is_refused(runs) -> None:
    from synthpair.config import apply_overrides

    with pytest.raises(SynthpairError, match=r"train\.prompt, train\.finetune: method joint does not read these "
                                             r"sections \(its sections: none\); remove them, .*\(prompt\)"):
        apply_overrides(runs["hypernetwork_cfg"], ["method=joint"])
    assert not (runs["tmp"] / "joint_ft").exists()
