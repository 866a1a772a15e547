"""Diffusion features: the activations of a frozen generator's U-Net blocks for an image noised to chosen timesteps.

DiffusionDCI sec. IV-C-1 ("Extracting diffusion representations") and Baranchuk et al. 2022 ("Label-efficient
semantic segmentation with diffusion models"): for an image x0 and a timestep t the frozen denoising U-Net sees
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4) and the outputs of its blocks are pixel-wise
representations. Here:

* **Blocks** are named by MONAI ``DiffusionModelUNet``'s modules in execution order: ``down0 .. down{L-1}``,
  ``mid``, ``up0 .. up{L-1}`` (for channels (32, 64, 64) at 64×64: down0 32@32², down1 64@16², down2 64@16²,
  mid 64@16², up0 64@32², up1 64@64², up2 32@64²). A down block's representation is its hidden state (not
  its skip outputs). The forward pass stops after the last block asked for (later blocks cost nothing).
* **Noise** is fixed and seeded: draw d at timestep t uses ``eps ~ N(0, I)`` (C, H, W) from
  ``torch.Generator().manual_seed(noise_seed(seed, t, d))``, the same for every image, so a feature depends
  only on the image, the generator, t, d and the seed — never on the other images of the batch (up to the
  last bits: batched fp32 kernels round differently for other batch sizes, ~1e-7; under bf16 autocast the
  values were bit-identical in the tests). ``draws > 1`` averages blocks over draws (Baranchuk's variance
  reduction).
* **Generators** whose network is a diffusion U-Net: ``image`` (input x_t), ``joint`` (x_t of the image plus
  zeros for the unknown mask channels), ``mask2image`` (null mask: the concatenated channels are zero), and
  ``dsdm`` (the null condition: zero SPADE map, null reference embedding). Other methods are refused.
* Features are computed under ``torch.no_grad`` in bf16 autocast where the CPU supports it and returned as
  float32; :class:`FeatureCache` keeps them per (item, transform, t) so a run computes each once.

The generator is never modified (its parameters are frozen; tests check them bit for bit after training).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import fail

FEATURE_METHODS = ("image", "joint", "mask2image", "dsdm")
"""Generator methods whose network can serve as a feature extractor."""


@dataclass(frozen=True)
class FeatureConfig:
    """Diffusion-feature settings of the ``ddpm_*`` segmenters (``SegmentConfig.features``).

    ``generator``: a generator RUN folder (or an export folder such as ``RUN/snapshots/step_N``).
    ``blocks`` / ``timesteps``: the features used; empty = chosen automatically by the feature analysis on a
    validation split carved from the labelled training items (:mod:`.feature_analysis`), among
    ``candidate_blocks`` × ``candidate_timesteps``, keeping the best ``n_timesteps`` timesteps and ``n_blocks``
    blocks; ``analysis_folds``: cross-validation folds over the labelled items for that analysis.
    ``draws`` / ``noise_seed``: noise draws averaged per timestep and their seed. Pixel classifier
    (``ddpm_pixel``): ``head`` ``mlp`` (1×1 convolutions, ``hidden`` units, ReLU, BatchNorm as in Baranchuk et
    al.) or ``linear``; ``ensemble`` heads averaged. End-to-end models (``ddpm_unet*``): the U-Net reads the
    clean image with the timestep embedding of ``e2e_timestep``; ``fusion_timesteps``: how many of the chosen
    timesteps feed the frozen features of the skip / cross-attention variants; ``caa_tokens``: keys/values of
    the cross-attention are average-pooled to at most this many positions per block (CPU cost).
    """

    generator: str = ""
    blocks: tuple[str, ...] = ()
    timesteps: tuple[int, ...] = ()
    candidate_blocks: tuple[str, ...] = ("down1", "down2", "mid", "up0", "up1", "up2")
    candidate_timesteps: tuple[int, ...] = (10, 50, 100, 200, 400)
    n_blocks: int = 3
    n_timesteps: int = 2
    analysis_folds: int = 4
    draws: int = 1
    noise_seed: int = 0
    head: str = "mlp"
    hidden: int = 64
    ensemble: int = 3
    e2e_timestep: int = 0
    fusion_timesteps: int = 1
    caa_tokens: int = 256

    def __post_init__(self) -> None:
        if self.head not in ("mlp", "linear"):
            raise fail(f"features.head={self.head!r}: choose mlp or linear")
        for name in ("n_blocks", "n_timesteps", "draws", "hidden", "ensemble", "fusion_timesteps", "caa_tokens"):
            if getattr(self, name) < 1:
                raise fail(f"features.{name}={getattr(self, name)}: must be >= 1")
        if self.analysis_folds < 2:
            raise fail(f"features.analysis_folds={self.analysis_folds}: need at least 2 (cross-validation)")
        if any(t < 0 for t in (*self.timesteps, *self.candidate_timesteps, self.e2e_timestep)):
            raise fail("features: timesteps must be >= 0")

    @property
    def auto(self) -> bool:
        """True when blocks/timesteps are chosen by the feature analysis."""
        return not self.blocks or not self.timesteps


def noise_seed(seed: int, t: int, draw: int) -> int:
    """The seed of noise draw ``draw`` at timestep ``t`` (63-bit, from sha256 of the three numbers)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{t}:{draw}".encode()).digest()[:8], "little") >> 1


class _Stop(Exception):
    """Raised by the hook of the last requested block to end the forward pass early."""


def resolve_export(generator: str | Path) -> Path:
    """RUN, RUN/export or an export folder (e.g. RUN/snapshots/step_N) → the export folder."""
    p = Path(generator)
    if (p / "export" / "config.json").is_file():
        return p / "export"
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    raise fail(f"{generator}: not a generator run or export (no export/config.json); pass the --out folder of "
               f"'synthpair train' (e.g. an image-only run: synthpair train DATA --method image)")


def generator_run_of(export_dir: Path) -> Path | None:
    """The run folder an export belongs to (for its training_cases.json), or None."""
    for parent in (export_dir.parent, export_dir.parent.parent):  # RUN/export, RUN/snapshots/step_N
        if (parent / "training_cases.json").is_file():
            return parent
    return None


class DiffusionFeatures:
    """A frozen generator as a feature extractor (module doc).

    ``extract(images (B, C, H, W) float in [-1, 1], t, blocks) -> {block: float32 (B, C_b, h_b, w_b)}``.
    ``channels[block]`` / ``resolution[block]`` describe each block's output for the generator's image size.
    """

    def __init__(self, generator: str | Path, *, seed: int = 0, draws: int = 1, device: torch.device | str = "cpu",
                 autocast: bool = True) -> None:
        from ..diffusion.schedule import DiffusionConfig, NoiseSchedule
        from ..config import from_dict
        from ..env import resolve_autocast
        from ..methods.export import load_export
        from ..networks.export import sha256_file

        self.export_dir = resolve_export(generator)
        model, cfg = load_export(self.export_dir, device=device)
        method = cfg.get("method")
        if method not in FEATURE_METHODS:
            raise fail(f"{self.export_dir}: a {method!r} generator cannot serve as a feature extractor; use a "
                       f"diffusion U-Net generator ({', '.join(FEATURE_METHODS)})")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg, self.method = cfg, method
        self.weights_sha256 = sha256_file(self.export_dir / "model.safetensors")
        self.data = cfg["data"]
        self.channels_in = int(self.data["channels"])
        self.size = tuple(int(s) for s in self.data["size"])
        self.num_classes = int(self.data["num_classes"])
        self.schedule = NoiseSchedule(from_dict(DiffusionConfig, cfg["diffusion"], where="export diffusion"),
                                      device=device)
        self.seed, self.draws = int(seed), int(draws)
        self.device = torch.device(device)
        self.autocast = resolve_autocast("auto", self.device) if autocast else None
        unet = self.model.unet
        self.modules: dict[str, nn.Module] = {}
        for i, b in enumerate(unet.down_blocks):
            self.modules[f"down{i}"] = b
        self.modules["mid"] = unet.middle_block
        for i, b in enumerate(unet.up_blocks):
            self.modules[f"up{i}"] = b
        self.order = list(self.modules)
        probe = self.extract(torch.zeros(1, self.channels_in, *self.size), 0, self.order)
        self.channels = {b: int(v.shape[1]) for b, v in probe.items()}
        self.resolution = {b: tuple(int(s) for s in v.shape[2:]) for b, v in probe.items()}

    # --------------------------------------------------------------------------------------------- checks
    def check(self, blocks: Iterable[str] = (), timesteps: Iterable[int] = (), *,
              names: tuple[str, str] = ("features.blocks", "features.timesteps")) -> None:
        """One-line errors for blocks or timesteps the generator does not have (``names``: the settings that
        gave them, named in the message)."""
        bad = [b for b in blocks if b not in self.modules]
        if bad:
            raise fail(f"{names[0]}: {bad[0]!r} is not a block of {self.export_dir}; choose from "
                       f"{', '.join(self.order)}")
        bad_t = [t for t in timesteps if not 0 <= int(t) < self.schedule.T]
        if bad_t:
            raise fail(f"{names[1]}: {bad_t[0]} is outside the generator's schedule 0..{self.schedule.T - 1}")

    def check_data(self, channels: int, size: Sequence[int], where: str) -> None:
        """The generator must have been trained on images like the segmenter's data."""
        if channels != self.channels_in or tuple(size) != tuple(self.size):
            raise fail(f"{self.export_dir}: the generator was trained on {self.channels_in}-channel "
                       f"{self.size[0]}×{self.size[1]} images but {where} has {channels}-channel "
                       f"{size[0]}×{size[1]}; train the generator on this dataset (same --size)")

    # ------------------------------------------------------------------------------------------- features
    def noise(self, t: int, draw: int) -> torch.Tensor:
        """The fixed noise eps (C_in, H, W) of draw ``draw`` at timestep ``t`` (float32, CPU)."""
        g = torch.Generator().manual_seed(noise_seed(self.seed, int(t), int(draw)))
        return torch.randn((self.channels_in, *self.size), generator=g)

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor) -> None:
        from ..diffusion.cond import Cond

        b = x_t.shape[0]
        if self.method == "image":
            self.model(x_t, t)
        elif self.method == "joint":
            k = self.num_classes - 1
            self.model(torch.cat([x_t, x_t.new_zeros((b, k, *x_t.shape[2:]))], dim=1), t)
        elif self.model.mask_mode == "concat":
            k = self.num_classes - 1
            self.model(x_t, t, Cond(mask_channels=x_t.new_zeros((b, k, *x_t.shape[2:]))))
        else:
            emb = (x_t.new_zeros((b, self.model.cond_cfg.ref_embed)) if self.model.use_reference else None)
            self.model(x_t, t, Cond(mask=torch.zeros((b, *x_t.shape[2:]), dtype=torch.long, device=x_t.device),
                                    reference_embedding=emb, drop=torch.ones(b, dtype=torch.bool, device=x_t.device)))

    @torch.no_grad()
    def extract(self, images: torch.Tensor, t: int, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
        """Block outputs for ``images`` (B, C, H, W) in [-1, 1] noised to timestep ``t`` → {block: float32
        (B, C_b, h_b, w_b) on CPU}, averaged over ``draws`` noise draws."""
        wanted = [b for b in self.order if b in set(blocks)]
        last = wanted[-1]
        out: dict[str, torch.Tensor] = {}
        x0 = images.to(self.device, torch.float32)
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=self.device)
        for d in range(self.draws):
            got: dict[str, torch.Tensor] = {}

            def hook(name: str):
                def fn(module: nn.Module, args: Any, output: Any) -> None:
                    h = output[0] if isinstance(output, tuple) else output
                    got[name] = h.detach().float()
                    if name == last:
                        raise _Stop
                return fn

            handles = [self.modules[b].register_forward_hook(hook(b)) for b in wanted]
            x_t = self.schedule.q_sample(x0, tt, self.noise(t, d).to(self.device).expand_as(x0))
            try:
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    self._forward(x_t, tt)
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
            for b in wanted:
                out[b] = got[b] if d == 0 else out[b] + got[b]
        return {b: (v / self.draws).cpu() for b, v in out.items()}


CACHE_DTYPE = torch.float16
"""Storage precision of cached features. Every consumer of features that must agree with the cache (the
``ddpm_pixel`` model computing them on the fly: transfer tests, reloading) rounds through it too
(:func:`cache_precision`)."""


def cache_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the cache's storage precision, as float32 (what :meth:`FeatureCache.get` returns)."""
    return x.to(CACHE_DTYPE).float()


@dataclass
class FeatureCache:
    """Features computed once per (item key, transform, timestep) and kept in memory as float16.

    ``get(keys, images, t, blocks)``: images (B, C, H, W) whose rows are identified by ``keys`` (e.g.
    ``(item id, dihedral transform)``); only missing (key, t) entries run the generator, in batches of
    ``batch``. Returns {block: float32 (B, C_b, h_b, w_b)}."""

    extractor: DiffusionFeatures
    batch: int = 32
    store: dict[tuple[Any, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    computed: int = 0

    def get(self, keys: Sequence[Any], images: torch.Tensor, t: int, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
        blocks = list(blocks)
        missing = [i for i, k in enumerate(keys)
                   if (k, t) not in self.store or not all(b in self.store[(k, t)] for b in blocks)]
        for s in range(0, len(missing), self.batch):
            rows = missing[s:s + self.batch]
            feats = self.extractor.extract(images[rows], t, blocks)
            for j, i in enumerate(rows):
                entry = self.store.setdefault((keys[i], t), {})
                for b in blocks:
                    entry[b] = feats[b][j].to(CACHE_DTYPE)
            self.computed += len(rows)
        return {b: torch.stack([self.store[(k, t)][b] for k in keys]).float() for b in blocks}


def stack_features(feats: dict[tuple[str, int], torch.Tensor], cells: Sequence[tuple[str, int]],
                   size: Sequence[int]) -> torch.Tensor:
    """Concatenate the features of ``cells`` ((block, t) pairs) bilinearly upsampled to ``size`` → float32
    (B, sum C_b, H, W) (Baranchuk et al.: pixel representations are the upsampled block outputs)."""
    ups = [F.interpolate(feats[c], size=tuple(size), mode="bilinear", align_corners=False)
           if tuple(feats[c].shape[2:]) != tuple(size) else feats[c] for c in cells]
    return torch.cat(ups, dim=1)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` in 0..7 of the dihedral group on the last two axes: k & 4 → transpose-free horizontal
    flip first, then ``k % 4`` quarter turns (exact, no resampling). Works for images (B, C, H, W) and masks
    (B, H, W)."""
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, (-2, -1)) if k % 4 else x


def dihedral_transforms(augment: str, square: bool) -> list[int]:
    """The transforms whose features are cached for the pixel classifier: all 8 (``flip_rot``, the default
    augmentation) on square images, flips + half turn otherwise, or identity only (``none``)."""
    if augment == "none":
        return [0]
    return list(range(8)) if square else [0, 2, 4, 6]


__all__ = ["FeatureConfig", "DiffusionFeatures", "FeatureCache", "CACHE_DTYPE", "cache_precision", "stack_features",
           "dihedral",
           "dihedral_transforms", "resolve_export", "generator_run_of", "FEATURE_METHODS", "noise_seed"]
