"""``prepare``: a source folder → the prepared dataset folder DATA (docs/architecture.md).

Steps: detect the source kind and list pairs (:mod:`.readers`) → read each image/volume, normalise its
intensities to [-1, 1] (:mod:`.normalise`; each NAMED channel of a multi-channel source on its own, recorded
as ``channel_names`` in dataset.json), resize to ``size × size`` (:mod:`.resize`; aspect ratio not
preserved), write ``images/<id>.png`` + ``masks/<id>.png`` → find near-duplicates on 32×32 thumbnails
(:mod:`.dedup`) and put each duplicate group into one case → seeded K-fold splits by case
(:mod:`.splits`), or the fixed splits of a split file (:mod:`.split_file`) → ``dataset.json``,
``splits.json``, ``duplicates.json``.

Unlabelled images (``unlabelled=DIR``, or an ``unlabelled/`` folder inside the source) are read, normalised
and resized like the labelled ones and written without a mask (``"labelled": false`` in dataset.json). They
are de-duplicated together with the labelled images: an unlabelled near-duplicate of a labelled image is
dropped (it could be the twin of a test image; the labelled copy carries the same content) and reported in
``duplicates.json`` (``dropped_unlabelled``). Unlabelled items are on the training side of every fold
(``splits.json`` ``unlabelled_cases``). An nnU-Net folder's ``imagesTs`` is a test set and is never read.

Everything is built in a temporary sibling folder and renamed at the end (``atomic_output_dir``), so on any
error ``out`` does not exist (or keeps its previous complete content).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import to_dict
from ..errors import fail
from ..io import atomic_output_dir, write_json_atomic
from .dataset import dataset_info, write_dataset_json, write_pair
from .dedup import THUMB, case_level_pairs, find_duplicate_pairs, thumbnail, union_groups
from .normalise import apply_range, describe, intensity_range, resolve_method
from .readers import detect_source, iter_source, iter_unlabelled, list_unlabelled
from .resize import resize_image, resize_mask, resized_spacing
from .splits import kfold_by_case

_MODALITY_ALIASES = {"CT": "CT", "MR": "MR", "MRI": "MR", "T1": "MR", "T2": "MR", "FLAIR": "MR", "ADC": "MR",
                     "T1W": "MR", "T2W": "MR", "US": "US", "ULTRASOUND": "US"}


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``synthpair prepare`` (all JSON-able; saved as ``prepare_config`` in dataset.json).

    - ``size``: side of the square output grid in pixels (aspect ratio is not preserved).
    - ``folds`` / ``seed``: K-fold splits by case, shuffled with ``seed``.
    - ``modality``: "auto" (nnU-Net ``channel_names`` → CT/MR/…, else "unknown") or a name such as US, CT, MR.
    - ``normalisation``: "auto" | "percentile" | "ct_window" | "fixed" | "minmax" (see :mod:`.normalise`);
      auto = ct_window for CT, fixed (/255) for RGB uint8, percentile ``low``/``high`` otherwise.
    - ``ct_center`` / ``ct_width``: CT window in HU.
    - ``axis``: slicing axis of volumes (0, 1, 2 in voxel-array order).
    - ``foreground_only``: keep only slices with foreground, plus ``empty_fraction`` (0..1) of the empty
      slices chosen at random (seeded per case). Volumes only.
    - ``keep_empty``: keep 2-D pairs whose mask is empty (e.g. BUSI "normal" images).
    - ``dedup``: detect near-duplicates and keep each group in one case; ``dedup_threshold`` is the minimum
      Pearson correlation (-1..1) of 32×32 thumbnails minus the dataset-mean thumbnail, ``dedup_max_hamming`` the maximum dHash distance
      (bits out of 64); both must hold.
    - ``name``: dataset name (default: the source folder name).
    - ``colour_normalisation``: "none" or "reinhard" — RGB images only: Reinhard normalisation in L*a*b* to the
      dataset's mean statistics (DiffusionDCI sec. IV-B-1; :mod:`.colour`), applied after resizing.
    - ``unlabelled``: a folder of images without masks ("" = none; ``SRC/unlabelled/`` is used when present).
    - ``splits_file`` / ``splits_key``: fixed splits from a file (:mod:`.split_file`) instead of K folds.
    """

    size: int = 64
    folds: int = 5
    seed: int = 0
    modality: str = "auto"
    normalisation: str = "auto"
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    ct_center: float = 40.0
    ct_width: float = 400.0
    axis: int = 2
    foreground_only: bool = False
    empty_fraction: float = 0.0
    keep_empty: bool = True
    dedup: bool = True
    dedup_threshold: float = 0.9
    dedup_max_hamming: int = 12
    name: str | None = None
    colour_normalisation: str = "none"
    unlabelled: str = ""
    splits_file: str = ""
    splits_key: str = ""

    def __post_init__(self) -> None:
        if self.colour_normalisation not in ("none", "reinhard"):
            raise fail(f"colour_normalisation={self.colour_normalisation!r}: choose 'none' or 'reinhard'")
        if not 8 <= self.size <= 4096:
            raise fail(f"size={self.size}: must be between 8 and 4096 pixels")
        if self.folds < 2:
            raise fail(f"folds={self.folds}: need at least 2 folds")
        if self.axis not in (0, 1, 2):
            raise fail(f"axis={self.axis}: slicing axis must be 0, 1 or 2")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise fail(f"empty_fraction={self.empty_fraction}: must be between 0 and 1")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise fail(f"low_percentile/high_percentile={self.low_percentile}/{self.high_percentile}: "
                       f"need 0 <= low < high <= 100")
        if self.ct_width <= 0:
            raise fail(f"ct_width={self.ct_width}: must be > 0")
        if not -1.0 <= self.dedup_threshold <= 1.0:
            raise fail(f"dedup_threshold={self.dedup_threshold}: a correlation between -1 and 1 (e.g. 0.95)")
        if not 0 <= self.dedup_max_hamming <= 64:
            raise fail(f"dedup_max_hamming={self.dedup_max_hamming}: bits, between 0 and 64")
        resolve_method(self.normalisation, "unknown", 1)


def _modality(cfg: PrepareConfig, source_modality: str | None) -> str:
    if cfg.modality != "auto":
        return cfg.modality
    if source_modality:
        return _MODALITY_ALIASES.get(source_modality.strip().upper(), source_modality.strip())
    return "unknown"


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def prepare_dataset(src: Path | str, out: Path | str, cfg: PrepareConfig | None = None, *,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Prepare ``src`` into the DATA folder ``out`` (see module doc); returns ``out``.

    Raises :class:`~synthpair.errors.SynthpairError` (one line naming the file and the fix) on bad input;
    ``out`` is then left untouched/absent.
    """
    from tqdm import tqdm

    cfg = cfg or PrepareConfig()
    src, out = Path(src).resolve(), Path(out)
    if out.resolve() == src or src in out.resolve().parents:
        raise fail(f"{out}: output folder is inside the source folder {src}; choose an --out elsewhere")
    t0 = time.perf_counter()
    source = detect_source(src)
    modality = _modality(cfg, source.modality)
    unl_dir = Path(cfg.unlabelled) if cfg.unlabelled else (src / "unlabelled" if (src / "unlabelled").is_dir() else None)
    unl_files = list_unlabelled(unl_dir) if unl_dir is not None else []
    spec = None
    if cfg.splits_file:
        from .split_file import read_split_file

        spec = read_split_file(cfg.splits_file, cfg.splits_key or None, cfg.name or src.name)

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]] = []
        max_label = 0
        method_used: set[str] = set()
        bar = tqdm(total=len(source.pairs) + len(unl_files), desc=f"prepare {src.name}", unit="file",
                   file=sys.stderr, disable=not progress, leave=False)
        groups = iter_source(source, axis=cfg.axis, foreground_only=cfg.foreground_only,
                             empty_fraction=cfg.empty_fraction, seed=cfg.seed)
        unl_groups = iter_unlabelled(unl_dir, unl_files, axis=cfg.axis) if unl_files else iter(())
        # first pass: read, normalise, resize (kept in memory at the prepared size only)
        named = source.channel_names  # multi-channel, not RGB: each channel normalised on its own
        for group in (*groups, *unl_groups):
            bar.update(1)
            volumetric = any(it.slice_index is not None for it in group.items)
            chans = 3 if group.stats.ndim == (4 if volumetric else 3) else 1
            per_channel = named is not None and group.stats.ndim == (4 if volumetric else 3)
            method = resolve_method(cfg.normalisation, modality, 1 if per_channel else chans)
            if method == "fixed" and group.dtype not in ("uint8", "uint16"):
                method = "minmax"
            method_used.add(method)
            ranges = [intensity_range(method, group.stats[..., k] if per_channel else group.stats, group.dtype,
                                      low=cfg.low_percentile, high=cfg.high_percentile, ct_center=cfg.ct_center,
                                      ct_width=cfg.ct_width)
                      for k in range(group.stats.shape[-1] if per_channel else 1)]
            lo, hi = ranges[0]
            for it in group.items:
                labelled = it.mask is not None
                if labelled and not cfg.keep_empty and it.slice_index is None and not np.any(it.mask):
                    continue
                if per_channel:
                    normed = np.stack([apply_range(it.image[..., k], a, b) for k, (a, b) in enumerate(ranges)], -1)
                else:
                    normed = apply_range(it.image, lo, hi)
                img = resize_image(normed, cfg.size)
                img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
                msk = resize_mask(it.mask, cfg.size) if labelled else None
                if labelled:
                    max_label = max(max_label, int(it.mask.max()))
                meta = {"id": it.id, "case": it.case, "source_image": it.source_image,
                        "source_mask": it.source_mask, "slice_index": it.slice_index,
                        "spacing": resized_spacing(it.spacing, it.image.shape[:2], cfg.size),
                        "original_size": [int(it.image.shape[0]), int(it.image.shape[1])],
                        "foreground_fraction": float(np.mean(msk > 0)) if labelled else None,
                        "intensity_range": [list(r) for r in ranges] if per_channel else [lo, hi]}
                if not labelled:
                    meta["labelled"] = False
                    meta["source_image"] = str(Path(unl_dir).resolve() / it.source_image)
                pending.append((meta, img, msk))
        bar.close()
        if not any(m.get("labelled", True) for m, _, _ in pending):
            raise fail(f"{src}: no pairs left to prepare (all masks empty and keep_empty=false, or no "
                       f"foreground slices); relax --keep-empty/--foreground-only")

        labels = _labels(source, src, max_label, progress)
        channels = _channels(pending, unl_dir, named)
        if cfg.colour_normalisation == "reinhard" and (channels != 3 or named is not None):
            have = f"channels {', '.join(named)}" if named is not None else f"{channels} channel(s)"
            raise fail(f"{src}: colour_normalisation=reinhard needs RGB images but they have {have}; "
                       f"drop the option")
        ids = [m["id"] for m, _, _ in pending]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise fail(f"{src}: two items would both be named {dup!r} (a labelled and an unlabelled image, or two "
                       f"source files); rename one of them")

        # fixed splits: which items are test / pool (the rest is left out)
        side: dict[str, str] | None = None
        left_out: list[str] = []
        resolved = None
        if spec is not None:
            resolved = _resolve_split(spec, pending, cfg.splits_file)
            side, left_out = resolved.side, resolved.left_out
            pending = [p for p in pending if p[0]["id"] in side or not p[0].get("labelled", True)]

        # near-duplicates → merged cases; unlabelled twins of labelled images dropped
        dup_groups, dropped, cross = ([], [], [])
        if cfg.dedup:
            pending, dup_groups, dropped, cross = _deduplicate(pending, cfg, side,
                                                               cross_check=spec is not None and spec.kind != "nnunet")

        items: list[dict[str, Any]] = [meta for meta, _, _ in pending]
        labelled_cases = [m["case"] for m in items if m.get("labelled", True)]
        unlabelled_cases = sorted({m["case"] for m in items if not m.get("labelled", True)})
        clash = sorted(set(unlabelled_cases) & set(labelled_cases))
        if clash:
            raise fail(f"{unl_dir}: unlabelled image(s) share the case id {clash[0]!r} with labelled images (from "
                       f"metadata.csv or a file stem); rename the unlabelled files")
        if spec is None:
            if dup_groups and len(set(labelled_cases)) < cfg.folds:
                raise fail(f"{src}: only {len(set(labelled_cases))} case(s) after merging {len(dup_groups)} "
                           f"near-duplicate group(s) but {cfg.folds} folds requested; lower --folds, add data, or "
                           f"disable dedup (--no-dedup) if the images are not really duplicates")
            splits = kfold_by_case(labelled_cases, cfg.folds, cfg.seed, where=str(src))
        else:
            splits = _fixed_splits(spec, resolved, items)
        if unlabelled_cases:
            splits["unlabelled_cases"] = unlabelled_cases
        colour_info = None
        if cfg.colour_normalisation == "reinhard":
            pending, colour_info = _reinhard_on_training_side(pending, splits)

        # write items
        for meta, img, msk in pending:
            if img.shape[0] != channels:
                img = np.repeat(img, channels, axis=0)
            write_pair(tmp, meta["id"], img, msk)

        method = sorted(method_used)[0] if len(method_used) == 1 else "mixed"
        norm = describe(method, low=cfg.low_percentile, high=cfg.high_percentile, ct_center=cfg.ct_center,
                        ct_width=cfg.ct_width, per="volume" if source.volumetric else "image")
        if method == "mixed":
            norm["methods"] = sorted(method_used)
        if colour_info is not None:
            norm["colour"] = {"method": "reinhard", **colour_info}
            _log(progress, f"prepare: Reinhard colour statistics from {len(colour_info['statistics_items'])} "
                           f"training-side item(s) of fold 0 (test cases excluded)")
        n_unl = sum(1 for m in items if not m.get("labelled", True))
        extra = {"counts": {"items": len(items), "labelled": len(items) - n_unl, "unlabelled": n_unl,
                            "left_out_by_split_file": len(left_out),
                            "dropped_unlabelled_duplicates": len(dropped)}}
        if named is not None:
            norm["per_channel"] = True
            extra["channel_names"] = list(named)
        if unl_dir is not None:
            extra["unlabelled_source"] = str(Path(unl_dir).resolve())
        info = dataset_info(name=cfg.name or src.name, modality=modality, channels=channels, labels=labels,
                            size=(cfg.size, cfg.size), normalisation=norm, items=items, source=str(src),
                            source_kind=source.kind, prepare_config=to_dict(cfg), **extra)
        write_dataset_json(tmp, info)
        write_json_atomic(tmp / "splits.json", splits)
        write_json_atomic(tmp / "duplicates.json", {
            "method": f"dhash <= {cfg.dedup_max_hamming} bits and pearson >= {cfg.dedup_threshold} on "
                      f"{THUMB}x{THUMB} grayscale thumbnails minus the dataset mean" if cfg.dedup else "disabled",
            "threshold": cfg.dedup_threshold, "max_hamming": cfg.dedup_max_hamming, "groups": dup_groups,
            "dropped_unlabelled": dropped, "cross_split_groups": cross})

    n_cases = len(set(labelled_cases))
    _log(progress, f"prepare: {len(items)} items ({source.kind}, {len(source.pairs)} source pairs; "
                   f"{len(items) - n_unl} labelled, {n_unl} unlabelled), {n_cases} labelled cases, {channels} "
                   f"channel(s), labels {labels}, "
                   + (f"{cfg.folds} folds" if spec is None else
                      f"splits from {cfg.splits_file} ({len(splits['folds'])} fold(s), test fingerprint "
                      f"{spec.fingerprint})")
                   + f" [{time.perf_counter() - t0:.1f} s] → {out}")
    if left_out:
        _log(progress, f"prepare: {len(left_out)} source item(s) are in neither test nor pool of the split file "
                       f"and were left out (e.g. {left_out[0]})")
    if cfg.dedup:
        n_dup = sum(len(g) for g in dup_groups)
        _log(progress, f"prepare: {len(dup_groups)} near-duplicate group(s) covering {n_dup} items"
                       + (": " + "; ".join(", ".join(g) for g in dup_groups[:10]) if dup_groups else "")
                       + (f"; ... (+{len(dup_groups) - 10} more in duplicates.json)" if len(dup_groups) > 10 else ""))
    if dropped:
        _log(progress, f"prepare: dropped {len(dropped)} unlabelled image(s) that are near-duplicates of labelled "
                       f"images (e.g. {dropped[0]['id']} ~ {dropped[0]['twin_of']}); listed in duplicates.json")
    if cross:
        _log(progress, f"prepare: warning: {len(cross)} near-duplicate group(s) span the split file's test and "
                       f"pool (e.g. {', '.join(cross[0])}); the fixed split is kept as given — see duplicates.json")
    return out


def _labels(source: Any, src: Path, max_label: int, progress: bool) -> dict[str, int]:
    if source.labels is not None:
        labels = source.labels
        if max_label > max(labels.values()):
            raise fail(f"{src / 'dataset.json'}: masks contain label {max_label} but 'labels' only goes to "
                       f"{max(labels.values())}; add it to dataset.json")
        return labels
    if max_label == 0:
        _log(progress, f"prepare: warning: every mask in {src} is empty")
    if max_label <= 1:
        return {"background": 0, "lesion": 1}
    return {"background": 0, **{f"class{k}": k for k in range(1, max_label + 1)}}


def _channels(pending: list[tuple[dict[str, Any], np.ndarray, Any]], unl_dir: Path | None,
              named: list[str] | None = None) -> int:
    """Channels of the dataset: the number of named channels of a multi-channel source (nnU-Net ``_000k``
    files), else 3 when any labelled image is RGB, else 1; unlabelled images must match."""
    lab = {img.shape[0] for m, img, _ in pending if m.get("labelled", True)}
    channels = len(named) if named is not None else (3 if 3 in lab else 1)
    for m, img, _ in pending:
        if not m.get("labelled", True) and img.shape[0] != channels:
            what = f"the named channels {', '.join(named)}" if named is not None else f"{channels}"
            raise fail(f"{m['source_image']}: unlabelled image has {img.shape[0]} channel(s) but the labelled images "
                       f"have {what}; convert the unlabelled images (grayscale vs RGB) or leave them out")
    return channels


@dataclass
class _Resolved:
    """A split file resolved to item ids before de-duplication (case ids may merge later)."""

    folds: list[tuple[list[str], list[str]]]
    subsets: dict[str, list[str]]
    side: dict[str, str]      # item id → merge group: "test" / "pool" (test-pool files) or its case (nnU-Net)
    left_out: list[str]



def _reinhard_on_training_side(pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]],
                               splits: dict[str, Any]
                               ) -> tuple[list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Reinhard-normalise every item to the mean L*a*b* statistics of the TRAINING side only (nnU-Net's rule for
    intensity statistics): the labelled items of fold 0's training cases plus every unlabelled item — never a test
    case of fold 0 (with a split file: never the fixed test set). With k folds the other folds' test cases are on
    fold 0's training side, so their statistics are in the target: recorded (``statistics_fold``), and
    ``synthpair segment``/``train`` on another fold should use a folder prepared for it.
    → (normalised pending items, the ``normalisation.colour`` record: target, which items, which fold)."""
    from .colour import normalise_colours

    train_cases = set(splits["folds"][0]["train"])
    reference = [k for k, (m, _, _) in enumerate(pending)
                 if not m.get("labelled", True) or m["case"] in train_cases]
    rgb = [img if img.shape[0] == 3 else np.repeat(img, 3, axis=0) for _, img, _ in pending]
    normed, info = normalise_colours(rgb, reference=reference)
    record = {**info, "statistics_fold": 0, "statistics_side": "train (fold 0's training cases + unlabelled items)",
              "statistics_items": sorted(pending[k][0]["id"] for k in reference)}
    return [(m, im, msk) for (m, _, msk), im in zip(pending, normed)], record

def _resolve_split(spec: Any, pending: list[tuple[dict[str, Any], np.ndarray, Any]], path: str) -> _Resolved:
    """Names of a split file → labelled item ids per fold side and per subset; items named nowhere are left out.
    De-duplication may merge cases only inside one ``side`` value (the file's split is kept as given)."""
    from .split_file import resolve_names

    lab = [m for m, _, _ in pending if m.get("labelled", True)]
    ids = [m["id"] for m in lab]
    case_of = {m["id"]: m["case"] for m in lab}
    folds = [(resolve_names(tr, ids, case_of, f"{path}: fold {k} train"),
              resolve_names(te, ids, case_of, f"{path}: fold {k} test")) for k, (tr, te) in enumerate(spec.folds)]
    subsets = {name: resolve_names(names, ids, case_of, f"{path}: train_subsets.{name}")
               for name, names in spec.subsets.items()}
    named = {i for tr, te in folds for i in tr + te}
    if spec.kind == "nnunet":
        side = {i: f"case:{case_of[i]}" for i in ids if i in named}
    else:
        side = {i: "pool" for i in folds[0][0]}
        side.update({i: "test" for i in folds[0][1]})
    return _Resolved(folds, subsets, side, [i for i in ids if i not in named])


def _deduplicate(pending: list[tuple[dict[str, Any], np.ndarray, Any]], cfg: PrepareConfig,
                 side: dict[str, str] | None, cross_check: bool = False
                 ) -> tuple[list, list[list[str]], list[dict[str, str]], list[list[str]]]:
    """Near-duplicate groups over labelled AND unlabelled images (case ids are merged in place).

    Returns (pending without the dropped unlabelled twins, groups, dropped [{"id", "twin_of"}], groups that
    span test and pool of a split file). Unlabelled members of a group with a labelled member are dropped;
    with a split file, merging never joins a test case and a pool case (the file's split is kept)."""
    th = np.stack([thumbnail(img) for _, img, _ in pending])
    cases = [m["case"] for m, _, _ in pending]
    pairs = case_level_pairs(find_duplicate_pairs(th, cfg.dedup_threshold, cfg.dedup_max_hamming, groups=cases),
                             cases)  # slices of different patients match only when the volumes do
    del th
    ids = [m["id"] for m, _, _ in pending]
    labelled = [m.get("labelled", True) for m, _, _ in pending]
    comps = union_groups(len(pending), pairs)
    dropped: list[dict[str, str]] = []
    drop_idx: set[int] = set()
    for comp in comps:
        lab = [k for k in comp if labelled[k]]
        if lab:
            for k in comp:
                if not labelled[k]:
                    drop_idx.add(k)
                    dropped.append({"id": ids[k], "twin_of": ids[lab[0]]})
    groups = [[ids[k] for k in comp] for comp in comps]
    cross = []
    if side is not None and cross_check:
        cross = [g for g in groups if len({side[i] for i in g if i in side}) > 1]
    keep_pairs = [(i, j) for i, j, _ in pairs if i not in drop_idx and j not in drop_idx
                  and (side is None or side.get(ids[i], "u") == side.get(ids[j], "u")
                       or not (ids[i] in side and ids[j] in side))]
    case_order = list(dict.fromkeys(m["case"] for m, _, _ in pending))
    case_idx = {c: k for k, c in enumerate(case_order)}
    case_pairs = [(case_idx[pending[i][0]["case"]], case_idx[pending[j][0]["case"]]) for i, j in keep_pairs]
    remap = {}
    for comp in union_groups(len(case_order), case_pairs):
        for k in comp:
            remap[case_order[k]] = case_order[comp[0]]
    for m, _, _ in pending:
        m["case"] = remap.get(m["case"], m["case"])
    kept = [p for k, p in enumerate(pending) if k not in drop_idx]
    return kept, groups, dropped, cross


def _fixed_splits(spec: Any, resolved: _Resolved, items: list[dict[str, Any]]) -> dict[str, Any]:
    """splits.json from a split file: one fold (train = pool cases, test = test cases) or nnU-Net's folds, the
    named subsets (item ids) and the file's record (path, key, fingerprint)."""
    case_of = {m["id"]: m["case"] for m in items}
    folds = []
    for k, (tr, te) in enumerate(resolved.folds):
        tr_c, te_c = sorted({case_of[i] for i in tr}), sorted({case_of[i] for i in te})
        both = sorted(set(tr_c) & set(te_c))
        if both:
            raise fail(f"{spec.path}: case {both[0]!r} has items on both sides of fold {k} (metadata.csv groups "
                       f"them); move the whole case to one side of the split file")
        folds.append({"fold": k, "train": tr_c, "test": te_c})
    return {"by": "file", "seed": None, "num_folds": len(folds), "folds": folds, "source": spec.record(),
            "subsets": resolved.subsets}
