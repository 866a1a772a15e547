"""PIG, Paired Image Generation with diffusion-guided diffusion models (paper 004, Zhang et al., sec. 2.2).

Two diffusion chains run side by side: x = the mask (K = num_classes - 1 foreground one-hot channels, each in
{-1, +1}, the joint representation of docs/architecture.md) and y = the image (C channels in [-1, 1]). Both are
noised with the same schedule (eqs. 8-10). Proposition 1 (eq. 12) factorises one reverse step as
``p(x_{t-1}, y_{t-1} | x_t, y_t) = p_x(x_{t-1} | x_t, y_t) · p_y(y_{t-1} | x_{t-1}, y_t)``, realised with

- model x, the *diffusion guider* (:attr:`PigNet.guider`): a U-Net (MONAI ``DiffusionModelUNet`` via
  :func:`~synthpair.networks.unet.build_unet`) on ``cat(x_t, y_t)`` (K + C channels) that predicts the mask's
  noise (or v / x0, the schedule's prediction type), K output channels: ``eps_x = model_x(x_t, y_t, t)``;
- model y (:attr:`PigNet.image`): the image denoiser conditioned on a *clean* mask by concatenation — exactly
  the ``mask2image`` network (:class:`~synthpair.networks.conditional.ConditionalUNet`, ``mask_mode="concat"``,
  no reference, no CFG). At sampling time it gets the guider's prediction x0_hat (Alg. 2 line 6) through
  ``Cond(mask_channels=x0_hat)``.

Training (Algorithm 1): a real pair (x0, y0), one ``t`` and two INDEPENDENT noises eps_1 (mask), eps_2 (image):
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_1``, ``y_t = sqrt(abar_t) y0 + sqrt(1 - abar_t) eps_2`` (eqs. 9-10),
``L_x = ||target(x0, eps_1) - model_x(x_t, y_t, t)||^2``. Model y is trained on the same draw with the clean
mask, ``L_y = ||target(y0, eps_2) - model_y(y_t, t | x0)||^2`` (its usual mask2image loss); the loss is
``L_x + L_y`` with one optimizer. With ``pig.image_from = RUN`` a finished ``mask2image`` run initialises model y
and, with ``pig.freeze_image = true``, model y is frozen and only the guider is trained (the paper's "train an
additional diffusion guider for the conditional diffusion model"): the loss is then ``L_x`` alone.

Sampling (Algorithm 2) uses the ONE loop of :mod:`synthpair.diffusion.sampling` on the stacked state
``z_t = cat(y_t, x_t)`` (C + K channels, the joint layout: image first, so decoding is
:func:`~synthpair.methods.joint.unpack_joint`). The wrapped model (:func:`paired_denoiser`) at each step t

1. runs the guider on (x_t, y_t): ``out_x``, hence ``x0_hat = clip(to_x0(out_x, x_t, t))`` (eq. 6, Alg. 2 line 5);
2. runs model y on y_t conditioned on that x0_hat of the SAME step t: ``out_y`` (Alg. 2 line 6);
3. returns ``cat(out_y, out_x)``.

The loop converts every channel to x0_hat (eq. 6; elementwise, so channel-wise independent) and steps every
channel with the same per-step coefficients: ``x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2)
eps_hat + sigma_t z`` (eq. 7) — for the x channels that is Alg. 2 line 5, for the y channels line 7. So one loop
step on z is exactly one iteration of Algorithm 2 (``sigma_t = 0``: DDIM with ``eta = 0``, the paper's
setting). Because the factorisation of eq. 12 holds for any step rule, DDPM ancestral sampling (``sampler=ddpm``)
and ``eta > 0`` also work: each chain gets its own per-pair noise. So does DPM-Solver++(2M) (``sampler=dpm++2m``,
e.g. 10-25 steps instead of 256): the loop keeps the previous step's x0_hat of every channel, so the mask chain
extrapolates through the guider's predictions and the image chain through model y's. As everywhere in synthpair,
x0_hat is clipped to [-1, 1] and eps_hat re-derived from the clipped x0_hat (without clipping it is eq. 7 verbatim).

Paper preset (sec. 3.1: T = 1024, linear betas 1e-4 .. 0.02, DDIM 256 steps, eps prediction)::

    synthpair train DATA --preset pig-paper --out RUN     # = --method pig --set diffusion.schedule=linear
                                                          #   --set diffusion.num_timesteps=1024 --set diffusion.prediction=eps
    synthpair generate RUN --preset pig-paper --n 2048 --out SYN   # = --sampler ddim --steps 256

Reusing a mask2image generator (same fold, same ``diffusion`` settings; its training cases must lie inside
this run's training cases, so the leakage guard stays complete)::

    synthpair train DATA --method pig --out RUN --set pig.image_from=M2I_RUN --set pig.freeze_image=true
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..diffusion.cond import Cond
from ..diffusion.losses import prediction_target
from ..diffusion.sampling import sample as run_sampler
from ..errors import fail
from ..networks.pig import PigNet  # noqa: F401  (re-exported: the network lives in the networks layer)
from .base import DataInfo, Draws, Method, Shard, register_method, unwrap
from .joint import pack_joint, seed_generators, unpack_joint


@dataclass(frozen=True)
class PigConfig:
    """PIG options (``TrainConfig.pig``).

    ``image_from``: a finished ``mask2image`` RUN (or RUN/export) whose weights initialise the image model y
    ("" = train both models from scratch, the image model with ``net`` like the guider);
    ``freeze_image``: keep those weights fixed and train only the guider (needs ``image_from``).
    """

    image_from: str = ""
    freeze_image: bool = False

    def __post_init__(self) -> None:
        if self.freeze_image and not self.image_from:
            raise fail("pig.freeze_image=true needs pig.image_from=RUN (a finished mask2image run to freeze); "
                       "set pig.image_from or drop pig.freeze_image")


def paired_denoiser(net: PigNet, schedule: Any,
                    record: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Callable[..., torch.Tensor]:
    """The model that the sampling loop runs on z_t = cat(y_t, x_t): Algorithm 2 lines 4-6 (module docstring).

    ``model(z_t (B, C + K, H, W), t int64 (B,), cond=None) -> cat(out_y, out_x)`` in the schedule's prediction
    type, where ``out_x = guider(x_t, y_t, t)``, ``x0_hat = clip(to_x0(out_x, x_t, t), -1, 1)`` (eq. 6) and
    ``out_y = image(y_t, t | mask_channels = x0_hat)``. ``record`` (tests, diagnostics) receives
    ``{"t", "x_t", "y_t", "out_x", "x0_hat", "out_y"}`` at every call.
    """
    c = net.channels

    def model(z_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out_x = net.guide(z_t, t)
        x_t = z_t[:, c:]
        x0_hat, _ = schedule.to_x0_eps(out_x.float(), x_t.float(), t)
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        out_y = net.image(z_t[:, :c], t, Cond(mask_channels=x0_hat))
        if record is not None:
            record({"t": t, "x_t": x_t, "y_t": z_t[:, :c], "out_x": out_x, "x0_hat": x0_hat, "out_y": out_y})
        return torch.cat([out_y.float(), out_x.float()], dim=1)

    return model


def _run_dir(spec: str) -> tuple[Path, Path]:
    """``RUN`` or ``RUN/export`` → (run folder, export folder); one-line error when it is neither."""
    p = Path(spec)
    if (p / "export" / "config.json").is_file():
        return p, p / "export"
    if (p / "config.json").is_file() and (p.parent / "training_cases.json").is_file():
        return p.parent, p
    raise fail(f"{spec}: pig.image_from must be a finished 'synthpair train --method mask2image' run folder "
               f"(with export/); train one first or fix the path")


class PigMethod(Method):
    """Paired image generation by a diffusion guider (model x, the mask) and a mask2image model (y, the image)."""

    name = "pig"
    config_sections = ("pig",)

    # ------------------------------------------------------------------------------------- networks
    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None) -> nn.Module:
        """Both models with ``net_cfg`` (training from scratch)."""
        return PigNet(net_cfg, net_cfg, data.channels, data.num_classes)

    def build_for_training(self, data: DataInfo, train_cfg: Any, dataset: Any, train_ids: Sequence[str]) -> nn.Module:
        """The PigNet of a training run; with ``pig.image_from`` the image model takes that mask2image run's
        network settings and EMA weights (and is frozen with ``pig.freeze_image``).

        Checks (one-line errors): the run is a mask2image run of the same data shape and ``diffusion`` settings,
        and every case it saw is a training case of this run (so this run's ``training_cases.json``, which the
        leakage guard reads, covers both models)."""
        pc: PigConfig = train_cfg.pig
        self._image_from = None
        if not pc.image_from:
            return self.build_network(data, train_cfg.net)
        from ..config import from_dict, to_dict
        from ..diffusion.schedule import DiffusionConfig, diffusion_differences
        from ..io import read_json
        from .export import load_export
        from ..networks.export import read_export_config, sha256_file

        run, export = _run_dir(pc.image_from)
        method = read_export_config(export).get("method")
        if method != "mask2image":
            raise fail(f"{pc.image_from}: pig.image_from must be a mask2image run, this one is "
                       f"{method!r}; train 'synthpair train --method mask2image' first")
        src, src_cfg = load_export(export)
        if DataInfo.from_dict(src_cfg["data"]).to_dict() != data.to_dict():
            raise fail(f"{pc.image_from}: its data {src_cfg['data']} differ from this dataset's {data.to_dict()}; "
                       f"use a mask2image run of the same prepared dataset")
        diff = diffusion_differences(src_cfg["diffusion"], train_cfg.diffusion)
        if diff:
            theirs = to_dict(from_dict(DiffusionConfig, src_cfg["diffusion"], where=f"{export}:diffusion"))
            sets = " ".join(f"--set diffusion.{k}={theirs[k]}" for k in diff)
            raise fail(f"{pc.image_from}: its diffusion settings differ ({', '.join(diff)}); both PIG models share "
                       f"one schedule, train with {sets}")
        seen = set(read_json(run / "training_cases.json", "training_cases.json").get("cases", []))
        mine = {dataset.case_of(i) for i in train_ids}
        outside = sorted(seen - mine)
        if outside:
            raise fail(f"{pc.image_from}: its image model saw {len(outside)} case(s) outside this run's training "
                       f"cases (e.g. {outside[0]!r}); train the guider on the same fold (and items) as that run")
        from ..config import from_dict
        from ..networks.unet import UNetConfig

        image_net = from_dict(UNetConfig, src_cfg["net"], where=f"{export / 'config.json'}:net")
        net = PigNet(train_cfg.net, image_net, data.channels, data.num_classes)
        net.image.load_state_dict(src.state_dict(), strict=True)
        if pc.freeze_image:
            for p in net.image.parameters():
                p.requires_grad_(False)
            net.image.eval()
        self._image_from = {"run": str(run.resolve()), "weights_sha256": sha256_file(export / "model.safetensors"),
                            "net": src_cfg["net"], "frozen": pc.freeze_image}
        return net

    def export_extra(self, ema: nn.Module, train_cfg: Any) -> dict[str, Any]:
        """``pig`` section of the export config: the image model's network settings and its provenance."""
        from ..config import to_dict

        src = getattr(self, "_image_from", None)
        return {"pig": {"image_net": src["net"] if src else to_dict(train_cfg.net),
                        "image_from": src, "freeze_image": train_cfg.pig.freeze_image}}

    def build_from_export(self, data: DataInfo, export_cfg: dict[str, Any], export_dir: Path) -> nn.Module:
        from ..config import from_dict
        from ..networks.unet import UNetConfig

        where = f"{Path(export_dir) / 'config.json'}"
        if "pig" not in export_cfg:
            raise fail(f"{where}: a pig export needs its 'pig' section; re-export the run")
        net_cfg = from_dict(UNetConfig, export_cfg["net"], where=f"{where}:net")
        image_net = from_dict(UNetConfig, export_cfg["pig"]["image_net"], where=f"{where}:pig.image_net")
        return PigNet(net_cfg, image_net, data.channels, data.num_classes)

    # ------------------------------------------------------------------------------------- training
    def noise_channels(self, data: DataInfo) -> tuple[int, ...]:
        """eps_2 (image, C channels), then eps_1 (mask, K channels): two independent draws (Algorithm 1)."""
        return (data.channels, data.num_classes - 1)

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor, draws: Draws, shard: Shard, generator: torch.Generator, *, data: DataInfo,
             extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Algorithm 1 (+ model y's loss): ``L_x + L_y`` (or ``L_x`` with a frozen image model).

        images float (B, C, H, W) in [-1, 1], masks int64 (B, H, W). One t per pair and the two independent
        noises of ``draws.noise`` = cat(eps_2 (image), eps_1 (mask)). Each loss is the mean squared error over its
        own channels (L_x over the K mask channels, L_y over the C image channels)."""
        c = images.shape[1]
        k = data.num_classes - 1
        dev = images.device
        z0 = pack_joint(shard.take(images), shard.take(masks), data.num_classes)   # cat(y0, x0)
        tt = shard.take(draws.t, dev)
        z_t, target = prediction_target(schedule, z0, tt, shard.take(draws.noise, dev))  # eqs. (9)-(10), same t
        train_image = net.image_trainable()
        out = model(z_t, tt, Cond(mask=shard.take(masks)), image=train_image)
        loss_x = torch.nn.functional.mse_loss(out[:, -k:].float(), target[:, c:].float())
        if not train_image:
            return loss_x
        loss_y = torch.nn.functional.mse_loss(out[:, :c].float(), target[:, :c].float())
        return loss_x + loss_y

    # ------------------------------------------------------------------------------------- sampling
    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs from seeds by Algorithm 2 (module docstring) → (images float32 (B, C, H, W) in [-1, 1], masks
        int64 (B, H, W) in 0..K) on CPU. Pair i depends only on ``seeds[i]``: (y_T, x_T) and the sampler noise
        come from ``torch.Generator().manual_seed(seeds[i])``."""
        net = unwrap(model)
        c = data.channels + data.num_classes - 1
        gens = seed_generators(seeds)
        z_T = torch.stack([torch.randn((c, *data.size), generator=g) for g in gens]).to(device)
        z0 = run_sampler(paired_denoiser(net, schedule), schedule, z_T, sampler=sampler, steps=steps, eta=eta,
                         spacing=spacing, generators=gens, progress=progress, autocast_dtype=autocast_dtype)
        images, masks = unpack_joint(z0, data.channels, data.num_classes)
        return images.cpu(), masks.cpu()


register_method("pig", PigMethod)

__all__ = ["PigConfig", "PigNet", "PigMethod", "paired_denoiser"]
