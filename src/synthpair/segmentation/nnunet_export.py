"""``synthpair export nnunet``: a prepared folder (+ synthetic folders) as an nnU-Net v2 raw dataset.

Layout written under ``RAW`` (the user's ``nnUNet_raw``), per nnU-Net v2's ``documentation/dataset_format.md``::

    RAW/DatasetXXX_Name/
      dataset.json          channel_names, labels, numTraining, file_ending ".png", overwrite_image_reader_writer
      imagesTr/<case>_0000.png   one file per case: grayscale (channel_names {"0": modality}) or RGB — nnU-Net's
                                 natural-image reader reads ONE RGB png as three channels ({"0": "R", "1": "G",
                                 "2": "B"}, as its Dataset120_RoadSegmentation example)
      labelsTr/<case>.png        uint8 label map 0..K (DATA's labels, consecutive, background 0)
      splits_final.json     nnU-Net's list of {"train": [...], "val": [...]}, one entry per fold of DATA (same index)
      synthpair_export.json provenance: DATA, synthetic folders, per-fold counts, case → (folder, item, case)

nnU-Net "cases" are our items (one 2-D image each): a real item keeps its id (characters outside
``[A-Za-z0-9_-]`` become ``_``), a pair of the j-th synthetic folder is ``syn<j>_<id>``. Fold k of
``splits_final.json``: ``train`` = the fold's labelled real training items (+ every synthetic pair when k is one of
the exported ``folds``), ``val`` = the fold's real test items — synthetic pairs are never validation cases, and a
case-level split (all slices / near-duplicates of a case on one side) is kept because ``val`` is DATA's test
split. nnU-Net ≥ 2.3.1 copies a ``splits_final.json`` found in the raw folder into ``nnUNet_preprocessed`` when
planning (and asserts an existing one matches); older versions need it copied by hand.

Unlabelled items (``"labelled": false``: ``prepare --unlabelled`` images, the hidden masks of a label-budget
view) are never exported — nnU-Net has no unlabelled cases — so a budget view exports its labelled items only.
Synthetic folders pass the same checks as ``synthpair segment``: the leakage guard
(:func:`~synthpair.segmentation.leakage.check_synthetic`, for every fold they enter) and the label budget
(:func:`~synthpair.synthesis.accounting.check_label_budget` against each such fold's labelled training items).
Everything is checked before anything is written; the folder is built under a temporary name, checked with
:func:`~synthpair.segmentation.nnunet_format.check_nnunet_raw` and renamed into place.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import to_dict
from ..data.dataset import PreparedDataset, read_png
from ..errors import SynthpairError, fail
from ..io import atomic_output_dir, save_png_atomic, write_json_atomic
from .leakage import check_no_leakage, check_synthetic
from .nnunet_format import check_nnunet_raw

FORMAT = "synthpair-nnunet-export"
PROVENANCE = "synthpair_export.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class NnunetExportConfig:
    """What ``synthpair export nnunet`` writes.

    ``dataset_id``: nnU-Net's three-digit dataset id (1..999; the folder is ``Dataset{id:03d}_{name}``).
    ``name``: dataset name (letters, digits, ``_``, ``-``); empty = DATA's ``dataset.json`` name.
    ``folds``: folds of DATA whose training lists get the synthetic pairs (each synthetic folder is checked
    against them); empty = every fold. ``splits_final.json`` always holds every fold of DATA, under its own index.
    ``allow_label_excess``: accept synthetic folders whose models saw masks beyond a fold's labelled training
    items (as ``segment --allow-more-labels``); recorded in ``synthpair_export.json``.
    """

    dataset_id: int = 501
    name: str = ""
    folds: tuple[int, ...] = ()
    allow_label_excess: bool = False

    def __post_init__(self) -> None:
        if not 1 <= int(self.dataset_id) <= 999:
            raise fail(f"--dataset-id {self.dataset_id}: nnU-Net dataset ids are 1..999 (three digits); pick an "
                       f"unused one, e.g. 501")
        if self.name and not _NAME.fullmatch(self.name):
            raise fail(f"--name {self.name!r}: use letters, digits, '_' and '-' only (nnU-Net folder "
                       f"Dataset{int(self.dataset_id):03d}_<name>), e.g. --name Busi")


def case_identifier(item_id: str) -> str:
    """An item id as an nnU-Net case identifier: characters outside ``[A-Za-z0-9_-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(item_id))


def dataset_dir_name(ds: PreparedDataset, cfg: NnunetExportConfig) -> str:
    """``Dataset{id:03d}_{name}``; the default name is DATA's name with other characters dropped."""
    name = cfg.name or re.sub(r"[^A-Za-z0-9_-]", "", str(ds.info.get("name", ""))) or "synthpair"
    if not name[0].isalnum():
        name = "D" + name
    return f"Dataset{int(cfg.dataset_id):03d}_{name}"


def channel_names(ds: PreparedDataset) -> dict[str, str]:
    """nnU-Net ``channel_names``: ``{"0": modality}`` for grayscale (a name nnU-Net does not know means per-image
    z-scoring; ``CT`` selects its CT normalisation, right for ``prepare``'s fixed HU window), ``R``/``G``/``B``
    for RGB (one file, three channels)."""
    if ds.channels == 3:
        return {"0": "R", "1": "G", "2": "B"}
    return {"0": ds.modality if ds.modality and ds.modality != "unknown" else "image"}


def _check_labels(ds: PreparedDataset) -> dict[str, int]:
    labels = {str(k): int(v) for k, v in sorted(ds.labels.items(), key=lambda kv: kv[1])}
    if labels.get("background") != 0 or sorted(labels.values()) != list(range(len(labels))):
        raise fail(f"{ds.root / 'dataset.json'}: labels {labels} are not consecutive 0..K with \"background\": 0, "
                   f"which nnU-Net requires; rerun 'synthpair prepare'")
    return labels


def _check_pair(root: Path, item_id: str, ds_size: tuple[int, int], channels: int, num_classes: int) -> None:
    """Read one image + mask of a prepared/synthetic folder and check size, channels and label values."""
    img = read_png(root / "images" / f"{item_id}.png")
    want = (*ds_size, 3) if channels == 3 else ds_size
    if img.shape != want:
        raise fail(f"{root / 'images' / (item_id + '.png')}: shape {img.shape}, expected {want} from "
                   f"{root / 'dataset.json'}; rerun the stage that wrote it")
    msk = read_png(root / "masks" / f"{item_id}.png")
    if msk.shape != ds_size:
        raise fail(f"{root / 'masks' / (item_id + '.png')}: shape {msk.shape}, expected {ds_size}; rerun the stage "
                   f"that wrote it")
    top = int(msk.max(initial=0))
    if top >= num_classes:
        raise fail(f"{root / 'masks' / (item_id + '.png')}: label value {top} but the real data has labels "
                   f"0..{num_classes - 1}; rerun the stage that wrote it")


def _synthetic_folds(syn_dirs: Sequence[Path], ds: PreparedDataset, cfg: NnunetExportConfig) -> list[int]:
    """The folds whose training lists get the synthetic pairs; with no ``--fold`` every fold, refused (one line
    naming the folds each folder may enter) when a folder depends on a test case of some fold."""
    for k in cfg.folds:
        ds.split(k)  # one-line error for an unknown fold
    if cfg.folds:
        return sorted(set(cfg.folds))
    every = list(range(ds.num_folds))
    if not syn_dirs:
        return every
    from ..synthesis.manifest import read_manifest

    for syn in syn_dirs:
        records = read_manifest(syn, allow_empty=False)
        clean = []
        for k in every:
            try:
                check_no_leakage(syn, records, ds, [k])
                clean.append(k)
            except SynthpairError:
                pass
        if clean and clean != every:
            raise fail(f"--synthetic {syn}: its pairs depend on test cases of fold(s) "
                       f"{', '.join(str(k) for k in every if k not in clean)} of {ds.root}; export with --fold "
                       f"{' '.join(str(k) for k in clean)} (the folds whose training lists may hold them)")
    return every


def export_nnunet(data: Path | str, raw: Path | str, cfg: NnunetExportConfig = NnunetExportConfig(),
                  synthetic: Sequence[Path | str] = (), *, overwrite: bool = False) -> Path:
    """Write DATA (+ the ``synthetic`` folders) as ``raw/DatasetXXX_Name`` (module docstring). Returns the folder.

    Refused with one line before anything is written: an unknown fold or bad id/name, labels nnU-Net cannot
    take, a synthetic folder that fails the leakage guard or the label budget of a fold it enters, a file of the
    wrong size or with labels outside DATA's, identifiers that collide, another dataset with the same id in RAW.
    """
    ds = PreparedDataset.open(data)
    raw = Path(raw)
    if raw.exists() and not raw.is_dir():
        raise fail(f"--out {raw}: is a file; pass the nnUNet_raw folder (created if missing)")
    if ds.num_folds < 1:
        raise fail(f"{ds.root / 'splits.json'}: no folds; rerun 'synthpair prepare'")
    labels = _check_labels(ds)
    syn_dirs = [Path(s) for s in synthetic]
    if len({s.resolve() for s in syn_dirs}) != len(syn_dirs):
        raise fail("--synthetic: the same folder is given twice; pass each synthetic folder once")
    syn_folds = _synthetic_folds(syn_dirs, ds, cfg)
    from ..synthesis.accounting import check_label_budget

    syn_sets = []
    for syn_dir in syn_dirs:
        syn = check_synthetic(syn_dir, ds, syn_folds)
        budget = {k: check_label_budget(syn_dir, ds, ds.split(k)[0], allow=cfg.allow_label_excess)
                  for k in syn_folds}
        syn_sets.append((syn_dir, syn, budget))

    # cases: labelled real items of some fold, then the synthetic pairs
    splits = [ds.split(k) for k in range(ds.num_folds)]
    in_folds = {i for tr, te in splits for i in (*tr, *te)}
    real_ids = [i for i in ds.labelled_ids if i in in_folds]
    cases: dict[str, dict[str, Any]] = {}

    def add(ident: str, rec: dict[str, Any], where: Path) -> None:
        if ident in cases:
            raise fail(f"{where}: item {rec['id']!r} becomes nnU-Net case {ident!r}, which {cases[ident]['folder']} "
                       f"item {cases[ident]['id']!r} already is; rename one of the items")
        cases[ident] = rec

    real_ident = {}
    for i in real_ids:
        real_ident[i] = case_identifier(i)
        add(real_ident[i], {"source": "real", "folder": str(ds.root.resolve()), "id": i, "case": ds.case_of(i)},
            ds.root)
    syn_ident: list[list[str]] = []
    for j, (syn_dir, syn, _) in enumerate(syn_sets, start=1):
        names = []
        for i in syn.ids:
            ident = f"syn{j}_{case_identifier(i)}"
            add(ident, {"source": "synthetic", "folder": str(syn_dir.resolve()), "id": i, "case": None}, syn_dir)
            names.append(ident)
        syn_ident.append(names)

    # every file read and checked before the folder exists
    for i in real_ids:
        _check_pair(ds.root, i, ds.size, ds.channels, len(labels))
    for syn_dir, syn, _ in syn_sets:
        for i in syn.ids:
            _check_pair(syn_dir, i, ds.size, ds.channels, len(labels))

    all_syn = [n for names in syn_ident for n in names]
    folds_json, folds_info = [], []
    for k, (train, test) in enumerate(splits):
        extra = all_syn if k in syn_folds else []
        if not train or not test:
            raise fail(f"{ds.root / 'splits.json'}: fold {k} has {len(train)} labelled training and {len(test)} test "
                       f"item(s); nnU-Net needs both; rerun 'synthpair prepare' with fewer folds")
        folds_json.append({"train": [real_ident[i] for i in train] + extra, "val": [real_ident[i] for i in test]})
        folds_info.append({"fold": k, "train_real": len(train), "train_synthetic": len(extra), "val": len(test),
                           "synthetic": bool(extra)})

    name = dataset_dir_name(ds, cfg)
    taken = sorted(p.name for p in raw.glob(f"Dataset{int(cfg.dataset_id):03d}_*") if p.name != name) \
        if raw.is_dir() else []
    if taken:
        raise fail(f"{raw / taken[0]}: nnU-Net dataset id {int(cfg.dataset_id):03d} is taken (nnU-Net finds datasets "
                   f"by id); choose another --dataset-id or remove that folder")
    meta = {"channel_names": channel_names(ds), "labels": labels, "numTraining": len(cases), "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO", "name": name,
            "description": f"exported by synthpair from {ds.root.resolve()}"
                           + (f" + {len(all_syn)} synthetic pair(s) in the training lists of fold(s) "
                              f"{', '.join(map(str, syn_folds))}" if all_syn else "")}
    provenance = {
        "format": FORMAT, "version": 1, "data": str(ds.root.resolve()), "dataset": name,
        "config": to_dict(cfg), "synthetic_folds": syn_folds if all_syn else [],
        "synthetic": [{"folder": str(d.resolve()), "prefix": f"syn{j}_", "pairs": len(s.ids),
                       "label_budget": {str(k): v for k, v in b.items()}}
                      for j, (d, s, b) in enumerate(syn_sets, start=1)],
        "unlabelled_skipped": len(ds.unlabelled_ids), "labelled_in_no_fold": len(set(ds.labelled_ids) - in_folds),
        "folds": folds_info, "cases": cases,
    }
    with atomic_output_dir(raw / name, overwrite=overwrite) as tmp:
        for ident, rec in cases.items():
            root = Path(rec["folder"])
            img = read_png(root / "images" / f"{rec['id']}.png")
            save_png_atomic(tmp / "imagesTr" / f"{ident}_0000.png", img)
            msk = read_png(root / "masks" / f"{rec['id']}.png").astype(np.uint8)
            save_png_atomic(tmp / "labelsTr" / f"{ident}.png", msk)
        write_json_atomic(tmp / "dataset.json", meta)
        write_json_atomic(tmp / "splits_final.json", folds_json)
        write_json_atomic(tmp / PROVENANCE, provenance)
        check_nnunet_raw(tmp, check_name=False, require_splits=True)
    return raw / name


__all__ = ["NnunetExportConfig", "export_nnunet", "case_identifier", "channel_names", "dataset_dir_name"]
