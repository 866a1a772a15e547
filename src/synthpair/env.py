"""``env.json``: the software and hardware an artifact was made with (versions, git commit, device)."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .io import write_json_atomic


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(**extra: Any) -> dict[str, Any]:
    """Versions, git commit and CPU/GPU of this process, plus ``extra`` (e.g. device, autocast, world size)."""
    import monai
    import numpy
    import torch

    from . import __version__

    return {
        "synthpair": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        **extra,
    }


def write_env(path: Path | str, **extra: Any) -> dict[str, Any]:
    env = environment(**extra)
    write_json_atomic(path, env)
    return env


def resolve_device(spec: str) -> "torch.device":
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:<i>`` → a torch device; one-line error when it cannot be used."""
    import torch

    from .errors import fail

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise fail(f"device={spec!r}: not a torch device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise fail(f"device={spec!r}: CUDA is not available on this machine; use device=auto or cpu")
    return dev
