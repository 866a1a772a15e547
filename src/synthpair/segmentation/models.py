"""The loader of a trained segmenter from a SEG folder (the builders by name, MONAI 2D networks, are
:mod:`synthpair.networks.segmenters`, re-exported here: ``MODELS``, ``build_segmenter``, ``check_model``).

:func:`load_segmenter` rebuilds the model of one fold of a ``synthpair segment`` folder (``SEG/config.json``
``model``, the training data's channels / classes / size from :func:`segmenter_data_info`) and loads
``SEG/fold_<k>/model.safetensors``; it is the one place that dispatches on the model name when loading.
Diffusion-feature segmenters (``ddpm_*``) are rebuilt by :func:`.ddmodels.rebuild_ddpm_segmenter` around the
frozen generator recorded in ``results.json`` (sha256-checked).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import fail
from ..io import read_json
from ..networks.segmenters import MODELS, build_segmenter, check_model  # noqa: F401 (re-export)


def data_info(ds: Any) -> dict[str, Any]:
    """What a segmenter trained on the prepared dataset ``ds`` needs to be rebuilt and compared:
    ``{"name", "channels", "num_classes", "size": [H, W], "labels": {name: value}}`` (``segment`` records it as
    ``results.json`` ``data_info``)."""
    return {"name": str(ds.info.get("name", Path(ds.root).name)), "channels": ds.channels,
            "num_classes": ds.num_classes, "size": list(ds.size), "labels": ds.labels}


def read_segment_results(seg_dir: Path | str) -> dict[str, Any]:
    """``SEG/results.json`` of a finished ``synthpair segment`` folder; one-line error when it is not one."""
    seg_dir = Path(seg_dir)
    if not seg_dir.is_dir():
        raise fail(f"{seg_dir}: segmentation folder not found; pass a folder written by "
                   f"'synthpair segment DATA --out SEG'")
    path = seg_dir / "results.json"
    if not path.is_file():
        raise fail(f"{path}: missing, so {seg_dir} is not a finished 'synthpair segment' folder; rerun "
                   f"'synthpair segment DATA --out {seg_dir}'")
    res = read_json(path, "segmentation results.json")
    fmt = res.get("format") if isinstance(res, dict) else None
    if fmt != "synthpair-segment":
        raise fail(f"{path}: not a 'synthpair segment' results file (format {fmt!r}); pass a SEG folder written by "
                   f"'synthpair segment'")
    return res


def segmenter_data_info(seg_dir: Path | str, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`data_info` of the data the segmenter in ``seg_dir`` was trained on: ``results.json``
    ``data_info`` when recorded (SEG folders written since it exists are self-contained), else read from the
    ``dataset.json`` of the training DATA folder named by ``results.json`` ``data`` (one-line error when that
    folder is gone)."""
    seg_dir = Path(seg_dir)
    res = read_segment_results(seg_dir) if results is None else results
    if isinstance(res.get("data_info"), dict):
        return dict(res["data_info"])
    data = res.get("data")
    djson = Path(str(data)) / "dataset.json" if data else None
    if djson is None or not djson.is_file():
        raise fail(f"{seg_dir / 'results.json'}: records no data_info and its training data {data} has no dataset.json "
                   f"(channels/size/labels are needed to rebuild the model); restore that folder or retrain with "
                   f"'synthpair segment', which now records data_info")
    info = read_json(djson, "dataset.json")
    return {"name": str(info.get("name", djson.parent.name)), "channels": int(info["channels"]),
            "num_classes": int(info["num_classes"]), "size": [int(v) for v in info["size"]],
            "labels": dict(info["labels"])}


def segmenter_weights(seg_dir: Path | str, fold: int) -> Path:
    """``SEG/fold_<fold>/model.safetensors``; one-line error when the fold was not trained or the file is gone."""
    seg_dir = Path(seg_dir)
    path = seg_dir / f"fold_{fold}" / "model.safetensors"
    if not path.is_file():
        have = sorted(p.parent.name for p in seg_dir.glob("fold_*/model.safetensors"))
        raise fail(f"{path}: missing (this SEG has {', '.join(have) or 'no fold weights'}); choose a trained fold or "
                   f"rerun 'synthpair segment DATA --out {seg_dir} --folds {fold}'")
    return path


def load_segmenter(seg_dir: Path | str, fold: int, device: torch.device | str = "cpu") -> nn.Module:
    """The trained segmenter of ``fold`` in the SEG folder ``seg_dir``, in eval mode on ``device``.

    The returned module maps images float ``(B, C, H, W)`` in [-1, 1] (C, H, W those of
    :func:`segmenter_data_info`) to logits ``(B, num_classes, H, W)``; ``argmax(1)`` gives the labels
    ``segment`` scored. One-line :class:`~synthpair.errors.SynthpairError` for a missing/unreadable
    ``results.json``, ``config.json`` or weights, an unknown model name, or weights of another shape.
    """
    seg_dir = Path(seg_dir)
    res = read_segment_results(seg_dir)
    cfg_path = seg_dir / "config.json"
    cfg = read_json(cfg_path, "segmentation config.json")
    name = str(cfg.get("model", "unet"))
    info = segmenter_data_info(seg_dir, res)
    weights = segmenter_weights(seg_dir, fold)
    # Dispatch on the model name: a model family that is not a plain MONAI network (e.g. diffusion-feature
    # segmenters "ddpm_*") gets its own branch here, before the unknown-model error.
    from .ddmodels import DDPM_MODELS, is_ddpm

    if name in MODELS:
        model = target = build_segmenter(name, info["channels"], info["num_classes"], tuple(info["size"]))
    elif is_ddpm(name):  # the frozen generator comes from results.json's features record (sha256-checked)
        from .ddmodels import rebuild_ddpm_segmenter

        model, target = rebuild_ddpm_segmenter(seg_dir, fold, res, cfg, info, device)
    else:
        raise fail(f"{cfg_path}: model {name!r} is unknown to this synthpair (known: "
                   f"{', '.join((*MODELS, *DDPM_MODELS))}); use the synthpair version that trained it")
    _load_weights(target, weights, name)
    return model.eval().to(device)


def _load_weights(model: nn.Module, weights: Path, name: str) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type for a truncated/corrupt file
        raise fail(f"{weights}: unreadable weights ({type(err).__name__}); rerun 'synthpair segment' for this "
                   f"folder") from None
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise fail(f"{weights}: weights do not fit model {name!r} rebuilt from config.json and the training data's "
                   f"channels/classes/size; the folder was altered — rerun 'synthpair segment'") from None
