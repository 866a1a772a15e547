"""Mask faithfulness: does a synthetic image show the mask it was generated from?

A reference segmenter trained on the real training split segments each synthetic image; the faithfulness
of a pair is the Dice between that prediction and the pair's mask (mean over the foreground classes present
in either; 1.0 when both are empty). The pure function is :func:`mask_faithfulness`; the scorer that owns
the segmenter is :class:`synthpair.synthesis.faithfulness.FaithfulnessScorer`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def mask_faithfulness(pred: Any, masks: Any, num_classes: int) -> np.ndarray:
    """Per-pair Dice between predicted labels and generating masks.

    pred, masks: int (N, H, W) label maps in 0..K (numpy or torch); returns float64 (N,) in [0, 1].
    Per pair: ``mean_k 2|P_k ∩ M_k| / (|P_k| + |M_k|)`` over classes k = 1..K with ``|P_k| + |M_k| > 0``;
    1.0 if no class is present in either.
    """
    p = torch.as_tensor(np.asarray(pred)).long()
    m = torch.as_tensor(np.asarray(masks)).long()
    if p.shape != m.shape or p.ndim != 3:
        raise ValueError(f"pred {tuple(p.shape)} and masks {tuple(m.shape)} must both be (N, H, W)")
    scores = torch.zeros(p.shape[0], dtype=torch.float64)
    count = torch.zeros(p.shape[0], dtype=torch.float64)
    for k in range(1, num_classes):
        pk, mk = (p == k).flatten(1).double(), (m == k).flatten(1).double()
        inter, total = (pk * mk).sum(1), pk.sum(1) + mk.sum(1)
        present = total > 0
        scores += torch.where(present, 2 * inter / total.clamp(min=1), torch.zeros_like(total))
        count += present.double()
    return torch.where(count > 0, scores / count.clamp(min=1), torch.ones_like(scores)).numpy()


def summarize_faithfulness(scores: Any) -> dict[str, float]:
    """``{"mean", "sd", "n"}`` of per-pair faithfulness scores (sd with ddof=1; 0 for n = 1)."""
    v = np.asarray(scores, dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


__all__ = ["mask_faithfulness", "summarize_faithfulness"]
