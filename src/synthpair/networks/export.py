"""The generator export: ``config.json`` + ``network.json`` + ``model.safetensors`` (EMA weights) + ``version.json``.

``network.json`` (since issue 13; :mod:`synthpair.networks.pretrained`) is the network's own description — its
class and constructor settings, the base a partial export sits on — from which
:func:`~synthpair.networks.pretrained.from_pretrained` rebuilds it without the method. ``config.json`` holds what
sampling needs (method, schedule, data, the method's sections) and, for exports written before ``network.json``
existed, what the method rebuilds the network from::

    {"format": "synthpair-generator", "version": 1, "method": "joint",
     "net": {...UNetConfig...}, "diffusion": {...DiffusionConfig...},
     "data": {"channels": 1, "num_classes": 2, "size": [64, 64]}, ...}

``version.json`` records the synthpair and torch versions and the sha256 of ``model.safetensors``;
loading checks the hash, so a truncated or swapped weights file is a one-line error, not garbage samples.
No pickles: safetensors only.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import fail
from ..io import read_json, write_json_atomic

EXPORT_FORMAT = "synthpair-generator"
EXPORT_VERSION = 1


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_export(out_dir: Path | str, model: nn.Module, export_config: dict[str, Any],
                state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json``, ``network.json`` (when ``model`` is a :class:`~synthpair.networks.pretrained.Pretrained`
    network: what rebuilds it), ``model.safetensors`` and ``version.json`` (last: a folder with it is complete).

    ``export_config`` must contain ``method``, ``net``, ``diffusion`` and ``data`` (see module docstring). The weights
    are the network's own :meth:`~synthpair.networks.pretrained.Pretrained.saved_state` (the whole state dict, or the
    adapters / ControlNet branch / new rows a wrapper added over its base), or ``state`` when given (a network that
    is not ``Pretrained``). Returns ``out_dir``.
    """
    from .pretrained import NETWORK_FILE, Pretrained, network_record, write_weights

    missing = [k for k in ("method", "net", "diffusion", "data") if k not in export_config]
    if missing:
        raise ValueError(f"export_config lacks {missing}")
    out_dir = Path(out_dir)
    if state is None:
        state = model.saved_state() if isinstance(model, Pretrained) else model.state_dict()
    write_json_atomic(out_dir / "config.json", {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **export_config})
    if isinstance(model, Pretrained):
        write_json_atomic(out_dir / NETWORK_FILE, network_record(model))
    write_weights(out_dir, state)
    return out_dir


def export_source(spec: Path | str) -> tuple[Path, Path | None]:
    """``RUN``, ``RUN/export`` or ``RUN/snapshots/step_N`` → (export folder, run folder or None) — how
    ``train.init_from`` and the prompt/LoRA base name an export."""
    p = Path(spec)
    if (p / "export" / "config.json").is_file():
        return p / "export", p
    if (p / "config.json").is_file() and (p.parent / "training_cases.json").is_file():
        return p, p.parent
    if (p / "config.json").is_file() and p.parent.name == "snapshots" and \
            (p.parent.parent / "training_cases.json").is_file():  # RUN/snapshots/step_N
        return p, p.parent.parent
    return p, None


def export_complete(run_dir: Path | str) -> bool:
    """True when ``run_dir/export`` was written to the end (``version.json``, written last by :func:`save_export`,
    next to the weights)."""
    export = Path(run_dir) / "export"
    return (export / "model.safetensors").is_file() and (export / "version.json").is_file()


def read_export_config(export_dir: Path | str) -> dict[str, Any]:
    """Read and check ``export_dir/config.json`` (one-line error when missing or not a generator export)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise fail(f"{export_dir}: generator export folder not found; pass RUN/export of a finished 'synthpair train'")
    cfg = read_json(export_dir / "config.json", "generator config.json")
    if cfg.get("format") != EXPORT_FORMAT:
        raise fail(f"{export_dir / 'config.json'}: not a synthpair generator export; pass RUN/export")
    return cfg
