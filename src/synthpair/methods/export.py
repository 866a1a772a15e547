"""Loading a generator export: ``load_export(RUN/export) -> (model, export_config)``.

The export files themselves (``config.json`` + ``model.safetensors`` + ``version.json``, written by
:func:`synthpair.networks.export.save_export`) belong to the networks layer; rebuilding the network needs the
export's METHOD (:meth:`synthpair.methods.base.Method.build_from_export` / ``load_weights``), so loading lives
here, one layer up.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import fail
from ..io import read_json
from ..networks.export import read_export_config


def load_export(export_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of an export and load its (EMA) weights → ``(model in eval mode, export_config)``.

    Errors (one line, naming the file): folder/config/weights missing, sha256 mismatch with
    ``version.json``, unreadable safetensors, or weights that do not fit the configured network.
    """
    from safetensors.torch import load

    from .base import DataInfo, get_method

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
    model = method.build_from_export(DataInfo.from_dict(cfg["data"]), cfg, export_dir)
    try:
        method.load_weights(model, state, cfg, export_dir)  # partial exports: adapters / control branch over a base
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "mismatch"
        raise fail(f"{weights}: weights do not fit the network in config.json ({first}); re-export the run") from None
    return model.to(device).eval(), cfg


def load_base_weights(model: nn.Module, section: dict[str, Any], export_dir: Path, kind: str, hint: str) -> None:
    """Put the weights of the base export a partial export was trained on into ``model`` (the network before its
    adapters / hypernetwork / new rows are added): ``section["base_export"]`` must still exist (else the one-line
    error, with ``hint``) and hold the weights of sha256 ``section["base_weights_sha256"]``; a different base is a
    RuntimeError "``kind`` checkpoint for another base model" (load_export turns it into one line)."""
    from ..networks.export import sha256_file

    base_dir = Path(section["base_export"])
    weights = base_dir / "model.safetensors"
    if not weights.is_file():
        raise fail(f"{base_dir}: base export of this {kind} generator not found (needed by {export_dir}); {hint}")
    sha = sha256_file(weights)
    if sha != section["base_weights_sha256"]:
        raise RuntimeError(f"{kind} checkpoint for another base model: {weights} has sha256 {sha[:12]}..., "
                           f"{export_dir} was trained on {str(section['base_weights_sha256'])[:12]}...")
    base, _ = load_export(base_dir)
    try:
        model.load_state_dict(base.state_dict(), strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{kind} checkpoint for another base model ({str(err).splitlines()[0]})") from None


def overlay_state(model: nn.Module, state: dict[str, torch.Tensor], kind: str) -> None:
    """Load the tensors of a partial export (adapters, hypernetwork, new rows) over ``model``'s own, after the
    caller checked their names; a shape that differs is a RuntimeError "``kind`` checkpoint for another base
    model" (load_export turns it into one line)."""
    own = model.state_dict()
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise RuntimeError(f"{kind} checkpoint for another base model ({k}: {tuple(v.shape)} != "
                               f"{tuple(own[k].shape)})")
    model.load_state_dict({**own, **state}, strict=True)


__all__ = ["load_export", "load_base_weights", "overlay_state"]
