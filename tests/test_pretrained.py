"""Networks own their config and persistence (issue 13, item 1): ``network.json`` + safetensors round trips for every
generator network class, one-line errors, and exports written before ``network.json`` existed still load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from synthpair.diffusion.cond import Cond
from synthpair.errors import SynthpairError
from synthpair.networks.conditional import MASK2IMAGE_COND, CondConfig, ConditionalUNet
from synthpair.networks.pig import PigNet
from synthpair.networks.pretrained import from_pretrained, network_classes, save_pretrained
from synthpair.networks.prompt import PromptConfig, PromptUNet, Vocabulary
from synthpair.networks.unet import ClusterUNet, DiffusionUNet, UNetConfig

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-default weights (zero-initialised output layers would hide a wrong load)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _cases() -> list[tuple[str, torch.nn.Module, Cond | None, int]]:
    """(name, network, cond, input channels) of every built-in full-export network class."""
    vocab = Vocabulary(["benign", "lesion"])
    prompt = PromptUNet(NET, 1, 1, 8, PromptConfig(dim=16, max_len=4, heads=2))
    prompt.vocabulary = vocab
    tokens = vocab.encode_batch(["benign lesion", "lesion"], 4)
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[:, 4:9, 5:11] = 1
    return [
        ("DiffusionUNet", DiffusionUNet(NET, 2, 2), None, 2),
        ("ClusterUNet", ClusterUNet(NET, 2, 2, k=3, prior=[0.5, 0.25, 0.25]), Cond(label=torch.tensor([0, 2])), 2),
        ("ConditionalUNet", ConditionalUNet(NET, CondConfig(mask_mode="spade", reference=False, ref_width=8,
                                                            spade_hidden=8), 1, 2), Cond(mask=mask), 1),
        ("ConditionalUNet/concat", ConditionalUNet(NET, MASK2IMAGE_COND, 1, 2), Cond(mask=mask), 1),
        ("PigNet", PigNet(NET, NET, 1, 2), Cond(mask=mask), 2),
        ("PromptUNet", prompt, Cond(tokens=tokens), 1),
    ]


@pytest.mark.parametrize("case", range(6))
def test_every_network_round_trips_through_network_json(case: int, tmp_path: Path) -> None:
    name, net, cond, cin = _cases()[case]
    _randomise(net, case)
    folder = save_pretrained(net, tmp_path / "net")
    record = json.loads((folder / "network.json").read_text())
    assert record["format"] == "synthpair-network" and record["class"] == name.split("/")[0]
    assert {p.name for p in folder.iterdir()} == {"network.json", "model.safetensors", "version.json"}
    loaded = from_pretrained(folder)
    assert type(loaded) is type(net) and not loaded.training
    a, b = net.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, cin, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 40])
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), loaded(x, t, cond))
    if isinstance(net, ClusterUNet):
        assert loaded.prior == [0.5, 0.25, 0.25] and loaded.k == 3
    if isinstance(net, PromptUNet):
        assert loaded.vocabulary.to_list() == net.vocabulary.to_list() and loaded.partial is None


def test_bad_network_folders_are_one_line_errors(tmp_path: Path) -> None:
    net = _randomise(DiffusionUNet(NET, 1, 1))
    folder = save_pretrained(net, tmp_path / "net")
    with pytest.raises(SynthpairError, match="network.json: missing") as err:
        from_pretrained(tmp_path)
    assert "\n" not in str(err.value)
    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    rec = json.loads((odd / "network.json").read_text())
    (odd / "network.json").write_text(json.dumps({**rec, "class": "NoSuchNet"}))
    with pytest.raises(SynthpairError, match="network class 'NoSuchNet' unknown"):
        from_pretrained(odd)
    (odd / "network.json").write_text(json.dumps({**rec, "format": "something-else"}))
    with pytest.raises(SynthpairError, match="not a synthpair-network"):
        from_pretrained(odd)
    (odd / "network.json").write_text(json.dumps({**rec, "config": {**rec["config"], "out_channels": 3}}))
    with pytest.raises(SynthpairError, match="weights do not fit the network in network.json"):
        from_pretrained(odd)
    (odd / "network.json").write_text(json.dumps(rec))
    raw = bytearray((odd / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (odd / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(SynthpairError, match="sha256 does not match version.json"):
        from_pretrained(odd)
    assert {"DiffusionUNet", "ClusterUNet", "ConditionalUNet", "PigNet", "PromptUNet",
            "ControlledUNet"} <= set(network_classes())


def test_an_export_without_network_json_loads_through_its_method_the_same(tmp_path: Path) -> None:
    """A run's export has network.json; the same export without it (as written before issue 13) rebuilds through
    the method with identical weights, so every older run folder still loads."""
    from conftest import write_tiny_prepared

    from synthpair.diffusion import DiffusionConfig
    from synthpair.methods.export import load_export
    from synthpair.training import TrainConfig, train_generator

    data = write_tiny_prepared(tmp_path / "data")
    cfg = TrainConfig(method="mask2image", steps=2, batch_size=4, preview_every=0, preview_n=0, checkpoint_every=0,
                      amp="off", warmup_steps=1, net=NET, diffusion=DiffusionConfig(num_timesteps=20))
    run = train_generator(data, tmp_path / "run", cfg, progress=False)
    record = json.loads((run / "export" / "network.json").read_text())
    assert record["class"] == "ConditionalUNet" and record["config"]["cond"]["mask_mode"] == "concat"
    new, _ = load_export(run / "export")
    old_dir = tmp_path / "old_export"
    shutil.copytree(run / "export", old_dir)
    (old_dir / "network.json").unlink()
    old, old_cfg = load_export(old_dir)
    assert type(old) is type(new) and old_cfg["method"] == "mask2image"
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
