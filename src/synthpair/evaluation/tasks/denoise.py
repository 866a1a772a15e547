"""Denoising (survey sec. 3.4 and Table 12): a diffusion model started at the observation's noise level, beside a
DnCNN-style residual CNN and non-local means, on held-out real images under Gaussian, Poisson and speckle noise.

``synthpair denoise DATA --out OUT`` (:func:`run_denoise`), fold ``cfg.fold`` of a prepared folder:

* **Noise models**, applied to the fold's TEST images in intensity units u = (x + 1)/2 in [0, 1] (specs
  ``model:level`` in ``cfg.noise``; one seeded draw per (spec, image); observations are float, not clipped):
  ``gaussian:s`` v = u + s z; ``poisson:lam`` v = Poisson(lam u) / lam (photon counting, peak lam photons);
  ``speckle:s`` v = u (1 + s z) (multiplicative, as ``skimage.util.random_noise(mode="speckle")``).
* **Diffusion** (an image-only DDPM trained by the project trainer, method ``image``, on every training-side
  image): an observation y = x0 + sigma z (x0 in [-1, 1]) is a diffusion state up to scale, so the reverse
  process starts at the timestep t whose ``sqrt((1 - abar_t)/abar_t)`` matches sigma, from ``x_t = sqrt(abar_t)
  y``, and runs ``steps`` DDIM steps to t = 0 (:func:`synthpair.diffusion.partial.denoise_observation`). sigma
  is the noise std in [-1, 1] units: 2 s (Gaussian), 2 sqrt(mean(u)/lam) (Poisson), 2 s sqrt(mean(u^2))
  (speckle) per image — the noise model's own variance averaged over the image (an oracle level, as the
  survey's fixed-level experiments). A level outside the schedule's range is refused before any work.
* **Conditional diffusion** (``conditional=true``): a network trained on (clean, noisy) pairs with the noisy
  image concatenated as condition (noise drawn on the fly from the same specs), sampled from pure noise with
  ``cond_steps`` DDIM steps (SR3/Palette-style; Xia et al. 2022 in the survey).
* **DnCNN** (Zhang et al. 2017; the survey's DNCNN-B: one blind model for every level): residual CNN trained on
  noisy→clean pairs of the training-side images with the same noise specs, MSE.
* **Non-local means** (scikit-image ``denoise_nl_means``, fast mode, 5×5 patches, distance 6, h = 0.8 sigma
  with sigma from :func:`estimate_sigma`, Donoho's wavelet MAD), on u.
* **Metrics** on u, outputs clipped to [0, 1]: RMSE, PSNR (data range 1), SSIM (:mod:`synthpair.metrics.image`),
  mean ± sd over the test images; with ``segmenter`` = a SEG folder (``synthpair segment`` on this DATA, with
  fold ``cfg.fold``), the Dice of that fixed real-only segmenter on the clean, noisy and denoised test images
  (does denoising keep what matters?). A SEG whose models saw one of the test items is refused.

OUT: ``config.json``, ``results.{json,md}``, ``figures/`` (one example per noise spec: clean, noisy, each
method), ``generator/`` (the image-only RUN), ``models/{dncnn,conditional}/``.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...config import from_dict
from ...data.dataset import PreparedDataset
from ...diffusion.cond import Cond
from ...diffusion.partial import PartialSchedule, noise_to_signal, start_step
from ...diffusion.sampling import sample
from ...diffusion.schedule import DiffusionConfig, NoiseSchedule
from ...errors import fail
from ...io import atomic_output_dir
from ...metrics import image as im
from .common import (ConcatDenoiser, DiffusionFit, DnCNN, NetFit, fit_diffusion, fit_network, load_generator, log,
                     mean_sd, panel_grid, resolve, save_figure, save_model, seed_generators, table, to_u8,
                     write_outputs)

NOISE_MODELS = ("gaussian", "poisson", "speckle")
TASK = "denoise"


@dataclass(frozen=True)
class DenoiseConfig:
    """Settings of ``synthpair denoise`` (saved as OUT/config.json); see the module docstring."""

    fold: int = 0
    seed: int = 0
    noise: tuple[str, ...] = ("gaussian:0.05", "gaussian:0.1", "poisson:100", "poisson:30", "speckle:0.1",
                              "speckle:0.25")
    generator: DiffusionFit = field(default_factory=DiffusionFit)
    steps: int = 10                       # DDIM steps from the matched start step to 0
    conditional: bool = False
    cond_steps: int = 25
    dncnn: NetFit = field(default_factory=NetFit)
    dncnn_depth: int = 10
    segmenter: str = ""                   # SEG folder: Dice of a fixed real-only segmenter on denoised images
    eval_batch: int = 32
    n_examples: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.noise:
            raise fail("noise: name at least one noise spec, e.g. gaussian:0.1, poisson:30, speckle:0.2")
        for spec in self.noise:
            parse_noise(spec)
        if self.steps < 1 or self.cond_steps < 1 or self.eval_batch < 1 or self.dncnn_depth < 3:
            raise fail("steps, cond_steps and eval_batch must be >= 1 and dncnn_depth >= 3")


def parse_noise(spec: str) -> tuple[str, float]:
    """``"gaussian:0.1"`` → ("gaussian", 0.1); one-line error for an unknown model or a bad level."""
    name, _, level = str(spec).partition(":")
    try:
        value = float(level)
    except ValueError:
        value = float("nan")
    if name not in NOISE_MODELS or not np.isfinite(value) or value <= 0:
        raise fail(f"noise {spec!r}: write MODEL:LEVEL with MODEL one of {', '.join(NOISE_MODELS)} and a level > 0 "
                   f"(gaussian/speckle: std in [0, 1] intensity units; poisson: peak photon count)")
    return name, value


def add_noise(u: torch.Tensor, spec: str, gen: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """Noisy observation v of clean intensities u float (B, C, H, W) in [0, 1] under ``spec`` (module docstring);
    draws from ``gen`` (one generator, or one per row)."""
    name, level = parse_noise(spec)

    def randn(shape: torch.Size) -> torch.Tensor:
        if isinstance(gen, torch.Generator):
            return torch.randn(shape, generator=gen)
        return torch.stack([torch.randn(shape[1:], generator=g) for g in gen])

    u = u.float().cpu()
    if name == "gaussian":
        return u + level * randn(u.shape)
    if name == "speckle":
        return u * (1.0 + level * randn(u.shape))
    rate = (u.clamp_min(0) * level).double()
    if isinstance(gen, torch.Generator):
        counts = torch.poisson(rate, generator=gen)
    else:
        counts = torch.stack([torch.poisson(r, generator=g) for r, g in zip(rate, gen)])
    return (counts / level).float()


def noise_sigma(u: torch.Tensor, spec: str) -> torch.Tensor:
    """Per-image noise std in [-1, 1] units (2 × the std in u units, averaged over the image's pixels) of ``spec``
    on clean u (B, C, H, W) → float64 (B,)."""
    name, level = parse_noise(spec)
    u = u.double().clamp_min(0)
    if name == "gaussian":
        return torch.full((u.shape[0],), 2.0 * level, dtype=torch.float64)
    if name == "poisson":
        return 2.0 * torch.sqrt(u.mean(dim=(1, 2, 3)) / level)
    return 2.0 * level * torch.sqrt((u ** 2).mean(dim=(1, 2, 3)))


def _gens(ids: list[str], seed: int, k: int) -> list[torch.Generator]:
    return seed_generators([zlib.crc32(f"{seed}:{k}:{i}".encode()) for i in ids])


def _check_segmenter(seg: str, ds: PreparedDataset, cfg: DenoiseConfig, test_ids: list[str]) -> None:
    """A fixed segmenter must fit DATA and must never have seen a test item (its label accounting)."""
    from ...segmentation.models import read_segment_results, segmenter_data_info

    res = read_segment_results(seg)
    info = segmenter_data_info(seg, res)
    if info["channels"] != ds.channels or tuple(info["size"]) != tuple(ds.size) or info["num_classes"] != ds.num_classes:
        raise fail(f"{seg}: segmenter trained on {info['channels']}-channel {info['size']} images with "
                   f"{info['num_classes']} labels but {ds.root} has {ds.channels}-channel {list(ds.size)} with "
                   f"{ds.num_classes}; train one with 'synthpair segment {ds.root} --folds {cfg.fold}'")
    fold = next((f for f in res.get("folds", []) if int(f.get("fold", -1)) == cfg.fold), None)
    if fold is None:
        raise fail(f"{seg}: no fold {cfg.fold} model; train it with 'synthpair segment {ds.root} --folds {cfg.fold}'")
    acc = fold.get("label_accounting")
    seen = set(acc.get("mask_items", [])) | set(acc.get("image_items", [])) if acc else None
    if seen is None and Path(str(res.get("data", ""))).resolve() != Path(ds.root).resolve():
        raise fail(f"{seg}: trained on {res.get('data')} and records no label accounting, so its training items cannot "
                   f"be checked against the test items of {ds.root}; train it with 'synthpair segment {ds.root} "
                   f"--folds {cfg.fold}'")
    leak = sorted(set(test_ids) & seen) if seen is not None else []
    if leak:
        raise fail(f"{seg}: its fold-{cfg.fold} model saw test item {leak[0]!r} ({len(leak)} such); a fixed real-only "
                   f"segmenter must be trained on the training side only ('synthpair segment {ds.root} --folds "
                   f"{cfg.fold}')")


def check_levels(sched: NoiseSchedule, u_test: torch.Tensor, cfg: DenoiseConfig) -> None:
    """Refuse (one line, before any work) a noise spec whose level on some test image has no timestep."""
    for spec in cfg.noise:
        sig = noise_sigma(u_test, spec)
        for s in (float(sig.min()), float(sig.max())):
            start_step(sched, s, what=f"noise {spec}")


def estimate_sigma(v: np.ndarray) -> float:
    """Noise std of an image v (C, H, W) by Donoho's wavelet MAD estimator, ``median(|HH|) / 0.6745`` on the
    diagonal detail band of a one-level Haar transform (averaged over channels) — the estimator of
    ``skimage.restoration.estimate_sigma`` with the Haar wavelet, without its PyWavelets dependency."""
    c, h, w = v.shape
    a = v[:, : h - h % 2, : w - w % 2]
    hh = (a[:, 0::2, 0::2] - a[:, 0::2, 1::2] - a[:, 1::2, 0::2] + a[:, 1::2, 1::2]) / 2.0
    return float(np.mean([np.median(np.abs(b)) / 0.6745 for b in hh]))


def _nlm(v: np.ndarray) -> np.ndarray:
    """Non-local means of one image v (C, H, W) (float, intensity units) → (C, H, W)."""
    from skimage.restoration import denoise_nl_means

    img = v.transpose(1, 2, 0) if v.shape[0] > 1 else v[0]
    kw = {"channel_axis": -1} if v.shape[0] > 1 else {}
    sigma = max(estimate_sigma(v), 1e-6)
    out = denoise_nl_means(img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6, **kw)
    return out.transpose(2, 0, 1) if v.shape[0] > 1 else out[None]


def run_denoise(data: Path | str, out: Path | str, cfg: DenoiseConfig = DenoiseConfig(), *, overwrite: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Run the denoising comparison (module docstring) and write OUT; returns the results dict. Every input check
    (noise specs and levels, the segmenter) runs before OUT is created."""
    from ...env import resolve_autocast
    from ...training.trainer import train_generator

    data, out = Path(data), Path(out)
    ds = PreparedDataset.open(data)
    device = resolve(cfg.device)
    _, test_ids = ds.split(cfg.fold)
    train_img = ds.image_train_ids(cfg.fold)
    if not test_ids or not train_img:
        raise fail(f"{data}: fold {cfg.fold} has {len(train_img)} training-side and {len(test_ids)} test images; "
                   f"denoising needs both")
    x_test, m_test = (torch.from_numpy(a) for a in ds.load(test_ids))
    u_test = (x_test + 1.0) / 2.0
    check_levels(NoiseSchedule(cfg.generator.diffusion), u_test, cfg)
    if cfg.segmenter:
        _check_segmenter(cfg.segmenter, ds, cfg, test_ids)
    autocast = resolve_autocast(cfg.generator.amp, device)
    cost: dict[str, Any] = {}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        tcfg = cfg.generator.train_config(method="image", fold=cfg.fold, seed=cfg.seed, device=cfg.device)
        t0 = time.process_time()
        run = train_generator(data, tmp / "generator", tcfg, progress=progress)
        cost["generator_train_cpu_s"] = round(time.process_time() - t0, 1)
        model, ecfg = load_generator(Path(run) / "export", device=device)
        sched = NoiseSchedule(from_dict(DiffusionConfig, ecfg["diffusion"], where="generator export"), device=device)
        x_train = torch.from_numpy(ds.load_images(train_img))
        u_train = (x_train + 1.0) / 2.0

        def noisy_batch(u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            spec = cfg.noise[int(torch.randint(0, len(cfg.noise), (1,), generator=gen))]
            return add_noise(u, spec, gen)

        # DnCNN on noisy→clean pairs (blind: one model for every spec)
        torch.manual_seed(cfg.seed)
        dn = DnCNN(ds.channels, cfg.dncnn.features, cfg.dncnn_depth)

        def dn_step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            u = u_train[idx]
            return F.mse_loss(dn(noisy_batch(u, gen).to(device)), u.to(device))

        dn, dn_rec = fit_network(dn, dn_step, len(u_train), cfg.dncnn, seed=cfg.seed, device=device,
                                 progress=progress, desc="DnCNN")
        save_model(tmp / "models" / "dncnn", dn, {"network": "DnCNN", "channels": ds.channels,
                                                  "features": cfg.dncnn.features, "depth": cfg.dncnn_depth,
                                                  "record": dn_rec})
        cost["dncnn_train_cpu_s"] = dn_rec["cpu_seconds"]
        cmodel = None
        if cfg.conditional:
            torch.manual_seed(cfg.seed)
            net = ConcatDenoiser(cfg.generator.net, ds.channels, ds.channels)
            cmodel, c_rec = fit_diffusion(net, x_train, cfg.generator, seed=cfg.seed, device=device,
                                          cond_fn=lambda x, g: noisy_batch((x + 1.0) / 2.0, g) * 2.0 - 1.0,
                                          progress=progress, desc="conditional DDPM")
            save_model(tmp / "models" / "conditional", cmodel, {"network": "ConcatDenoiser", "channels": ds.channels,
                                                                "cond_channels": ds.channels, "record": c_rec})
            cost["conditional_train_cpu_s"] = c_rec["cpu_seconds"]

        seg = None
        if cfg.segmenter:
            from ...segmentation.models import load_segmenter

            seg = load_segmenter(cfg.segmenter, cfg.fold, device)
        spacings = [ds.spacing_of(i) for i in test_ids]

        def seg_dice(x: torch.Tensor) -> dict[str, Any] | None:
            if seg is None:
                return None
            from ...metrics.segmentation import per_case_metrics

            with torch.inference_mode():
                pred = torch.cat([seg(x[i:i + cfg.eval_batch].clamp(-1, 1).to(device)).argmax(1).cpu()
                                  for i in range(0, len(x), cfg.eval_batch)])
            rows = per_case_metrics(pred, m_test, ds.num_classes, spacings, test_ids)
            return mean_sd([r["dice"] for r in rows])

        def scores(v: torch.Tensor) -> dict[str, Any]:
            vu = v.clamp(0, 1).numpy()
            ref = u_test.numpy()
            return {"rmse": mean_sd(im.rmse(vu, ref).tolist()), "psnr": mean_sd(im.psnr(vu, ref).tolist()),
                    "ssim": mean_sd(im.ssim(vu, ref).tolist()), "dice": seg_dice(v.clamp(0, 1) * 2.0 - 1.0)}

        rows: list[dict[str, Any]] = [{"noise": "none (clean)", "method": "clean reference", **scores(u_test)}]
        figures: list[dict[str, str]] = []
        times: dict[str, float] = {"nlm": 0.0, "dncnn": 0.0, "diffusion": 0.0, "conditional": 0.0}
        n_done = 0
        for k, spec in enumerate(cfg.noise):
            v = add_noise(u_test, spec, _gens(test_ids, cfg.seed, k))
            sig = noise_sigma(u_test, spec)
            y = v * 2.0 - 1.0
            outs: dict[str, torch.Tensor] = {"noisy (no denoising)": v}
            t0 = time.process_time()
            outs["non-local means"] = torch.from_numpy(np.stack([_nlm(a) for a in v.numpy()])).float()
            times["nlm"] += time.process_time() - t0
            t0 = time.process_time()
            with torch.inference_mode():
                outs["DnCNN"] = torch.cat([dn(v[i:i + cfg.eval_batch].to(device)).cpu()
                                           for i in range(0, len(v), cfg.eval_batch)])
            times["dncnn"] += time.process_time() - t0
            t0 = time.process_time()
            starts = [start_step(sched, float(s), what=f"noise {spec}") for s in sig]
            x_hat = torch.empty_like(y)
            for ts in sorted(set(starts)):
                rows_t = [j for j, s in enumerate(starts) if s == ts]
                for i in range(0, len(rows_t), cfg.eval_batch):
                    sel = rows_t[i:i + cfg.eval_batch]
                    ps = PartialSchedule(sched, ts)
                    xt = float(sched.alphas_cumprod64[ts]) ** 0.5 * y[sel].to(device)
                    x_hat[sel] = sample(model, ps, xt, sampler="ddim", steps=min(cfg.steps, ps.T),
                                        autocast_dtype=autocast).cpu()
            outs["diffusion (start at matched t)"] = (x_hat + 1.0) / 2.0
            times["diffusion"] += time.process_time() - t0
            if cmodel is not None:
                t0 = time.process_time()
                res = []
                for i in range(0, len(y), cfg.eval_batch):
                    yb = y[i:i + cfg.eval_batch].to(device)
                    gens = _gens(test_ids[i:i + cfg.eval_batch], cfg.seed + 1, k)
                    xT = torch.stack([torch.randn(yb.shape[1:], generator=g) for g in gens]).to(device)
                    res.append(sample(cmodel, sched, xT, sampler="ddim", steps=cfg.cond_steps,
                                      cond=Cond(control=yb), autocast_dtype=autocast).cpu())
                outs["conditional diffusion"] = (torch.cat(res) + 1.0) / 2.0
                times["conditional"] += time.process_time() - t0
            n_done += len(y)
            nsr = noise_to_signal(sched)
            t_desc = f"{min(starts)}–{max(starts)}" if min(starts) != max(starts) else str(starts[0])
            for name, o in outs.items():
                rows.append({"noise": spec, "method": name, "sigma": float(sig.mean()),
                             "t_start": t_desc if name.startswith("diffusion") else None, **scores(o)})
            log(progress, f"denoise: {spec}: sigma {float(sig.mean()):.3f} → t = {t_desc} "
                          f"(nsr {float(nsr[min(starts)]):.3f}); PSNR noisy {rows[-len(outs)]['psnr']['mean']:.2f}, "
                          f"diffusion {rows[-len(outs) + 3]['psnr']['mean']:.2f}")
            if cfg.n_examples:
                panels = [[to_u8(u_test[j].numpy() * 2 - 1)] + [to_u8(o[j].clamp(0, 1).numpy() * 2 - 1)
                                                               for o in outs.values()]
                          for j in range(min(cfg.n_examples, len(y)))]
                save_figure(tmp, f"examples_{spec.replace(':', '_')}", panel_grid(panels),
                            f"{spec}: clean, then " + ", ".join(outs) + ".", figures)
        for key, v_ in times.items():
            if v_:
                cost[f"denoise_{key}_cpu_s_per_image"] = round(v_ / max(n_done, 1), 4)
        headers = ["noise", "method", "sigma", "t_start", "rmse", "psnr", "ssim"] + (["dice"] if seg is not None else [])
        tables = [table("test", f"Denoising the held-out test images of fold {cfg.fold} (intensities in [0, 1])",
                        headers, rows, note="sigma: mean noise std in [-1, 1] units (the level the diffusion start "
                                            "step matches); t_start: the start timestep(s); Dice: the fixed "
                                            "segmenter on the (de)noised images" if seg is not None else
                                            "sigma: mean noise std in [-1, 1] units (the level the diffusion start "
                                            "step matches); t_start: the start timestep(s).")]
        notes = [f"Image-only DDPM: project trainer (method image) on {len(train_img)} training-side images, "
                 f"{ecfg.get('step')} steps; reverse process: DDIM, {cfg.steps} steps from the matched timestep.",
                 f"DnCNN: depth {cfg.dncnn_depth}, {dn_rec['params']} parameters, {cfg.dncnn.steps} steps on "
                 f"noisy→clean pairs of the same training images (blind over the specs).",
                 "Non-local means: scikit-image denoise_nl_means (fast, patch 5, distance 6, h = 0.8 sigma_est, sigma_est = "
                 "Haar wavelet MAD)."]
        if cfg.segmenter:
            notes.append(f"Fixed segmenter: {Path(cfg.segmenter).resolve()} fold {cfg.fold} (real-only, training side).")
        results = write_outputs(tmp, task=TASK, title="Denoising: diffusion vs DnCNN vs non-local means",
                                data=str(data.resolve()), config=cfg, tables=tables, figures=figures, notes=notes,
                                cost=cost)
    log(progress, f"denoise: results in {out / 'results.md'}")
    return results


__all__ = ["DenoiseConfig", "NOISE_MODELS", "add_noise", "check_levels", "estimate_sigma", "noise_sigma", "parse_noise", "run_denoise"]
