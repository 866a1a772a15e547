"""Loading a generator export: ``load_export(RUN/export) -> (model, export_config)``.

The export files themselves (``config.json`` + ``network.json`` + ``model.safetensors`` + ``version.json``, written
by :func:`synthpair.networks.export.save_export`) belong to the networks layer, and since issue 13 the network
rebuilds itself from ``network.json`` (:func:`synthpair.networks.pretrained.from_pretrained`). Exports written
before that have no ``network.json``: their METHOD rebuilds the network
(:meth:`synthpair.methods.base.Method.build_from_export` / ``load_weights``), which is why ``load_export`` — the one
entry point for both — lives here, one layer up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import fail
from ..networks.export import read_export_config
from ..networks.pretrained import overlay_state, register_legacy_loader  # overlay_state: re-exported


def load_export(export_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of an export and load its (EMA) weights → ``(model in eval mode, export_config)``.

    An export with ``network.json`` (written since issue 13) is rebuilt by the network itself
    (:func:`synthpair.networks.pretrained.from_pretrained`); an older one through its method
    (:meth:`~synthpair.methods.base.Method.build_from_export` + :meth:`~synthpair.methods.base.Method.load_weights`).
    Errors (one line, naming the file): folder/config/weights missing, sha256 mismatch with ``version.json``,
    unreadable safetensors, or weights that do not fit the configured network.
    """
    from ..networks.pretrained import from_pretrained, has_network_file, read_weights
    from .base import DataInfo, get_method

    export_dir = Path(export_dir)
    cfg = read_export_config(export_dir)
    if has_network_file(export_dir):
        return from_pretrained(export_dir, device), cfg
    state, _ = read_weights(export_dir)
    method = get_method(cfg["method"])
    model = method.build_from_export(DataInfo.from_dict(cfg["data"]), cfg, export_dir)
    try:
        method.load_weights(model, state, cfg, export_dir)  # partial exports: adapters / control branch over a base
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "mismatch"
        weights = export_dir / "model.safetensors"
        raise fail(f"{weights}: weights do not fit the network in config.json ({first}); re-export the run") from None
    return model.to(device).eval(), cfg


def _load_legacy(export_dir: Path) -> nn.Module:
    """The base loader of partial networks for bases written before ``network.json`` existed."""
    return load_export(export_dir)[0]


register_legacy_loader(_load_legacy)


__all__ = ["load_export", "overlay_state"]
