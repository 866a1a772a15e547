"""Opt-in TensorBoard logging (``synthpair train|segment --tensorboard``): the scalars synthpair already logs
(loss, learning rate, gradient norm, images/s, CPU seconds) and the generator's preview grids, as TensorBoard
event files beside the run's own ``metrics.jsonl`` / ``loss.jsonl`` (which stay the record of truth).

Written with ``torch.utils.tensorboard.SummaryWriter`` (PyTorch's own writer; the ``tensorboard`` package is an
optional extra, ``pip install 'synthpair[tensorboard]'``, never a hard dependency). A resumed run opens the writer
with ``purge_step`` = the checkpoint's step + 1, so events logged after the checkpoint by the interrupted attempt
are discarded by TensorBoard's reader, as ``metrics.jsonl`` is truncated.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import fail


def require_tensorboard() -> None:
    """One-line error when the ``tensorboard`` package is missing (checked before any output is written)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise fail("--tensorboard needs the tensorboard package: pip install 'synthpair[tensorboard]' "
                   "(or pip install tensorboard), or drop --tensorboard")


class TensorBoardLog:
    """Event files in ``log_dir`` (view with ``tensorboard --logdir DIR``)."""

    def __init__(self, log_dir: Path | str, *, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def scalars(self, record: Mapping[str, Any], step: int, prefix: str = "train") -> None:
        """Every finite number of ``record`` except ``step`` as ``<prefix>/<key>`` at ``step``."""
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if np.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", float(value), global_step=step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        """A uint8 image (H, W) or (H, W, 3), e.g. a preview grid."""
        grid = np.asarray(grid)
        self.writer.add_image(tag, grid if grid.ndim == 3 else grid[..., None], global_step=step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


__all__ = ["TensorBoardLog", "require_tensorboard"]
