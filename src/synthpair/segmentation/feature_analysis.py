"""Which diffusion features carry the segmentation (DiffusionDCI Fig. 3), measured on labelled TRAINING items only.

For every candidate (block, timestep) cell a linear per-pixel classifier (a 1×1 convolution, DiceCE, Adam,
``steps`` full-batch steps) is trained on that cell's upsampled features of part of the labelled training
items and scored (foreground Dice and mIoU, per image, averaged) on the rest: ``folds``-fold
cross-validation over the labelled items, seeded. Nothing of the test split is read — the function only
sees the images and masks it is given.

The choice (:func:`choose_cells`): the ``n_timesteps`` timesteps with the best mean Dice over blocks, then
the ``n_blocks`` blocks with the best mean Dice over those timesteps. The result is a frozen record saved
next to the segmenter (``fold_<k>/feature_analysis.json``) and drawn as a heat map in the report.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .ddfeatures import DiffusionFeatures, FeatureCache, stack_features


def _dice_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """Mean over images and foreground classes present in either map (both empty → 1)."""
    dices, ious = [], []
    for p, g in zip(pred, target):
        for k in range(1, num_classes):
            a, b = p == k, g == k
            inter, s = float((a & b).sum()), float(a.sum() + b.sum())
            union = s - inter
            if s == 0:
                dices.append(1.0)
                ious.append(1.0)
                continue
            dices.append(2 * inter / s)
            ious.append(inter / union)
    return float(np.mean(dices)), float(np.mean(ious))


def _fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int, seed: int) -> torch.nn.Module:
    """1×1 convolution on features x (N, D, H, W) → labels y (N, H, W); DiceCE, Adam lr 1e-2, full batch."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4)
    conv = torch.nn.Conv2d(x.shape[1], num_classes, 1)
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    xs = (x - mean) / std
    for _ in range(steps):
        loss = loss_fn(conv(xs), y.unsqueeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    class _Norm(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return conv((z - mean) / std)

    return _Norm()


def analyse_features(extractor: DiffusionFeatures, images: torch.Tensor, masks: torch.Tensor, *,
                     blocks: Sequence[str], timesteps: Sequence[int], num_classes: int, folds: int = 4,
                     steps: int = 150, seed: int = 0, cache: FeatureCache | None = None,
                     keys: Sequence[Any] | None = None, max_train: int = 16) -> dict[str, Any]:
    """Cross-validated Dice / mIoU of a linear pixel classifier per (block, timestep) (module doc).

    images float (N, C, H, W) in [-1, 1], masks int64 (N, H, W): the labelled TRAINING items only. Each
    fold's classifier trains on at most ``max_train`` of its items (seeded) to bound the cost at larger N.
    Returns ``{"blocks", "timesteps", "dice": [[block][t]], "miou": [[block][t]], "folds", "n_items",
    "steps", "seed"}``."""
    extractor.check(blocks, timesteps)
    with torch.random.fork_rng(devices=[]):  # the probes reseed torch; the caller's RNG (model init) is untouched
        return _analyse(extractor, images, masks, blocks=blocks, timesteps=timesteps, num_classes=num_classes,
                        folds=folds, steps=steps, seed=seed, cache=cache, keys=keys, max_train=max_train)


def _analyse(extractor: DiffusionFeatures, images: torch.Tensor, masks: torch.Tensor, *, blocks: Sequence[str],
             timesteps: Sequence[int], num_classes: int, folds: int, steps: int, seed: int,
             cache: FeatureCache | None, keys: Sequence[Any] | None, max_train: int) -> dict[str, Any]:
    n = images.shape[0]
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    parts = [order[k::folds] for k in range(folds)]
    cache = cache or FeatureCache(extractor)
    keys = list(keys) if keys is not None else [("analysis", i) for i in range(n)]
    size = images.shape[2:]
    dice = np.zeros((len(blocks), len(timesteps)))
    miou = np.zeros_like(dice)
    for j, t in enumerate(timesteps):
        feats = cache.get([(k, 0) for k in keys], images, int(t), blocks)
        for i, b in enumerate(blocks):
            x = stack_features({(b, t): feats[b]}, [(b, t)], size)
            ds, ms = [], []
            for k, val in enumerate(parts):
                tr = np.setdiff1d(order, val)
                if len(tr) > max_train:
                    tr = np.sort(np.random.default_rng([seed, k]).choice(tr, max_train, replace=False))
                head = _fit_linear(x[tr], masks[tr], num_classes, steps, seed + k)
                with torch.no_grad():
                    pred = head(x[val]).argmax(1)
                d, m = _dice_iou(pred, masks[val], num_classes)
                ds.append(d)
                ms.append(m)
            dice[i, j], miou[i, j] = float(np.mean(ds)), float(np.mean(ms))
    return {"blocks": list(blocks), "timesteps": [int(t) for t in timesteps], "dice": dice.tolist(),
            "miou": miou.tolist(), "folds": folds, "n_items": int(n), "steps": steps, "seed": seed,
            "max_train": max_train,
            "classifier": "linear 1x1 conv on standardised upsampled features, DiceCE, Adam lr 1e-2, full batch"}


def choose_cells(analysis: dict[str, Any], n_blocks: int, n_timesteps: int) -> tuple[list[str], list[int]]:
    """The best ``n_timesteps`` timesteps by mean Dice over blocks, then the best ``n_blocks`` blocks by mean
    Dice over those timesteps (ties: earlier candidate first). Returned in candidate order."""
    d = np.asarray(analysis["dice"], dtype=float)
    t_rank = np.argsort(-d.mean(axis=0), kind="stable")[: max(1, n_timesteps)]
    b_rank = np.argsort(-d[:, t_rank].mean(axis=1), kind="stable")[: max(1, n_blocks)]
    blocks = [analysis["blocks"][i] for i in sorted(b_rank)]
    timesteps = [analysis["timesteps"][j] for j in sorted(t_rank)]
    return blocks, timesteps


def heatmap_png(analysis: dict[str, Any], title: str = "") -> bytes:
    """The analysis as a PNG heat map (blocks × timesteps, validation Dice in each cell)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = np.asarray(analysis["dice"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * d.shape[1], 0.8 + 0.45 * d.shape[0]), dpi=110)
    im = ax.imshow(d, cmap="viridis", aspect="auto", vmin=0, vmax=max(0.01, float(d.max())))
    ax.set_xticks(range(d.shape[1]), [str(t) for t in analysis["timesteps"]])
    ax.set_yticks(range(d.shape[0]), analysis["blocks"])
    ax.set_xlabel("timestep t")
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            ax.text(j, i, f"{d[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if d[i, j] < 0.6 * d.max() else "black")
    ax.set_title(title or f"validation Dice ({analysis['folds']}-fold CV, {analysis['n_items']} labelled items)",
                 fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


__all__ = ["analyse_features", "choose_cells", "heatmap_png"]
