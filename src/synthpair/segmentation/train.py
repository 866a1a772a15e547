"""``synthpair segment``: train a MONAI segmenter per fold on real (+ synthetic) pairs, score held-out real.

For each fold ``k`` of ``cfg.folds``:

1. the training pool is the real **training** split of fold ``k`` — or a seeded, nested subset of
   ``cfg.n_real`` of its items (:func:`training_items`) — plus, by the mixing strategy, the pairs of a
   synthetic folder that passed the leakage guard (:mod:`.leakage`): ``ratio`` / ``synthetic_only`` use all
   of them (on a subset: those whose manifest ``source_item`` is a kept item, or all when the manifest names
   no source items); ``patch`` / ``patch_loss`` / ``replace`` use the synthetic *versions* of the kept real
   items (manifest ``source_item``, required);
2. the segmenter (:mod:`.models`) is trained for exactly ``cfg.steps`` AdamW steps of ``cfg.batch_size``
   slots with MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` and a cosine learning-rate decay to 0,
   whatever the mixing (compute-matched comparisons, see :mod:`.mixing`; ``patch_loss`` runs two forward
   passes per slot), each batch augmented by ``cfg.augment`` (:mod:`.augment`). There is no validation
   split and no early stopping: the model of the last step is evaluated, so no choice is ever made on
   held-out data;
3. the model predicts ``argmax`` labels for the real **test** split of fold ``k``, scored by
   :func:`synthpair.metrics.segmentation.per_case_metrics` with each item's spacing (mm; pixels when unknown).

Output folder ``SEG/`` (built in a temporary sibling and renamed at the end):
``config.json`` (the :class:`SegmentConfig`), ``results.json``, ``per_case.csv``,
``fold_<k>/model.safetensors`` (last-step weights), ``fold_<k>/loss.jsonl`` (``{"step", "loss", "lr"}``
per optimizer step). Given the seed the run is deterministic on CPU.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import save_config, to_dict
from ..data.budget import training_items  # noqa: F401 (re-export: segment's subset rule)
from ..data.dataset import PreparedDataset
from ..env import rebalance_threads, resolve_autocast, resolve_device
from ..errors import fail
from ..io import atomic_output_dir, write_json_atomic, write_text_atomic
from ..metrics.segmentation import METRICS, distance_unit, per_case_metrics, summarize
from ..synthesis.manifest import read_manifest
from .augment import AUGMENTATIONS, augment_batch
from .ddfeatures import FeatureConfig
from .ddmodels import DDPM_MODELS, is_ddpm
from .leakage import check_synthetic
from .mixing import MIXING_SPECS, MIXINGS, VERSION_MIXINGS, Batch, batch_loss, group_by_source, make_mixing
from .models import MODELS, build_segmenter, check_model, data_info

RESULTS_FORMAT = "synthpair-segment"

EMPTY_CONVENTION = ("both empty: dice=iou=precision=recall=1, hd95=assd=0; reference empty only: dice=iou=precision=0, "
                    "recall=1, hd95=assd=image diagonal; prediction empty only: dice=iou=recall=0, precision=1, "
                    "hd95=assd=image diagonal; per case: mean over foreground classes present in reference or "
                    "prediction")


MIX_PARAMS: dict[str, tuple[str, ...]] = {n: spec.fields for n, spec in MIXING_SPECS.items()}
"""The config fields each mixing strategy reads (from the registry :data:`.mixing.MIXING_SPECS`, which also
names them in the CLI ``--mix`` grammar: ``ratio``, ``alpha``, ``patch``, ``p``, ``fraction``); the strategies
that pair each real item with its synthetic versions (manifest ``source_item``) are :data:`VERSION_MIXINGS`."""


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation training/evaluation settings (saved as ``SEG/config.json``).

    Mixing (:mod:`.mixing`; every setting runs ``steps`` optimizer steps of ``batch_size`` slots):

    * ``mixing="ratio"``: ``ratio`` is synthetic : real (0 = real-only; 0.5 → one third of the slots
      synthetic); ``"synthetic_only"`` trains on synthetic pairs only.
    * ``"patch"`` (EMIT-Diff Algorithm 1): each slot's real image ``x0`` is blended with one of its synthetic
      versions ``x_i`` (manifest ``source_item``) as ``m·x0 + (1−m)·x_i`` under a random patch mask ``m``
      whose cells are real with probability ``alpha`` (``alpha`` = expected fraction of REAL pixels); cells
      are ``patch`` × ``patch`` pixels (``patch`` = image size → a per-image choice, 1 → per pixel).
    * ``"patch_loss"``: the loss-mixing variant (real and synthetic images go through the net separately,
      the per-pixel predictions are combined under the same ``m``; two forward passes per slot).
    * ``"replace"`` (paper 002 §2.6.2): each slot's real image is replaced with probability ``replace_p``
      by one of its synthetic versions.

    ``n_real`` > 0 trains on a seeded, nested subset of ``n_real`` items of the fold's training split
    (:func:`training_items`, seed ``subset_seed``); 0 = all. ``augment`` names a paired augmentation of
    :data:`synthpair.segmentation.augment.AUGMENTATIONS` (``flip_rot`` default, ``none``, ``affine`` and the
    classic baselines ``random_*`` / ``deepstack``). ``amp="auto"`` uses bf16 autocast on a CUDA device that
    supports it and fp32 on CPU (the default U-Net gains nothing from bf16 there); ``"bf16"`` forces it,
    ``"off"`` disables it. ``eval_batch`` only sets the inference batch.
    """

    model: str = "unet"
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ratio: float = 0.0
    mixing: str = "ratio"  # a name of the registry .mixing.MIXING_SPECS (checked below)
    alpha: float = 0.5
    patch: int = 8
    replace_p: float = 0.5
    pretrain_fraction: float = 0.5
    min_faithfulness: float | None = None  # keep only synthetic pairs whose manifest faithfulness is >= this
    n_real: int = 0
    subset_seed: int = 0
    folds: tuple[int, ...] = (0,)
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"
    augment: str = "flip_rot"
    eval_batch: int = 64
    device: str = "auto"
    allow_label_excess: bool = False  # accept synthetic pairs whose models saw masks beyond this run's labels
    features: FeatureConfig = field(default_factory=FeatureConfig)  # ddpm_* models: the diffusion features

    def __post_init__(self) -> None:
        if self.model not in MODELS and not is_ddpm(self.model):
            raise ValueError(f"model {self.model!r} is unknown; choose one of {', '.join((*MODELS, *DDPM_MODELS))}")
        if is_ddpm(self.model) and not self.features.generator:
            raise fail(f"--model {self.model}: needs a generator run for its diffusion features "
                       f"(--generator RUN, i.e. --set features.generator=RUN)")
        if self.features.generator and not is_ddpm(self.model):
            raise fail(f"features.generator is set but --model {self.model} does not use diffusion features; "
                       f"choose one of {', '.join(DDPM_MODELS)} or drop the generator")
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("steps, batch_size and eval_batch must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.ratio < 0:
            raise ValueError(f"ratio must be >= 0 (synthetic:real), got {self.ratio}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing {self.mixing!r} is unknown; choose one of {', '.join(MIXINGS)}")
        if self.ratio and self.mixing != "ratio":
            raise ValueError(f"ratio={self.ratio:g} is only used by mixing='ratio' (mixing={self.mixing!r} reads "
                             f"{', '.join(MIX_PARAMS[self.mixing]) or 'no parameter'}); drop it")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the fraction of real pixels), got {self.alpha}")
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1 pixel (1 = per-pixel mixing, image size = per image), "
                             f"got {self.patch}")
        if not 0.0 <= self.replace_p <= 1.0:
            raise ValueError(f"replace_p must be in [0, 1] (probability of replacing a real image), "
                             f"got {self.replace_p}")
        if self.n_real < 0:
            raise ValueError(f"n_real must be >= 0 (0 = every training item), got {self.n_real}")
        if not 0.0 < self.pretrain_fraction < 1.0:
            raise ValueError(f"pretrain_fraction must be in (0, 1) (share of the steps on synthetic pairs), "
                             f"got {self.pretrain_fraction}")
        if self.mixing == "pretrain" and not 0 < round(self.pretrain_fraction * self.steps) < self.steps:
            raise ValueError(f"pretrain_fraction={self.pretrain_fraction:g} of {self.steps} steps rounds to "
                             f"{round(self.pretrain_fraction * self.steps)} synthetic steps: it needs at least one "
                             f"synthetic and one real step; use more steps or a fraction nearer 0.5")
        if self.min_faithfulness is not None and not 0.0 <= self.min_faithfulness <= 1.0:
            raise ValueError(f"min_faithfulness must be a Dice in [0, 1], got {self.min_faithfulness}")
        if not self.folds or len(set(self.folds)) != len(self.folds):
            raise ValueError("folds must list at least one fold, each once")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment {self.augment!r} is unknown; choose one of {', '.join(AUGMENTATIONS)}")

    @property
    def needs_synthetic(self) -> bool:
        """True when the setting draws synthetic pairs (every mixing but real-only ``ratio=0``)."""
        return self.mixing != "ratio" or self.ratio > 0


def setting_name(cfg: SegmentConfig) -> str:
    """Human name of the setting, e.g. ``real-only``, ``real+synthetic r=0.5``, ``synthetic-only``,
    ``patch a=0.5 p=8``, ``patch-loss a=0.5 p=8``, ``replace p=0.5``; then `` n=16`` for a real subset and
    `` +NAME`` for an augmentation other than the default ``flip_rot`` (``real-only +deepstack``); a model other
    than the default ``unet`` comes first (``ddpm_unet real-only +deepstack``), so runs of different segmenters
    never share a name in a table."""
    if cfg.mixing == "synthetic_only":
        name = "synthetic-only"
    elif cfg.mixing in ("patch", "patch_loss"):
        name = f"{cfg.mixing.replace('_', '-')} a={cfg.alpha:g} p={cfg.patch}"
    elif cfg.mixing == "replace":
        name = f"replace p={cfg.replace_p:g}"
    elif cfg.mixing == "pretrain":
        name = f"synthetic-pretrain f={cfg.pretrain_fraction:g}"
    else:
        name = "real-only" if cfg.ratio == 0 else f"real+synthetic r={cfg.ratio:g}"
    if cfg.min_faithfulness is not None:
        name += f" faith>={cfg.min_faithfulness:g}"
    if cfg.n_real:
        name += f" n={cfg.n_real}"
    if cfg.augment != "flip_rot":
        name += f" +{cfg.augment}"
    if cfg.model != SegmentConfig.model:
        name = f"{cfg.model} {name}"
    return name


def _spacings(ds: PreparedDataset, ids: list[str]) -> list[tuple[float, float] | None]:
    return [ds.spacing_of(i) for i in ids]


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device,
            bf16: bool = False) -> torch.Tensor:
    """Images float ``(N, C, H, W)`` in [-1, 1] → predicted labels int64 ``(N, H, W)`` (argmax of logits)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        out.append(logits.float().argmax(1).cpu())
    return torch.cat(out) if out else torch.empty((0, *images.shape[2:]), dtype=torch.long)


@dataclass(frozen=True)
class SyntheticPool:
    """The synthetic pairs of a SYN folder: ids, images float32 (N, C, H, W), masks int64 (N, H, W) and each
    pair's manifest ``source_item`` (None when the manifest has none)."""

    ids: list[str]
    images: np.ndarray
    masks: np.ndarray
    sources: list[str | None]

    def select(self, keep: list[int]) -> "SyntheticPool":
        return SyntheticPool([self.ids[j] for j in keep], self.images[keep], self.masks[keep],
                             [self.sources[j] for j in keep])


def _ratio_pool(syn: SyntheticPool, real_ids: list[str], subset: bool) -> SyntheticPool:
    """Synthetic pairs for ``ratio`` / ``synthetic_only`` mixing: all of them, or — when the real pool is a
    subset (``n_real`` > 0) and the manifest names source items — those whose ``source_item`` is a kept real
    item, plus those with no source item (not derived from any particular real item)."""
    if not subset or all(s is None for s in syn.sources):
        return syn
    kept = set(real_ids)
    return syn.select([j for j, s in enumerate(syn.sources) if s is None or s in kept])


def _train_fold(ds: PreparedDataset, fold: int, cfg: SegmentConfig, syn_pool: SyntheticPool | None,
                device: torch.device, fold_dir: Path, progress: bool, extractor: Any = None,
                tensorboard: bool = False) -> dict[str, Any]:
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    train_ids, test_ids = ds.split(fold)
    if not train_ids or not test_ids:
        raise fail(f"{ds.root}: fold {fold} has {len(train_ids)} training and {len(test_ids)} test items; "
                   f"rerun 'synthpair prepare' with fewer folds")
    real_ids = training_items(ds, fold, cfg.n_real, cfg.subset_seed)
    real_x, real_y = (torch.from_numpy(a) for a in ds.load(real_ids))
    syn_x = syn_y = groups = None
    if syn_pool is not None:
        if cfg.mixing in VERSION_MIXINGS:
            groups = group_by_source(real_ids, syn_pool.sources)
            pool = syn_pool
        else:
            pool = _ratio_pool(syn_pool, real_ids, cfg.n_real > 0)
            if not pool.ids:
                raise fail(f"n_real={cfg.n_real}: no synthetic pair of the folder is a version of the "
                           f"{len(real_ids)} kept real items of fold {fold}; use a larger --n-real or another "
                           f"--subset-seed")
        syn_x, syn_y = torch.from_numpy(pool.images), torch.from_numpy(pool.masks)
    mixing = make_mixing(cfg.mixing, real_images=real_x, real_masks=real_y, batch_size=cfg.batch_size,
                         ratio=cfg.ratio, syn_images=syn_x, syn_masks=syn_y, groups=groups, alpha=cfg.alpha,
                         patch=cfg.patch, replace_p=cfg.replace_p, steps=cfg.steps,
                         pretrain_fraction=cfg.pretrain_fraction)
    augment = AUGMENTATIONS[cfg.augment]

    torch.manual_seed(cfg.seed)  # same initial weights for every setting of a comparison
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * fold)
    ddpm = _ddpm_setup(ds, fold, cfg, real_ids, real_x, real_y, fold_dir, extractor) if extractor else None
    if cfg.model == "ddpm_pixel":
        return _train_pixel_fold(ds, fold, cfg, ddpm, real_ids, real_x, real_y, mixing, gen, fold_dir, progress)
    model = (ddpm["model"] if ddpm else build_segmenter(cfg.model, ds.channels, ds.num_classes, ds.size)).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    bf16 = resolve_autocast(cfg.amp, device, cpu_auto=False) is not None

    losses = []
    t0 = time.perf_counter()
    model.train()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x.to(device))

    bar = tqdm(range(cfg.steps), desc=f"segment fold {fold} ({setting_name(cfg)})", file=sys.stderr,
               disable=not progress, leave=False)
    tb = None
    if tensorboard:
        from ..training.tensorboard import TensorBoardLog

        tb = TensorBoardLog(fold_dir / "tensorboard")
    for step in bar:
        rebalance_threads()  # only under --threads auto (the default), every REBALANCE_SECONDS
        batch = augment_batch(augment, mixing.batch(step, gen), gen)
        batch = Batch(**{k: None if v is None else v.to(device) for k, v in vars(batch).items()})
        loss = batch_loss(forward, loss_fn, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        losses.append({"step": step + 1, "loss": float(loss.detach()), "lr": float(lr)})
        if progress and (step % 10 == 0 or step + 1 == cfg.steps):
            bar.set_postfix(loss=f"{losses[-1]['loss']:.4f}")
        if tb is not None:
            tb.scalars(losses[-1], step + 1, prefix="segment")
    bar.close()
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    test_x, test_y = ds.load(test_ids)
    pred = predict(model, torch.from_numpy(test_x), cfg.eval_batch, device, bf16)
    rows = per_case_metrics(pred, test_y, ds.num_classes, _spacings(ds, test_ids), test_ids)
    for r in rows:
        r["fold"] = fold
        r["case"] = ds.case_of(r["id"])
    eval_s = time.perf_counter() - t0
    if tb is not None:  # reported, never used to choose anything
        tb.scalars({m: v["mean"] for m, v in summarize(rows).items()}, cfg.steps, prefix="test")
        tb.close()

    fold_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(fold_dir / "model.safetensors"), metadata={"model": cfg.model, "fold": str(fold)})
    write_text_atomic(fold_dir / "loss.jsonl", "".join(json.dumps(r) + "\n" for r in losses))
    mix = mixing.describe()
    subset = {"n_real": cfg.n_real, "subset_seed": cfg.subset_seed, "items": real_ids} if cfg.n_real else None
    return {"fold": fold, "n_train_real": mix["n_real"], "n_synthetic": mix["n_synthetic"], "n_test": len(test_ids),
            "mixing": mix, "augment": cfg.augment, "real_subset": subset,
            "final_loss": losses[-1]["loss"], "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
            **({"features": ddpm["record"]} if ddpm else {}),
            "distance_unit": distance_unit(rows), "summary": summarize(rows), "per_case": rows}


def _ddpm_setup(ds: PreparedDataset, fold: int, cfg: SegmentConfig, real_ids: list[str], real_x: torch.Tensor,
                real_y: torch.Tensor, fold_dir: Path, extractor: Any) -> dict[str, Any]:
    """Blocks/timesteps of a ``ddpm_*`` model (given, or chosen by the feature analysis on the labelled
    training items of this fold — never the test split) and the model itself (pixel head: built here, trained
    in :mod:`.pixel`). Returns {"model", "cells", "cache", "record"}."""
    from ..io import write_bytes_atomic
    from .ddfeatures import FeatureCache
    from .ddmodels import build_ddpm_segmenter
    from .feature_analysis import analyse_features, choose_cells, heatmap_png
    from .pixel import build_pixel_segmenter

    fc = cfg.features
    cache = FeatureCache(extractor)
    record: dict[str, Any] = {"generator": str(extractor.export_dir.resolve()), "method": extractor.method,
                              "weights_sha256": extractor.weights_sha256, "draws": fc.draws,
                              "noise_seed": fc.noise_seed}
    blocks, timesteps = list(fc.blocks), [int(t) for t in fc.timesteps]
    if fc.auto and cfg.model != "ddpm_unet":
        analysis = analyse_features(extractor, real_x, real_y, blocks=fc.candidate_blocks,
                                    timesteps=fc.candidate_timesteps, num_classes=ds.num_classes,
                                    folds=fc.analysis_folds, seed=cfg.seed, cache=cache, keys=real_ids)
        chosen_b, chosen_t = choose_cells(analysis, fc.n_blocks, fc.n_timesteps)
        blocks, timesteps = blocks or chosen_b, timesteps or chosen_t
        analysis.update(chosen_blocks=blocks, chosen_timesteps=timesteps, items=list(real_ids))
        fold_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(fold_dir / "feature_analysis.json", analysis)
        write_bytes_atomic(fold_dir / "feature_analysis.png", heatmap_png(analysis))
        record["analysis"] = "feature_analysis.json"
    record.update(blocks=blocks, timesteps=timesteps)
    if cfg.model == "ddpm_pixel":
        model = build_pixel_segmenter(extractor, [(b, t) for t in timesteps for b in blocks], ds.num_classes, fc)
    else:
        model = build_ddpm_segmenter(cfg.model, extractor, ds.num_classes, fc, blocks, timesteps)
        record["init"] = {k: v for k, v in model.transfer.items() if k in ("copied", "adapted", "new", "unused")}
        record["e2e_timestep"] = fc.e2e_timestep
        if cfg.model != "ddpm_unet":
            record["fusion_timesteps"] = model.timesteps
    return {"model": model, "cache": cache, "record": record}


def _train_pixel_fold(ds: PreparedDataset, fold: int, cfg: SegmentConfig, ddpm: dict[str, Any],
                      real_ids: list[str], real_x: torch.Tensor, real_y: torch.Tensor, mixing: Any,
                      gen: torch.Generator, fold_dir: Path, progress: bool) -> dict[str, Any]:
    """``ddpm_pixel``: the per-pixel head on cached features (:mod:`.pixel`), scored like every segmenter."""
    from safetensors.torch import save_file

    from .pixel import train_pixel

    _, test_ids = ds.split(fold)
    model, cache = ddpm["model"], ddpm["cache"]
    t0 = time.perf_counter()
    losses, info = train_pixel(model, real_x, real_y, real_ids, steps=cfg.steps, batch_size=cfg.batch_size,
                               lr=cfg.lr, weight_decay=cfg.weight_decay, augment=cfg.augment, seed=cfg.seed,
                               generator=gen, cache=cache, progress=progress,
                               desc=f"segment fold {fold} ({setting_name(cfg)})")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_x, test_y = ds.load(test_ids)
    # Scored the way a reloaded model is (load_segmenter + predict, as in 'evaluate segmenter'): features computed
    # in eval_batch batches and rounded like the cache's. Batched fp32 kernels differ in the last bits between
    # batch compositions, so scoring through the cache's batches could differ from a re-test at rare pixels.
    device = model.extractor.device
    bf16 = resolve_autocast(cfg.amp, device, cpu_auto=False) is not None
    pred = predict(model.to(device), torch.from_numpy(test_x), cfg.eval_batch, device, bf16)
    rows = per_case_metrics(pred, test_y, ds.num_classes, _spacings(ds, test_ids), test_ids)
    for r in rows:
        r["fold"] = fold
        r["case"] = ds.case_of(r["id"])
    eval_s = time.perf_counter() - t0
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              str(fold_dir / "model.safetensors"), metadata={"model": cfg.model, "fold": str(fold)})
    write_text_atomic(fold_dir / "loss.jsonl", "".join(json.dumps(r) + "\n" for r in losses))
    mix = mixing.describe()
    subset = {"n_real": cfg.n_real, "subset_seed": cfg.subset_seed, "items": real_ids} if cfg.n_real else None
    return {"fold": fold, "n_train_real": mix["n_real"], "n_synthetic": 0, "n_test": len(test_ids),
            "mixing": mix, "augment": cfg.augment, "real_subset": subset,
            "final_loss": losses[-1]["loss"], "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
            "features": {**ddpm["record"], **info, "cached_rows": cache.computed},
            "distance_unit": distance_unit(rows), "summary": summarize(rows), "per_case": rows}


def _check_versions(syn_dir: Path | str, syn: SyntheticPool, folds_items: dict[int, list[str]],
                    cfg: SegmentConfig) -> None:
    """patch / patch_loss / replace need every pair's ``source_item`` and at least one version per fold."""
    missing = [i for i, s in zip(syn.ids, syn.sources) if s is None]
    if missing:
        raise fail(f"{syn_dir}: {len(missing)} of {len(syn.ids)} synthetic pairs have no manifest 'source_item' "
                   f"(e.g. {missing[0]}), so their real source image is unknown; --mix {cfg.mixing} needs synthetic "
                   f"versions of real training items (generate them with a mask-conditioned generator, "
                   f"`synthpair generate RUN --masks real`), or use --mix ratio=0.5")
    for k, items in folds_items.items():
        if not set(items) & set(syn.sources):
            raise fail(f"{syn_dir}: none of the {len(syn.ids)} synthetic pairs is a version (source_item) of the "
                       f"{len(items)} real training items of fold {k}; generate from that fold's generator"
                       + (" or choose another --subset-seed / a larger --n-real" if cfg.n_real else ""))


def _fold_mean(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± sd over the per-fold means (n = number of folds)."""
    out = {}
    for m in METRICS:
        v = np.array([f["summary"][m]["mean"] for f in folds], dtype=np.float64)
        out[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}
    return out


def _per_case_csv(rows: list[dict[str, Any]]) -> str:
    extra = sorted({k for r in rows for k in r} - {"fold", "id", "case", "distance_unit", *METRICS})
    cols = ["fold", "id", "case", *METRICS, "distance_unit", *extra]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue()


def segment(data_dir: Path | str, out_dir: Path | str, cfg: SegmentConfig = SegmentConfig(),
            synthetic_dir: Path | str | None = None, progress: bool = True, overwrite: bool = False,
            tensorboard: bool = False) -> dict[str, Any]:
    """Train and evaluate one setting on ``cfg.folds`` of the prepared folder ``data_dir``; write ``out_dir``.

    Returns the ``results.json`` dict (see module doc and :func:`_results`). Raises a one-line
    :class:`~synthpair.errors.SynthpairError` for a bad model/size, fold, ``n_real`` larger than a fold's
    training split, ``patch`` larger than the images, synthetic folder (missing manifest, leakage into a test
    split, other channels/size, more classes; for ``patch``/``patch_loss``/``replace`` a pair without
    ``source_item`` or a fold with no version of its real items) or output folder — before any training.
    ``tensorboard``: the training loss and learning rate per step and the test summary as TensorBoard events in
    ``SEG/fold_<k>/tensorboard`` (:mod:`synthpair.training.tensorboard`; while training they are in the
    ``.SEG.*.partial`` folder beside SEG).
    """
    if tensorboard:
        from ..training.tensorboard import require_tensorboard

        require_tensorboard()
    ds = PreparedDataset.open(data_dir)
    if not is_ddpm(cfg.model):
        check_model(cfg.model, ds.size)
    for k in cfg.folds:
        ds.split(k)
    if cfg.mixing in ("patch", "patch_loss") and cfg.patch > max(ds.size):
        raise fail(f"patch={cfg.patch}: larger than the {ds.size[0]}×{ds.size[1]} images; use at most "
                   f"{max(ds.size)} (= one draw per image) or a smaller patch, e.g. --mix patch:alpha=0.5,patch=8")
    folds_items = {k: training_items(ds, k, cfg.n_real, cfg.subset_seed) for k in cfg.folds}
    needs_syn = cfg.needs_synthetic
    if needs_syn and synthetic_dir is None:
        raise fail(f"{setting_name(cfg)} needs a synthetic folder (--synthetic SYN from `synthpair generate`)")
    if cfg.min_faithfulness is not None and not needs_syn:
        raise fail(f"min_faithfulness={cfg.min_faithfulness:g} filters synthetic pairs but {setting_name(cfg)} uses "
                   f"none; add synthetic pairs (--synthetic SYN --mix ...) or drop min_faithfulness")
    if synthetic_dir is not None and not needs_syn:
        raise fail(f"--synthetic {synthetic_dir}: given but ratio=0 (real-only) would ignore it; set a ratio > 0, "
                   f"e.g. --mix ratio=0.5, or drop --synthetic")
    syn_pool = None
    budget_checks: dict[int, dict[str, Any]] = {}
    syn_mask_items: set[str] = set()
    if synthetic_dir is not None:
        syn = check_synthetic(synthetic_dir, ds, cfg.folds)
        records = {str(r["id"]): r for r in read_manifest(synthetic_dir)}
        syn_ids = list(syn.ids)
        if cfg.min_faithfulness is not None:
            unscored = [i for i in syn_ids if records[i].get("faithfulness") is None]
            if unscored:
                raise fail(f"{synthetic_dir}: {len(unscored)} pair(s) have no faithfulness score (e.g. {unscored[0]}); "
                           f"generate with a reference segmenter (synthpair generate --segmenter auto) or drop "
                           f"min_faithfulness")
            syn_ids = [i for i in syn_ids if records[i]["faithfulness"] >= cfg.min_faithfulness]
            if not syn_ids:
                raise fail(f"{synthetic_dir}: no pair has faithfulness >= {cfg.min_faithfulness}; lower "
                           f"min_faithfulness")
        sources = {i: records[i].get("source_item") for i in syn_ids}
        syn_pool = SyntheticPool(syn_ids, *syn.load(syn_ids),
                                 [None if sources[i] is None else str(sources[i]) for i in syn_ids])
        if cfg.mixing in VERSION_MIXINGS:
            _check_versions(synthetic_dir, syn_pool, folds_items, cfg)
        from ..synthesis.accounting import check_label_budget, synthetic_mask_items

        for k, items in folds_items.items():
            budget_checks[k] = check_label_budget(synthetic_dir, ds, items, allow=cfg.allow_label_excess)
        syn_mask_items = synthetic_mask_items(synthetic_dir, ds)[0]
    device = resolve_device(cfg.device)
    extractor, gen_acc = None, None
    if is_ddpm(cfg.model):
        extractor, gen_acc = _open_feature_generator(ds, cfg, folds_items, device, synthetic_dir)
        for k, chk in _generator_budget(ds, gen_acc, folds_items, cfg).items():
            if chk["generator_saw_more_labels"] or k not in budget_checks:
                budget_checks[k] = chk

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        save_config(cfg, tmp / "config.json")
        folds = [_train_fold(ds, k, cfg, syn_pool, device, tmp / f"fold_{k}", progress, extractor,
                             tensorboard=tensorboard) for k in cfg.folds]
        gen_mask = set((gen_acc or {}).get("mask_items", []))
        gen_image = set((gen_acc or {}).get("image_items", []))
        for f in folds:
            real = folds_items[f["fold"]]
            f["label_accounting"] = {"mask_items": sorted(set(real) | syn_mask_items | gen_mask),
                                     "image_items": sorted(set(real) | gen_image),
                                     **({"synthetic_check": budget_checks[f["fold"]]} if budget_checks else {})}
        rows = [r for f in folds for r in f.pop("per_case")]
        excess = any(c["generator_saw_more_labels"] for c in budget_checks.values())
        results = {
            "format": RESULTS_FORMAT, "version": 1,
            "setting": setting_name(cfg) + (" [generator saw more labels]" if excess else ""),
            "generator_saw_more_labels": excess,
            "data": str(Path(data_dir).resolve()),
            "data_info": data_info(ds),  # channels/num_classes/size/labels/name: the folder rebuilds its models alone
            "synthetic": None if synthetic_dir is None else str(Path(synthetic_dir).resolve()),
            "config": to_dict(cfg),
            "device": str(device),
            "num_classes": ds.num_classes,
            "metrics": list(METRICS),
            "distance_unit": distance_unit(rows),
            "empty_convention": EMPTY_CONVENTION,
            "summary": summarize(rows),
            "fold_mean": _fold_mean(folds),
            "folds": folds,
            "per_case": rows,
        }
        write_json_atomic(tmp / "results.json", results)
        write_text_atomic(tmp / "per_case.csv", _per_case_csv(rows))
    return results


def _open_feature_generator(ds: PreparedDataset, cfg: SegmentConfig, folds_items: dict[int, list[str]],
                            device: torch.device, synthetic_dir: Any) -> tuple[Any, dict[str, Any]]:
    """The frozen generator of a ``ddpm_*`` model, checked before anything is written: a diffusion U-Net
    method, the data's channels and size, existing blocks/timesteps, a run folder with provenance, and none of
    its training cases in an evaluated test split (leakage). Returns (extractor, its label accounting)."""
    from ..io import read_json
    from ..synthesis.accounting import run_accounting
    from .ddfeatures import DiffusionFeatures, generator_run_of

    fc = cfg.features
    if cfg.model == "ddpm_pixel" and synthetic_dir is not None:
        raise fail("--model ddpm_pixel trains on cached features of the real labelled items; use ddpm_unet, "
                   "ddpm_unet_skip or ddpm_unet_caa with synthetic pairs")
    if cfg.model == "ddpm_pixel":
        from .pixel import PIXEL_AUGMENT

        if cfg.augment not in PIXEL_AUGMENT:
            raise fail(f"--augment {cfg.augment}: the ddpm_pixel classifier trains on cached features and supports "
                       f"{' / '.join(PIXEL_AUGMENT)} (dihedral transforms computed exactly); use --model ddpm_unet* "
                       f"for other augmentations")
    extractor = DiffusionFeatures(fc.generator, seed=fc.noise_seed, draws=fc.draws, device=device)
    extractor.check_data(ds.channels, ds.size, str(ds.root))
    extractor.check(fc.blocks, fc.timesteps)
    if cfg.model != "ddpm_pixel":
        extractor.check((), (fc.e2e_timestep,), names=("features.blocks", "features.e2e_timestep"))
    if fc.auto and cfg.model != "ddpm_unet":
        extractor.check(fc.candidate_blocks, fc.candidate_timesteps,
                        names=("features.candidate_blocks", "features.candidate_timesteps"))
    run = generator_run_of(extractor.export_dir)
    if run is None:
        raise fail(f"{extractor.export_dir}: no training_cases.json next to this export, so what the generator saw "
                   f"is unknown; pass the generator's run folder (synthpair train --out RUN)")
    cases = set(read_json(run / "training_cases.json", "training_cases.json").get("cases", []))
    for k in cfg.folds:
        bad = sorted(cases & set(ds.fold_cases(k)[1]))
        if bad:
            raise fail(f"{run}: the generator was trained on {len(bad)} case(s) of the test split of fold {k} "
                       f"(e.g. {bad[0]}); train it on this fold's training side only (unlabelled images included)")
    return extractor, run_accounting(run)


def _generator_budget(ds: PreparedDataset, acc: dict[str, Any], folds_items: dict[int, list[str]],
                      cfg: SegmentConfig) -> dict[int, dict[str, Any]]:
    """The feature generator's masks against each fold's labelled items (refused unless allow_label_excess)."""
    known = set(ds.labelled_ids)
    out = {}
    for k, items in folds_items.items():
        mask = set(acc.get("mask_items", []))
        outside = sorted(mask - set(items))
        other = len(acc.get("mask_cases_unresolved", [])) + len([i for i in outside if i not in known])
        excess = bool(outside or other)
        if excess and not cfg.allow_label_excess:
            raise fail(f"{cfg.features.generator}: the generator's chain saw the masks of {len(outside)} item(s) "
                       f"outside this segmenter's {len(items)} labelled training items (e.g. "
                       f"{(outside or ['another dataset'])[0]!r}); use an image-only generator or one trained on "
                       f"the same labels, or pass --allow-more-labels (the row is then marked)")
        out[k] = {"segmenter_mask_items": len(items), "generator_mask_items": len(mask), "outside": len(outside),
                  "outside_cases": len(acc.get("mask_cases_unresolved", [])), "generator_saw_more_labels": excess}
    return out


__all__ = ["SegmentConfig", "segment", "predict", "setting_name", "training_items"]
