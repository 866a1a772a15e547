"""joint_cluster: cluster labels reach the network in training, the export records the clusters, sampling per
cluster is seeded and label-free draws are recoverable; clear errors for missing/mismatched clusters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthpair.errors import SynthpairError
from test_clustering import write_two_groups

NET = ["net.channels=[8,16]", "net.attention_levels=[false,true]", "net.norm_num_groups=8",
       "net.num_head_channels=8"]


def _cfg(**kw):
    from synthpair.config import apply_overrides
    from synthpair.training.trainer import TrainConfig

    cfg = TrainConfig(method="joint_cluster", fold=0, steps=3, batch_size=4, preview_every=0, preview_n=2,
                      preview_steps=2, checkpoint_every=0, log_every=1, amp="off", **kw)
    return apply_overrides(cfg, NET)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from synthpair.data.clustering import ClusterConfig, cluster_dataset
    from synthpair.training.trainer import train_generator

    root = tmp_path_factory.mktemp("jc")
    data = write_two_groups(root / "data", n=16, size=16)
    cluster_dataset(data, root / "cl", ClusterConfig(k=2, fold=0))
    run = train_generator(data, root / "run", _cfg(clusters=str(root / "cl" / "clusters.json")), progress=False)
    return data, root / "cl", run


def test_export_records_clusters_and_sampling_is_per_cluster(trained: tuple[Path, Path, Path]) -> None:
    from synthpair.diffusion.cond import Cond
    from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from synthpair.config import from_dict
    from synthpair.methods import DataInfo, get_method, synthesize_batch
    from synthpair.methods.cluster import labels_for_seeds
    from synthpair.methods.export import load_export
    from synthpair.networks.export import sha256_file

    data, cl, run = trained
    model, cfg = load_export(run / "export")
    clusters = json.loads((cl / "clusters.json").read_text())
    assert cfg["method"] == "joint_cluster" and cfg["clusters"]["k"] == 2
    assert cfg["clusters"]["sha256"] == sha256_file(cl / "clusters.json")
    assert cfg["clusters"]["sizes"] == clusters["sizes"]
    assert cfg["clusters"]["prior"] == pytest.approx([s / sum(clusters["sizes"]) for s in clusters["sizes"]])
    assert model.unet.class_embedding.num_embeddings == 2
    method = get_method("joint_cluster")
    sched = NoiseSchedule(from_dict(DiffusionConfig, cfg["diffusion"]))
    info = DataInfo.from_dict(cfg["data"])
    seeds = [5, 6, 7]
    a = method.sample(model, sched, seeds, data=info, steps=3, labels=[0, 1, 0])
    b = method.sample(model, sched, seeds, data=info, steps=3, cond=Cond(label=torch.tensor([0, 1, 0])))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = method.sample(model, sched, seeds, data=info, steps=3, labels=[1, 1, 0])
    assert not torch.equal(a[0][0], c[0][0]) and torch.equal(a[0][2], c[0][2])  # label changes only its pair
    # label-free sampling (what 'synthpair generate' does) = explicit labels_for_seeds with the export's prior
    free = synthesize_batch((model, cfg), seeds, steps=3, amp="off")
    lab = labels_for_seeds(seeds, cfg["clusters"]["prior"])
    exp = method.sample(model, sched, seeds, data=info, steps=3, labels=lab)
    assert torch.equal(free[0], exp[0]) and torch.equal(free[1], exp[1])
    with pytest.raises(SynthpairError, match="outside 0..1"):
        method.sample(model, sched, [1], data=info, steps=2, labels=[2])


def test_labels_reach_the_loss(trained: tuple[Path, Path, Path]) -> None:
    from synthpair.config import from_dict
    from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from synthpair.methods import DataInfo, get_method
    from synthpair.methods.export import load_export

    data, cl, run = trained
    model, cfg = load_export(run / "export")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a 3-step model's zero-initialised output layer hides the label; perturb all weights
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    method = get_method("joint_cluster")
    sched = NoiseSchedule(from_dict(DiffusionConfig, cfg["diffusion"]))
    info = DataInfo.from_dict(cfg["data"])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = torch.zeros(2, 16, 16, dtype=torch.long)
    losses = [float(method.training_loss(model, sched, x, m, torch.Generator().manual_seed(0), data=info,
                                         extra={"label": torch.tensor([lab, lab])}).detach()) for lab in (0, 1, 0)]
    assert losses[0] == losses[2] and losses[0] != losses[1]
    with pytest.raises(ValueError, match="extra"):
        method.training_loss(model, sched, x, m, torch.Generator(), data=info)
    labels = json.loads((run / "training_cases.json").read_text())["items"]
    extras = method.item_extras(None, labels, _cfg(clusters=str(cl / "clusters.json")))
    assign = json.loads((cl / "clusters.json").read_text())["assignments"]
    assert extras["label"].tolist() == [assign[i] for i in labels]


def test_clear_errors(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from synthpair.data.clustering import ClusterConfig, cluster_dataset
    from synthpair.training.trainer import train_generator

    data, cl, _ = trained
    with pytest.raises(SynthpairError, match="train.clusters is empty"):
        train_generator(data, tmp_path / "r0", _cfg(), progress=False)
    cluster_dataset(data, tmp_path / "cl1", ClusterConfig(k=2, fold=1))
    with pytest.raises(SynthpairError, match="have no cluster|fold"):
        train_generator(data, tmp_path / "r1", _cfg(clusters=str(tmp_path / "cl1" / "clusters.json")), progress=False)
    d = json.loads((cl / "clusters.json").read_text())
    first = sorted(d["assignments"])[0]
    del d["assignments"][first]
    (tmp_path / "partial.json").write_text(json.dumps(d))
    with pytest.raises(SynthpairError, match=rf"partial.json: 1 training item\(s\) have no cluster .*{first}.*rerun"):
        train_generator(data, tmp_path / "r2", _cfg(clusters=str(tmp_path / "partial.json")), progress=False)
    assert not (tmp_path / "r2").exists()
