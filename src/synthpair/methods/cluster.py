"""Cluster-conditioned joint image+mask diffusion (``joint_cluster``): one model for all clusters of seed 002.

The paper (Saragih et al., sec. 2.3) trains one joint model per cluster (``synthpair cluster`` +
``joint`` runs with ``--set items=CL/cluster_<i>.json``). ``joint_cluster`` is the single-network
alternative: the same packed (C + K)-channel representation as :mod:`synthpair.methods.joint`, denoised by
MONAI's ``DiffusionModelUNet`` with ``num_class_embeds = k``, whose class embedding (an ``nn.Embedding(k,
4·channels[0])``) is added to the timestep embedding. The label of pair i is its cluster,
``cond.label`` int64 (B,) in ``0..k-1`` (:class:`synthpair.diffusion.cond.Cond`).

Training (``train.clusters=CL/clusters.json``, written by ``synthpair cluster`` on the same data and fold):
``L_simple`` of DDPM on ``x0 = pack(image, mask)`` given the pair's cluster; every training item must have a
cluster. The export records ``"clusters": {"k", "file", "sha256", "sizes", "prior"}``.

Sampling: ``sample(..., labels=[...])`` or ``cond=Cond(label=...)`` gives each pair's cluster; without labels,
pair i draws its cluster from the training prior ``sizes / sum(sizes)`` with a generator
``torch.Generator().manual_seed(seeds[i])`` of its own (:func:`labels_for_seeds`; x_T and the sampler noise
use another generator seeded the same way, as in ``joint``), so pair i still depends only on ``seeds[i]`` and
:func:`labels_for_seeds` recovers the label for provenance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..diffusion.cond import Cond
from ..diffusion.sampling import sample as run_sampler
from ..errors import fail
from ..networks.unet import ClusterUNet, UNetConfig  # noqa: F401  (ClusterUNet: re-exported)
from .base import DataInfo, Draws, Method, Shard, register_method, unwrap
from .joint import joint_loss, seed_generators, unpack_joint


def _file_sha256(path: Path) -> str:
    from ..networks.export import sha256_file

    return sha256_file(path)


def labels_for_seeds(seeds: Sequence[int], prior: Sequence[float]) -> list[int]:
    """The cluster a label-free draw gives each seed: one ``multinomial(prior)`` draw from its own
    ``torch.Generator().manual_seed(seed)`` (separate from the x_T/sampler generator, so sampling seed s with
    ``labels=labels_for_seeds([s], prior)`` gives the same pair as the label-free draw)."""
    p = torch.tensor([float(v) for v in prior], dtype=torch.float64)
    return [int(torch.multinomial(p, 1, generator=torch.Generator().manual_seed(int(s)))) for s in seeds]


class JointClusterMethod(Method):
    """Joint image+mask diffusion conditioned on the pair's cluster (see module docstring)."""

    name = "joint_cluster"
    joint_state = True
    accepts_labels = True  # sample(..., labels=[...]): explicit clusters (else drawn per seed from the prior)

    # ---------------------------------------------------------------- networks
    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None, k: int | None = None) -> nn.Module:
        if k is None:
            raise fail("method joint_cluster needs the number of clusters: train with --set clusters=CL/clusters.json")
        c = data.channels + data.num_classes - 1
        return ClusterUNet(net_cfg, c, c, k)

    def _clusters(self, cfg: Any, train_ids: list[str]) -> tuple[dict[str, Any], Path]:
        from ..data.clustering import read_clusters

        if not getattr(cfg, "clusters", ""):
            raise fail("method joint_cluster: train.clusters is empty; run 'synthpair cluster DATA --fold F --k K "
                       "--out CL' and pass --set clusters=CL/clusters.json")
        path = Path(cfg.clusters)
        path = path / "clusters.json" if path.is_dir() else path
        clusters = read_clusters(path, train_ids)
        if int(clusters.get("fold", cfg.fold)) != int(cfg.fold):
            raise fail(f"{path}: clusters of fold {clusters.get('fold')} but training fold {cfg.fold}; cluster the "
                       f"same fold ('synthpair cluster DATA --fold {cfg.fold} ...')")
        return clusters, path

    def build_for_training(self, data: DataInfo, train_cfg: Any, dataset: Any, train_ids: list[str]) -> nn.Module:
        clusters, _ = self._clusters(train_cfg, train_ids)
        return self.build_network(data, train_cfg.net, k=int(clusters["k"]))

    def build_from_export(self, data: DataInfo, export_cfg: dict[str, Any], export_dir: Path) -> nn.Module:
        from ..config import from_dict

        info = export_cfg.get("clusters") or {}
        if "k" not in info:
            raise fail(f"{Path(export_dir) / 'config.json'}: a joint_cluster export without 'clusters.k'; re-export the run")
        net_cfg = from_dict(UNetConfig, export_cfg["net"], where=f"{Path(export_dir) / 'config.json'}:net")
        model = self.build_network(data, net_cfg, k=int(info["k"]))
        model.prior = [float(v) for v in info.get("prior") or [1.0] * int(info["k"])]  # for label-free sampling
        return model

    def item_extras(self, dataset: Any, train_ids: list[str], train_cfg: Any) -> dict[str, torch.Tensor]:
        """{"label": int64 (N,)}: the cluster of each training item, aligned with ``train_ids``."""
        clusters, _ = self._clusters(train_cfg, train_ids)
        assign = clusters["assignments"]
        return {"label": torch.tensor([int(assign[i]) for i in train_ids], dtype=torch.long)}

    def export_extra(self, ema: nn.Module, cfg: Any) -> dict[str, Any]:
        from ..io import read_json

        path = Path(cfg.clusters)
        path = path / "clusters.json" if path.is_dir() else path
        data = read_json(path, "clusters.json")
        sizes = [int(s) for s in data["sizes"]]
        if cfg.items:  # a subset run: the prior is that of the items it saw
            from ..io import read_json as rj

            items = rj(cfg.items, "train.items file")
            items = items.get("items") if isinstance(items, dict) else items
            sizes = [0] * int(data["k"])
            for i in items:
                sizes[int(data["assignments"][i])] += 1
        total = max(sum(sizes), 1)
        prior = [s / total for s in sizes]
        unwrap(ema).prior = prior  # the exported network (network.json) carries the prior label-free sampling draws from
        return {"clusters": {"k": int(data["k"]), "file": str(path.resolve()), "sha256": _file_sha256(path),
                             "sizes": sizes, "prior": prior, "extractor": data.get("extractor")}}

    # ---------------------------------------------------------------- loss / sampling
    def noise_channels(self, data: DataInfo) -> tuple[int, ...]:
        return (data.channels + data.num_classes - 1,)

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor, draws: Draws, shard: Shard, generator: torch.Generator, *, data: DataInfo,
             extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """DDPM ``L_simple`` on the packed tensor given the cluster ``extra["label"]`` int64 (B,); the draws are
        those of :class:`~synthpair.methods.joint.JointMethod`."""
        if extra is None or "label" not in extra:
            raise ValueError("joint_cluster training_loss needs extra={'label': int64 (B,)} (trainer item_extras)")
        return joint_loss(model, schedule, images, masks, draws, shard, data=data, cond=Cond(label=extra["label"]))

    def label_classes(self, export_cfg: dict[str, Any]) -> int | None:
        k = super().label_classes(export_cfg)
        if k is None:
            raise fail("a joint_cluster export without 'clusters.k'; re-export the run")
        return k

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False, cond: Cond | None = None,
               labels: Sequence[int] | None = None, prior: Sequence[float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs from seeds for clusters ``labels`` (or ``cond.label``) → (images (B, C, H, W) in [-1, 1],
        masks int64 (B, H, W)) on CPU. Without labels each seed draws its cluster from ``prior`` (default: the
        export's training prior, else uniform over the network's k) with its own generator, before x_T."""
        k = int(getattr(unwrap(model), "k", 0))
        gens = seed_generators(seeds)
        if labels is None and cond is not None and cond.label is not None:
            labels = [int(v) for v in cond.label.tolist()]
        if labels is None:
            labels = labels_for_seeds(seeds, prior if prior is not None else getattr(model, "prior", None) or [1.0] * k)
        if len(labels) != len(seeds):
            raise fail(f"labels: got {len(labels)} for {len(seeds)} seeds; pass one cluster per seed")
        bad = [v for v in labels if not 0 <= int(v) < k]
        if bad:
            raise fail(f"cluster label {bad[0]}: outside 0..{k - 1} of this generator")
        c = data.channels + data.num_classes - 1
        x_T = torch.stack([torch.randn((c, *data.size), generator=g) for g in gens]).to(device)
        lab = Cond(label=torch.tensor([int(v) for v in labels], dtype=torch.long, device=device))
        x0 = run_sampler(model, schedule, x_T, sampler=sampler, steps=steps, eta=eta, cond=lab, generators=gens,
                         spacing=spacing, progress=progress, autocast_dtype=autocast_dtype)
        images, masks = unpack_joint(x0, data.channels, data.num_classes)
        return images.cpu(), masks.cpu()


register_method("joint_cluster", JointClusterMethod)
