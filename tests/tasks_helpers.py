"""Helpers of the survey-task tests (tests/test_tasks_*.py): tiny multi-contrast phantom datasets and tiny
settings, so that every pipeline runs end to end in seconds on one CPU thread."""
from __future__ import annotations

from pathlib import Path

from synthpair.diffusion.schedule import DiffusionConfig
from synthpair.evaluation.tasks.common import DiffusionFit, NetFit
from synthpair.networks.unet import UNetConfig

NET = UNetConfig(channels=(8, 8), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)
DIFF = DiffusionConfig(num_timesteps=100)
FIT = DiffusionFit(steps=3, batch_size=4, warmup_steps=1, net=NET, diffusion=DIFF, amp="off")
NETFIT = NetFit(steps=3, batch_size=4, features=8)


def mr_data(root: Path, n: int = 16, size: int = 16, contrasts: tuple[str, ...] = ("T2w",), per_patient: int = 2,
            folds: int = 2, lesion_fraction: float = 0.5) -> Path:
    """A prepared folder of ``n`` multi-contrast MR-like phantoms (half with a lesion) from an nnU-Net source,
    slices grouped by patient (``per_patient``), ``folds`` folds; returns DATA."""
    from synthpair.data.phantoms import write_phantom_nnunet
    from synthpair.data.prepare import PrepareConfig, prepare_dataset

    src = write_phantom_nnunet(root / "src", n, size=max(size, 16), contrasts=contrasts, per_patient=per_patient,
                               lesion_fraction=lesion_fraction)
    return prepare_dataset(src, root / "data", PrepareConfig(size=size, folds=folds, dedup=False), progress=False)
