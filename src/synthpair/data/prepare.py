"""``prepare``: a source folder → the prepared dataset folder DATA (docs/architecture.md).

Steps: detect the source kind and list pairs (:mod:`.readers`) → read each image/volume, normalise its
intensities to [-1, 1] (:mod:`.normalise`), resize to ``size × size`` (:mod:`.resize`; aspect ratio not
preserved), write ``images/<id>.png`` + ``masks/<id>.png`` → find near-duplicates on 32×32 thumbnails
(:mod:`.dedup`) and put each duplicate group into one case → seeded K-fold splits by case
(:mod:`.splits`) → ``dataset.json``, ``splits.json``, ``duplicates.json``.

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
from .dedup import THUMB, find_duplicate_pairs, thumbnail, union_groups
from .normalise import apply_range, describe, intensity_range, resolve_method
from .readers import detect_source, iter_source
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

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        items: list[dict[str, Any]] = []
        thumbs: list[np.ndarray] = []
        raw_channels: list[int] = []
        pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
        max_label = 0
        method_used: set[str] = set()
        bar = tqdm(total=len(source.pairs), desc=f"prepare {src.name}", unit="pair", file=sys.stderr,
                   disable=not progress, leave=False)
        groups = iter_source(source, axis=cfg.axis, foreground_only=cfg.foreground_only,
                             empty_fraction=cfg.empty_fraction, seed=cfg.seed)
        # first pass: read, normalise, resize (kept in memory at the prepared size only)
        for group in groups:
            bar.update(1)
            chans = 3 if group.stats.ndim == (4 if source.volumetric else 3) else 1
            method = resolve_method(cfg.normalisation, modality, chans)
            if method == "fixed" and group.dtype not in ("uint8", "uint16"):
                method = "minmax"
            method_used.add(method)
            lo, hi = intensity_range(method, group.stats, group.dtype, low=cfg.low_percentile,
                                     high=cfg.high_percentile, ct_center=cfg.ct_center, ct_width=cfg.ct_width)
            for it in group.items:
                if not cfg.keep_empty and it.slice_index is None and not np.any(it.mask):
                    continue
                img = resize_image(apply_range(it.image, lo, hi), cfg.size)
                img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
                msk = resize_mask(it.mask, cfg.size)
                max_label = max(max_label, int(it.mask.max()))
                raw_channels.append(img.shape[0])
                meta = {"id": it.id, "case": it.case, "source_image": it.source_image,
                        "source_mask": it.source_mask, "slice_index": it.slice_index,
                        "spacing": resized_spacing(it.spacing, it.image.shape[:2], cfg.size),
                        "original_size": [int(it.image.shape[0]), int(it.image.shape[1])],
                        "foreground_fraction": float(np.mean(msk > 0)),
                        "intensity_range": [lo, hi]}
                pending.append((meta, img, msk))
        bar.close()
        if not pending:
            raise fail(f"{src}: no pairs left to prepare (all masks empty and keep_empty=false, or no "
                       f"foreground slices); relax --keep-empty/--foreground-only")

        # labels
        if source.labels is not None:
            labels = source.labels
            if max_label > max(labels.values()):
                raise fail(f"{src / 'dataset.json'}: masks contain label {max_label} but 'labels' only goes to "
                           f"{max(labels.values())}; add it to dataset.json")
        elif max_label <= 1:
            labels = {"background": 0, "lesion": 1}
        else:
            labels = {"background": 0, **{f"class{k}": k for k in range(1, max_label + 1)}}
        if max_label == 0:
            _log(progress, f"prepare: warning: every mask in {src} is empty")

        channels = 3 if 3 in raw_channels else 1
        colour_info = None
        if cfg.colour_normalisation == "reinhard":
            if channels != 3:
                raise fail(f"{src}: colour_normalisation=reinhard needs RGB images but they have 1 channel; "
                           f"drop the option")
            from .colour import normalise_colours

            rgb = [img if img.shape[0] == 3 else np.repeat(img, 3, axis=0) for _, img, _ in pending]
            normed, colour_info = normalise_colours(rgb)
            pending = [(m, im, msk) for (m, _, msk), im in zip(pending, normed)]
        ids = [m["id"] for m, _, _ in pending]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise fail(f"{src}: two items would both be named {dup!r}; rename one of the source files")

        # near-duplicates → merged cases
        dup_groups: list[list[str]] = []
        if cfg.dedup:
            th = np.stack([thumbnail(img) for _, img, _ in pending])
            pairs = find_duplicate_pairs(th, cfg.dedup_threshold, cfg.dedup_max_hamming,
                                         groups=[m["case"] for m, _, _ in pending])
            dup_groups = [[ids[i] for i in comp] for comp in union_groups(len(pending), pairs)]
            case_order = list(dict.fromkeys(m["case"] for m, _, _ in pending))
            case_idx = {c: k for k, c in enumerate(case_order)}
            case_pairs = [(case_idx[pending[i][0]["case"]], case_idx[pending[j][0]["case"]]) for i, j, _ in pairs]
            remap = {}
            for comp in union_groups(len(case_order), case_pairs):
                for k in comp:
                    remap[case_order[k]] = case_order[comp[0]]
            for m, _, _ in pending:
                m["case"] = remap.get(m["case"], m["case"])
            del th

        # write pairs
        for meta, img, msk in pending:
            if img.shape[0] != channels:
                img = np.repeat(img, channels, axis=0)
            write_pair(tmp, meta["id"], img, msk)
            items.append(meta)

        cases = [m["case"] for m in items]
        if dup_groups and len(set(cases)) < cfg.folds:
            raise fail(f"{src}: only {len(set(cases))} case(s) after merging {len(dup_groups)} near-duplicate "
                       f"group(s) but {cfg.folds} folds requested; lower --folds, add data, or disable dedup "
                       f"(--no-dedup) if the images are not really duplicates")
        splits = kfold_by_case(cases, cfg.folds, cfg.seed, where=str(src))
        method = sorted(method_used)[0] if len(method_used) == 1 else "mixed"
        norm = describe(method, low=cfg.low_percentile, high=cfg.high_percentile, ct_center=cfg.ct_center,
                        ct_width=cfg.ct_width, per="volume" if source.volumetric else "image")
        if method == "mixed":
            norm["methods"] = sorted(method_used)
        if colour_info is not None:
            norm["colour"] = {"method": "reinhard", **colour_info}
        info = dataset_info(name=cfg.name or src.name, modality=modality, channels=channels, labels=labels,
                            size=(cfg.size, cfg.size), normalisation=norm, items=items, source=str(src),
                            source_kind=source.kind, prepare_config=to_dict(cfg))
        write_dataset_json(tmp, info)
        write_json_atomic(tmp / "splits.json", splits)
        write_json_atomic(tmp / "duplicates.json", {
            "method": f"dhash <= {cfg.dedup_max_hamming} bits and pearson >= {cfg.dedup_threshold} on "
                      f"{THUMB}x{THUMB} grayscale thumbnails minus the dataset mean" if cfg.dedup else "disabled",
            "threshold": cfg.dedup_threshold, "max_hamming": cfg.dedup_max_hamming, "groups": dup_groups})

    n_cases = len(set(cases))
    _log(progress, f"prepare: {len(items)} items ({source.kind}, {len(source.pairs)} source pairs), "
                   f"{n_cases} cases, {channels} channel(s), labels {labels}, {cfg.folds} folds "
                   f"[{time.perf_counter() - t0:.1f} s] → {out}")
    if cfg.dedup:
        n_dup = sum(len(g) for g in dup_groups)
        _log(progress, f"prepare: {len(dup_groups)} near-duplicate group(s) covering {n_dup} items"
                       + (": " + "; ".join(", ".join(g) for g in dup_groups[:10]) if dup_groups else "")
                       + (f"; ... (+{len(dup_groups) - 10} more in duplicates.json)" if len(dup_groups) > 10 else ""))
    return out
