"""Label budgets: N labelled training items, the rest of the training side unlabelled — for every stage.

``synthpair budget DATA --out VIEW --n 16 --seed 0`` (or ``--subset seed0_N16``, a named subset recorded by
``prepare --splits FILE``) writes VIEW, a prepared folder with ONE fold (the chosen fold of DATA):

* the N chosen training items keep their masks (``labelled``);
* every other training item of that fold, and every unlabelled item of DATA, is an unlabelled item: its image
  is there, its mask is not (``"labelled": false``; no ``masks/<id>.png`` is written), so no stage can learn
  from it;
* the fold's test items keep their masks (evaluation only).

Item ids are DATA's, so runs on different views of one DATA compare by id (label accounting, leakage guard).
Images are hard links to DATA's files where the file system allows it (copies otherwise). The view's
``dataset.json`` records ``label_budget`` (parent folder, fold, N, seed or subset name, the labelled items).

The choice of N items (:func:`nested_subset`) is seeded and nested: the cases of the fold's training split
(split order) are shuffled once with ``numpy.random.default_rng(seed)``, their items listed case by case in
that order and the first N kept — the 16 of a seed are the first half of its 32.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import to_dict
from ..errors import fail
from ..io import atomic_output_dir, read_json, write_json_atomic
from .dataset import PreparedDataset, write_dataset_json


def nested_subset(ds: PreparedDataset, fold: int, n: int = 0, seed: int = 0) -> list[str]:
    """The labelled training items of ``fold``: all (``n = 0``) or a seeded, nested subset of ``n`` (module doc);
    returned in dataset order. One-line error when ``n`` exceeds the labelled training items."""
    train_ids, _ = ds.split(fold)
    if n <= 0:
        return list(train_ids)
    if n > len(train_ids):
        raise fail(f"n={n}: fold {fold} of {ds.root} has only {len(train_ids)} labelled training items; "
                   f"choose N <= {len(train_ids)} (0 = all)")
    by_case: dict[str, list[str]] = {}
    for i in train_ids:
        by_case.setdefault(ds.case_of(i), []).append(i)
    cases = [c for c in ds.fold_cases(fold)[0] if c in by_case]
    order = np.random.default_rng(int(seed)).permutation(len(cases))
    kept = set([i for k in order for i in by_case[cases[k]]][:n])
    return [i for i in train_ids if i in kept]


def training_items(ds: PreparedDataset, fold: int, n_real: int = 0, subset_seed: int = 0) -> list[str]:
    """The real (labelled) training items of ``fold``: all of them (``n_real = 0``) or a seeded, nested subset
    of ``n_real`` — :func:`synthpair.data.budget.nested_subset` (the 16-item subset of a seed is the first
    half of its 32-item one; items in dataset order). Generator training on the same subset:
    ``TrainConfig.items = training_items(ds, fold, n, seed)``."""
    train_ids, _ = ds.split(fold)
    if n_real > len(train_ids):
        raise fail(f"n_real={n_real}: fold {fold} of {ds.root} has only {len(train_ids)} training items; "
                   f"choose --n-real <= {len(train_ids)} (0 = all)")
    return nested_subset(ds, fold, n_real, subset_seed)


@dataclass(frozen=True)
class BudgetConfig:
    """``fold`` of DATA; either ``n`` > 0 labelled items drawn with ``seed`` (:func:`nested_subset`) or a named
    ``subset`` of DATA (``prepare --splits``)."""

    fold: int = 0
    n: int = 0
    seed: int = 0
    subset: str = ""

    def __post_init__(self) -> None:
        if bool(self.n) == bool(self.subset):
            raise fail("label budget: give either --n N (a seeded nested subset) or --subset NAME, not both/neither")
        if self.n < 0:
            raise fail(f"--n {self.n}: the number of labelled items must be >= 1")


def choose_labelled(ds: PreparedDataset, cfg: BudgetConfig) -> list[str]:
    """The labelled items of the view (dataset order); one-line errors for a budget larger than the labelled
    training items, an unknown subset name, or a subset outside the fold's training split."""
    train, _ = ds.split(cfg.fold)
    if cfg.n:
        return nested_subset(ds, cfg.fold, cfg.n, cfg.seed)
    subsets = ds.subsets
    if cfg.subset not in subsets:
        shown = ", ".join(sorted(subsets)[:8]) + (" …" if len(subsets) > 8 else "")
        raise fail(f"--subset {cfg.subset!r}: {ds.root} has " + (f"subsets {shown}" if subsets else
                   "no named subsets (prepare with --splits FILE to record them)") + "; choose one or use --n N")
    chosen = set(subsets[cfg.subset])
    outside = sorted(chosen - set(train))
    if outside:
        raise fail(f"--subset {cfg.subset}: {len(outside)} item(s) are not labelled training items of fold "
                   f"{cfg.fold} (e.g. {outside[0]!r}); choose the fold the subset belongs to")
    return [i for i in train if i in chosen]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_budget_view(data: Path | str, out: Path | str, cfg: BudgetConfig, *, overwrite: bool = False,
                     progress: bool = True) -> Path:
    """Write the label-budget view of ``data`` to ``out`` (module doc); returns ``out``. Nothing is written
    when the arguments are wrong (the budget is checked before the output folder exists)."""
    import sys

    ds = PreparedDataset.open(data)
    labelled = choose_labelled(ds, cfg)
    train, test = ds.split(cfg.fold)
    keep_labelled = set(labelled) | set(test)
    hidden = [i for i in train if i not in set(labelled)]
    members = set(train) | set(test) | set(ds.unlabelled_ids)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        items: list[dict[str, Any]] = []
        for it in ds.items:
            iid = it["id"]
            if iid not in members:
                continue
            _link_or_copy(ds.root / "images" / f"{iid}.png", tmp / "images" / f"{iid}.png")
            new = dict(it)
            if iid in keep_labelled:
                _link_or_copy(ds.root / "masks" / f"{iid}.png", tmp / "masks" / f"{iid}.png")
            else:
                new["labelled"] = False
                new["foreground_fraction"] = None
            items.append(new)
        test_cases = sorted({ds.case_of(i) for i in test})
        info = {k: v for k, v in ds.info.items() if k != "items"}
        n_unl = sum(1 for m in items if not m.get("labelled", True))
        info["counts"] = {"items": len(items), "labelled": len(items) - n_unl, "unlabelled": n_unl,
                          "labelled_training": len(labelled), "test": len(test)}
        info["label_budget"] = {"parent": str(ds.root.resolve()), "fold": cfg.fold, **to_dict(cfg),
                                "labelled_items": labelled, "hidden_masks": len(hidden)}
        info["items"] = items
        write_dataset_json(tmp, info)
        subsets = {k: v for k, v in ds.subsets.items() if set(v) <= set(labelled)}
        splits = {"by": "label-budget", "seed": cfg.seed if cfg.n else None, "num_folds": 1,
                  "folds": [{"fold": 0, "train": sorted({ds.case_of(i) for i in labelled}), "test": test_cases,
                             "source_fold": cfg.fold}],
                  "unlabelled_cases": sorted({m["case"] for m in items if not m.get("labelled", True)}),
                  "subsets": subsets}
        if ds.splits and ds.splits.get("source"):
            splits["source"] = ds.splits["source"]
        write_json_atomic(tmp / "splits.json", splits)
        if (ds.root / "duplicates.json").is_file():
            write_json_atomic(tmp / "duplicates.json", read_json(ds.root / "duplicates.json", "duplicates.json"))
    if progress:
        print(f"budget: {len(labelled)} labelled training items, {n_unl} unlabelled, {len(test)} test items "
              f"(fold {cfg.fold} of {ds.root}) → {out}", file=sys.stderr, flush=True)
    return Path(out)


__all__ = ["BudgetConfig", "nested_subset", "choose_labelled", "make_budget_view"]
