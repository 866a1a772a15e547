"""``synthpair segment``: train a MONAI segmenter per fold on real (+ synthetic) pairs, score held-out real.

For each fold ``k`` of ``cfg.folds``:

1. the training pool is the real **training** split of fold ``k`` (plus, by the mixing strategy, the pairs
   of a synthetic folder that passed the leakage guard, :mod:`.leakage`);
2. the segmenter (:mod:`.models`) is trained for exactly ``cfg.steps`` AdamW steps of ``cfg.batch_size``
   pairs with MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` and a cosine learning-rate decay to 0,
   whatever the mixing ratio (compute-matched comparisons, see :mod:`.mixing`). There is no validation
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import save_config, to_dict
from ..data.dataset import PreparedDataset
from ..env import resolve_autocast, resolve_device
from ..errors import fail
from ..io import atomic_output_dir, write_json_atomic, write_text_atomic
from ..metrics.segmentation import METRICS, distance_unit, per_case_metrics, summarize
from .augment import AUGMENTATIONS
from .leakage import check_synthetic
from .mixing import MIXINGS, make_mixing
from .models import MODELS, build_segmenter, check_model

RESULTS_FORMAT = "synthpair-segment"

EMPTY_CONVENTION = ("both empty: dice=iou=precision=recall=1, hd95=assd=0; reference empty only: dice=iou=precision=0, "
                    "recall=1, hd95=assd=image diagonal; prediction empty only: dice=iou=recall=0, precision=1, "
                    "hd95=assd=image diagonal; per case: mean over foreground classes present in reference or "
                    "prediction")


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation training/evaluation settings (saved as ``SEG/config.json``).

    ``ratio`` is synthetic : real (0 = real-only; 0.5 → one third of the pairs seen are synthetic) for
    ``mixing="ratio"``; ``mixing="synthetic_only"`` trains on synthetic pairs only. ``amp="auto"`` uses
    bf16 autocast on a CUDA device that supports it and fp32 on CPU (the default U-Net gains nothing from
    bf16 there); ``"bf16"`` forces it, ``"off"`` disables it. ``eval_batch`` only sets the inference batch.
    """

    model: str = "unet"
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ratio: float = 0.0
    mixing: Literal["ratio", "synthetic_only"] = "ratio"
    folds: tuple[int, ...] = (0,)
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"
    augment: Literal["flip_rot", "affine", "none"] = "flip_rot"
    eval_batch: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} is unknown; choose one of {', '.join(MODELS)}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("steps, batch_size and eval_batch must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.ratio < 0:
            raise ValueError(f"ratio must be >= 0 (synthetic:real), got {self.ratio}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing {self.mixing!r} is unknown; choose one of {', '.join(MIXINGS)}")
        if not self.folds or len(set(self.folds)) != len(self.folds):
            raise ValueError("folds must list at least one fold, each once")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment {self.augment!r} is unknown; choose one of {', '.join(AUGMENTATIONS)}")


def setting_name(cfg: SegmentConfig) -> str:
    """Human name of the data setting: ``real-only``, ``real+synthetic r=0.5`` or ``synthetic-only``."""
    if cfg.mixing == "synthetic_only":
        return "synthetic-only"
    return "real-only" if cfg.ratio == 0 else f"real+synthetic r={cfg.ratio:g}"


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


def _train_fold(ds: PreparedDataset, fold: int, cfg: SegmentConfig, syn_pool: tuple[np.ndarray, np.ndarray] | None,
                device: torch.device, fold_dir: Path, progress: bool) -> dict[str, Any]:
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    train_ids, test_ids = ds.split(fold)
    if not train_ids or not test_ids:
        raise fail(f"{ds.root}: fold {fold} has {len(train_ids)} training and {len(test_ids)} test items; "
                   f"rerun 'synthpair prepare' with fewer folds")
    real_x, real_y = (torch.from_numpy(a) for a in ds.load(train_ids))
    syn_x = syn_y = None
    if syn_pool is not None:
        syn_x, syn_y = (torch.from_numpy(a) for a in syn_pool)
    mixing = make_mixing(cfg.mixing, real_images=real_x, real_masks=real_y, batch_size=cfg.batch_size,
                         ratio=cfg.ratio, syn_images=syn_x, syn_masks=syn_y)
    augment = AUGMENTATIONS[cfg.augment]

    torch.manual_seed(cfg.seed)  # same initial weights for every setting of a comparison
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * fold)
    model = build_segmenter(cfg.model, ds.channels, ds.num_classes, ds.size).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    bf16 = resolve_autocast(cfg.amp, device, cpu_auto=False) is not None

    losses = []
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.steps), desc=f"segment fold {fold} ({setting_name(cfg)})", file=sys.stderr,
               disable=not progress, leave=False)
    for step in bar:
        x, y = mixing.batch(step, gen)
        if augment is not None:
            x, y = augment(x, y, gen)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        losses.append({"step": step + 1, "loss": float(loss.detach()), "lr": float(lr)})
        if progress and (step % 10 == 0 or step + 1 == cfg.steps):
            bar.set_postfix(loss=f"{losses[-1]['loss']:.4f}")
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

    fold_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(fold_dir / "model.safetensors"), metadata={"model": cfg.model, "fold": str(fold)})
    write_text_atomic(fold_dir / "loss.jsonl", "".join(json.dumps(r) + "\n" for r in losses))
    mix = mixing.describe()
    return {"fold": fold, "n_train_real": mix["n_real"], "n_synthetic": mix["n_synthetic"], "n_test": len(test_ids),
            "mixing": mix,
            "final_loss": losses[-1]["loss"], "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
            "distance_unit": distance_unit(rows), "summary": summarize(rows), "per_case": rows}


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
            synthetic_dir: Path | str | None = None, progress: bool = True, overwrite: bool = False
            ) -> dict[str, Any]:
    """Train and evaluate one setting on ``cfg.folds`` of the prepared folder ``data_dir``; write ``out_dir``.

    Returns the ``results.json`` dict (see module doc and :func:`_results`). Raises a one-line
    :class:`~synthpair.errors.SynthpairError` for a bad model/size, fold, synthetic folder (missing manifest,
    leakage into a test split, other channels/size, more classes) or output folder — before any training.
    """
    ds = PreparedDataset.open(data_dir)
    check_model(cfg.model, ds.size)
    for k in cfg.folds:
        ds.split(k)
    needs_syn = cfg.mixing == "synthetic_only" or cfg.ratio > 0
    if needs_syn and synthetic_dir is None:
        raise fail(f"{setting_name(cfg)} needs a synthetic folder (--synthetic SYN from `synthpair generate`)")
    if synthetic_dir is not None and not needs_syn:
        raise fail(f"--synthetic {synthetic_dir}: given but ratio=0 (real-only) would ignore it; set a ratio > 0, "
                   f"e.g. --mix ratio=0.5, or drop --synthetic")
    syn_pool = None
    if synthetic_dir is not None:
        syn = check_synthetic(synthetic_dir, ds, cfg.folds)
        syn_pool = syn.load(syn.ids)
    device = resolve_device(cfg.device)

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        save_config(cfg, tmp / "config.json")
        folds = [_train_fold(ds, k, cfg, syn_pool, device, tmp / f"fold_{k}", progress) for k in cfg.folds]
        rows = [r for f in folds for r in f.pop("per_case")]
        results = {
            "format": RESULTS_FORMAT, "version": 1,
            "setting": setting_name(cfg),
            "data": str(Path(data_dir).resolve()),
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


__all__ = ["SegmentConfig", "segment", "predict", "setting_name"]
