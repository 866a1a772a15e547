"""``synthpair report DIR``: aggregate a run folder into ``DIR/report/``.

Reads the per-case segmentation results of every setting and fold (``DIR/segment/<setting>/fold_<k>/``),
pools the held-out cases of all folds, and writes

* ``results.json`` — per setting: summary (mean, sd, n per metric), per-case rows, and the paired
  comparison with real-only on the same cases (mean Δ, Wilcoxon signed-rank p-value, n);
* ``results.md`` / ``results.csv`` — the table in the layout of EMIT-Diff's Table 2;
* ``per_case.csv`` — every held-out case of every setting and fold;
* ``generation.{json,csv,md}``, ``memorisation.csv`` — generation metrics of each ``synthetic/fold_k``
  against the real training split of fold k, with the real-vs-real baseline (:mod:`.generation`);
* ``figures/real_pairs.png``, ``figures/synthetic_pairs_fold_k.png`` (mask contours, a colour per class),
  ``figures/loss_curves.png`` (generator and segmenter training losses), ``figures/dice_vs_ratio.png``
  (when several ratios ran), ``figures/memorisation_fold_k.png`` (closest synthetic/real pairs);
* ``report.html`` — all of the above in one self-contained page (:mod:`.page`, :mod:`.html`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import fail
from ..io import ensure_dir, read_json, save_png_atomic, write_json_atomic, write_text_atomic
from ..metrics.statistics import paired_comparison, summarize_rows  # noqa: F401 (re-exported)
from .tables import METRICS, csv_table, markdown_table


def _setting_label(dirname: str) -> str:
    if dirname == "real":
        return "real-only"
    m = re.fullmatch(r"ratio_(.+)", dirname)
    return f"real+synthetic r={m.group(1)}" if m else dirname


def _setting_order(dirname: str) -> tuple[int, float, str]:
    if dirname == "real":
        return (0, 0.0, dirname)
    m = re.fullmatch(r"ratio_(.+)", dirname)
    try:
        return (1, float(m.group(1)), dirname) if m else (2, 0.0, dirname)
    except ValueError:
        return (2, 0.0, dirname)


def _load_segment_setting(setting_dir: Path) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    """All folds of one setting → (per-case rows with 'fold', distance unit, loss curves per fold)."""
    rows: list[dict[str, Any]] = []
    unit = "pixel"
    curves = []
    for fold_dir in sorted(setting_dir.glob("fold_*")):
        res_file = fold_dir / "results.json"
        if not res_file.is_file():
            continue
        res = read_json(res_file)
        unit = res.get("distance_unit", unit)
        for r in res.get("per_case", []):
            rows.append(dict(r))
        for loss_file in sorted(fold_dir.rglob("loss.jsonl")):
            steps, losses = [], []
            for line in loss_file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    steps.append(rec["step"])
                    losses.append(rec["loss"])
            curves.append({"fold": fold_dir.name, "step": steps, "loss": losses})
    return rows, unit, curves


def _spread(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Mean ± sd of the per-``key`` means (folds or repeated seeds) when rows carry ≥ 2 values of ``key``."""
    from ..metrics.statistics import across_seeds

    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get(key) is not None:
            groups.setdefault(r[key], []).append(r)
    return across_seeds(groups, METRICS) if len(groups) >= 2 else None


def collect_results(run_dir: Path) -> dict[str, Any]:
    """Aggregate ``run_dir/segment/*`` into the ``results.json`` structure."""
    seg_root = run_dir / "segment"
    if not seg_root.is_dir():
        raise fail(f"{run_dir}: no segment/ folder; run 'synthpair run' (or segment) before 'synthpair report'")
    settings: dict[str, Any] = {}
    unit = "pixel"
    for sdir in sorted((p for p in seg_root.iterdir() if p.is_dir()), key=lambda p: _setting_order(p.name)):
        rows, unit, curves = _load_segment_setting(sdir)
        if not rows:
            continue
        settings[_setting_label(sdir.name)] = {"dir": str(sdir.relative_to(run_dir)), "summary": summarize_rows(rows),
                                               "per_case": rows, "loss_curves": curves,
                                               "across_folds": _spread(rows, "fold"),
                                               "across_seeds": _spread(rows, "seed")}
    if not settings:
        raise fail(f"{seg_root}: no finished segmentation results; rerun 'synthpair run' to finish them")
    base = settings.get("real-only")
    if base is not None:
        for name, s in settings.items():
            if name != "real-only":
                s["vs_real_only"] = {m: paired_comparison(base["per_case"], s["per_case"], m)
                                     for m in ("dice", "iou")}
    return {"distance_unit": unit, "settings": settings}


def results_table(results: dict[str, Any]) -> str:
    rows = {name: s["summary"] for name, s in results["settings"].items()}
    table = markdown_table(rows, unit=results.get("distance_unit", "pixel"))
    notes = []
    for name, s in results["settings"].items():
        cmp_ = s.get("vs_real_only", {}).get("dice")
        if cmp_ and cmp_["n"]:
            p = "n/a" if cmp_["p_value"] is None else f"{cmp_['p_value']:.3g}"
            notes.append(f"- {name} vs real-only: ΔDice = {100 * cmp_['mean_diff']:+.2f} points "
                         f"(paired over {cmp_['n']} held-out cases, Wilcoxon p = {p})")
    return table + ("\n" + "\n".join(notes) + "\n" if notes else "")


# ------------------------------------------------------------------ figures

def _grid_png(images: np.ndarray, masks: np.ndarray, num_classes: int, path: Path, ncols: int = 8) -> None:
    from .grid import pair_grid

    save_png_atomic(path, pair_grid(images, masks, ncols=ncols, num_classes=num_classes))


def _pairs_figure(folder: Path, out: Path, n: int, num_classes: int, ids: list[str] | None = None) -> bool:
    from ..data.dataset import PreparedDataset

    if not (folder / "dataset.json").is_file():
        return False
    ds = PreparedDataset.open(folder, require_splits=False)
    ids = (ids or ds.ids)[:n]
    if not ids:
        return False
    images, masks = ds.load(ids)
    _grid_png(images, masks, num_classes, out)
    return True


def _loss_figure(run_dir: Path, results: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen_curves = []
    for metrics_file in sorted((run_dir / "generator").glob("fold_*/metrics.jsonl")):
        steps, losses = [], []
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if "loss" in rec and "step" in rec:
                    steps.append(rec["step"])
                    losses.append(rec["loss"])
        gen_curves.append((metrics_file.parent.name, steps, losses))
    if not gen_curves and not results["settings"]:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for name, steps, losses in gen_curves:
        axes[0].plot(steps, losses, label=name)
    axes[0].set_title("generator: diffusion loss")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    if gen_curves:
        axes[0].legend(fontsize=8)
    for name, s in results["settings"].items():
        for c in s.get("loss_curves", []):
            axes[1].plot(c["step"], c["loss"], label=f"{name} ({c['fold']})", alpha=0.8)
    axes[1].set_title("segmenter: Dice+CE loss")
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=7)
    _save_figure(fig, path)
    return True


def _save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    ensure_dir(path.parent)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _dice_ratio_figure(results: dict[str, Any], path: Path) -> bool:
    """Dice (mean ± sd over held-out cases) against the synthetic:real ratio; needs ≥ 2 ratios."""
    pts = []
    for name, s in results["settings"].items():
        m = re.fullmatch(r"real\+synthetic r=(.+)", name)
        r = 0.0 if name == "real-only" else (float(m.group(1)) if m else None)
        d = s["summary"].get("dice", {})
        if r is not None and d.get("mean") is not None:
            pts.append((r, d["mean"], d["sd"] or 0.0))
    if sum(1 for r, *_ in pts if r > 0) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts.sort()
    x, y, e = (np.array(v) for v in zip(*pts))
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    ax.errorbar(x, 100 * y, yerr=100 * e, marker="o", capsize=3)
    ax.set_xlabel("synthetic : real ratio (0 = real-only)")
    ax.set_ylabel("Dice (%) on held-out real cases")
    ax.set_title("Dice vs synthetic ratio (mean ± sd over cases)")
    _save_figure(fig, path)
    return True


def _per_case_csv(results: dict[str, Any]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting", "fold", "id"] + list(METRICS))
    for name, s in results["settings"].items():
        for r in s["per_case"]:
            w.writerow([name, r.get("fold", ""), r["id"]] + [r.get(m, "") for m in METRICS])
    return buf.getvalue()


def build_report(run_dir: Path | str, html: bool = True) -> Path:
    """Write ``run_dir/report/`` (tables as JSON/CSV/MD, figures, generation metrics, ``report.html``) and
    return the path of ``results.md``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise fail(f"{run_dir}: run folder not found; pass the --out folder of 'synthpair run'")
    results = collect_results(run_dir)
    rep = ensure_dir(run_dir / "report")
    figs = ensure_dir(rep / "figures")
    num_classes = 2
    figures = []
    data_dir = run_dir / "data"
    if (data_dir / "dataset.json").is_file():
        from ..data.dataset import PreparedDataset

        ds = PreparedDataset.open(data_dir)
        num_classes = ds.num_classes
        train_ids, _ = ds.split(0)
        if _pairs_figure(data_dir, figs / "real_pairs.png", 16, num_classes, ids=train_ids):
            figures.append(("Real training pairs (fold 0)", "figures/real_pairs.png"))
    for syn in sorted((run_dir / "synthetic").glob("fold_*")):
        if _pairs_figure(syn, figs / f"synthetic_pairs_{syn.name}.png", 16, num_classes):
            figures.append((f"Synthetic pairs ({syn.name})", f"figures/synthetic_pairs_{syn.name}.png"))
    if _loss_figure(run_dir, results, figs / "loss_curves.png"):
        figures.append(("Training losses", "figures/loss_curves.png"))
    if _dice_ratio_figure(results, figs / "dice_vs_ratio.png"):
        figures.append(("Dice vs synthetic ratio", "figures/dice_vs_ratio.png"))

    from .generation import run_generation_metrics

    generation = run_generation_metrics(run_dir, rep)
    for g in generation:
        if g.get("grid") is not None:
            rel = f"figures/memorisation_{g['fold']}.png"
            save_png_atomic(rep / rel, g["grid"])
            g["grid_path"] = rel

    summary_only = {"distance_unit": results["distance_unit"],
                    "settings": {k: {kk: vv for kk, vv in v.items() if kk != "loss_curves"}
                                 for k, v in results["settings"].items()},
                    "figures": [f for _, f in figures]}
    write_json_atomic(rep / "results.json", summary_only)
    write_text_atomic(rep / "results.csv", csv_table({k: v["summary"] for k, v in results["settings"].items()}))
    write_text_atomic(rep / "per_case.csv", _per_case_csv(results))
    md = ["# synthpair results", "",
          f"Segmentation on held-out real cases (pooled over folds). Dice/IoU/precision/recall in %, "
          f"distances in {results['distance_unit']}s; mean ± sd over cases.", "",
          results_table(results), ""]
    for g in generation:
        if "md" in g:
            md += [f"## Generation metrics ({g['fold']})", "", g["md"]]
    for title, rel in figures:
        md += [f"## {title}", "", f"![{title}]({rel})", ""]
    path = rep / "results.md"
    write_text_atomic(path, "\n".join(md))
    if html:
        from .page import render_run_report

        write_text_atomic(rep / "report.html", render_run_report(run_dir, results, figures, generation))
    return path
