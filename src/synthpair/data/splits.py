"""Seeded K-fold splits by case (``splits.json``, docs/architecture.md)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import fail


def kfold_by_case(cases: Sequence[str], folds: int, seed: int = 0, *, where: str = "dataset") -> dict[str, Any]:
    """Distinct case ids → ``{"by": "case", "seed", "num_folds", "folds": [{"fold", "train", "test"}]}``.

    Cases are shuffled with ``numpy.random.default_rng(seed)`` (after sorting, so the input order does
    not matter) and dealt into ``folds`` nearly equal test folds; every case is in exactly one test fold
    and the train list of a fold is every other case (both sorted).
    """
    uniq = sorted(set(str(c) for c in cases))
    if folds < 2:
        raise fail(f"folds={folds}: need at least 2 folds")
    if len(uniq) < folds:
        raise fail(f"{where}: only {len(uniq)} case(s) but {folds} folds requested; add data or lower --folds "
                   f"to at most {max(len(uniq), 1)}")
    order = np.random.default_rng(seed).permutation(len(uniq))
    chunks = np.array_split(order, folds)
    out = []
    for k, chunk in enumerate(chunks):
        test = sorted(uniq[i] for i in chunk)
        test_set = set(test)
        out.append({"fold": k, "train": [c for c in uniq if c not in test_set], "test": test})
    return {"by": "case", "seed": int(seed), "num_folds": int(folds), "folds": out}
