"""Generation metrics of a run for its report: for each fold ``k``, the real training split of ``DIR/data``
vs ``DIR/synthetic/fold_k`` through :func:`synthpair.evaluation.evaluate_arrays`, written as
``report/generation.{json,csv,md}`` and ``report/memorisation.csv``, plus the memorisation example grids."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SynthpairError
from ..io import write_json_atomic, write_text_atomic


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def memorisation_grid(real: Any, syn: Any, rows: list[dict[str, Any]], num_classes: int) -> np.ndarray:
    """Side-by-side tiles: synthetic image | its SSIM-nearest real training image, one pair per row."""
    from .grid import pair_grid

    imgs, msks = [], []
    for r in rows:
        imgs += [syn.images[r["index"]], real.images[r["ssim_nn"]]]
        msks += [syn.masks[r["index"]], real.masks[r["ssim_nn"]]]
    return pair_grid(np.stack(imgs), np.stack(msks), ncols=2, num_classes=num_classes)


def run_generation_metrics(run_dir: Path, rep: Path, n_examples: int = 6) -> list[dict[str, Any]]:
    """Evaluate every ``synthetic/fold_k`` of a run → one entry per fold: {"fold", "result" | "error",
    "examples" (rows of the closest pairs), "grid" (uint8 RGB image or None)}. Writes the tables."""
    from ..data.dataset import PreparedDataset
    from ..evaluation.images import EvalConfig, evaluate_arrays, generation_rows, generation_table, load_set
    from ..metrics.distribution import SampleSizeWarning
    from ..metrics.memorisation import closest

    data_dir = run_dir / "data"
    out: list[dict[str, Any]] = []
    if not (data_dir / "dataset.json").is_file():
        return out
    ds = PreparedDataset.open(data_dir, require_splits=False)
    for syn_dir in sorted((run_dir / "synthetic").glob("fold_*")):
        try:
            k = int(syn_dir.name.split("_", 1)[1])
            train_ids, _ = ds.split(k)
            real = load_set(data_dir, train_ids, "real training")
            syn = load_set(syn_dir, None, "synthetic")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SampleSizeWarning)  # listed in the result instead
                res = evaluate_arrays(real, syn, EvalConfig())
        except (SynthpairError, ValueError) as err:
            out.append({"fold": syn_dir.name, "error": str(err)})
            continue
        res["fold"] = k
        ex = closest(res["memorisation"], n_examples)
        out.append({"fold": syn_dir.name, "result": res, "table": generation_rows(res), "md": generation_table(res),
                    "examples": ex, "grid": memorisation_grid(real, syn, ex, ds.num_classes) if ex else None})
    ok = [e for e in out if "result" in e]
    write_json_atomic(rep / "generation.json", {e["fold"]: e.get("result", {"error": e.get("error")}) for e in out})
    write_text_atomic(rep / "generation.md", "".join(f"## {e['fold']}\n\n{e['md']}\n" for e in ok))
    write_text_atomic(rep / "generation.csv", _csv([{"fold": e["fold"], **r} for e in ok for r in e["table"]]))
    write_text_atomic(rep / "memorisation.csv", _csv([{"fold": e["fold"], **{k: v for k, v in r.items()}}
                                                      for e in ok for r in e["result"]["memorisation"]["rows"]]))
    return out


__all__ = ["memorisation_grid", "run_generation_metrics"]
