"""Prompt-conditioned model (EMIT-Diff): vocabulary, prompt encoder, PromptUNet + CFG, augmentation prompts,
item prompt rules, the method's training loss and sampling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import write_tiny_prepared
from synthpair.data.aug_prompts import AUG_PHRASES, apply_phrase, augment_batch
from synthpair.data.dataset import PreparedDataset
from synthpair.diffusion.cond import Cond
from synthpair.errors import SynthpairError
from synthpair.methods.prompt import append_phrases, finding_of, item_prompts, with_phrase
from synthpair.networks.prompt import PromptConfig, PromptEncoder, PromptUNet, Vocabulary, tokenize
from synthpair.networks.unet import UNetConfig

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)
PC = PromptConfig(dim=16, max_len=6, heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """MONAI zero-initialises output and attention projections; perturb every weight so conditions matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


# ------------------------------------------------------------------------------------ vocabulary
def test_vocabulary_ids_round_trip_and_errors(tmp_path: Path) -> None:
    v = Vocabulary.from_prompts(["US, breast, benign", "us breast  BENIGN"])
    assert v.words == ["<pad>", "<unk>", "benign", "breast", "us"]
    assert v.encode("US, breast, benign", 5).tolist() == [4, 3, 2, 0, 0]
    assert v.encode_batch(["us", "breast benign"], 3).tolist() == [[4, 0, 0], [3, 2, 0]]
    assert v.decode(torch.tensor([4, 3, 0])) == "us breast"
    v.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text()) == v.words
    assert Vocabulary.load(tmp_path / "vocab.json") == v
    with pytest.raises(SynthpairError, match=r"prompt 'US, breast, malignnt': unknown word 'malignnt'; known: "
                                             r"benign, breast, us"):
        v.encode("US, breast, malignnt", 5)
    with pytest.raises(SynthpairError, match="exceed prompt.max_len=2"):
        v.encode("us breast benign", 2)
    with pytest.raises(SynthpairError, match="empty"):
        v.encode(" , ", 4)
    (tmp_path / "bad.json").write_text('["a", "b"]')
    with pytest.raises(SynthpairError, match="not a synthpair vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    # a fine-tuning vocabulary keeps the base ids and appends new words sorted
    ft = Vocabulary.from_prompts(["endoscopy, polyp", "US, breast, benign"], base=v)
    assert ft.words[:5] == v.words and ft.words[5:] == ["endoscopy", "polyp"]
    assert tokenize("Enhanced  contrast,gamma") == ["enhanced", "contrast", "gamma"]


# ------------------------------------------------------------------------------------ encoder
def test_encoder_shapes_and_padding_mask() -> None:
    torch.manual_seed(0)
    enc = _randomise(PromptEncoder(10, 16, 6, layers=2, heads=2))
    tok = torch.tensor([[5, 3, 0, 0, 0, 0], [5, 3, 7, 2, 0, 0]])
    ctx, pad = enc(tok)
    assert ctx.shape == (2, 6, 16) and pad.tolist() == (tok == 0).tolist()
    # padded positions carry the prompt-independent pad vector
    assert torch.equal(ctx[0, 2:], enc.pad_context.expand(4, 16))
    # real positions do not depend on how much padding follows (key padding mask)
    short, _ = enc(tok[:1, :3])
    assert torch.allclose(short[0, :2], ctx[0, :2], atol=1e-5)
    # ... but they do depend on the other real tokens (attention is not masked away)
    assert not torch.allclose(ctx[0, :2], ctx[1, :2], atol=1e-4)
    with pytest.raises(SynthpairError, match="outside this encoder's 10 embedding rows"):
        enc(torch.tensor([[11, 0]]))


def test_encoder_weights_load_strictly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = _randomise(PromptEncoder(10, 16, 6, heads=2))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    dst = PromptEncoder(10, 16, 6, heads=2).eval()
    dst.load_weights(tmp_path / "enc.safetensors")
    tok = torch.tensor([[2, 4, 0, 0]])
    assert torch.equal(dst(tok)[0], src(tok)[0])
    with pytest.raises(SynthpairError, match="prompt.encoder_weights file not found"):
        dst.load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(SynthpairError, match="do not fit the prompt encoder"):
        PromptEncoder(10, 32, 6, heads=2).load_weights(tmp_path / "enc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(SynthpairError, match="unreadable"):
        dst.load_weights(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------ PromptUNet
def test_prompt_unet_shapes_prompt_effect_and_cfg_drop() -> None:
    torch.manual_seed(0)
    net = _randomise(PromptUNet(NET, 1, 1, 12, PC))
    assert net.diffusion_unet is net.unet.unet and net.diffusion_unet.__class__.__name__ == "DiffusionModelUNet"
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([3, 40])
    a = torch.tensor([[2, 3, 0, 0, 0, 0], [2, 3, 0, 0, 0, 0]])
    b = torch.tensor([[4, 5, 6, 0, 0, 0], [4, 5, 6, 0, 0, 0]])
    with torch.no_grad():
        out_a = net(x, t, Cond(tokens=a))
        out_b = net(x, t, Cond(tokens=b))
        assert out_a.shape == (2, 1, 16, 16)
        assert (out_a - out_b).abs().max() > 1e-4  # the prompt matters
        drop = torch.tensor([True, False])
        d_a = net(x, t, Cond(tokens=a, drop=drop))
        d_b = net(x, t, Cond(tokens=b, drop=drop))
        assert torch.allclose(d_a[0], d_b[0], atol=1e-6)       # dropped row: null prompt, tokens ignored
        assert torch.allclose(d_a[1], out_a[1], atol=1e-6)     # kept row: unchanged
        # the null prompt = the all-padding prompt (learned null context)
        null = net(x, t, Cond(tokens=torch.zeros_like(a)))
        assert torch.allclose(null[0], d_a[0], atol=1e-6)
        ctx = net.encode(a)
        assert ctx.shape == (2, 6, 16)
        direct = net.diffusion_unet(x, t, context=net.context(Cond(tokens=a), 2))
        assert torch.allclose(direct, out_a, atol=1e-6)
    with pytest.raises(SynthpairError, match="needs cond.tokens"):
        net(x, t, Cond())
    with pytest.raises(SynthpairError, match="divisible by prompt.heads"):
        PromptConfig(dim=10, heads=4)


# ------------------------------------------------------------------------------------ augmentation prompts
def test_augmentation_phrases_by_hand_and_deterministic() -> None:
    assert len(AUG_PHRASES) >= 10
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, 8, 8, generator=g) * 1.0 - 0.5)  # in [-0.5, 0.5]: no clipping below
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(apply_phrase(x, "high brightness"), x + 0.3)
    assert torch.allclose(apply_phrase(x, "low brightness"), x - 0.3)
    assert torch.allclose(apply_phrase(x, "low contrast"), m + 0.5 * (x - m), atol=1e-6)
    assert torch.allclose(apply_phrase(x, "enhanced contrast"), (m + 1.5 * (x - m)).clamp(-1, 1), atol=1e-6)
    mid = torch.zeros(1, 1, 2, 2)  # u = 0.5
    assert torch.allclose(apply_phrase(mid, "gamma high"), torch.full_like(mid, 0.5 ** 1.6 * 2 - 1))
    assert torch.allclose(apply_phrase(mid, "gamma low"), torch.full_like(mid, 0.5 ** 0.6 * 2 - 1))
    n = torch.randn(2, 1, 8, 8, generator=g)
    assert torch.allclose(apply_phrase(x, "gaussian noise", noise=n), x + 0.1 * n)
    assert torch.allclose(apply_phrase(x, "speckle", noise=n), (((x + 1) / 2) * (1 + 0.25 * n)) * 2 - 1, atol=1e-6)
    checker = (torch.arange(8).view(-1, 1) + torch.arange(8).view(1, -1)) % 2 * 1.0 - 0.5  # 1-px checkerboard
    low = apply_phrase(checker.view(1, 1, 8, 8), "low resolution")
    assert torch.allclose(low, torch.zeros_like(low), atol=1e-6)  # 2x2 averages of ±0.5 cancel
    assert apply_phrase(checker.view(1, 1, 8, 8), "smooth").abs().max() < 0.25
    sharp = apply_phrase(x, "high resolution")
    assert (sharp - sharp.mean()).std() > (x - x.mean()).std()
    for p in AUG_PHRASES:  # every phrase changes the image, deterministically for a given generator
        a = apply_phrase(x, p, generator=torch.Generator().manual_seed(5))
        b = apply_phrase(x, p, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and not torch.allclose(a, x), p
        assert a.min() >= -1 and a.max() <= 1
    choice = torch.tensor([-1, 2])
    out = augment_batch(x, choice, AUG_PHRASES, n)
    assert torch.equal(out[0], x[0]) and torch.allclose(out[1], apply_phrase(x[1:], AUG_PHRASES[2])[0])
    with pytest.raises(SynthpairError, match="unknown phrase 'sepia'"):
        apply_phrase(x, "sepia")
    assert with_phrase("US, breast, benign", "smooth") == "US, breast, benign, smooth"


def test_append_phrases_after_last_real_token() -> None:
    v = Vocabulary.from_prompts(["us breast"], AUG_PHRASES)
    tok = v.encode_batch(["us breast", "us"], 5)
    out = append_phrases(tok, torch.tensor([0, -1]), ("low contrast",), v)
    assert v.decode(out[0]) == "us breast low contrast" and torch.equal(out[1], tok[1])


# ------------------------------------------------------------------------------------ item prompts
def test_item_prompt_rules(tmp_path: Path) -> None:
    data = write_tiny_prepared(tmp_path / "d", n=6)
    info = json.loads((data / "dataset.json").read_text())
    info["items"][0]["prompt"] = "US, breast, own prompt"
    (data / "dataset.json").write_text(json.dumps(info))
    ds = PreparedDataset.open(data)
    ids = ds.ids[:2]
    assert item_prompts(ds, ids, PromptConfig()) == ["US, breast, own prompt", "tiny, class1"]
    assert item_prompts(ds, ids, PromptConfig(default_prompt="US, lesion"))[1] == "US, lesion"
    assert item_prompts(ds, ids, PromptConfig(template="{modality}, {label}"))[1] == "phantom, class1"
    labels = {"background": 0, "lesion": 1}
    assert finding_of("benign_001", labels) == "benign" and finding_of("malignant_12", labels) == "malignant"
    assert finding_of("cju0qkwl35piu0993l0dewei2", labels) == "lesion" and finding_of("case_1x", labels) == "case"
    with pytest.raises(SynthpairError, match="bad placeholder"):
        item_prompts(ds, ids[1:], PromptConfig(template="{organ}"))


# ------------------------------------------------------------------------------------ method: loss and sampling
def test_training_loss_draws_and_sample_cfg(tmp_path: Path) -> None:
    from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from synthpair.methods import DataInfo, get_method
    from synthpair.training import TrainConfig

    data = write_tiny_prepared(tmp_path / "d", n=6)
    ds = PreparedDataset.open(data)
    train_ids, _ = ds.split(0)
    cfg = TrainConfig(method="prompt", net=NET, prompt=PromptConfig(dim=16, max_len=6, heads=2, aug_prob=0.5))
    m = get_method("prompt")
    extras = m.item_extras(ds, train_ids, cfg)
    info = DataInfo(1, 2, (16, 16))
    torch.manual_seed(0)
    net = _randomise(m.build_for_training(info, cfg, ds, train_ids))
    assert extras["tokens"].shape == (len(train_ids), 6)
    assert m.encode_prompts(net, ["tiny, class1"]).tolist() == extras["tokens"][:1].tolist()
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=50))
    imgs = torch.from_numpy(ds.load(train_ids)[0])
    masks = torch.zeros(len(train_ids), 16, 16, dtype=torch.long)
    kw = dict(data=info, extra={"tokens": extras["tokens"]})
    l1 = m.training_loss(net, sched, imgs, masks, torch.Generator().manual_seed(3), **kw)
    l2 = m.training_loss(net, sched, imgs, masks, torch.Generator().manual_seed(3), **kw)
    assert l1.ndim == 0 and torch.equal(l1, l2)
    with pytest.raises(SynthpairError, match="need prompt tokens|needs prompt tokens|prompt tokens"):
        m.training_loss(net, sched, imgs, masks, torch.Generator(), data=info)
    # sampling: pair i depends only on seed i and its prompt; guidance combines cond/null predictions
    with torch.no_grad():
        a, mk = m.sample(net, sched, [7, 8], data=info, steps=3, prompts=["tiny, class1", "tiny, class1, smooth"],
                         guidance=2.0)
        b, _ = m.sample(net, sched, [7], data=info, steps=3, prompts=["tiny, class1"], guidance=2.0)
        c, _ = m.sample(net, sched, [7], data=info, steps=3, prompts=["tiny, class1"], guidance=1.0)
    assert a.shape == (2, 1, 16, 16) and mk.shape == (2, 16, 16) and int(mk.abs().sum()) == 0
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(b, c, atol=1e-4)
    given = torch.ones(1, 16, 16, dtype=torch.long)
    _, mk2 = m.sample(net, sched, [7], data=info, steps=2, cond=Cond(tokens=extras["tokens"][:1], mask=given))
    assert torch.equal(mk2, given)
    with pytest.raises(SynthpairError, match="unknown word"):
        m.sample(net, sched, [1], data=info, steps=2, prompts=["tiny, polyp"])


def test_resume_with_augmentation_prompts_is_exact(tmp_path: Path) -> None:
    """Prompt dropout and augmentation phrases draw from the trainer's generator: 2 + 2 resumed steps give
    the same weights as 4 straight steps."""
    import dataclasses

    from safetensors.torch import load_file

    from synthpair.diffusion import DiffusionConfig
    from synthpair.training import TrainConfig, train_generator

    data = write_tiny_prepared(tmp_path / "d", n=6)
    cfg = TrainConfig(method="prompt", steps=4, batch_size=3, log_every=1, preview_every=0, preview_n=0,
                      checkpoint_every=0, amp="off", warmup_steps=1, device="cpu", net=NET,
                      lr_schedule="constant",  # 2 + 2 resumed steps: exact with a constant LR only
                      prompt=PromptConfig(dim=16, max_len=6, heads=2, aug_prob=0.7, drop_prob=0.3),
                      diffusion=DiffusionConfig(num_timesteps=20))
    train_generator(data, tmp_path / "straight", cfg, progress=False)
    train_generator(data, tmp_path / "resumed", dataclasses.replace(cfg, steps=2), progress=False)
    train_generator(data, tmp_path / "resumed", cfg, resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
