"""A check of an nnU-Net v2 raw dataset folder against nnU-Net's documented format (2-D natural images).

Written from nnU-Net v2's ``documentation/dataset_format.md``, ``documentation/manual_data_splits.md``, the
``NaturalImage2DIO`` reader and ``verify_dataset_integrity`` (MIC-DKFZ/nnUNet), without importing nnU-Net:

* the folder is ``DatasetXXX_Name`` (three-digit id) holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``;
* ``dataset.json`` has ``channel_names`` (keys ``"0" .. "C-1"``), ``labels`` (name → int, ``background`` = 0,
  consecutive 0..K), ``numTraining`` and ``file_ending`` (here a lossless 2-D format: .png, .bmp, .tif);
* every image is ``imagesTr/{CASE}_{XXXX}{file_ending}`` (four-digit channel index, 0000, 0001, … without
  gaps, the same indices for every case), every label ``labelsTr/{CASE}{file_ending}``; every case has its
  label and every label its images; the number of cases equals ``numTraining``;
* the channels of a case = the sum over its files of 1 (grayscale) or 3/4 (an RGB(A) file: nnU-Net's natural
  image reader turns ONE RGB file into three channels) and equals ``len(channel_names)``;
* a label is one-channel, has the image's height and width, and holds only values listed in ``labels``;
* ``splits_final.json`` (optional; in the raw folder nnU-Net ≥ 2.3.1 copies it into the preprocessed folder
  when planning) is a list of ``{"train": [...], "val": [...]}`` whose names are existing cases, none twice
  and none both in ``train`` and ``val`` of a fold.

:func:`check_nnunet_raw` raises a one-line :class:`~synthpair.errors.SynthpairError` naming the file; the
export (:mod:`.nnunet_export`) runs it on what it wrote before the folder appears.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import fail
from ..io import read_json

NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif")
"""File endings of nnU-Net's ``NaturalImage2DIO`` (lossless 2-D formats)."""

DATASET_DIR = re.compile(r"Dataset(\d{3})_(\S+)")
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "RGBA": 4}


def _image_channels(path: Path) -> tuple[int, tuple[int, int]]:
    """(channels as nnU-Net's natural-image reader sees them, (height, width)) of a 2-D image file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except OSError as err:
        raise fail(f"{path}: unreadable image ({err}); rewrite it as a lossless 2-D image") from None
    if mode not in _MODE_CHANNELS:
        raise fail(f"{path}: image mode {mode!r} (palette/other); nnU-Net reads grayscale or RGB(A); save it as "
                   f"mode L or RGB")
    return _MODE_CHANNELS[mode], (h, w)


def _label_values(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except OSError as err:
        raise fail(f"{path}: unreadable label ({err}); rewrite it as a one-channel integer image") from None
    if arr.ndim != 2 or mode not in ("L", "I", "I;16", "1"):
        raise fail(f"{path}: label image of mode {mode!r} {tuple(arr.shape)}; nnU-Net labels are one-channel "
                   f"integer maps (save as uint8 mode L)")
    return np.unique(arr), (arr.shape[0], arr.shape[1])


def _check_dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    meta = read_json(path, "nnU-Net dataset.json")
    if not isinstance(meta, dict):
        raise fail(f"{path}: expected a JSON object; write channel_names, labels, numTraining, file_ending")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise fail(f"{path}: missing {', '.join(missing)}; nnU-Net v2 needs {', '.join(REQUIRED_KEYS)}")
    ch = meta["channel_names"]
    if not isinstance(ch, dict) or not ch or set(ch) != {str(i) for i in range(len(ch))}:
        raise fail(f"{path}: channel_names must map \"0\", \"1\", … (no gaps) to names, got {ch!r}")
    labels = meta["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in labels.values()):
        raise fail(f"{path}: labels must map names to integers (region-based labels are not checked here), got "
                   f"{labels!r}")
    if labels.get("background") != 0:
        raise fail(f"{path}: labels must contain \"background\": 0 (nnU-Net's background label)")
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise fail(f"{path}: label values {values} are not consecutive 0, 1, 2, …; renumber them")
    n = meta["numTraining"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise fail(f"{path}: numTraining must be a positive integer, got {n!r}")
    ending = meta["file_ending"]
    if ending not in NATURAL_IMAGE_ENDINGS:
        raise fail(f"{path}: file_ending {ending!r}; this check reads 2-D natural images "
                   f"({', '.join(NATURAL_IMAGE_ENDINGS)}) only")
    return meta


def _check_splits(path: Path, cases: set[str]) -> list[dict[str, int]]:
    splits = read_json(path, "splits_final.json")
    if not isinstance(splits, list) or not splits:
        raise fail(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}} (nnU-Net's "
                   f"splits_final.json)")
    out = []
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or sorted(fold) != ["train", "val"]:
            raise fail(f"{path}: fold {k} must be an object with exactly the keys train and val")
        for key in ("train", "val"):
            names = fold[key]
            if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
                raise fail(f"{path}: fold {k} {key} must be a non-empty list of case identifiers")
            if len(set(names)) != len(names):
                dup = next(x for x in names if names.count(x) > 1)
                raise fail(f"{path}: fold {k} {key} lists {dup!r} twice; list every case once")
            unknown = sorted(set(names) - cases)
            if unknown:
                raise fail(f"{path}: fold {k} {key} names {len(unknown)} case(s) that are not in imagesTr (e.g. "
                           f"{unknown[0]!r}); list existing case identifiers only")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise fail(f"{path}: fold {k} has {both[0]!r} in both train and val; a case belongs to one side")
        out.append({"train": len(fold["train"]), "val": len(fold["val"])})
    return out


def check_nnunet_raw(folder: Path | str, *, check_name: bool = True, require_splits: bool = False
                     ) -> dict[str, Any]:
    """Check an nnU-Net v2 raw dataset folder of 2-D natural images (see the module docstring).

    ``check_name=False`` skips the ``DatasetXXX_Name`` folder-name rule (a folder still being built under a
    temporary name). Returns ``{"cases": [...], "channels", "labels", "num_training", "file_ending",
    "splits": [{"train": n, "val": n}, ...] | None}``.
    """
    folder = Path(folder)
    if check_name and not DATASET_DIR.fullmatch(folder.name):
        raise fail(f"{folder}: nnU-Net dataset folders are named DatasetXXX_Name (three-digit id); rename it")
    meta = _check_dataset_json(folder)
    ending = meta["file_ending"]
    n_channels = len(meta["channel_names"])
    allowed = set(meta["labels"].values())
    img_dir, lab_dir = folder / "imagesTr", folder / "labelsTr"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise fail(f"{d}: missing; an nnU-Net raw dataset has imagesTr/ and labelsTr/ next to dataset.json")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    by_case: dict[str, dict[int, Path]] = {}
    for p in sorted(img_dir.iterdir()):
        if p.name.startswith("."):
            continue
        m = pattern.fullmatch(p.name)
        if not p.is_file() or not m:
            raise fail(f"{p}: not an nnU-Net image name; images are {{CASE}}_{{XXXX}}{ending} (four-digit channel)")
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
    if not by_case:
        raise fail(f"{img_dir}: no images; write {{CASE}}_0000{ending} files")
    labels = {}
    for p in sorted(lab_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_file() or not p.name.endswith(ending):
            raise fail(f"{p}: not an nnU-Net label name; labels are {{CASE}}{ending}")
        labels[p.name[: -len(ending)]] = p
    orphans = sorted(set(labels) - set(by_case))
    if orphans:
        raise fail(f"{labels[orphans[0]]}: label without image (no {img_dir}/{orphans[0]}_0000{ending}); add the "
                   f"image or remove the label")
    if len(by_case) != meta["numTraining"]:
        raise fail(f"{folder / 'dataset.json'}: numTraining is {meta['numTraining']} but imagesTr holds "
                   f"{len(by_case)} case(s); set numTraining to the number of cases")
    indices = None
    for case, files in sorted(by_case.items()):
        idx = sorted(files)
        if idx != list(range(len(idx))):
            raise fail(f"{img_dir}/{case}_0000{ending}: case {case!r} has channel files {idx}; channel indices "
                       f"run 0000, 0001, … without gaps")
        if indices is None:
            indices = idx
        elif idx != indices:
            raise fail(f"{img_dir}/{case}_0000{ending}: case {case!r} has channel files {idx} but other cases have "
                       f"{indices}; every case needs the same channels")
        shapes = []
        total = 0
        for k in idx:
            c, hw = _image_channels(files[k])
            total += c
            shapes.append(hw)
        if len(set(shapes)) != 1:
            raise fail(f"{files[0]}: the channel files of case {case!r} differ in size {sorted(set(shapes))}; "
                       f"channels must share one geometry")
        if total != n_channels:
            raise fail(f"{files[0]}: case {case!r} has {total} channel(s) but dataset.json channel_names lists "
                       f"{n_channels}; an RGB file counts as 3 channels (R, G, B)")
        if case not in labels:
            raise fail(f"{files[0]}: image without label (no {lab_dir}/{case}{ending}); add it or remove the case")
        values, lab_hw = _label_values(labels[case])
        if lab_hw != shapes[0]:
            raise fail(f"{labels[case]}: label size {lab_hw} differs from the image size {shapes[0]}; they must match")
        bad = sorted(set(int(v) for v in values) - allowed)
        if bad:
            raise fail(f"{labels[case]}: label value(s) {bad} are not in dataset.json labels "
                       f"{sorted(allowed)}; fix the label or add the class")
    splits_path = folder / "splits_final.json"
    splits = None
    if splits_path.is_file():
        splits = _check_splits(splits_path, set(by_case))
    elif require_splits:
        raise fail(f"{splits_path}: missing; write nnU-Net's list of {{\"train\", \"val\"}} folds")
    return {"cases": sorted(by_case), "channels": n_channels, "labels": dict(meta["labels"]),
            "num_training": meta["numTraining"], "file_ending": ending, "splits": splits}


__all__ = ["check_nnunet_raw", "NATURAL_IMAGE_ENDINGS"]
