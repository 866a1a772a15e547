"""Leakage guard: a synthetic folder may only be mixed into training for folds whose test cases it never saw.

A synthetic folder (SYN, docs/architecture.md) carries ``manifest.jsonl``, one JSON object per pair, whose
``train_cases`` list every real case the generator saw (mask sources and reference images included), plus
``source_case`` (the case the pair's mask came from) and optionally ``reference_case`` /
``reference_cases``, ``source_item`` / ``reference_item`` (real item ids, mapped to their cases). If any
of these cases lies in the evaluation (test) split of a fold being evaluated,
the held-out numbers of that fold would be inflated, so :func:`check_synthetic` refuses the folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..data.dataset import PreparedDataset
from ..errors import fail
from ..synthesis.manifest import CASE_FIELDS, ITEM_FIELDS, manifest_cases, read_manifest  # noqa: F401 (CASE_FIELDS, manifest_cases: re-exported)


def check_no_leakage(syn_dir: Path | str, records: Sequence[dict[str, Any]], real: PreparedDataset,
                     folds: Sequence[int]) -> None:
    """Refuse when a case of the manifest lies in the test split of any fold in ``folds``."""
    seen = manifest_cases(records)
    known = set(real.ids)
    for rec in records:  # items (patch/replace mixing pairs them with real items) map to their cases
        for key in ITEM_FIELDS:
            val = rec.get(key)
            if val is not None and str(val) in known:
                seen.add(real.case_of(str(val)))
    for k in folds:
        real.split(k)  # validates the fold number with a one-line error
        test = set(real.fold_cases(k)[1])
        bad = sorted(seen & test)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise fail(f"{syn_dir}: synthetic pairs depend on {len(bad)} case(s) of the evaluation split of fold {k} "
                       f"({shown}); generate them from a generator trained on fold {k} (its train_cases exclude "
                       f"the test cases), or evaluate another fold")


def check_synthetic(syn_dir: Path | str, real: PreparedDataset, folds: Sequence[int]) -> PreparedDataset:
    """Open a synthetic folder and check it may be mixed into training for ``folds`` of ``real``.

    Checks: ``manifest.jsonl`` exists and covers every item, no leakage into any evaluated test split,
    same channels and size as the real data, no more classes than the real data. Returns the opened
    folder (``PreparedDataset.open(syn_dir, require_splits=False)``).
    """
    syn_dir = Path(syn_dir)
    records = read_manifest(syn_dir, allow_empty=False)
    syn = PreparedDataset.open(syn_dir, require_splits=False)
    if syn.unlabelled_ids:
        raise fail(f"{syn_dir}: {len(syn.unlabelled_ids)} synthetic item(s) have no mask (an image-only generator "
                   f"made them); segmentation needs pairs — generate from a mask-aware generator (joint, mask2image, "
                   f"dsdm, pig), e.g. one fine-tuned from this image-only run with --set init_from=RUN")
    missing = sorted(set(syn.ids) - {str(r["id"]) for r in records})
    if missing:
        raise fail(f"{syn_dir}: {len(missing)} item(s) of dataset.json have no manifest line (e.g. {missing[0]}), so "
                   f"their provenance is unknown; regenerate the folder with `synthpair generate`")
    if syn.channels != real.channels:
        raise fail(f"{syn_dir}: {syn.channels} channel(s) but the real data {real.root} has {real.channels}; "
                   f"generate from a generator trained on this dataset")
    if syn.size != real.size:
        raise fail(f"{syn_dir}: size {syn.size[0]}×{syn.size[1]} but the real data {real.root} is "
                   f"{real.size[0]}×{real.size[1]}; generate from a generator trained on this dataset")
    if syn.num_classes > real.num_classes:
        raise fail(f"{syn_dir}: {syn.num_classes} classes but the real data {real.root} has {real.num_classes}; "
                   f"generate from a generator trained on this dataset")
    check_no_leakage(syn_dir, records, real, folds)
    return syn
