"""The generator export: ``config.json`` + ``model.safetensors`` (EMA weights) + ``version.json``.

``config.json`` holds everything needed to rebuild the network and sample from it::

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
from ..io import read_json, write_bytes_atomic, write_json_atomic

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
    """Write ``config.json``, ``model.safetensors`` (``model``'s state dict, float32, CPU) and ``version.json``.

    ``export_config`` must contain ``method``, ``net``, ``diffusion`` and ``data`` (see module docstring).
    ``state`` replaces the full state dict when a method saves only part of its weights (LoRA adapters, a
    ControlNet branch over a frozen base; the method's ``load_weights`` puts them back). Returns ``out_dir``.
    """
    from safetensors.torch import save

    import synthpair

    missing = [k for k in ("method", "net", "diffusion", "data") if k not in export_config]
    if missing:
        raise ValueError(f"export_config lacks {missing}")
    out_dir = Path(out_dir)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in (model.state_dict() if state is None else state).items()}
    data = save(state)
    write_bytes_atomic(out_dir / "model.safetensors", data)
    write_json_atomic(out_dir / "config.json", {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **export_config})
    write_json_atomic(out_dir / "version.json", {"synthpair": synthpair.__version__, "torch": torch.__version__,
                                                 "weights_sha256": hashlib.sha256(data).hexdigest()})
    return out_dir


def read_export_config(export_dir: Path | str) -> dict[str, Any]:
    """Read and check ``export_dir/config.json`` (one-line error when missing or not a generator export)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise fail(f"{export_dir}: generator export folder not found; pass RUN/export of a finished 'synthpair train'")
    cfg = read_json(export_dir / "config.json", "generator config.json")
    if cfg.get("format") != EXPORT_FORMAT:
        raise fail(f"{export_dir / 'config.json'}: not a synthpair generator export; pass RUN/export")
    return cfg


def load_export(export_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of an export and load its (EMA) weights → ``(model in eval mode, export_config)``.

    Errors (one line, naming the file): folder/config/weights missing, sha256 mismatch with
    ``version.json``, unreadable safetensors, or weights that do not fit the configured network.
    """
    from safetensors.torch import load

    from ..config import from_dict
    from ..methods import DataInfo, get_method
    from .unet import UNetConfig

    export_dir = Path(export_dir)
    cfg = read_export_config(export_dir)
    weights = export_dir / "model.safetensors"
    if not weights.is_file():
        raise fail(f"{weights}: weights file missing; re-export the run (RUN/export) or retrain")
    version = read_json(export_dir / "version.json", "version.json")
    raw = weights.read_bytes()
    if hashlib.sha256(raw).hexdigest() != version.get("weights_sha256"):
        raise fail(f"{weights}: sha256 does not match version.json (corrupt or replaced); re-export or retrain the run")
    try:
        state = load(raw)
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for bad headers/data)
        raise fail(f"{weights}: unreadable safetensors file ({err}); re-export or retrain the run") from None
    method = get_method(cfg["method"])
    net_cfg = from_dict(UNetConfig, cfg["net"], where=f"{export_dir / 'config.json'}:net")
    kw = {}
    if "cond" in cfg:
        from .conditional import CondConfig

        kw["cond_cfg"] = from_dict(CondConfig, cfg["cond"], where=f"{export_dir / 'config.json'}:cond")
    info = DataInfo.from_dict(cfg["data"])
    if hasattr(method, "build_from_export"):  # networks that need more of the export (vocabulary, clusters, base)
        model = method.build_from_export(info, cfg, export_dir)
    else:
        model = method.build_network(info, net_cfg, **kw)
    try:
        if hasattr(method, "load_weights"):  # partial exports (adapters / control branch over a base run)
            method.load_weights(model, state, cfg, export_dir)
        else:
            model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "mismatch"
        raise fail(f"{weights}: weights do not fit the network in config.json ({first}); re-export the run") from None
    return model.to(device).eval(), cfg
