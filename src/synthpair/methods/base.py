"""The ``Method`` protocol and the method registry.

A method says (1) which network it needs for a dataset, (2) its training loss for a batch of real pairs,
(3) how to sample pairs from seeds. The trainer and the generator only talk to this protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ..errors import fail


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about the data: image channels C, labels incl. background, (H, W)."""

    channels: int
    num_classes: int
    size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "num_classes": self.num_classes, "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        return cls(int(d["channels"]), int(d["num_classes"]), (int(d["size"][0]), int(d["size"][1])))


@runtime_checkable
class Method(Protocol):
    """A generation method (see :mod:`synthpair.methods.joint` for the reference implementation)."""

    name: str

    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None) -> nn.Module:
        """The network with signature ``forward(x_t, t, cond=None)`` for this data (``cond_cfg``: the
        :class:`~synthpair.networks.conditional.CondConfig` of mask-conditioned methods; others ignore it).

        Optional members: ``conditional = True`` for methods that sample *for given masks* (their ``sample``
        takes ``cond=Cond(mask=..., reference=...)`` and ``guidance=``), and ``setup(model, images, masks, *,
        data, seed, fresh, log)`` which the trainer calls once before training (e.g. to pre-train and freeze a
        reference encoder).

        Further optional hooks, used by the trainer and :func:`synthpair.networks.export.load_export` when a
        method defines them (issue 4/5 methods):

        - ``build_for_training(data, train_cfg, dataset, train_ids) -> nn.Module`` instead of ``build_network``
          when the network depends on more than ``net``/``cond`` (vocabulary, number of clusters, a base run);
        - ``build_from_export(data, export_cfg, export_dir) -> nn.Module`` the same when loading an export;
        - ``item_extras(dataset, train_ids, train_cfg) -> dict[str, Tensor]``: per-item tensors (first dim
          aligned with ``train_ids``, not spatial: the trainer flips images/masks only); each batch's rows are
          passed to ``training_loss(..., extra={name: tensor[batch_idx]})``;
        - ``setup(..., cfg=train_cfg)`` may add modules or freeze parameters (LoRA, ControlNet); the optimizer
          takes only parameters with ``requires_grad``; ``train.init_from`` weights are loaded before ``setup``;
        - ``export_extra(ema_model, train_cfg) -> dict`` extra export-config sections;
        - ``export_state(ema_model) -> dict[str, Tensor]`` to save only part of the weights, with
          ``load_weights(model, state, export_cfg, export_dir)`` to load them back (raise RuntimeError on mismatch)."""

    def training_loss(self, model: Callable[..., torch.Tensor], schedule: Any, images: torch.Tensor,
                      masks: torch.Tensor, generator: torch.Generator, *, data: DataInfo,
                      shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Scalar loss on a batch. images float32 (B, C, H, W) in [-1, 1]; masks int64 (B, H, W).

        All random draws (t, noise) are made for the whole batch from ``generator`` (a CPU generator whose
        state is checkpointed) so that every DDP rank draws the same numbers; the loss is then computed on
        rows ``rank::world`` of ``shard = (rank, world)``. The caller sets autocast around this call.
        """

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs from seeds → (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W)), on CPU.

        Pair i depends only on ``seeds[i]``: its initial noise and sampler noise come from
        ``torch.Generator().manual_seed(seeds[i])`` on CPU.
        """


_REGISTRY: dict[str, Callable[[], Method]] = {}


def register_method(name: str, factory: Callable[[], Method]) -> None:
    """Register a method factory under ``name`` (later methods: mask2image, dsdm, pig, controlnet)."""
    _REGISTRY[name] = factory


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The method called ``name``; unknown names are a one-line error listing the valid ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise fail(f"method {name!r}: unknown; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def _load_builtin() -> None:
    from . import cluster, conditional, controlnet, image, joint, pig, prompt  # noqa: F401  (register themselves)
