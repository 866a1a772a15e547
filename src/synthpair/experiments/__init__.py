"""Experiments: ``synthpair experiment NAME ...`` — multi-stage studies that compose the library stages.

Each experiment is a module with ``add_arguments(parser)`` and ``run(args) -> int``; it writes its folder
(config.json, the stage folders it created, results.{json,md}) and is resumable (stages already complete are
skipped). Register a new one in :data:`EXPERIMENTS` (name → module path).
"""
from __future__ import annotations

EXPERIMENTS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "pig": ("synthpair.experiments.pig", "PIG vs joint vs mask2image at equal numbers of synthetic pairs (paper 004, Table 2 shape)"),
    "polyp": ("synthpair.experiments.polyp", "synthetic-polyp pipeline: full-synthetic and small-data studies (paper 002, Tables 6 and 7 shape)"),
    "emit-diff": ("synthpair.experiments.emit", "EMIT-Diff: classic augmentations vs edge-guided synthesis with patch mixing, and ablations (paper 000, Table 2)"),
    "label-scarce": ("synthpair.experiments.label_scarce", "few labels, many images: real + classic augmentation vs label-honest synthetic pairs and diffusion-feature segmenters at N = 16/32/64 (fixed benchmark splits)"),
}
