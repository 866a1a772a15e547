"""The reference segmenter of mask faithfulness, trained BEFORE generation (issue 13: ``generate`` never trains
a segmenter on its own; it scores pairs with a trained one, :class:`synthpair.synthesis.faithfulness.
FaithfulnessScorer`).

``--segmenter auto`` names ``RUN/reference_segmenter``: an ordinary real-only ``synthpair segment`` run on the
generator's fold of its dataset (so it saw only the cases the generator saw), cached in the generator's run
folder and reused by every later generation. :func:`prepare_reference_segmenter` trains it when a generation will
need it and it is not there yet — after every check ``generate`` makes (so bad input is refused before minutes of
training), on rank 0 only under torchrun while the other ranks wait. :func:`generate_scored` = prepare + generate:
what ``synthpair generate``, ``synthpair run`` and the studies call.
"""
from __future__ import annotations

import sys
from pathlib import Path
from ..synthesis.generate import GenerateConfig


def train_reference_segmenter(data_dir: Path | str, out_dir: Path | str, *, fold: int, steps: int = 300,
                              model: str = "unet", seed: int = 0, progress: bool = False) -> Path:
    """Train the reference segmenter (real training split of ``fold`` only) into ``out_dir`` (a SEG folder)."""
    from .train import SegmentConfig, segment

    segment(data_dir, out_dir, SegmentConfig(model=model, steps=steps, folds=(fold,), seed=seed),
            progress=progress)
    return Path(out_dir)


def prepare_reference_segmenter(run_dir: Path | str, out_dir: Path | str, cfg: GenerateConfig) -> Path | None:
    """Make sure the faithfulness segmenter that ``generate(run_dir, out_dir, cfg)`` will use exists: train
    ``RUN/reference_segmenter`` (``cfg.segmenter == "auto"``, ``cfg.segmenter_steps`` steps) when it is needed and
    missing. Checks everything :func:`~synthpair.synthesis.generate.generate` checks first (one-line errors, on
    every rank; nothing is trained or written when refused). Returns the segmenter folder, or None when no
    segmenter scores the pairs."""
    from ..synthesis.generate import check_generation, devices
    from ..synthesis.shards import Shards

    run, out = Path(run_dir), Path(out_dir)
    shards = Shards.start()
    _, compute_device = devices(cfg, shards)
    chk = shards.check(lambda: check_generation(run, out, cfg, compute_device=compute_device, main=shards.is_main,
                                                untrained_ok=True))
    seg, prov = chk["seg"], chk["prov"]
    if chk["must_train"] and not (chk["state"] or {}).get("complete"):
        def train() -> None:
            print(f"synthpair: training the reference segmenter for mask faithfulness → {seg}", file=sys.stderr)
            train_reference_segmenter(prov["data"], seg, fold=prov["fold"], steps=cfg.segmenter_steps)

        shards.on_main(train)
    return seg


def generate_scored(run_dir: Path | str, out_dir: Path | str, cfg: GenerateConfig = GenerateConfig(),
                    progress: bool = True) -> Path:
    """:func:`prepare_reference_segmenter`, then :func:`~synthpair.synthesis.generate.generate`: a generation
    whose ``--segmenter auto`` reference segmenter is trained on first use."""
    from ..synthesis.generate import generate

    prepare_reference_segmenter(run_dir, out_dir, cfg)
    return generate(run_dir, out_dir, cfg, progress=progress)


__all__ = ["train_reference_segmenter", "prepare_reference_segmenter", "generate_scored"]
