"""Shared fixtures: tiny prepared datasets generated on the fly (tests never read ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the CLI keeps the count a test set (its default, auto, follows the load; tests compare runs bit for bit)
os.environ.setdefault("SYNTHPAIR_THREADS", "keep")
torch.set_num_threads(2)


def write_tiny_prepared(root: Path, n: int = 12, size: int = 16, folds: int = 3, channels: int = 1,
                        num_classes: int = 2, seed: int = 0) -> Path:
    """Write a prepared DATA folder (docs/architecture.md) of ``n`` bright disks on a noisy background."""
    from synthpair.data.dataset import dataset_info, write_dataset_json, write_pair
    from synthpair.io import write_json_atomic

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    items = []
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.12, size * 0.25)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.int64)
        if num_classes > 2:
            mask = mask * (1 + i % (num_classes - 1))
        img = rng.normal(-0.5, 0.1, (channels, size, size)) + 1.0 * (mask > 0)[None]
        write_pair(root, f"img{i:03d}", np.clip(img, -1, 1), mask)
        items.append({"id": f"img{i:03d}", "case": f"case{i:03d}", "spacing": [1.0, 1.0],
                      "slice_index": None, "foreground_fraction": float((mask > 0).mean())})
    labels = {"background": 0, **{f"class{k}": k for k in range(1, num_classes)}}
    write_dataset_json(root, dataset_info(name="tiny", modality="phantom", channels=channels, labels=labels,
                                          size=(size, size), normalisation={"method": "none"}, items=items))
    cases = [it["case"] for it in items]
    fold_of = np.arange(n) % folds
    write_json_atomic(root / "splits.json", {
        "by": "case", "seed": seed, "num_folds": folds,
        "folds": [{"fold": k, "train": [c for c, f in zip(cases, fold_of) if f != k],
                   "test": [c for c, f in zip(cases, fold_of) if f == k]} for k in range(folds)]})
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A prepared folder: 12 single-channel 16×16 disks, binary masks, 3 folds."""
    return write_tiny_prepared(tmp_path / "data")


@pytest.fixture
def one_thread():
    """Tiny networks: one thread is faster than two on a loaded 2-core machine (no oversubscription). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
