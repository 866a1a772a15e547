"""What the survey-task pipelines share: the diffusion settings, the task-level networks and fit loops, and the
output writers (results.{json,md}, figures).

Diffusion networks. The image-only generator of a task is trained by the project's trainer
(:func:`synthpair.training.trainer.train_generator`, method ``image``, ``TrainConfig.items`` for a subset) from
:meth:`DiffusionFit.train_config`. A task whose diffusion model is CONDITIONED on something the task derives
— the image under a mask (MedSegDiff), source contrasts (modality conversion), a noisy observation
(conditional denoising), a class label (classifier-free guidance) — or that is trained with simplex instead of
Gaussian noise (AnoDDPM) uses :func:`fit_diffusion`: the same objective (:func:`synthpair.diffusion.losses.
diffusion_loss`, DDPM ``L_simple`` on the configured prediction), the same optimiser, warm-up, gradient
clipping and EMA (:mod:`synthpair.training.ema`) as the trainer, on tensors held in memory. Conditions travel in
:class:`~synthpair.diffusion.cond.Cond`: ``control`` (B, E, H, W) is concatenated to the network input
(:class:`ConcatDenoiser`), ``label`` (B,) with ``drop`` selects a class embedding or the null class
(:class:`ClassDenoiser`). Sampling always goes through :func:`synthpair.diffusion.sampling.sample`.

Outputs of every task folder OUT (built in a temporary sibling and renamed at the end, so a refused input
leaves nothing): ``config.json`` (the task's frozen config), ``results.json`` (``format:
"synthpair-task-results"``, ``task``, ``title``, ``data``, ``tables`` [{name, title, headers, rows, note}],
``figures`` [{file, caption}], ``notes``, ``cost``, plus the task's own keys), ``results.md`` (the same tables),
``figures/*.png`` and ``models/*/`` (``config.json`` + ``model.safetensors`` of the task-level networks).
:func:`synthpair.report.tasks.write_task_report` renders ``report.html`` from them.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ...config import to_dict
from ...diffusion.cond import Cond
from ...diffusion.losses import diffusion_loss
from ...diffusion.schedule import DiffusionConfig, NoiseSchedule
from ...diffusion.simplex import SimplexConfig, draw_noise
from ...errors import fail
from ...io import save_png_atomic, write_json_atomic, write_text_atomic
from ...networks.unet import DiffusionUNet, UNetConfig

RESULTS_FORMAT = "synthpair-task-results"


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class DiffusionFit:
    """Training settings of a task's diffusion network (the fields of :class:`~synthpair.training.trainer.
    TrainConfig` that a task sets; the same defaults)."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 50
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    amp: Literal["auto", "bf16", "off"] = "auto"
    augment_flips: bool = True
    net: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise fail(f"steps={self.steps}, batch_size={self.batch_size}: must be >= 1")
        if not self.lr > 0:
            raise fail(f"lr={self.lr}: must be > 0")

    def train_config(self, *, method: str, fold: int, seed: int, device: str, items: str = "",
                     unlabelled: bool = True) -> Any:
        """The :class:`~synthpair.training.trainer.TrainConfig` of the project trainer with these settings."""
        from ...training.trainer import TrainConfig

        return TrainConfig(method=method, fold=fold, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, ema_decay=self.ema_decay, grad_clip=self.grad_clip,
                           amp=self.amp, seed=seed, augment_flips=self.augment_flips, net=self.net,
                           diffusion=self.diffusion, device=device, items=items, unlabelled=unlabelled,
                           preview_n=0, checkpoint_every=0, preview_every=0, log_every=max(1, self.steps // 50))


@dataclass(frozen=True)
class NetFit:
    """Training settings of a non-diffusion network (baselines, classifiers): ``steps`` optimiser steps of
    ``batch_size`` items, AdamW with ``lr`` / ``weight_decay``, cosine decay to 0; ``features`` = the base width."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    features: int = 32

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.features < 4:
            raise fail(f"steps={self.steps}, batch_size={self.batch_size}, features={self.features}: need steps, "
                       f"batch_size >= 1 and features >= 4")


# ------------------------------------------------------------------------------------------------ networks
class ConcatDenoiser(DiffusionUNet):
    """MONAI diffusion U-Net on ``cat(x_t, cond.control)``: ``forward(x_t (B, C, H, W), t, Cond(control=(B, E,
    H, W))) -> (B, C, H, W)`` — conditioning by channel concatenation (MedSegDiff, SR3/Palette-style image-to-
    image diffusion). With ``drop`` rows the control is replaced by zeros (the null condition)."""

    def __init__(self, cfg: UNetConfig, channels: int, cond_channels: int) -> None:
        super().__init__(cfg, channels + cond_channels, channels)
        self.channels, self.cond_channels = int(channels), int(cond_channels)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        c = None if cond is None else cond.control
        if c is None:
            raise ValueError("ConcatDenoiser needs Cond(control=(B, E, H, W))")
        if cond.drop is not None:
            c = torch.where(cond.drop.view(-1, 1, 1, 1).to(c.device), torch.zeros_like(c), c)
        return self.unet(torch.cat([x_t, c.to(x_t.dtype)], dim=1), t)


class ClassDenoiser(DiffusionUNet):
    """MONAI diffusion U-Net with a class embedding: ``forward(x_t, t, Cond(label=(B,), drop=(B,)))``; class
    ``k`` (= ``num_classes``) is the learnt null class used for ``drop`` rows (classifier-free guidance, Ho &
    Salimans 2022) and when ``cond`` or its label is None."""

    def __init__(self, cfg: UNetConfig, channels: int, num_classes: int) -> None:
        super().__init__(cfg, channels, channels, num_class_embeds=int(num_classes) + 1)
        self.num_classes = int(num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        b = x_t.shape[0]
        null = torch.full((b,), self.num_classes, dtype=torch.long, device=x_t.device)
        lab = null if cond is None or cond.label is None else cond.label.to(x_t.device).long()
        if cond is not None and cond.drop is not None:
            lab = torch.where(cond.drop.to(x_t.device), null, lab)
        return self.unet(x_t, t, class_labels=lab)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder (the reconstruction baseline of anomaly detection): ``levels`` stride-2 conv
    blocks down to a bottleneck of ``features · 2^(levels-1)`` channels at ``H / 2^levels``, mirrored transposed
    convolutions up, ``tanh`` output; (B, C, H, W) in [-1, 1] → the same."""

    def __init__(self, channels: int, features: int = 32, levels: int = 3) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        c_in = channels
        widths = [features * 2 ** i for i in range(levels)]
        for w in widths:
            enc += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), _gn(w), nn.SiLU(),
                    nn.Conv2d(w, w, 3, padding=1), _gn(w), nn.SiLU()]
            c_in = w
        dec: list[nn.Module] = []
        for w in list(reversed(widths[:-1])) + [features]:
            dec += [nn.ConvTranspose2d(c_in, w, 4, stride=2, padding=1), _gn(w), nn.SiLU(),
                    nn.Conv2d(w, w, 3, padding=1), _gn(w), nn.SiLU()]
            c_in = w
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Conv2d(c_in, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.decoder(self.encoder(x))))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of integer timesteps (Vaswani et al. 2017, as in DDPM's U-Net)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


class Classifier(nn.Module):
    """Small CNN classifier: four stride-2 conv blocks (GroupNorm, SiLU), global average pooling, linear →
    logits (B, num_classes). With ``noise_aware`` a sinusoidal timestep embedding is added to every block (the
    noise-aware classifier of classifier guidance, Dhariwal & Nichol 2021 sec. 4): ``forward(x, t)``."""

    def __init__(self, channels: int, num_classes: int, features: int = 32, noise_aware: bool = False) -> None:
        super().__init__()
        self.noise_aware = noise_aware
        widths = [features, features * 2, features * 4, features * 4]
        self.blocks = nn.ModuleList()
        self.temb = nn.ModuleList()
        c_in = channels
        for w in widths:
            self.blocks.append(nn.Sequential(nn.Conv2d(c_in, w, 3, stride=2, padding=1), _gn(w), nn.SiLU(),
                                             nn.Conv2d(w, w, 3, padding=1), _gn(w), nn.SiLU()))
            if noise_aware:
                self.temb.append(nn.Linear(features * 4, w))
            c_in = w
        self.embed_dim = features * 4
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        e = None
        if self.noise_aware:
            if t is None:
                raise ValueError("a noise-aware classifier needs the timestep t")
            e = timestep_embedding(t, self.embed_dim)
        for k, blk in enumerate(self.blocks):
            x = blk(x)
            if e is not None:
                x = x + self.temb[k](e)[:, :, None, None]
        return self.head(x.mean(dim=(2, 3)))


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017, "Beyond a Gaussian denoiser"): ``depth`` 3×3 conv layers (conv-ReLU, then
    conv-BN-ReLU, then conv) that predict the noise residual; ``forward(y) = y - residual(y)`` for y (B, C, H, W)."""

    def __init__(self, channels: int, features: int = 32, depth: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.residual = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.residual(y)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ------------------------------------------------------------------------------------------------ fit loops
def log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _flip_rows(x: torch.Tensor, flags: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.where(flags.view(-1, *([1] * (x.dim() - 1))).to(x.device), x.flip(axis), x)


def fit_diffusion(net: nn.Module, x0: torch.Tensor, fit: DiffusionFit, *, seed: int, device: torch.device,
                  cond: torch.Tensor | None = None, labels: torch.Tensor | None = None, drop_prob: float = 0.0,
                  noise: str = "gaussian", simplex: SimplexConfig = SimplexConfig(),
                  cond_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                  progress: bool = False, desc: str = "diffusion") -> tuple[nn.Module, dict[str, Any]]:
    """Train ``net`` (``forward(x_t, t, cond)``) with DDPM's ``L_simple`` on ``x0`` float (N, C, H, W) in [-1, 1]
    and return ``(EMA copy in eval mode, record)``.

    Per step, from ONE CPU generator seeded with ``seed``: item indices, flips (x0 and its ``cond`` rows flipped
    together), t ~ U{0..T-1}, the noise (``noise`` "gaussian" or "simplex" — AnoDDPM trains with the noise it
    reconstructs with), the classifier-free null flags (``drop_prob``) and whatever ``cond_fn(x0_batch, gen)``
    draws (a condition made on the fly, e.g. a noisy copy for conditional denoising). Conditions: ``cond``
    (N, E, H, W) → ``Cond(control=...)``; ``labels`` int64 (N,) → ``Cond(label=...)``. AdamW, linear warm-up
    then constant LR, gradient clipping, EMA with warm-up, as the project trainer.
    ``record``: steps, final_loss, loss (every ~1/50 of the run), cpu_seconds, params."""
    from ...env import resolve_autocast
    from ...training.ema import ema_decay_at, ema_update, make_ema

    sched = NoiseSchedule(fit.diffusion, device=device)
    net = net.to(device).train()
    ema = make_ema(net)
    opt = torch.optim.AdamW(net.parameters(), lr=fit.lr)
    warm = max(fit.warmup_steps, 0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    autocast = resolve_autocast(fit.amp, device)
    gen = torch.Generator().manual_seed(int(seed))
    n = x0.shape[0]
    every = max(1, fit.steps // 50)
    losses: list[dict[str, float]] = []
    cpu0 = time.process_time()
    it: Any = range(fit.steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False, file=sys.stderr)
    last = float("nan")
    for step in it:
        idx = torch.randint(0, n, (fit.batch_size,), generator=gen)
        xb = x0[idx].to(device)
        cb = None if cond is None else cond[idx].to(device)
        if fit.augment_flips:
            fl = torch.rand((fit.batch_size, 2), generator=gen) < 0.5
            xb = _flip_rows(_flip_rows(xb, fl[:, 0], -1), fl[:, 1], -2)
            if cb is not None:
                cb = _flip_rows(_flip_rows(cb, fl[:, 0], -1), fl[:, 1], -2)
        t = sched.sample_timesteps(fit.batch_size, gen)
        eps = draw_noise(noise, xb.shape, gen, simplex)
        drop = (torch.rand((fit.batch_size,), generator=gen) < drop_prob) if drop_prob > 0 else None
        if cond_fn is not None:
            cb = cond_fn(xb.cpu(), gen).to(device)
        c = Cond(control=cb, label=None if labels is None else labels[idx].to(device),
                 drop=None if drop is None else drop.to(device))
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = diffusion_loss(net, sched, xb, t.to(device), eps.to(device), c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if fit.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), fit.grad_clip)
        opt.step()
        lr_sched.step()
        ema_update(ema, net, ema_decay_at(step, fit.ema_decay))
        last = float(loss.detach())
        if step % every == 0 or step == fit.steps - 1:
            losses.append({"step": step + 1, "loss": last})
    net.eval()
    return ema.eval(), {"steps": fit.steps, "final_loss": last, "loss": losses,
                        "cpu_seconds": round(time.process_time() - cpu0, 1), "params": count_params(net),
                        "noise": noise}


def fit_network(model: nn.Module, step_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor], n: int,
                fit: NetFit, *, seed: int, device: torch.device, progress: bool = False, desc: str = "network"
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` for ``fit.steps`` steps: each step draws ``fit.batch_size`` indices in ``0..n-1`` from one
    seeded CPU generator and minimises ``step_loss(idx, gen)`` (which may draw more from ``gen``); AdamW, cosine
    decay. Returns (model in eval mode, record {steps, final_loss, loss, cpu_seconds, params})."""
    torch.manual_seed(int(seed))
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=fit.steps)
    gen = torch.Generator().manual_seed(int(seed))
    every = max(1, fit.steps // 50)
    losses: list[dict[str, float]] = []
    cpu0 = time.process_time()
    it: Any = range(fit.steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False, file=sys.stderr)
    last = float("nan")
    for step in it:
        idx = torch.randint(0, n, (fit.batch_size,), generator=gen)
        loss = step_loss(idx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        last = float(loss.detach())
        if step % every == 0 or step == fit.steps - 1:
            losses.append({"step": step + 1, "loss": last})
    return model.eval(), {"steps": fit.steps, "final_loss": last, "loss": losses,
                          "cpu_seconds": round(time.process_time() - cpu0, 1), "params": count_params(model)}


@torch.inference_mode()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int, device: torch.device
            ) -> torch.Tensor:
    """``fn`` over ``x`` in chunks of ``batch`` rows on ``device`` → concatenated float32 result on CPU."""
    out = [fn(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out) if out else x[:0]


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (per-image reproducibility, as the sampling loop's ``generators``)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


# ------------------------------------------------------------------------------------------------ data helpers
def load_generator(export_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The project's ``load_export`` of a RUN/export folder → (model in eval mode, export config). It lives in
    :mod:`synthpair.methods.export` since the method-protocol refactor and in :mod:`synthpair.networks.export`
    before it; this resolves either, so the tasks work on both sides of that change (drop the fallback once the
    refactor is committed)."""
    try:
        from ...methods.export import load_export
    except ImportError:
        from ...networks.export import load_export  # type: ignore[no-redef]
    return load_export(export_dir, device=device)


def resolve(device: str) -> torch.device:
    from ...env import resolve_device

    return resolve_device(device)


def channel_names(ds: Any) -> list[str]:
    """The names of DATA's image channels: dataset.json ``channel_names`` (written by ``prepare`` for
    multi-channel sources), else ``[modality]`` for one channel and R, G, B for three."""
    names = ds.info.get("channel_names")
    if names:
        return [str(n) for n in names]
    if ds.channels == 1:
        return [ds.modality]
    if ds.channels == 3:
        return ["R", "G", "B"]
    return [str(i) for i in range(ds.channels)]


def one_hot_pm1(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps int64 (N, H, W) in 0..K → foreground one-hot float (N, K, H, W) in {-1, +1} (the joint
    representation of the project: docs/architecture.md, "Joint image+mask representation")."""
    k = num_classes - 1
    oh = torch.stack([(masks == c) for c in range(1, k + 1)], dim=1).float()
    return oh * 2.0 - 1.0


def decode_masks(x: torch.Tensor) -> torch.Tensor:
    """Foreground channels (N, K, H, W) in [-1, 1] → labels int64 (N, H, W): K = 1: ``x > 0``; K > 1:
    ``1 + argmax_k x_k`` where ``max_k x_k > 0``, else background."""
    if x.shape[1] == 1:
        return (x[:, 0] > 0).long()
    mx, arg = x.max(dim=1)
    return torch.where(mx > 0, arg + 1, torch.zeros_like(arg))


# ------------------------------------------------------------------------------------------------ outputs
def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals (NaN → "—"), {mean, sd} → "m ± sd", others as text."""
    if isinstance(v, dict) and "mean" in v:
        if v.get("mean") is None or not math.isfinite(float(v["mean"])):
            return "—"
        sd = v.get("sd")
        return f"{float(v['mean']):.{digits}f}" + (f" ± {float(sd):.{digits}f}" if sd is not None
                                                   and math.isfinite(float(sd)) else "")
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.{digits}f}"
    return "—" if v is None else str(v)


def md_table(rows: Sequence[dict[str, Any]], headers: Sequence[str], digits: int = 3) -> str:
    """Rows of dicts → a Markdown pipe table with ``headers`` (cells by :func:`fmt`)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(h), digits) for h in headers) + " |")
    return "\n".join(out)


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else None,
            "sd": float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) == 1 else None), "n": int(len(v))}


def table(name: str, title: str, headers: Sequence[str], rows: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """One entry of results.json ``tables`` (rendered in results.md and report.html)."""
    return {"name": name, "title": title, "headers": list(headers), "rows": rows, "note": note}


def write_outputs(out: Path, *, task: str, title: str, data: str, config: Any, tables: list[dict[str, Any]],
                  figures: list[dict[str, str]], notes: list[str], cost: dict[str, Any], **extra: Any
                  ) -> dict[str, Any]:
    """Write ``config.json``, ``results.json`` and ``results.md`` into ``out``; return the results dict."""
    results = {"format": RESULTS_FORMAT, "version": 1, "task": task, "title": title, "data": data,
               "tables": tables, "figures": figures, "notes": notes, "cost": cost, **extra,
               "config": to_dict(config)}
    write_json_atomic(out / "config.json", {"_type": type(config).__name__, **to_dict(config)})
    write_json_atomic(out / "results.json", results)
    md = [f"# {title}", "", f"Data: `{data}`", ""]
    for tb in tables:
        md += [f"## {tb['title']}", "", md_table(tb["rows"], tb["headers"]), ""]
        if tb.get("note"):
            md += [tb["note"], ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if cost:
        md += ["## Cost (CPU seconds of this process unless stated)", ""] + \
              [f"- {k}: {v:.4g}" if isinstance(v, (int, float)) else f"- {k}: {fmt(v)}" for k, v in cost.items()] + [""]
    write_text_atomic(out / "results.md", "\n".join(md))
    return results


def save_model(folder: Path, model: nn.Module, config: dict[str, Any]) -> None:
    """``folder/model.safetensors`` (the weights) + ``folder/config.json`` (what rebuilds the network)."""
    from safetensors.torch import save as st_save

    from ...io import write_bytes_atomic

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(folder / "model.safetensors", st_save(state))
    write_json_atomic(folder / "config.json", {**config, "params": count_params(model)})


# ------------------------------------------------------------------------------------------------ figures
def to_u8(img: Any) -> np.ndarray:
    """An image float (C, H, W) or (H, W) in [-1, 1] → uint8 (H, W) (first channel for C not in {1, 3}) or
    (H, W, 3) for C = 3."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = a.transpose(1, 2, 0) if a.shape[0] == 3 else a[0]
    return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8)


def heat(m: Any, vmax: float | None = None) -> np.ndarray:
    """A non-negative map (H, W) → uint8 RGB (H, W, 3) with matplotlib's ``inferno`` colour map on [0, vmax]."""
    from matplotlib import colormaps

    a = np.asarray(m, dtype=np.float64)
    top = float(vmax if vmax is not None else (a.max() if a.size else 1.0)) or 1.0
    return (colormaps["inferno"](np.clip(a / top, 0, 1))[..., :3] * 255).astype(np.uint8)


def outline(img_u8: np.ndarray, mask: Any, colour: tuple[int, int, int] = (255, 64, 64)) -> np.ndarray:
    """Draw the contour of a binary ``mask`` (H, W) on a uint8 (H, W) or (H, W, 3) image → RGB copy."""
    from ...report.grid import contour

    rgb = np.repeat(img_u8[..., None], 3, axis=2) if img_u8.ndim == 2 else img_u8.copy()
    rgb[contour(np.asarray(mask) > 0)] = colour
    return rgb


def panel_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 2, pad: int = 2) -> np.ndarray:
    """Tile uint8 panels (H, W) or (H, W, 3) (all the same size) into one RGB picture, rows × columns, each
    panel upscaled ``scale`` times (nearest), white padding."""
    rgb = [[np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in r] for r in rows]
    h, w = rgb[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in rgb)
    out = np.full((len(rgb) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rgb):
        for j, p in enumerate(r):
            big = np.kron(p, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else p
            out[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = big
    return out


def save_figure(out: Path, name: str, picture: np.ndarray, caption: str, figures: list[dict[str, str]]) -> None:
    """Save ``picture`` as ``out/figures/<name>.png`` and list it (with its caption) in ``figures``."""
    save_png_atomic(out / "figures" / f"{name}.png", picture)
    figures.append({"file": f"figures/{name}.png", "caption": caption})


def line_plot(out: Path, name: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, title: str, caption: str, figures: list[dict[str, str]], logx: bool = False) -> None:
    """A matplotlib line plot (Agg, no display) of ``{label: (x, y)}`` saved as ``out/figures/<name>.png``."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(out / "figures" / f"{name}.png", buf.getvalue())
    figures.append({"file": f"figures/{name}.png", "caption": caption})


__all__ = ["Classifier", "ClassDenoiser", "ConcatDenoiser", "ConvAutoencoder", "DiffusionFit", "DnCNN", "NetFit",
           "batched", "channel_names", "count_params", "decode_masks", "fit_diffusion", "fit_network", "fmt",
           "heat", "line_plot", "load_generator", "log", "md_table", "mean_sd", "one_hot_pm1", "outline",
           "panel_grid", "resolve", "save_figure", "save_model", "seed_generators", "table", "to_u8",
           "write_outputs"]
