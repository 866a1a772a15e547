"""``synthpair evaluate segmenter``: score trained segmenters (SEG folders) on ANOTHER prepared dataset.

A transfer test asks how segmenters trained on one dataset (e.g. Kvasir-SEG) do on another collection of the
same kind (another polyp dataset) — with the same metrics, empty-mask convention and table as
``synthpair segment``, one row per setting, and every row and header labelled as a transfer test.

What is evaluated (:func:`evaluate_transfer`):

* ``split="all"`` (default): every labelled item of the target DATA (a transfer test uses no split of the
  target; unlabelled items have no mask and are skipped). Refused when the target is the segmenters'
  own training data (their models saw most of those items).
* ``split="test"`` with ``fold=K``: the test split of fold K of the target. On the segmenters' own training
  data this re-scores fold K's held-out split with fold K's model and reproduces ``segment``'s per-case
  metrics exactly (labelled "re-test", not "transfer"); any other fold's model would have seen those cases
  and is refused.

Which models: ``folds`` (default: every fold the SEG trained; fold K alone for a re-test). Each fold's
model predicts every target item and is scored on its own; a case's value is the **mean over the fold models
of that case's metrics** (not an ensemble of their predictions), so each target case counts once in the
mean ± sd (n = target cases) and a one-fold SEG gives exactly that model's metrics. Per-fold summaries are
kept in ``results.json`` (``per_fold``).

Scoring is :func:`synthpair.metrics.segmentation.per_case_metrics` with each target item's spacing (mm,
pixels when unknown), the argmax of the logits predicted with the SEG's own ``eval_batch`` and ``amp``.

Output folder ``OUT/`` (built in a temporary sibling and renamed at the end; nothing is written when any
input is refused): ``results.json`` (format ``synthpair-transfer``: ``target``, ``fold_aggregation`` and per
setting ``setting`` (row name), ``source_setting``, ``seg``, ``model``, ``training_data``,
``training_data_name``, ``target_data_name``, ``same_dataset``, ``folds``, ``summary``, ``per_fold``,
``in_domain_summary`` (the SEG's held-out summary on its training data) and ``per_case`` rows),
``results.md`` (the table, headed as a transfer test) and ``per_case.csv`` (one row per setting and case).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..data.dataset import PreparedDataset
from ..env import resolve_autocast, resolve_device
from ..errors import fail
from ..io import atomic_output_dir, read_json, write_json_atomic, write_text_atomic
from ..metrics.segmentation import METRICS, distance_unit, per_case_metrics, summarize
from .models import load_segmenter, read_segment_results, segmenter_data_info, segmenter_weights
from .train import EMPTY_CONVENTION, predict

RESULTS_FORMAT = "synthpair-transfer"

FOLD_AGGREGATION = ("each fold's model predicts every target item and is scored separately; a case's value is the "
                    "mean over the fold models of its per-case metrics (not an ensemble); summary = mean and sd "
                    "(ddof=1) over target cases")


def _same_dataset(res: dict[str, Any], ds: PreparedDataset) -> bool:
    """True when the target is the SEG's training data: the same folder, or a copy of it (identical name and
    items in dataset.json)."""
    src = res.get("data")
    if not src:
        return False
    src = Path(str(src))
    if src.resolve() == ds.root.resolve():
        return True
    if not (src / "dataset.json").is_file():
        return False
    info = read_json(src / "dataset.json", "dataset.json")
    return info.get("name") == ds.info.get("name") and info.get("items") == ds.items


def _check_compatible(seg: Path, info: dict[str, Any], ds: PreparedDataset) -> None:
    """The target must have the training data's channels, label set and image size."""
    where = f"{ds.root / 'dataset.json'}"
    name = info.get("name", "?")
    if int(info["channels"]) != ds.channels:
        raise fail(f"{where}: {ds.channels} channel(s) but the segmenter in {seg} was trained on {info['channels']}-"
                   f"channel images ({name}); prepare the target from images with {info['channels']} channel(s) "
                   f"({'grayscale' if int(info['channels']) == 1 else 'RGB'})")
    labels = {str(k): int(v) for k, v in dict(info["labels"]).items()}
    if int(info["num_classes"]) != ds.num_classes or labels != ds.labels:
        raise fail(f"{where}: label set {ds.labels} (num_classes {ds.num_classes}) differs from the label set "
                   f"{labels} (num_classes {info['num_classes']}) the segmenter in {seg} was trained on; a "
                   f"transfer test needs the same labels — prepare the target with the training data's labels")
    size = tuple(int(v) for v in info["size"])
    if size != ds.size:
        raise fail(f"{where}: images are {ds.size[0]}×{ds.size[1]} but the segmenter in {seg} was trained on "
                   f"{size[0]}×{size[1]}; prepare the target at that size ('synthpair prepare SRC --out DATA "
                   f"--size {size[0]}')")


def _target_ids(ds: PreparedDataset, split: str, fold: int | None) -> list[str]:
    if split == "all":
        ids = ds.labelled_ids
        if not ids:
            raise fail(f"{ds.root / 'dataset.json'}: no labelled item to evaluate on (only unlabelled images); "
                       f"prepare the target from images/ + masks/")
        return ids
    _, ids = ds.split(int(fold))  # type: ignore[arg-type]
    if not ids:
        raise fail(f"{ds.root / 'splits.json'}: the test split of fold {fold} is empty; choose another --fold or "
                   f"use --split all")
    return ids


def _mean_rows(per_fold: list[list[dict[str, Any]]], ds: PreparedDataset, folds: list[int]) -> list[dict[str, Any]]:
    """Per-fold rows of the same items → one row per item, each numeric metric averaged over the folds."""
    out = []
    for i, first in enumerate(per_fold[0]):
        row: dict[str, Any] = {"id": first["id"], "case": ds.case_of(first["id"])}
        for key, val in first.items():
            if key in ("id", "distance_unit"):
                continue
            row[key] = float(np.mean([rows[i][key] for rows in per_fold], dtype=np.float64))
        row["distance_unit"] = first["distance_unit"]
        row["folds"] = list(folds)
        out.append(row)
    return out


def _unique(name: str, seg: Path, taken: set[str]) -> str:
    if name in taken:
        name = f"{name} [{seg.name}]"
    k = 2
    base = name
    while name in taken:
        name, k = f"{base} #{k}", k + 1
    taken.add(name)
    return name


def _per_case_csv(settings: list[dict[str, Any]]) -> str:
    rows = [{"setting": s["setting"], "seg": s["seg"], **r} for s in settings for r in s["per_case"]]
    fixed = {"setting", "seg", "id", "case", "distance_unit", "folds", *METRICS}
    extra = sorted({k for r in rows for k in r} - fixed)
    cols = ["setting", "id", "case", *METRICS, "distance_unit", "folds", *extra, "seg"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (" ".join(map(str, r[k])) if k == "folds" else r.get(k, "")) for k in cols})
    return buf.getvalue()


def transfer_markdown(results: dict[str, Any]) -> str:
    """``results.json`` of :func:`evaluate_transfer` → the markdown report (header stating the kind of test, the
    table of one row per setting, and the segmenters' in-domain held-out results for comparison)."""
    from ..report.tables import markdown_table

    t = results["target"]
    settings = results["settings"]
    sources = sorted({s["training_data_name"] for s in settings})
    what = ("every labelled item" if t["split"] == "all" else f"the test split of fold {t['fold']}")
    if any(s["same_dataset"] for s in settings):
        head = (f"# Re-test on the training data's held-out split (NOT a transfer test)\n\n"
                f"Segmenters trained on {', '.join(sources)} re-scored on `{t['data']}` ({t['name']}: {what}, "
                f"{t['n_items']} items) with the model of the fold that held these cases out.\n")
    else:
        head = (f"# Transfer test: segmenters trained on {', '.join(sources)}, evaluated on another dataset, "
                f"{t['name']}\n\n"
                f"Target: `{t['data']}` ({what}, {t['n_items']} items). None of these cases comes from the data the "
                f"segmenters were trained on: the numbers measure transfer to another dataset, not held-out "
                f"performance on the training data.\n")
    head += f"\nPer case: {results['fold_aggregation']}.\n\n"
    rows = {s["setting"]: s["summary"] for s in settings}
    table = markdown_table(rows, unit=results["distance_unit"])
    in_units = sorted({s.get("in_domain_unit", "pixel") for s in settings})
    in_domain = {f"{s['source_setting']} on {s['training_data_name']} held-out [{Path(s['seg']).name}]":
                 s["in_domain_summary"]
                 for s in settings if s.get("in_domain_summary")}
    tail = ""
    if in_domain:
        tail = ("\nFor comparison, the same segmenters on their own training data's held-out cases "
                "(from each SEG/results.json):\n\n"
                + markdown_table(in_domain, unit=in_units[0] if len(in_units) == 1 else "mixed"))
    return head + table + tail


def evaluate_transfer(seg_dirs: Sequence[Path | str], data: Path | str, out: Path | str, *,
                      split: Literal["all", "test"] = "all", fold: int | None = None,
                      folds: Sequence[int] | None = None, device: str = "auto", overwrite: bool = False
                      ) -> dict[str, Any]:
    """Evaluate the segmenters of ``seg_dirs`` (SEG folders of ``synthpair segment``) on the prepared ``data``.

    Args:
        seg_dirs: one SEG folder per setting (one table row each).
        data: target prepared DATA folder with the training data's channels, label set and image size.
        out: output folder (must not exist or be empty unless ``overwrite``).
        split: ``"all"`` = every labelled item of ``data``; ``"test"`` = the test split of fold ``fold``.
        fold: the target fold for ``split="test"`` (required there, refused with ``"all"``).
        folds: the fold models of each SEG to average over (default: all it trained; ``fold`` alone when the
            target is the SEG's own training data).
        device: ``auto`` | ``cpu`` | ``cuda[:i]``.

    Returns the ``results.json`` dict (module doc). Every input is checked before anything is predicted or
    written: one-line :class:`~synthpair.errors.SynthpairError` for a missing/unfinished SEG (no results.json,
    no weights of a requested fold), a target with other channels, label set or image size, an empty target
    split, the training data itself as a transfer target, or an existing ``out``.
    """
    seg_dirs = [Path(s) for s in seg_dirs]
    out = Path(out)
    if not seg_dirs:
        raise fail("evaluate segmenter: give at least one SEG folder written by 'synthpair segment'")
    if split not in ("all", "test"):
        raise fail(f"--split {split!r}: choose 'all' (every labelled item of the target) or 'test' (with --fold K)")
    if split == "test" and fold is None:
        raise fail("--split test: needs --fold K (the target fold whose test split is evaluated)")
    if split == "all" and fold is not None:
        raise fail(f"--fold {fold}: only used with --split test; drop it or add --split test")
    if folds is not None and (not list(folds) or len(set(folds)) != len(list(folds))):
        raise fail(f"--folds {list(folds)}: list at least one model fold, each once")
    if (out.is_file() or (out.is_dir() and any(out.iterdir()))) and not overwrite:
        raise fail(f"{out}: output folder already exists and is not empty; choose a new --out or pass --overwrite")
    seen = {}
    for s in seg_dirs:
        key = s.resolve()
        if key in seen:
            raise fail(f"{s}: listed twice (also as {seen[key]}); give each SEG folder once")
        seen[key] = s

    ds = PreparedDataset.open(data, require_splits=split == "test")
    ids = _target_ids(ds, split, fold)
    target_name = str(ds.info.get("name", ds.root.name))

    # --- check every SEG before any prediction ---
    plans = []
    for seg in seg_dirs:
        res = read_segment_results(seg)
        read_json(seg / "config.json", "segmentation config.json")
        info = segmenter_data_info(seg, res)
        trained = [int(k) for k in (res.get("config") or {}).get("folds", [])]
        same = _same_dataset(res, ds)
        chosen = [int(k) for k in (folds if folds is not None else ([fold] if same and split == "test" else trained))]
        for k in chosen:
            if trained and k not in trained:
                raise fail(f"{seg / 'results.json'}: fold {k} was not trained (folds {trained}); choose --folds "
                           f"among them")
            segmenter_weights(seg, k)
        if not chosen:
            raise fail(f"{seg / 'results.json'}: records no trained fold; rerun 'synthpair segment'")
        _check_compatible(seg, info, ds)
        if same and split == "all":
            raise fail(f"{ds.root}: is the data the segmenter in {seg} was trained on, so it is not a transfer "
                       f"target (its models saw most of these items); pass another prepared dataset, or "
                       f"--split test --fold K to re-score fold K's held-out split")
        if same and any(k != fold for k in chosen):
            bad = next(k for k in chosen if k != fold)
            raise fail(f"{ds.root}: is the training data of {seg}, whose fold-{bad} model saw the test cases of "
                       f"fold {fold}; use --folds {fold} (or drop --folds)")
        plans.append((seg, res, info, chosen, same))

    dev = resolve_device(device)
    images, masks = ds.load(ids)
    x = torch.from_numpy(images)
    spacings = [ds.spacing_of(i) for i in ids]

    settings: list[dict[str, Any]] = []
    taken: set[str] = set()
    for seg, res, info, chosen, same in plans:
        cfg = res.get("config") or read_json(seg / "config.json", "segmentation config.json")
        bf16 = resolve_autocast(str(cfg.get("amp", "auto")), dev, cpu_auto=False) is not None
        batch = int(cfg.get("eval_batch", 64))
        per_fold_rows = []
        for k in chosen:
            model = load_segmenter(seg, k, dev)
            pred = predict(model, x, batch, dev, bf16)
            per_fold_rows.append(per_case_metrics(pred, masks, ds.num_classes, spacings, ids))
            del model
        rows = _mean_rows(per_fold_rows, ds, chosen)
        src_name = str(info.get("name", "?"))
        source_setting = str(res.get("setting", seg.name))
        if same:
            label = f"re-test {src_name} fold {fold} test: {source_setting}"
        elif split == "test":
            label = f"transfer {src_name}→{target_name} (fold {fold} test): {source_setting}"
        else:
            label = f"transfer {src_name}→{target_name}: {source_setting}"
        settings.append({
            "setting": _unique(label, seg, taken), "source_setting": source_setting,
            "seg": str(seg.resolve()), "model": str(cfg.get("model", "unet")),
            "training_data": res.get("data"), "training_data_name": src_name, "target_data_name": target_name,
            "same_dataset": same, "folds": chosen, "distance_unit": distance_unit(rows),
            "summary": summarize(rows),
            "per_fold": [{"fold": k, "summary": summarize(r)} for k, r in zip(chosen, per_fold_rows)],
            "in_domain_summary": res.get("summary"), "in_domain_unit": res.get("distance_unit", "pixel"),
            "per_case": rows,
        })

    all_rows = [r for s in settings for r in s["per_case"]]
    results = {
        "format": RESULTS_FORMAT, "version": 1,
        "kind": "re-test on the training data" if any(s["same_dataset"] for s in settings) else "transfer test",
        "target": {"data": str(ds.root.resolve()), "name": target_name, "split": split, "fold": fold,
                   "n_items": len(ids), "channels": ds.channels, "num_classes": ds.num_classes,
                   "size": list(ds.size), "labels": ds.labels},
        "fold_aggregation": FOLD_AGGREGATION,
        "device": str(dev),
        "metrics": list(METRICS),
        "distance_unit": distance_unit(all_rows),
        "empty_convention": EMPTY_CONVENTION,
        "settings": settings,
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "results.json", results)
        write_text_atomic(tmp / "results.md", transfer_markdown(results))
        write_text_atomic(tmp / "per_case.csv", _per_case_csv(settings))
    return results


__all__ = ["evaluate_transfer", "transfer_markdown", "RESULTS_FORMAT"]
