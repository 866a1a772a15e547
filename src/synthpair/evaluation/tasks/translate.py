"""Modality conversion (survey sec. 3.2 and Table 10): a conditional diffusion model that generates the target
contrast(s) from the source contrast(s), against a pix2pix-style U-Net regression, on held-out patients.

``synthpair translate DATA --source T1 FLAIR --target T1c --out OUT`` (:func:`run_translate`), fold ``cfg.fold``
of a prepared multi-channel folder (``prepare`` on an nnU-Net folder with named ``_000k`` channels, e.g.
lgg-mri's T1 / FLAIR / T1c; its ``metadata.csv`` keeps a patient's slices on one side, so the test items are
held-out PATIENTS):

* ``source`` / ``target``: channel names of DATA (dataset.json ``channel_names``, matched without case); an
  unknown name, an empty list or a channel on both sides is refused before any work.
* **Diffusion** (SR3 / Palette-style image-to-image diffusion, as Lyu & Wang 2022 and the survey's IDDPM
  conditioning): the target channels are x0, the source channels are concatenated to x_t at every step
  (:class:`~.common.ConcatDenoiser`), trained with :func:`~.common.fit_diffusion` on every training-side image
  (unlabelled ones too: no mask is needed); sampled through the one loop (DDIM, ``steps``) from per-image seeded
  noise; ``samples`` > 1 averages several samples (posterior mean).
* **Baseline**: pix2pix's generator objective without the adversarial term (Isola et al. 2017, eq. 3 with
  lambda·L1 only): the segmentation MONAI U-Net's layout (:func:`regression_unet`: channels 16-128, 2 residual
  units) with BATCH normalisation, source → target channels, tanh output, trained with L1 for the same number of
  steps and batch size. Its learning rate is chosen on VALIDATION patients (``val_fraction`` of the training-side
  cases, never a test patient) among ``baseline_lrs``: each candidate trains on the other training-side patients,
  the lowest validation L1 wins, and the final U-Net trains on the whole training side with it (the sweep is in
  ``results.json``). Why: at pix2pix's GAN learning rate (2e-4) and a 1000-step budget the U-Net barely leaves the
  all-background prediction (L1 ~0.37 in [-1, 1] on LGG, the plateau the first LGG table showed); L1's gradients
  do not grow with the error, so the step size sets the pace. The diffusion model gets no such sweep (its recipe is
  the library's). The adversarial term is left out: on small data it trades NMAE/PSNR for texture, and the
  survey's metrics are pixel-wise.
* **Metrics** on the target channels in [0, 1] (:mod:`synthpair.metrics.image`): NMAE, PSNR, SSIM per test
  slice, mean ± sd over slices and over patients (mean of each patient's slice means), and the paired test of
  diffusion against the U-Net over patients (``paired_by_patient``: Wilcoxon signed-rank on the per-patient means).

OUT: ``config.json``, ``results.{json,md}``, ``figures/examples.png`` (source, true target, diffusion, U-Net,
their absolute errors), ``models/{translate_ddpm,unet_l1}/``.
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

from ...data.dataset import PreparedDataset
from ...diffusion.cond import Cond
from ...diffusion.sampling import sample
from ...diffusion.schedule import NoiseSchedule
from ...errors import fail
from ...io import atomic_output_dir
from ...metrics import image as im
from ...metrics.statistics import paired_comparison
from .common import (ConcatDenoiser, DiffusionFit, NetFit, batched, channel_names, fit_diffusion, fit_network, heat,
                     log, mean_sd, panel_grid, resolve, save_figure, save_model, seed_generators, table, to_u8,
                     write_outputs)

TASK = "translate"


@dataclass(frozen=True)
class TranslateConfig:
    """Settings of ``synthpair translate`` (saved as OUT/config.json); see the module docstring. With
    ``baseline_same_budget`` (default) the U-Net trains for ``generator.steps`` × ``generator.batch_size``
    whatever ``baseline.steps``/``batch_size`` say; its lr and weight decay are ``baseline``'s."""

    source: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    fold: int = 0
    seed: int = 0
    generator: DiffusionFit = field(default_factory=DiffusionFit)
    steps: int = 25
    eta: float = 0.0
    samples: int = 1
    baseline: NetFit = field(default_factory=lambda: NetFit(steps=3000, batch_size=16, lr=1e-3, weight_decay=0.0))
    baseline_same_budget: bool = True     # the U-Net gets generator.steps × generator.batch_size
    baseline_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # chosen on validation patients; () → baseline.lr as is
    val_fraction: float = 0.2             # of the training-side cases, for the baseline's lr choice
    unlabelled: bool = True               # also learn from the unlabelled training-side images
    eval_batch: int = 16
    n_examples: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.samples < 1 or self.eval_batch < 1 or self.eta < 0:
            raise fail("steps, samples and eval_batch must be >= 1 and eta >= 0")
        if any(not lr > 0 for lr in self.baseline_lrs):
            raise fail(f"baseline_lrs={list(self.baseline_lrs)}: every learning rate must be > 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise fail(f"val_fraction={self.val_fraction}: must be in (0, 1)")



def regression_unet(in_channels: int, out_channels: int) -> torch.nn.Module:
    """MONAI ``UNet`` as the ``unet`` segmenter (channels 16/32/64/128, strides 2, 2 residual units) but with batch
    normalisation, so absolute intensities survive (the pix2pix-style regression baseline)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=2, norm="batch")

def select_channels(ds: PreparedDataset, source: tuple[str, ...] | list[str], target: tuple[str, ...] | list[str]
                    ) -> tuple[list[int], list[int]]:
    """Channel indices of the ``source`` and ``target`` names in DATA (case-insensitive); one-line errors for an
    unknown name, an empty side, a repeated name or a channel on both sides."""
    names = channel_names(ds)
    low = [n.lower() for n in names]
    where = ds.root / "dataset.json"
    if not source or not target:
        raise fail(f"--source/--target: name at least one source and one target channel of {where} "
                   f"(channels: {', '.join(names)})")

    def idx(name: str) -> int:
        if name.lower() not in low:
            raise fail(f"channel {name!r}: not a channel of {where} (channels: {', '.join(names)}); name channels "
                       f"from that list (prepare an nnU-Net folder with channel_names for multi-contrast data)")
        return low.index(name.lower())

    s, t = [idx(n) for n in source], [idx(n) for n in target]
    if len(set(s)) != len(s) or len(set(t)) != len(t):
        raise fail(f"--source {list(source)} --target {list(target)}: a channel is named twice")
    both = sorted(set(s) & set(t))
    if both:
        raise fail(f"channel {names[both[0]]!r} is both a source and a target; a conversion maps source channels to "
                   f"OTHER channels")
    return s, t


def _patients(ds: PreparedDataset, ids: list[str]) -> list[str]:
    return [ds.case_of(i) for i in ids]


def _patient_rows(per: dict[str, np.ndarray], patients: list[str], fold: int) -> list[dict[str, Any]]:
    """One row per patient ({fold, id, metric: the patient's slice mean}) for the paired test over patients."""
    return [{"fold": fold, "id": q, **{k: float(np.mean([x for x, p in zip(v, patients) if p == q]))
                                      for k, v in per.items()}} for q in sorted(set(patients))]


def validation_cases(ds: PreparedDataset, train_ids: list[str], fraction: float, seed: int) -> set[str]:
    """``round(fraction × cases)`` of the cases of ``train_ids`` (at least 1, at most all but 1), drawn with
    ``seed``: the validation patients of the baseline's learning-rate choice (whole patients, as the test split)."""
    cases = sorted(set(_patients(ds, train_ids)))
    if len(cases) < 2:
        raise fail(f"{ds.root}: the training side holds {len(cases)} case(s); the baseline's learning-rate choice "
                   f"needs at least 2 (validation patients are carved out of it) — set baseline_lrs to one value")
    k = min(max(int(round(fraction * len(cases))), 1), len(cases) - 1)
    order = np.random.default_rng(int(seed)).permutation(len(cases))
    return {cases[j] for j in order[:k]}


def _summary(per: dict[str, np.ndarray], patients: list[str]) -> dict[str, Any]:
    """Per metric: mean ± sd over slices, and over patients (each patient's slice mean)."""
    by_patient = _patient_rows(per, patients, fold=0)
    out: dict[str, Any] = {}
    for k, v in per.items():
        out[k] = mean_sd(v.tolist())
        out[f"{k}_patients"] = mean_sd([r[k] for r in by_patient])
    return out


def run_translate(data: Path | str, out: Path | str, cfg: TranslateConfig = TranslateConfig(), *,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the modality-conversion comparison (module docstring) and write OUT; returns the results dict."""
    from ...env import resolve_autocast
    from ...networks.segmenters import build_segmenter

    data, out = Path(data), Path(out)
    ds = PreparedDataset.open(data)
    device = resolve(cfg.device)
    src, tgt = select_channels(ds, cfg.source, cfg.target)
    names = channel_names(ds)
    _, test_ids = ds.split(cfg.fold)
    train_ids = ds.image_train_ids(cfg.fold, unlabelled=cfg.unlabelled)
    if not train_ids or not test_ids:
        raise fail(f"{data}: fold {cfg.fold} has {len(train_ids)} training-side and {len(test_ids)} test images; "
                   f"modality conversion needs both")
    build_segmenter("unet", len(src), len(tgt), ds.size)   # size check before any work
    val_cases = validation_cases(ds, train_ids, cfg.val_fraction, cfg.seed) if cfg.baseline_lrs else set()
    autocast = resolve_autocast(cfg.generator.amp, device)
    direction = f"{' + '.join(names[i] for i in src)} → {' + '.join(names[i] for i in tgt)}"
    cost: dict[str, Any] = {}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        x = torch.from_numpy(ds.load_images(train_ids))
        xs, xt = x[:, src], x[:, tgt]
        torch.manual_seed(cfg.seed)
        net = ConcatDenoiser(cfg.generator.net, len(tgt), len(src))
        model, rec = fit_diffusion(net, xt, cfg.generator, seed=cfg.seed, device=device, cond=xs,
                                   progress=progress, desc=f"translate DDPM {direction}")
        save_model(tmp / "models" / "translate_ddpm", model, {
            "network": "ConcatDenoiser", "source": [names[i] for i in src], "target": [names[i] for i in tgt],
            "record": rec})
        cost["diffusion_train_cpu_s"] = rec["cpu_seconds"]
        bfit = cfg.baseline
        if cfg.baseline_same_budget:
            from dataclasses import replace

            bfit = replace(bfit, steps=cfg.generator.steps, batch_size=cfg.generator.batch_size)

        def fit_unet(rows: torch.Tensor, lr: float, desc: str) -> tuple[torch.nn.Module, dict[str, Any]]:
            """The U-Net trained on training-side images ``rows`` (indices into x) at ``lr``."""
            from dataclasses import replace

            torch.manual_seed(cfg.seed)
            unet = regression_unet(len(src), len(tgt))
            xs_r, xt_r = xs[rows], xt[rows]

            def step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
                a, b = xs_r[idx], xt_r[idx]
                fl = torch.rand((len(idx), 2), generator=gen) < 0.5
                for k, ax in ((0, -1), (1, -2)):
                    a = torch.where(fl[:, k].view(-1, 1, 1, 1), a.flip(ax), a)
                    b = torch.where(fl[:, k].view(-1, 1, 1, 1), b.flip(ax), b)
                return F.l1_loss(torch.tanh(unet(a.to(device))), b.to(device))

            return fit_network(unet, step, len(rows), replace(bfit, lr=lr), seed=cfg.seed, device=device,
                               progress=progress, desc=desc)

        sweep: list[dict[str, Any]] = []
        best_lr = bfit.lr
        if cfg.baseline_lrs:
            is_val = torch.tensor([ds.case_of(i) in val_cases for i in train_ids])
            fit_rows, val_rows = torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()
            for lr in cfg.baseline_lrs:
                net_lr, rec_lr = fit_unet(fit_rows, lr, f"U-Net L1 lr {lr:g} (validation)")
                with torch.inference_mode():
                    pred = batched(lambda a: torch.tanh(net_lr(a)), xs[val_rows], cfg.eval_batch, device)
                sweep.append({"lr": lr, "val_l1": float(F.l1_loss(pred, xt[val_rows])),
                              "train_l1": rec_lr["final_loss"], "cpu_seconds": rec_lr["cpu_seconds"]})
            best_lr = min(sweep, key=lambda r: r["val_l1"])["lr"]
            cost["unet_lr_sweep_cpu_s"] = round(sum(r["cpu_seconds"] for r in sweep), 1)
            log(progress, "translate: U-Net lr on " + f"{len(val_cases)} validation patients: "
                + ", ".join(f"{r['lr']:g} → L1 {r['val_l1']:.4f}" for r in sweep) + f"; chosen {best_lr:g}")
        unet, urec = fit_unet(torch.arange(len(x)), best_lr, "U-Net L1")
        urec["lr"] = best_lr
        save_model(tmp / "models" / "unet_l1", unet, {"network": "MONAI UNet (batch norm) + tanh",
                                                      "source": [names[i] for i in src],
                                                      "target": [names[i] for i in tgt], "record": urec})
        cost["unet_train_cpu_s"] = urec["cpu_seconds"]

        xte = torch.from_numpy(ds.load_images(test_ids))
        s_te, t_te = xte[:, src], xte[:, tgt]
        t0 = time.process_time()
        preds = torch.zeros_like(t_te)
        for r in range(cfg.samples):
            for i in range(0, len(test_ids), cfg.eval_batch):
                ids = test_ids[i:i + cfg.eval_batch]
                gens = seed_generators([zlib.crc32(f"{cfg.seed}:{r}:{q}".encode()) for q in ids])
                x_T = torch.stack([torch.randn((len(tgt), *ds.size), generator=g) for g in gens]).to(device)
                preds[i:i + len(ids)] += sample(model, NoiseSchedule(cfg.generator.diffusion, device=device), x_T,
                                                sampler="ddim", steps=cfg.steps, eta=cfg.eta,
                                                cond=Cond(control=s_te[i:i + len(ids)].to(device)), generators=gens,
                                                autocast_dtype=autocast).cpu()
        preds /= cfg.samples
        cost["diffusion_cpu_s_per_image"] = round((time.process_time() - t0) / len(test_ids), 4)
        t0 = time.process_time()
        with torch.inference_mode():
            upred = torch.cat([torch.tanh(unet(s_te[i:i + cfg.eval_batch].to(device))).cpu()
                               for i in range(0, len(test_ids), cfg.eval_batch)])
        cost["unet_cpu_s_per_image"] = round((time.process_time() - t0) / len(test_ids), 4)

        ref = im.to_unit(t_te.numpy())
        patients = _patients(ds, test_ids)
        rows, per_patient = [], []
        for name, p in ((f"conditional diffusion (DDIM {cfg.steps}" + (f", mean of {cfg.samples}" if cfg.samples > 1
                                                                      else "") + ")", preds),
                        ("U-Net L1 (pix2pix generator objective)", upred)):
            pu = im.to_unit(p.numpy())
            per = {"nmae": im.nmae(pu, ref), "psnr": im.psnr(pu, ref), "ssim": im.ssim(pu, ref)}
            rows.append({"direction": direction, "method": name, **_summary(per, patients)})
            per_patient.append(_patient_rows(per, patients, cfg.fold))
        paired = {m: paired_comparison(per_patient[1], per_patient[0], m) for m in ("nmae", "psnr", "ssim")}
        figures: list[dict[str, str]] = []
        if cfg.n_examples:
            pick = list(range(min(cfg.n_examples, len(test_ids))))
            panels = []
            for i in pick:
                panels.append([to_u8(s_te[i, k:k + 1].numpy()) for k in range(len(src))]
                              + [to_u8(t_te[i, :1].numpy()), to_u8(preds[i, :1].numpy()), to_u8(upred[i, :1].numpy()),
                                 heat((preds[i, 0] - t_te[i, 0]).abs().numpy() / 2, 0.5),
                                 heat((upred[i, 0] - t_te[i, 0]).abs().numpy() / 2, 0.5)])
            save_figure(tmp, "examples", panel_grid(panels),
                        f"{direction} on test slices. Columns: source ({', '.join(names[i] for i in src)}), true "
                        f"{names[tgt[0]]}, diffusion, U-Net L1, |error| of diffusion and of the U-Net (0–0.5 in [0, 1] "
                        f"units).", figures)
        headers = ["direction", "method", "nmae", "psnr", "ssim", "nmae_patients", "psnr_patients", "ssim_patients"]
        n_pat = len(set(patients))
        tables = [table("test", f"{direction} on {len(test_ids)} held-out slices of {n_pat} patients (fold {cfg.fold})",
                        headers, rows, note="Target intensities in [0, 1]; *_patients: mean ± sd over patients of the "
                                            "per-patient slice means.")]
        notes = [f"Trained on {len(train_ids)} training-side images (their patients never appear in the test split); "
                 f"diffusion {rec['params']} parameters, {rec['steps']} steps × batch {cfg.generator.batch_size}; "
                 f"U-Net {urec['params']} parameters, {urec['steps']} steps × batch {bfit.batch_size}, L1, lr "
                 f"{best_lr:g}" + (f" (chosen on {len(val_cases)} validation patients of the training side among "
                                   + ", ".join(f"{r['lr']:g} (val L1 {r['val_l1']:.4f})" for r in sweep) + ")"
                                   if sweep else "") + ".",
                 "Paired over the " + f"{len(set(patients))} test patients (diffusion − U-Net of the per-patient slice "
                 "means, two-sided Wilcoxon signed-rank): " + "; ".join(
                     f"{m} {r['mean_diff']:+.4f} (p = {r['p_value']:.3g})" if r["p_value"] is not None
                     else f"{m} n/a" for m, r in paired.items()) + "."]
        results = write_outputs(tmp, task=TASK, title=f"Modality conversion {direction}: diffusion vs U-Net",
                                data=str(data.resolve()), config=cfg, tables=tables, figures=figures, notes=notes,
                                cost=cost, direction=direction, n_test_patients=n_pat,
                                baseline_lr={"chosen": best_lr, "sweep": sweep},
                                paired_by_patient={"base": "U-Net L1", "other": "conditional diffusion", **paired})
    log(progress, f"translate: results in {out / 'results.md'}")
    return results


__all__ = ["TranslateConfig", "run_translate", "select_channels", "validation_cases"]
