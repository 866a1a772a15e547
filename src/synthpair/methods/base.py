"""The ``Method`` base class and the method registry.

A method says (1) which network it needs for a dataset, (2) its training loss for a batch of real pairs,
(3) how to sample pairs from seeds and what each pair needs. The trainer, the export loader and synthesis only
talk to :class:`Method` (explicit hooks with documented defaults) and never branch on a method's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from ..errors import fail
from ..networks import unwrap


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


Condition = Literal["none", "masks", "real_pairs", "prompts"]


@dataclass(frozen=True)
class Draws:
    """The random draws of one GLOBAL training batch, made by :meth:`Method.training_loss` from the trainer's CPU
    generator in this order (every DDP rank draws the same numbers; the trainer checkpoints the generator):

    ``t`` int64 (B,) from :meth:`NoiseSchedule.sample_timesteps` (U{0..T-1} by default); ``noise`` float (B, sum(noise_channels), H, W) ~ N(0, I), one ``randn`` per block
    of :meth:`Method.noise_channels`, concatenated on dim 1; ``drop`` bool (B,) classifier-free null-condition
    flags (:func:`synthpair.diffusion.cond.null_cond_flags`) when :meth:`Method.drop_prob` is not None, else None.
    A method's own further draws (augmentation phrases, ...) follow, in :meth:`Method.loss`."""

    t: torch.Tensor
    noise: torch.Tensor
    drop: torch.Tensor | None


@dataclass(frozen=True)
class Shard:
    """Rows ``rank::world`` of a global batch: the DDP rank's share (a DistributedSampler-equivalent split)."""

    rank: int = 0
    world: int = 1

    @property
    def rows(self) -> slice:
        return slice(self.rank, None, self.world)

    def take(self, x: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """This rank's rows of ``x`` (moved to ``device`` when given)."""
        x = x[self.rows]
        return x if device is None else x.to(device)


class Method:
    """Base class of every generation method: the ONE set of hooks the trainer, the export loader and synthesis
    call, each with its documented default (nothing is probed with ``hasattr``). A method is three small things
    (docs/architecture.md, "How a generation method is put together"):

    * its **network** — :meth:`build_network` (+ :meth:`build_for_training` when it needs more than
      ``net``/``cond``). The network owns its persistence (:mod:`synthpair.networks.pretrained`: ``network.json``,
      and what a partial export — adapters, a ControlNet branch — holds); :meth:`build_from_export` /
      :meth:`load_weights` rebuild exports written before ``network.json`` existed;
    * its **objective** — :meth:`item_extras` (per-item conditions), :meth:`setup`, :meth:`noise_channels`,
      :meth:`drop_prob` and :meth:`loss` given the network, the schedule, the batch and the :class:`Draws`;
      :meth:`training_loss` makes the draws and the DDP shard once for every method;
    * its **pipeline** — what synthesis must supply per pair (:attr:`condition`, :attr:`accepts_labels`,
      :attr:`conditional`), whether it produces masks (:attr:`makes_masks`, :attr:`joint_state`) and
      :meth:`sample`. Synthesis picks its condition source from these, never from :attr:`name`.

    Class attributes (defaults in brackets): ``name``; ``uses_masks`` [True] — learns from masks (the trainer
    loads them; an image-only method also sees unlabelled images and accounts no mask items); ``makes_masks``
    [True] — ``sample`` returns masks it generated (False: given masks, zeros or None); ``joint_state`` [False] —
    the network denoises the packed image+mask tensor (:mod:`.joint`), so RePaint can inpaint and harmonise
    with it; ``condition`` ["none"] — what ``sample`` needs per pair: ``none`` (seeds only), ``masks`` (given
    masks and, for a reference encoder, reference images: :class:`synthpair.synthesis.conditions.ConditionSource`),
    ``real_pairs`` (edge maps, prompts and masks of the real training pairs: per-real generation), ``prompts``
    (prompt tokens: :class:`synthpair.synthesis.generate.PromptSource`); ``conditional`` [False] — ``sample`` takes
    ``cond=`` and ``guidance=`` (methods with ``condition`` masks, real_pairs or prompts); ``accepts_labels`` [False] — ``sample`` takes
    ``labels=`` (one class/cluster id per seed), see :meth:`label_classes`; ``finetune_modes`` [()] — the
    ``TrainConfig.finetune.mode`` values it implements (:mod:`synthpair.methods.finetune`); ``config_sections`` [()]
    — the method's own sections of :class:`~synthpair.training.trainer.TrainConfig` (``cond``, ``control``, ``pig``,
    ``prompt``, ``lora``, ``finetune``): a run's config carries these and no other method's.
    """

    name: str = ""
    uses_masks: bool = True
    makes_masks: bool = True
    joint_state: bool = False
    condition: Condition = "none"
    conditional: bool = False
    accepts_labels: bool = False
    finetune_modes: tuple[str, ...] = ()  # TrainConfig.finetune modes this method implements (prompt: all three)
    config_sections: tuple[str, ...] = ()  # the TrainConfig sections this method reads (its own settings)

    # ------------------------------------------------------------------------------------------- network
    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None) -> nn.Module:
        """The network ``forward(x_t, t, cond=None)`` for this data (``cond_cfg``: the
        :class:`~synthpair.networks.conditional.CondConfig` of mask-conditioned methods; others ignore it)."""
        raise NotImplementedError(f"method {self.name}: build_network")

    def build_for_training(self, data: DataInfo, train_cfg: Any, dataset: Any, train_ids: Sequence[str]
                           ) -> nn.Module:
        """The network of a training run. Default: :meth:`build_network` with ``train_cfg.net`` and
        ``train_cfg.cond`` (None for a method without that section); override when it depends on more (vocabulary,
        number of clusters, a base run)."""
        return self.build_network(data, train_cfg.net, cond_cfg=train_cfg.cond)

    def build_from_export(self, data: DataInfo, export_cfg: dict[str, Any], export_dir: Path) -> nn.Module:
        """The network of an export WITHOUT ``network.json`` (written before issue 13; weights are loaded afterwards
        by :meth:`load_weights`). Default: :meth:`build_network` with the export's ``net`` and, when present,
        ``cond`` sections."""
        from ..config import from_dict
        from ..networks.unet import UNetConfig

        where = f"{Path(export_dir) / 'config.json'}"
        kw: dict[str, Any] = {}
        if "cond" in export_cfg:
            from ..networks.conditional import CondConfig

            kw["cond_cfg"] = from_dict(CondConfig, export_cfg["cond"], where=f"{where}:cond")
        return self.build_network(data, from_dict(UNetConfig, export_cfg["net"], where=f"{where}:net"), **kw)

    def load_weights(self, model: nn.Module, state: dict[str, torch.Tensor], export_cfg: dict[str, Any],
                     export_dir: Path) -> None:
        """Load the ``model.safetensors`` of an export without ``network.json`` into ``model`` (raise RuntimeError
        on a mismatch). Default: a strict ``load_state_dict``; partial exports (LoRA adapters, a ControlNet branch)
        override it."""
        model.load_state_dict(state, strict=True)

    # ----------------------------------------------------------------------------------------- objective
    def item_extras(self, dataset: Any, train_ids: Sequence[str], train_cfg: Any) -> dict[str, torch.Tensor] | None:
        """Per-item, non-spatial tensors (first dim aligned with ``train_ids``; the trainer flips images and masks
        only), passed per batch as ``training_loss(..., extra={name: tensor[batch]})``. Default: None."""
        return None

    def setup(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None, *, data: DataInfo,
              seed: int, fresh: bool, log: Callable[[str], None] | None = None, cfg: Any = None,
              run_dir: Path | None = None) -> None:
        """Called once before training, after ``train.init_from`` weights are loaded (and before a checkpoint's
        state is); may add modules or freeze parameters (the optimizer takes ``requires_grad`` parameters only).
        ``run_dir``: the RUN folder on rank 0 (None elsewhere), for what setup must record (DreamBooth's prior
        images). Default: nothing."""

    def noise_channels(self, data: DataInfo) -> tuple[int, ...]:
        """Channel counts of the noise blocks drawn per batch (:class:`Draws`). Default: the image channels."""
        return (data.channels,)

    def drop_prob(self, net: nn.Module) -> float | None:
        """Probability of the classifier-free null condition per row, drawn after the noise; None: no draw
        (the default)."""
        return None

    def training_loss(self, model: Callable[..., torch.Tensor], schedule: Any, images: torch.Tensor,
                      masks: torch.Tensor | None, generator: torch.Generator, *, data: DataInfo,
                      shard: tuple[int, int] = (0, 1), extra: dict[str, torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """Scalar loss on a GLOBAL batch: images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W) (None for
        image-only methods). Draws t, noise and the null-condition flags for the whole batch from ``generator``
        (:class:`Draws`), then calls :meth:`loss` with this rank's :class:`Shard` of ``shard = (rank, world)`` and
        the unwrapped network. The caller sets autocast around this call."""
        from ..diffusion.cond import null_cond_flags

        net = unwrap(model)
        b, _, h, w = images.shape
        t = schedule.sample_timesteps(b, generator)
        blocks = [torch.randn((b, c, h, w), generator=generator) for c in self.noise_channels(data)]
        p = self.drop_prob(net)
        drop = null_cond_flags(b, p, generator) if p is not None else None
        draws = Draws(t, blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1), drop)
        return self.loss(model, net, schedule, images, masks, draws, Shard(*shard), generator, data=data, extra=extra)

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor | None, draws: Draws, shard: Shard, generator: torch.Generator, *,
             data: DataInfo, extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The method's loss on this rank's rows (``shard``) of the batch, given the draws. ``model`` is the
        (possibly DDP-wrapped) network to call, ``net`` the unwrapped one (its settings); ``generator`` for
        draws of the method's own (after :class:`Draws`)."""
        raise NotImplementedError(f"method {self.name}: loss")

    # -------------------------------------------------------------------------------------------- export
    def cond_config(self, cfg: Any) -> Any:
        """The ``cond`` section of the export (a CondConfig), or None (the default: no section)."""
        return None

    def export_extra(self, ema: nn.Module, train_cfg: Any) -> dict[str, Any]:
        """Extra export-config sections (vocabulary, base run, clusters, ...). Default: none."""
        return {}

    # ------------------------------------------------------------------------------------------ pipeline
    def label_classes(self, export_cfg: dict[str, Any]) -> int | None:
        """The number k of class/cluster labels an EXPORTED network is conditioned on (``labels=`` in 0..k-1), or
        None. Read from the export (its ``clusters.k``), so a label-conditioned network is recognised by what it
        records, not by its method's name."""
        k = (export_cfg.get("clusters") or {}).get("k")
        return None if k is None else int(k)

    def default_guidance(self, model: nn.Module) -> float:
        """Classifier-free guidance scale used when none is given (default 1 = the conditional prediction)."""
        return 1.0

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False, **conditions: Any
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pairs from seeds → (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W) or None), on CPU.

        Pair i depends only on ``seeds[i]`` (and its conditions): its initial noise and sampler noise come from
        ``torch.Generator().manual_seed(seeds[i])`` on CPU. ``conditions``: ``cond=``/``guidance=``
        (:attr:`conditional`), ``labels=`` (:attr:`accepts_labels`), ``prompts=`` (prompt methods)."""
        raise NotImplementedError(f"method {self.name}: sample")


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


def methods_where(test: Callable[[Method], bool]) -> list[str]:
    """Names of the registered methods for which ``test(method)`` holds (messages list what would fit)."""
    return [n for n in available_methods() if test(get_method(n))]


def _load_builtin() -> None:
    from . import cluster, conditional, controlnet, image, joint, pig, prompt  # noqa: F401  (register themselves)
