"""Statistics across cases, folds and seeds: mean ± sd, per-case pooling, paired Wilcoxon comparisons.

k-fold results are pooled per case (every case is held out exactly once, so the pooled rows are independent
cases); repeated-seed runs are aggregated as mean ± sd of the per-seed means (the seed-to-seed spread) and,
for paired tests, averaged per case over seeds first so a case counts once. A setting is compared with
real-only on the *same* cases by the Wilcoxon signed-rank test (scipy, two-sided), so that a "gain" of the
size of the case-to-case noise is not reported as a gain: the result carries the mean difference, the
p-value and the number of paired cases.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .segmentation import METRICS


def mean_sd(values: Iterable[float] | np.ndarray) -> dict[str, float | int | None]:
    """Finite values → {"mean", "sd" (sample sd, ddof=1; 0.0 for n = 1), "n"}; None/None/0 when empty."""
    vals = np.array([np.nan if v is None else v for v in np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=object).ravel()], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n": int(vals.size)}


def summarize_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS
                   ) -> dict[str, dict[str, float | int | None]]:
    """Per-case rows → {metric: {"mean", "sd", "n"}} over the finite values of each metric."""
    return {m: mean_sd([r.get(m) for r in rows]) for m in metrics}


def _key(r: dict[str, Any]) -> tuple[Any, Any]:
    return (r.get("fold"), r["id"])


def average_over_seeds(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Rows of several seeds (each with "fold", "id" and optionally "seed") → one row per (fold, id) with
    each metric averaged over the seeds (finite values only) and ``n_seeds``."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (fold, cid), rs in groups.items():
        row: dict[str, Any] = {"fold": fold, "id": cid, "n_seeds": len(rs)}
        for m in metrics:
            row[m] = mean_sd([x.get(m) for x in rs])["mean"]
        out.append(row)
    return out


def across_seeds(per_seed_rows: dict[Any, Sequence[dict[str, Any]]], metrics: Sequence[str] = METRICS
                 ) -> dict[str, dict[str, Any]]:
    """{seed: per-case rows} → {metric: {"mean", "sd", "n" (seeds), "per_seed": {seed: mean}}}: the spread of
    the per-seed means, the number to quote for run-to-run variability."""
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        per_seed = {s: mean_sd([r.get(m) for r in rows])["mean"] for s, rows in per_seed_rows.items()}
        out[m] = {**mean_sd(list(per_seed.values())), "per_seed": per_seed}
    return out


def paired_comparison(base: Sequence[dict[str, Any]], other: Sequence[dict[str, Any]], metric: str = "dice"
                      ) -> dict[str, Any]:
    """Per-case paired comparison of ``other`` against ``base`` on the cases both evaluated.

    Cases are matched by (fold, id); rows of repeated seeds are first averaged per case. Returns the metric,
    ``n`` (paired cases), ``mean_diff`` (other − base), ``sd_diff``, and ``p_value`` of the two-sided Wilcoxon
    signed-rank test (scipy, ``zero_method="wilcox"``; None when n < 2 or all differences are zero).
    """
    from scipy.stats import wilcoxon

    if any("seed" in r for r in base) or any("seed" in r for r in other):
        base, other = average_over_seeds(base, (metric,)), average_over_seeds(other, (metric,))
    b = {_key(r): r.get(metric) for r in base}
    pairs = [(b[_key(r)], r.get(metric)) for r in other if _key(r) in b]
    pairs = [(s, o) for s, o in pairs if s is not None and o is not None and np.isfinite(s) and np.isfinite(o)]
    if not pairs:
        return {"metric": metric, "n": 0, "mean_diff": None, "sd_diff": None, "p_value": None}
    diffs = np.array([o - s for s, o in pairs], dtype=np.float64)
    p = None
    if diffs.size >= 2 and np.any(diffs != 0):
        p = float(wilcoxon(diffs, zero_method="wilcox").pvalue)
    return {"metric": metric, "n": int(diffs.size), "mean_diff": float(diffs.mean()),
            "sd_diff": float(diffs.std(ddof=1)) if diffs.size > 1 else 0.0, "p_value": p}


__all__ = ["across_seeds", "average_over_seeds", "mean_sd", "paired_comparison", "summarize_rows"]
