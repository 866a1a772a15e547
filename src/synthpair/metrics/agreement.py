"""Inter-reader agreement on categorical ratings: Cohen's kappa (two readers), Fleiss' kappa (two or more).

Pure functions over plain sequences; a rating is any hashable category (``"real"`` / ``"synthetic"``, a Likert
score 1..5 treated as a nominal category). Both return ``nan`` when chance agreement is 1 (every rating in one
category), where kappa is undefined.

* Cohen (1960): ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the fraction of items both readers rate alike and
  ``p_e = sum_c p_1(c) p_2(c)`` from each reader's own marginal frequencies.
* Fleiss (1971): for N items each rated by n readers, ``n_ij`` = readers putting item i in category j;
  ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``, ``P_bar = mean_i P_i``, ``p_j = sum_i n_ij / (N n)``,
  ``P_e = sum_j p_j^2``, ``kappa = (P_bar - P_e) / (1 - P_e)``. For two readers it equals Scott's pi (pooled
  marginals), not Cohen's kappa.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two readers' ratings of the same items (same order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cohen_kappa needs two equally long, non-empty rating lists (got {len(a)} and {len(b)})")
    cats = sorted(set(a) | set(b), key=str)
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in cats)
    return float("nan") if np.isclose(p_e, 1.0) else float((p_o - p_e) / (1.0 - p_e))


def rating_counts(ratings: Sequence[Sequence[Hashable]]) -> tuple[np.ndarray, list[Hashable]]:
    """``ratings[r][i]`` (reader r, item i) → (counts (N items, K categories) int, the K categories)."""
    if not ratings or any(len(r) != len(ratings[0]) for r in ratings) or not ratings[0]:
        raise ValueError("rating_counts needs every reader to rate the same, non-empty list of items")
    cats = sorted({x for r in ratings for x in r}, key=str)
    index = {c: j for j, c in enumerate(cats)}
    counts = np.zeros((len(ratings[0]), len(cats)), dtype=np.int64)
    for r in ratings:
        for i, x in enumerate(r):
            counts[i, index[x]] += 1
    return counts, cats


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from counts (N items, K categories); every row must sum to the same n >= 2 readers."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] < 1:
        raise ValueError(f"fleiss_kappa needs counts of shape (items, categories), got {counts.shape}")
    n = counts.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings for every item")
    n = n[0]
    p_i = (np.square(counts).sum(axis=1) - n) / (n * (n - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float(np.square(p_j).sum())
    return float("nan") if np.isclose(p_e, 1.0) else float((p_bar - p_e) / (1.0 - p_e))


def percent_agreement(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Mean over items of the fraction of agreeing reader pairs (Fleiss' ``P_bar``)."""
    counts, _ = rating_counts(ratings)
    n = len(ratings)
    if n < 2:
        raise ValueError("percent_agreement needs at least two readers")
    return float(((np.square(counts).sum(axis=1) - n) / (n * (n - 1))).mean())


__all__ = ["cohen_kappa", "fleiss_kappa", "rating_counts", "percent_agreement"]
