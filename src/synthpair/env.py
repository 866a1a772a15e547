"""Where things run: ``env.json`` (versions, git commit, device), the device resolver and the autocast policy.

Trainer, generator and segmenter all resolve ``device``/``amp`` here, so the policy lives in one place.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import fail
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


def busy_cores(samples: int = 5, interval: float = 0.05) -> int:
    """Cores other processes keep busy right now: the median over ``samples`` readings of the number of runnable
    tasks in ``/proc/loadavg`` (4th field, "running/total") minus this process's own reading thread; 0 where
    the file does not exist (non-Linux)."""
    import os
    import time

    path = Path("/proc/loadavg")
    if not path.is_file():
        return 0
    counts = []
    for _ in range(samples):
        try:
            running = int(path.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - 1))
        time.sleep(interval)
    counts.sort()
    return min(counts[len(counts) // 2], os.cpu_count() or 1)


# under ``auto`` threads: when the load was last read (time.monotonic); None = a fixed count, never re-chosen
_auto_checked_at: float | None = None
REBALANCE_SECONDS = 15.0  # how often a training loop re-reads the load under ``auto``


def free_cores(interval: float = 0.05) -> int:
    """The cores other processes leave free right now (at least 1; :func:`busy_cores` with 5 readings
    ``interval`` seconds apart)."""
    import os

    return max(1, (os.cpu_count() or 1) - busy_cores(interval=interval))


def configure_threads(threads: int | str | None) -> int:
    """Set PyTorch's CPU thread count; returns the count in use.

    ``threads``: an integer >= 1, ``"auto"`` or ``"keep"`` (PyTorch's count as the caller left it: for code that
    embeds the CLI, and the test suite); None = ``$SYNTHPAIR_THREADS`` (any of those) when set, else ``auto`` — the
    default of every ``synthpair`` command. ``auto`` = the cores not busy with other processes
    (:func:`free_cores`), chosen now and re-chosen every :data:`REBALANCE_SECONDS` by the training loops
    (:func:`rebalance_threads`): PyTorch's own default (all cores, spin-waiting OpenMP threads) runs 3.1× slower
    beside one busy process on 2 cores and 7.3–7.9× beside three (``bench/results/threads.md``). Anything else is a
    one-line error. Thread counts change the order of floating-point reductions, so a bit-for-bit rerun of
    training needs a fixed count (``--threads N``); generated pairs record theirs and replay uses it.
    """
    import os
    import time

    global _auto_checked_at
    raw: Any = threads if threads is not None else os.environ.get("SYNTHPAIR_THREADS")
    if str(raw).strip().lower() == "keep":  # leave the count as the caller set it (embedding; the test suite)
        _auto_checked_at = None
        return torch.get_num_threads()
    if raw in (None, "") or str(raw).strip().lower() == "auto":
        n = free_cores()
        _auto_checked_at = time.monotonic()
    else:
        try:
            n = int(raw)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise fail(f"--threads / SYNTHPAIR_THREADS={raw!r}: must be an integer >= 1, 'auto' or 'keep'")
        _auto_checked_at = None
    torch.set_num_threads(n)
    return n


def rebalance_threads(now: float | None = None) -> tuple[int, int] | None:
    """Under ``auto`` threads (:func:`configure_threads`), at most every :data:`REBALANCE_SECONDS`: re-read the
    load and set the thread count to the cores other processes leave free. Returns (old, new) when the count
    changed, else None (also when the count is fixed). Called between steps by the generator and segmenter
    training loops, so a run started on a quiet machine gives way when a second job starts, and takes the
    cores back when it ends."""
    import time

    global _auto_checked_at
    if _auto_checked_at is None:
        return None
    now = time.monotonic() if now is None else now
    if now - _auto_checked_at < REBALANCE_SECONDS:
        return None
    _auto_checked_at = now
    old, new = torch.get_num_threads(), free_cores(interval=0.01)  # 50 ms of readings per 15 s: < 0.4 % of the time
    if new == old:
        return None
    torch.set_num_threads(new)
    return old, new


def resolve_device(spec: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:<i>`` → a torch device; one-line error when it cannot be used."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise fail(f"device={spec!r}: not a torch device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise fail(f"device={spec!r}: CUDA is not available on this machine; use device=auto or cpu")
    return dev


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX-BF16), so bf16 autocast is ~2x faster."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
        if "AMX" in cap.upper():
            return True
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, AttributeError):
        return False
    return False


def resolve_autocast(amp: str, device: torch.device | str, *, cpu_auto: bool = True) -> torch.dtype | None:
    """``amp`` ("auto"|"bf16"|"off") → autocast dtype (torch.bfloat16) or None (fp32).

    auto: bf16 on CUDA when supported and (with ``cpu_auto``) on CPUs with native bf16 (AVX512-BF16/AMX),
    else fp32. Callers whose network gains nothing from bf16 on CPU pass ``cpu_auto=False``.
    """
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise fail(f"amp={amp!r}: choose 'auto', 'bf16' or 'off'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_auto and device.type == "cpu" and cpu_supports_bf16() else None
