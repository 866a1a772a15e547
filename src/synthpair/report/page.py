"""The sections of a run's ``report.html`` (dataset, pairs, generation metrics, segmentation, curves,
memorisation, config and versions), rendered with :mod:`.html`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .html import esc, figure, markdown_to_table, page, pre_json, table

SECTIONS = (("dataset", "Dataset summary"), ("pairs", "Real and synthetic pairs"),
            ("generation", "Generation metrics"), ("segmentation", "Segmentation"), ("curves", "Curves"),
            ("memorisation", "Memorisation"), ("config", "Config and versions"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dataset_section(run_dir: Path) -> str:
    from ..data.dataset import PreparedDataset

    data_dir = run_dir / "data"
    if not (data_dir / "dataset.json").is_file():
        return '<p class="note">No prepared dataset in this run (data/ missing).</p>'
    ds = PreparedDataset.open(data_dir, require_splits=False)
    fg = [it.get("foreground_fraction") for it in ds.items if it.get("foreground_fraction") is not None]
    rows = [{"property": "name", "value": ds.info.get("name", "")}, {"property": "modality", "value": ds.modality},
            {"property": "images", "value": len(ds.items)}, {"property": "cases", "value": len(ds.cases())},
            {"property": "size (H×W)", "value": "×".join(map(str, ds.size))},
            {"property": "channels", "value": ds.channels},
            {"property": "labels", "value": ", ".join(f"{k}={v}" for k, v in ds.labels.items())},
            {"property": "folds", "value": ds.num_folds},
            {"property": "foreground fraction (mean ± sd)",
             "value": f"{np.mean(fg):.3f} ± {np.std(fg, ddof=1) if len(fg) > 1 else 0:.3f}" if fg else "–"},
            {"property": "normalisation", "value": json.dumps(ds.info.get("normalisation", {}))}]
    folds = []
    for k in range(ds.num_folds):
        tr, te = ds.split(k)
        folds.append({"fold": k, "train images": len(tr), "test images": len(te)})
    return table(rows) + (table(folds, numeric=("train images", "test images")) if folds else "")


def _legend(num_classes: int, labels: dict[str, int]) -> str:
    from .grid import PALETTE

    names = {v: k for k, v in labels.items()}
    out = []
    for k in range(1, num_classes):
        r, g, b = PALETTE[(k - 1) % len(PALETTE)]
        out.append(f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>{esc(names.get(k, k))}')
    return '<p class="note">Mask contour colours:' + "".join(out) + "</p>"


def _pairs_section(run_dir: Path, rep: Path, figures: list[tuple[str, str]]) -> str:
    labels = {"background": 0, "lesion": 1}
    info = _read_json(run_dir / "data" / "dataset.json") or {}
    labels = info.get("labels", labels)
    out = [_legend(int(info.get("num_classes", 2)), labels)]
    for title, rel in figures:
        if "pairs" in rel:
            out.append(figure(rep / rel, title, width=560))
    return "".join(out) if len(out) > 1 else '<p class="note">No pairs to show.</p>'


def _generation_section(generation: list[dict[str, Any]]) -> str:
    if not generation:
        return '<p class="note">No synthetic/fold_k folders in this run.</p>'
    out = ['<p class="note">Each synthetic set against the real training split of its fold. Features are '
           'z-scored with the real statistics; the real-vs-real baseline compares two random halves of the real '
           'set, and “synthetic (half-size)” uses the same sample sizes as that baseline. FD with fewer samples '
           'than feature dimensions is marked unreliable; KID is unbiased at any sample size.</p>']
    for g in generation:
        out.append(f"<h3>{esc(g['fold'])}</h3>")
        if "error" in g:
            out.append(f'<p class="warn">not available: {esc(g["error"])}</p>')
            continue
        res = g["result"]
        out.append(table(g["table"]))
        out.append(f'<p class="note">extractor: {esc(res["extractor"])}; {esc(res["resize_policy"])}; paired '
                   f'metrics reference: {esc(res["paired"]["reference"])}; data range {esc(res["data_range"])}.</p>')
        for w in res.get("warnings", []):
            out.append(f'<p class="warn">warning: {esc(w)}</p>')
        mrows = []
        for cls, stats in res["masks"].items():
            for name, v in stats.items():
                f = lambda s: "–" if s["mean"] is None else f"{s['mean']:.4g} ± {s['sd']:.3g}"  # noqa: E731
                mrows.append({"class": cls, "statistic": name, "real": f(v["real"]), "synthetic": f(v["synthetic"]),
                              "Wasserstein": "–" if v["wasserstein"] is None else f"{v['wasserstein']:.3g}",
                              "KS (p)": "–" if v["ks"] is None else f"{v['ks']:.3g} ({v['ks_p']:.3g})"})
        out.append("<h4>Mask statistics, real vs synthetic</h4>" + table(mrows))
    return "".join(out)


def _segmentation_section(results: dict[str, Any]) -> str:
    from .build import results_table

    out = ['<p class="note">Held-out real cases pooled over folds, layout of EMIT-Diff Table 2 (Dice/IoU/'
           f'precision/recall in %, distances in {esc(results.get("distance_unit", "pixel"))}s; mean ± sd over '
           'cases).</p>', markdown_to_table(results_table(results))]
    rows = []
    for name, s in results["settings"].items():
        for metric, c in s.get("vs_real_only", {}).items():
            rows.append({"setting": name, "metric": metric, "paired cases n": c["n"],
                         "mean Δ vs real-only (points)": "–" if c["mean_diff"] is None else f"{100 * c['mean_diff']:+.2f}",
                         "sd Δ": "–" if c.get("sd_diff") is None else f"{100 * c['sd_diff']:.2f}",
                         "Wilcoxon p": "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}"})
    if rows:
        out.append("<h4>Paired comparison with real-only (same cases, Wilcoxon signed-rank)</h4>" + table(rows))
    for key, label in (("across_folds", "folds"), ("across_seeds", "repeated seeds")):
        spread = [{"setting": name, **{m: f"{100 * v['mean']:.2f} ± {100 * v['sd']:.2f} (n={v['n']})"
                                       for m, v in s[key].items() if m in ("dice", "iou") and v["mean"] is not None}}
                  for name, s in results["settings"].items() if s.get(key)]
        if spread:
            out.append(f"<h4>Spread across {label} (mean ± sd of the per-{label.split()[-1][:-1]} means, %)</h4>"
                       + table(spread))
    out.append('<p class="note">Tables also in results.{json,csv,md} and per_case.csv next to this page.</p>')
    return "".join(out)


def _curves_section(rep: Path, figures: list[tuple[str, str]]) -> str:
    out = [figure(rep / rel, title, width=720 if "loss" in rel else 480) for title, rel in figures
           if "loss" in rel or "ratio" in rel]
    if not any("ratio" in rel for _, rel in figures):
        out.append('<p class="note">Dice vs synthetic ratio: shown when the run compares two or more ratios.</p>')
    return "".join(out) or '<p class="note">No curves recorded.</p>'


def _memorisation_section(rep: Path, generation: list[dict[str, Any]]) -> str:
    out = []
    for g in generation:
        if "result" not in g:
            continue
        m = g["result"]["memorisation"]
        out.append(f"<h3>{esc(g['fold'])}</h3><p>{m['n_flagged']} of {m['n_synthetic']} synthetic images flagged "
                   f"as closer to a training image than the {100 * (1 - m['quantile']):.0f}% of real-vs-real nearest "
                   f"neighbours (feature distance &lt; {m['thresholds']['feat_dist']:.3g} or SSIM &gt; "
                   f"{m['thresholds']['ssim']:.3g}; exact copies always flagged).</p>")
        if g.get("grid_path"):
            out.append(figure(rep / g["grid_path"], "Closest by SSIM: synthetic | nearest real", width=300))
        out.append(table([{"synthetic": r["id"], "nearest real (SSIM)": r["ssim_nn_id"], "SSIM": f"{r['ssim']:.3f}",
                           "nearest real (features)": r["feat_nn_id"], "feature distance": f"{r['feat_dist']:.3g}",
                           "flagged": "yes" if r["flagged"] else "no"} for r in g["examples"]]))
    return "".join(out) or '<p class="note">No synthetic sets evaluated.</p>'


def _config_section(run_dir: Path) -> str:
    out = []
    for name in ("config.json", "env.json"):
        obj = _read_json(run_dir / name)
        out.append(f"<h3>{esc(name)}</h3>" + (pre_json(obj) if obj is not None else '<p class="note">missing</p>'))
    return "".join(out)


def render_run_report(run_dir: Path, results: dict[str, Any], figures: list[tuple[str, str]],
                      generation: list[dict[str, Any]]) -> str:
    """The whole self-contained page of a run (every section of :data:`SECTIONS`)."""
    rep = run_dir / "report"
    body = {"dataset": _dataset_section(run_dir), "pairs": _pairs_section(run_dir, rep, figures),
            "generation": _generation_section(generation), "segmentation": _segmentation_section(results),
            "curves": _curves_section(rep, figures), "memorisation": _memorisation_section(rep, generation),
            "config": _config_section(run_dir)}
    return page(f"synthpair report — {run_dir.name}", [(a, t, body[a]) for a, t in SECTIONS],
                subtitle=str(run_dir.resolve()))


__all__ = ["SECTIONS", "render_run_report"]
