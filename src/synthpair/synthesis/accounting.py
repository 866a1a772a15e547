"""Label-budget accounting: whose masks and whose images a chain of models learnt from.

Label honesty (docs/architecture.md): in a run with N labelled images, no model in the chain (generator, its
``init_from`` ancestors, the run whose masks a mask-conditioned generator draws, the faithfulness segmenter
that filters pairs, the segmenter) may have seen masks of other images. Unlabelled images are fair game.

* A generator run records ``mask_items`` / ``image_items`` in ``training_cases.json`` (its ``init_from`` chain
  included; :func:`synthpair.training.trainer.run_label_accounting` reads older runs).
* ``synthpair generate`` writes ``SYN/label_accounting.json`` = the union over every model that shaped the
  folder, with one line per source (:func:`write_accounting`); each manifest line names the file.
* ``synthpair segment`` compares the folder's ``mask_items`` with its own labelled training items and refuses
  a folder whose chain saw more (:func:`check_label_budget`) unless ``allow_label_excess`` is set (paper
  replications that do this on purpose); the results then say so.

Folders written before this existed have no ``label_accounting.json``: their manifest ``train_cases`` (and
``source_case`` / ``reference_case`` / items) are taken as mask cases, every labelled item of those cases in
the real dataset as seen — conservative, never optimistic.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..errors import fail
from ..io import read_json, write_json_atomic

ACCOUNTING = "label_accounting.json"
FORMAT = "synthpair-label-accounting"


def source_record(role: str, where: str, acc: dict[str, Any]) -> dict[str, Any]:
    """One model of the chain: its role, run/folder and the sizes of what it saw."""
    return {"role": role, "run": where, "mask_items": len(acc.get("mask_items", [])),
            "image_items": len(acc.get("image_items", [])),
            "mask_cases_unresolved": len(acc.get("mask_cases_unresolved", []))}


def union(sources: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """``[(role, where, accounting)]`` → the folder's accounting: union of mask / image items (and unresolved
    mask cases of runs older than the accounting) plus one record per source."""
    mask: set[str] = set()
    image: set[str] = set()
    unresolved: set[str] = set()
    records = []
    for role, where, acc in sources:
        mask |= set(acc.get("mask_items", []))
        image |= set(acc.get("image_items", []))
        unresolved |= set(acc.get("mask_cases_unresolved", []))
        records.append(source_record(role, where, acc))
    out = {"format": FORMAT, "version": 1, "mask_items": sorted(mask), "image_items": sorted(image | mask),
           "num_mask_items": len(mask), "num_image_items": len(image | mask), "sources": records}
    if unresolved:
        out["mask_cases_unresolved"] = sorted(unresolved)
    return out


def write_accounting(syn_dir: Path | str, accounting: dict[str, Any]) -> None:
    write_json_atomic(Path(syn_dir) / ACCOUNTING, accounting)


def run_accounting(run: Path | str) -> dict[str, Any]:
    """The label accounting of a generator run folder (``training_cases.json``)."""
    from ..training.trainer import run_label_accounting

    run = Path(run)
    tc = read_json(run / "training_cases.json", "training_cases.json")
    method = None
    if (run / "export" / "config.json").is_file():
        method = read_json(run / "export" / "config.json", "export config.json").get("method")
    return run_label_accounting(tc, method)


def segmenter_accounting(seg_dir: Path | str, fold: int | None = None) -> dict[str, Any]:
    """What a ``synthpair segment`` folder's model(s) learnt from: ``label_accounting`` of its results.json (per
    fold when ``fold`` is given), else — older folders — every labelled training item of its folds."""
    seg_dir = Path(seg_dir)
    res = read_json(seg_dir / "results.json", "segment results.json")
    folds = [f for f in res.get("folds", []) if fold is None or f.get("fold") == fold]
    mask: set[str] = set()
    image: set[str] = set()
    unresolved: set[str] = set()
    for f in folds:
        acc = f.get("label_accounting")
        if acc is None:
            from ..data.budget import training_items
            from ..data.dataset import PreparedDataset

            cfg = res.get("config", {})
            ds = PreparedDataset.open(res["data"])
            items = training_items(ds, int(f["fold"]), int(cfg.get("n_real", 0)), int(cfg.get("subset_seed", 0)))
            acc = {"mask_items": items, "image_items": items}
            if res.get("synthetic"):
                syn = synthetic_mask_items(res["synthetic"], ds)
                acc = {"mask_items": sorted(set(items) | syn[0]), "image_items": items,
                       "mask_cases_unresolved": sorted(syn[1])}
        mask |= set(acc.get("mask_items", []))
        image |= set(acc.get("image_items", []))
        unresolved |= set(acc.get("mask_cases_unresolved", []))
    out: dict[str, Any] = {"mask_items": sorted(mask), "image_items": sorted(image)}
    if unresolved:
        out["mask_cases_unresolved"] = sorted(unresolved)
    return out


def read_accounting(syn_dir: Path | str) -> dict[str, Any] | None:
    """``SYN/label_accounting.json`` or None when the folder predates it."""
    path = Path(syn_dir) / ACCOUNTING
    if not path.is_file():
        return None
    acc = read_json(path, ACCOUNTING)
    if acc.get("format") != FORMAT or not isinstance(acc.get("mask_items"), list):
        raise fail(f"{path}: not a synthpair label accounting file; regenerate the folder with `synthpair generate`")
    return acc


def synthetic_mask_items(syn_dir: Path | str, real: Any) -> tuple[set[str], set[str]]:
    """(mask items, mask cases that map to no item of ``real``) of a synthetic folder: from its accounting file,
    else (older folders) every labelled item of ``real`` whose case the manifest names (conservative)."""
    from .manifest import read_manifest

    acc = read_accounting(syn_dir)
    if acc is not None:
        items = set(acc["mask_items"])
        cases = set(acc.get("mask_cases_unresolved", []))
    else:
        from .manifest import ITEM_FIELDS, manifest_cases

        records = read_manifest(syn_dir)
        cases = manifest_cases(records)
        items = {str(r[k]) for r in records for k in ITEM_FIELDS if r.get(k) is not None}
    by_case: dict[str, list[str]] = {}
    for i in real.labelled_ids:
        by_case.setdefault(real.case_of(i), []).append(i)
    unresolved = set()
    for c in cases:
        if c in by_case:
            items.update(by_case[c])
        else:
            unresolved.add(c)
    return items, unresolved


def check_label_budget(syn_dir: Path | str, real: Any, labelled: Iterable[str], *, allow: bool
                       ) -> dict[str, Any]:
    """Compare a synthetic folder's mask items with the segmenter's ``labelled`` training items of ``real``.

    Returns ``{"segmenter_mask_items", "synthetic_mask_items", "outside", "outside_cases",
    "generator_saw_more_labels"}``. Refuses (one line naming the count and the fix) when the chain saw masks of
    items outside ``labelled`` — or of cases ``real`` does not know — unless ``allow``."""
    labelled = set(labelled)
    items, unresolved = synthetic_mask_items(syn_dir, real)
    outside = sorted(items - labelled)
    # cases the real dataset does not know: another dataset's masks (a pool), always outside the budget
    report = {"segmenter_mask_items": len(labelled), "synthetic_mask_items": len(items), "outside": len(outside),
              "outside_cases": len(unresolved), "generator_saw_more_labels": bool(outside or unresolved)}
    if report["generator_saw_more_labels"] and not allow:
        example = outside[0] if outside else sorted(unresolved)[0]
        raise fail(f"{syn_dir}: its models saw the masks of {len(outside)} item(s) (+{len(unresolved)} case(s) of "
                   f"other data) outside this segmenter's {len(labelled)} labelled training items (e.g. {example!r}); "
                   f"train the generator on the same labels (a 'synthpair budget' view), or pass "
                   f"--allow-more-labels for a replication that does this on purpose (the row is then marked)")
    return report


__all__ = ["ACCOUNTING", "union", "write_accounting", "read_accounting", "run_accounting", "segmenter_accounting",
           "synthetic_mask_items", "check_label_budget"]
