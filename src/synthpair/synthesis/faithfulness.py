"""Scoring mask faithfulness (:mod:`synthpair.metrics.faithfulness`) with a trained reference segmenter.

The reference segmenter is an ordinary ``synthpair segment`` folder, real-only, on ONE fold of the generator's
dataset, so it saw only that fold's training split (the same cases the generator saw) and its held-out Dice on
the real test split is recorded next to it (``results.json``) as the ceiling a faithful synthetic image can reach.
Synthesis only LOADS it (:class:`FaithfulnessScorer`); training it — ``--segmenter auto`` on first use — is done
before generation by the stage that asks for it (:mod:`synthpair.segmentation.reference`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import fail
from ..io import read_json
from ..metrics.faithfulness import mask_faithfulness


class FaithfulnessScorer:
    """Scores pairs with the reference segmenter in SEG folder ``seg_dir`` for generator fold ``fold``.

    Refuses (one line) a segmenter trained on another dataset or without that fold, or with synthetic data.
    """

    def __init__(self, seg_dir: Path | str, *, fold: int, data: str | None, device: str = "cpu") -> None:
        from safetensors.torch import load_file

        from ..networks.segmenters import build_segmenter

        self.seg_dir = Path(seg_dir)
        res = read_json(self.seg_dir / "results.json", "reference segmenter results.json")
        cfg = res.get("config", {})
        if res.get("synthetic"):
            raise fail(f"{seg_dir}: this segmenter was trained with synthetic pairs; a reference segmenter must be "
                       f"real-only (synthpair segment DATA --folds {fold})")
        if fold not in cfg.get("folds", []):
            raise fail(f"{seg_dir}: segmenter has folds {cfg.get('folds')} but the generator was trained on fold "
                       f"{fold}; train it with --folds {fold}")
        if data and res.get("data") and Path(res["data"]).resolve() != Path(data).resolve():
            raise fail(f"{seg_dir}: segmenter was trained on {res['data']} but the generator on {data}; "
                       f"train the reference segmenter on the generator's dataset")
        weights = self.seg_dir / f"fold_{fold}" / "model.safetensors"
        if not weights.is_file():
            raise fail(f"{weights}: missing; retrain the reference segmenter")
        from ..data.dataset import PreparedDataset

        ds = PreparedDataset.open(res["data"])
        self.num_classes = ds.num_classes
        self.model = build_segmenter(cfg.get("model", "unet"), ds.channels, ds.num_classes, ds.size)
        self.model.load_state_dict(load_file(str(weights)))
        self.model.eval().to(device)
        self.device = device
        self.test_dice = float(res["summary"]["dice"]["mean"])

    @torch.inference_mode()
    def predict(self, images: Any) -> np.ndarray:
        """images float (N, C, H, W) in [-1, 1] → predicted labels int64 (N, H, W)."""
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        out = [self.model(x[i:i + 64].to(self.device)).float().argmax(1).cpu() for i in range(0, len(x), 64)]
        return torch.cat(out).numpy()

    def score(self, images: Any, masks: Any) -> np.ndarray:
        """Per-pair faithfulness float64 (N,) in [0, 1] of images (N, C, H, W) for masks (N, H, W)."""
        return mask_faithfulness(self.predict(images), masks, self.num_classes)


def describe(scorer: FaithfulnessScorer | None) -> dict[str, Any] | None:
    return None if scorer is None else {"segmenter": str(scorer.seg_dir.resolve()), "test_dice": scorer.test_dice}
