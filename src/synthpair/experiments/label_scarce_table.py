"""Tables, figures and the HTML page of the label-scarce study (:mod:`.label_scarce`).

Per dataset, label budget N and row: Dice / IoU / HD95 as mean ± sd of the per-seed means over the 200 test
images (:func:`synthpair.metrics.statistics.across_seeds`); Δ Dice against real + classic augmentation as the
mean ± sd over seeds of the per-seed differences, and the paired Wilcoxon signed-rank test over test images
with each image's Dice averaged over the seeds first (:func:`~synthpair.metrics.statistics.paired_comparison`);
CPU-minutes of the segmenter (mean per run) and, for synthetic rows, of the label-honest generator fine-tune
and sampling (mean per seed). The image-only generator's own training CPU-minutes are stated once per dataset
(it serves every N, seed and row). Runs that have not finished yet are shown as missing, never guessed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = {  # independent real-only reference of the issue (MONAI UNet (16,32,64,128), 1,500 it., batch 8)
    "busi": {16: (0.392, 0.525), 32: (0.487, 0.610), 64: (0.526, 0.655)},
    "kvasir": {16: (0.401, 0.493), 32: (0.479, 0.574), 64: (0.526, 0.595)},
}
METRICS = ("dice", "iou", "hd95")


def _load(path: Path) -> dict[str, Any] | None:
    f = path / "results.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _rows_with_seed(res: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    return [{**r, "seed": seed} for r in res["per_case"]]


def _gen_cpu_minutes(generator: str) -> dict[str, Any]:
    from ..segmentation.ddfeatures import resolve_export

    try:
        export = resolve_export(generator)
    except Exception:  # noqa: BLE001  (a missing generator is reported as unknown cost)
        return {"run": generator, "cpu_minutes": None}
    cfg = json.loads((export / "config.json").read_text())
    cpu = cfg.get("cpu_seconds")
    return {"run": str(export), "step": cfg.get("step"), "cpu_minutes": None if cpu is None else round(cpu / 60, 1)}


def collect(study: Any) -> dict[str, Any]:
    from ..metrics.statistics import across_seeds, mean_sd, paired_comparison
    from .label_scarce import BASELINE, LABELS, ROWS

    cfg, cost = study.cfg, study.cost
    out: dict[str, Any] = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
                           "datasets": {}}
    for ds in cfg.data:
        dsec: dict[str, Any] = {"generator": _gen_cpu_minutes(cfg.generator[ds]) if ds in cfg.generator else None,
                                "n": {}}
        for n in cfg.n:
            per_row: dict[str, dict[int, dict[str, Any]]] = {}
            for row in cfg.rows:
                for s in cfg.seeds:
                    res = _load(study.seg(ds, n, s, row))
                    if res is not None:
                        per_row.setdefault(row, {})[s] = res
            base = per_row.get(BASELINE, {})
            nsec: dict[str, Any] = {}
            for row, by_seed in per_row.items():
                rows_by_seed = {s: r["per_case"] for s, r in by_seed.items()}
                entry: dict[str, Any] = {"label": LABELS.get(row, row), "seeds": sorted(by_seed),
                                         "summary": {m: {k: v for k, v in across_seeds(rows_by_seed, (m,))[m].items()}
                                                     for m in METRICS}}
                seg_cpu = [cost.get(str(study.seg(ds, n, s, row).relative_to(study.out))) for s in by_seed]
                entry["cpu_minutes_segmenter"] = mean_sd([c / 60 for c in seg_cpu if c is not None])["mean"]
                variant = ROWS[row].get("synthetic")
                if variant:  # the mask2image fine-tune + the generation of the pairs this row reads
                    folder = "syn" if variant is True else f"syn_{variant}"
                    gen = [sum(cost.get(f"{ds}/synth/seed{s}_N{n}/{k}", 0.0) for k in ("m2i", folder)) / 60
                           for s in by_seed]
                    entry["cpu_minutes_generator_per_seed"] = mean_sd(gen)["mean"]
                feats = [f.get("features") for r in by_seed.values() for f in r["folds"] if f.get("features")]
                if feats:
                    entry["features"] = [{k: f.get(k) for k in ("blocks", "timesteps", "fusion_timesteps")} for f in feats]
                if any(r.get("generator_saw_more_labels") for r in by_seed.values()):
                    entry["generator_saw_more_labels"] = True
                common = sorted(set(base) & set(by_seed))
                if row != BASELINE and common:
                    diffs = [by_seed[s]["summary"]["dice"]["mean"] - base[s]["summary"]["dice"]["mean"] for s in common]
                    b_rows = [x for s in common for x in _rows_with_seed(base[s], s)]
                    o_rows = [x for s in common for x in _rows_with_seed(by_seed[s], s)]
                    entry["vs_baseline"] = {"seeds": common, "delta_dice": mean_sd(diffs),
                                            "per_seed_delta": dict(zip(map(str, common), diffs)),
                                            "paired": paired_comparison(b_rows, o_rows, "dice")}
                nsec[row] = entry
            dsec["n"][str(n)] = nsec
        curve = []
        if ds in cfg.generator:
            for snap in study.snapshots(ds):
                per_seed = {s: _load(study.seg(ds, cfg.curve_n, s, cfg.curve_row, snap.name)) for s in cfg.curve_seeds}
                per_seed = {s: v["summary"]["dice"]["mean"] for s, v in per_seed.items() if v is not None}
                if per_seed:
                    gcfg = json.loads((snap / "config.json").read_text())
                    curve.append({"snapshot": snap.name, "step": gcfg.get("step"),
                                  "generator_cpu_minutes": round(gcfg.get("cpu_seconds", 0) / 60, 1),
                                  "dice": mean_sd(list(per_seed.values())), "seeds": sorted(per_seed),
                                  "per_seed_dice": {str(s): d for s, d in sorted(per_seed.items())}})
        # points may have different seeds (the main snapshot has every study seed); a like-for-like mean over the
        # seeds every point has, so that the curve never compares a 3-seed mean with one seed's value
        common = sorted(set.intersection(*(set(p["seeds"]) for p in curve))) if curve else []
        for p in curve:
            p["dice_common_seeds"] = mean_sd([p["per_seed_dice"][str(s)] for s in common])
        dsec["curve"] = {"row": cfg.curve_row, "n": cfg.curve_n, "common_seeds": common, "points": curve}
        out["datasets"][ds] = dsec
    return out


def _fmt(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± sd`` over seeds; a single seed prints its value alone (no ± 0.000 spread)."""
    if not s or s.get("mean") is None:
        return "–"
    if s.get("n") == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {(s.get('sd') or 0.0) * scale:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    from .label_scarce import BASELINE

    cfg = res["config"]
    lines = ["# Label-scarce study", "",
             f"Segmenter budget for every row: {cfg['seg_steps']} iterations × batch {cfg['seg_batch']}; test: the fixed "
             f"200-image test set of each dataset; mean ± sd over seeds {cfg['seeds']}; Δ Dice against "
             f"**{BASELINE}** (same split, seed, iterations and batch), paired Wilcoxon over test images (Dice "
             f"averaged over seeds per image). Synthetic and diffusion rows use only the N labelled masks (label "
             f"accounting checked by `segment`).", ""]
    for ds, dsec in res["datasets"].items():
        gen = dsec.get("generator") or {}
        lines += [f"## {ds}", ""]
        if gen:
            lines.append(f"Image-only generator (pool images, no masks): `{gen.get('run')}`, step {gen.get('step')}, "
                         f"**{gen.get('cpu_minutes')} CPU-min** of training (shared by every N, seed and row).")
            lines.append("")
        ref = REFERENCE.get(ds, {})
        for n, nsec in dsec["n"].items():
            r = ref.get(int(n))
            lines += [f"### N = {n}" + (f" (independent reference: no aug {r[0]:.3f}, classic aug {r[1]:.3f})" if r else ""),
                      "", "| row | Dice | IoU | HD95 (px) | Δ Dice vs baseline (seeds) | p (Wilcoxon, n) | seeds | "
                      "CPU-min seg. | CPU-min gen./seed |", "|---|---|---|---|---|---|---|---|---|"]
            for row, e in nsec.items():
                vs = e.get("vs_baseline")
                delta = _fmt(vs["delta_dice"]) if vs else ("–" if row != BASELINE else "(baseline)")
                p = vs["paired"] if vs else None
                pcell = f"{p['p_value']:.2g} ({p['n']})" if p and p.get("p_value") is not None else "–"
                label = e["label"] + (" †" if e.get("generator_saw_more_labels") else "")
                cpu_s = e.get("cpu_minutes_segmenter")
                cpu_g = e.get("cpu_minutes_generator_per_seed")
                lines.append(f"| {label} | {_fmt(e['summary']['dice'])} | {_fmt(e['summary']['iou'])} | "
                             f"{_fmt(e['summary']['hd95'], digits=2)} | {delta} | {pcell} | {len(e['seeds'])} | "
                             f"{'–' if cpu_s is None else f'{cpu_s:.1f}'} | {'–' if cpu_g is None else f'{cpu_g:.1f}'} |")
            lines.append("")
        pts = dsec.get("curve", {}).get("points", [])
        if pts:
            common = dsec["curve"].get("common_seeds", [])
            lines += [f"Dice of `{dsec['curve']['row']}` at N = {dsec['curve']['n']} against the image-only generator's "
                      f"training CPU-minutes:", "",
                      f"| snapshot | generator CPU-min | seeds | Dice (mean ± sd over its seeds) | "
                      f"Dice on the seeds every point has ({', '.join(map(str, common)) or 'none'}) | per-seed Dice |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {p['snapshot']} | {p['generator_cpu_minutes']} | {len(p['seeds'])} | {_fmt_seeds(p['dice'])} | "
                      f"{_fmt_seeds(p.get('dice_common_seeds'))} | "
                      f"{', '.join(f'{s}: {d:.3f}' for s, d in p['per_seed_dice'].items())} |" for p in pts]
            lines.append("")
    lines.append("† generator saw more labels than the segmenter (paper-replication setting).")
    return "\n".join(lines) + "\n"


def _fmt_seeds(s: dict[str, Any] | None) -> str:
    """A mean over seeds; one seed prints its value and "(1 seed)", never a spread of ± 0.000."""
    if s and s.get("n") == 1 and s.get("mean") is not None:
        return f"{s['mean']:.3f} (1 seed)"
    return _fmt(s)


def dice_vs_n_png(dsec: dict[str, Any], title: str) -> bytes | None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(int(n) for n in dsec["n"])
    rows = sorted({r for nsec in dsec["n"].values() for r in nsec})
    if not ns or not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for row in rows:
        xs, ys, es = [], [], []
        for n in ns:
            e = dsec["n"][str(n)].get(row)
            if e and e["summary"]["dice"].get("mean") is not None:
                xs.append(n)
                ys.append(e["summary"]["dice"]["mean"])
                es.append(e["summary"]["dice"].get("sd") or 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=row, lw=2.2 if row == "real-classic" else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("labelled images N")
    ax.set_ylabel("test Dice (mean ± sd over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def curve_png(dsec: dict[str, Any], title: str) -> bytes | None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = dsec.get("curve", {}).get("points", [])
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.4, 3.6), dpi=110)
    ax.errorbar([p["generator_cpu_minutes"] for p in pts], [p["dice"]["mean"] for p in pts],
                yerr=[p["dice"].get("sd") or 0.0 for p in pts], marker="o", capsize=3)
    ax.set_xlabel("image-only generator training (CPU-minutes)")
    ax.set_ylabel("test Dice")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_tables(study: Any) -> Path:
    """Collect every finished run of ``study`` → OUT/results.json, results.md, figures/*.png, report.html."""
    from ..io import write_bytes_atomic, write_json_atomic, write_text_atomic
    from ..report.html import esc, figure, markdown_to_table, page

    res = collect(study)
    out = study.out
    write_json_atomic(out / "results.json", res)
    md = markdown(res)
    write_text_atomic(out / "results.md", md)
    figs: list[tuple[str, bytes, str]] = []
    for ds, dsec in res["datasets"].items():
        png = dice_vs_n_png(dsec, f"{ds}: Dice vs labelled images")
        if png:
            figs.append((f"dice_vs_n_{ds}.png", png, f"{ds}: test Dice against N for every row"))
        png = curve_png(dsec, f"{ds}: {dsec['curve']['row']} at N = {dsec['curve']['n']}")
        if png:
            figs.append((f"curve_{ds}.png", png, f"{ds}: Dice against the generator's training CPU-minutes"))
        heat = study.seg(ds, study.cfg.n[0], study.cfg.seeds[0], "ddpm-pixel") / "fold_0" / "feature_analysis.png"
        if heat.is_file():
            figs.append((f"feature_analysis_{ds}.png", heat.read_bytes(),
                         f"{ds}: feature analysis (validation Dice per block × timestep) of seed "
                         f"{study.cfg.seeds[0]}, N = {study.cfg.n[0]} — labelled training items only"))
    for name, png, _ in figs:
        write_bytes_atomic(out / "figures" / name, png)
    def block_html(block: str) -> str:
        if block.lstrip().startswith("|"):
            return markdown_to_table(block)
        if block.startswith("#"):
            level = min(4, 1 + len(block) - len(block.lstrip("#")))
            return f"<h{level}>{esc(block.lstrip('#').strip())}</h{level}>"
        return f"<p>{esc(block)}</p>"

    sections = [("results", "Results", "".join(block_html(b) for b in md.split("\n\n") if b.strip())),
                ("figures", "Figures", "".join(figure(png, cap) for _, png, cap in figs))]
    write_text_atomic(out / "report.html", page("synthpair — label-scarce study", sections))
    return out / "results.md"


__all__ = ["collect", "markdown", "write_tables", "REFERENCE"]
