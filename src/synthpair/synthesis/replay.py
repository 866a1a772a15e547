"""``synthpair replay``: re-create one synthetic pair from its manifest line, for every writer.

The line's recipe (:func:`synthpair.synthesis.manifest.recipe_of`) says how the pair was made:

* ``sample`` — ``synthpair generate`` and the studies' sampled sets: the recorded batch of seeds (and explicit
  labels) through the recorded sampler (:func:`synthpair.synthesis.generate.replay_sampled`);
* ``inpaint`` — ``synthpair inpaint``: the recorded RePaint block of source images
  (:func:`synthpair.synthesis.inpaint.replay_inpainted`);
* ``harmonise`` — ``synthpair harmonise``: the recorded block of the input folder's pairs
  (:func:`synthpair.synthesis.harmonise.replay_harmonised`).

Every recipe refuses (one line) a generator whose weights changed and a line written before its recipe was
recorded. Bit-exact on CPU (same torch build): a line records the CPU threads it was written with
(``cpu_threads``; ``--threads auto`` picks them by load) and the replay runs with them.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import fail
from .manifest import MANIFEST, read_manifest, recipe_of


@contextmanager
def recorded_threads(rec: dict[str, Any]) -> Iterator[None]:
    """Run with the line's ``cpu_threads`` (when it has them), then restore the caller's count."""
    import torch

    before, want = torch.get_num_threads(), rec.get("cpu_threads")
    if want:
        torch.set_num_threads(int(want))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def replay_record(rec: dict[str, Any], syn_dir: Path | str) -> tuple[np.ndarray, np.ndarray | None]:
    """One manifest line → (image float32 (C, H, W) in [-1, 1], mask int64 (H, W) or None), computed with the
    CPU threads the line was written with (:func:`recorded_threads`)."""
    with recorded_threads(rec):
        return _replay(rec)


def _replay(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    recipe = recipe_of(rec)
    if recipe == "inpaint":
        from .inpaint import replay_inpainted

        return replay_inpainted(rec)
    if recipe == "harmonise":
        from .harmonise import replay_harmonised

        return replay_harmonised(rec)
    from .generate import replay_sampled

    return replay_sampled(rec)


def regenerate_pair(syn_dir: Path | str, pair: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-create pair ``pair`` of SYN → (image uint8 like the PNG (H, W) or (H, W, 3), mask uint8 labels, or None
    for an image-only pair)."""
    from ..io import to_uint8

    lines = {r["id"]: r for r in read_manifest(syn_dir)}
    if pair not in lines:
        raise fail(f"{syn_dir}: no pair {pair!r} in {MANIFEST}; use an id from its 'id' field")
    image, mask = replay_record(lines[pair], syn_dir)
    img = to_uint8(image)
    img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    return img, None if mask is None else np.asarray(mask).astype(np.uint8)


def verify_pair(syn_dir: Path | str, pair: str) -> bool:
    """True when :func:`regenerate_pair` reproduces the stored PNGs exactly."""
    from ..data.dataset import read_png

    image, mask = regenerate_pair(syn_dir, pair)
    stored_image = read_png(Path(syn_dir) / "images" / f"{pair}.png")
    if mask is None:  # image-only pair
        return bool(np.array_equal(image, stored_image))
    stored_mask = read_png(Path(syn_dir) / "masks" / f"{pair}.png")
    return bool(np.array_equal(image, stored_image) and np.array_equal(mask, stored_mask))


__all__ = ["regenerate_pair", "verify_pair", "replay_record"]
