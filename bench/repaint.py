"""Benchmark: reference RePaint vs fast RePaint (and a no-resampling ablation) on the same sources and model.

Every arm runs :func:`synthpair.synthesis.inpaint.inpaint` on the SAME first ``--sources`` lesion images of the
generator's training split with the same seeds (one pair per source), so the arms differ only in the sampler
settings. Per arm:

- cost: network evaluations per pair (NFE, counted by the sampler) and CPU seconds per pair (process time, so
  other processes' load on the shared machine affects it less than wall time; wall time is reported too);
- kept fraction: pairs whose new mask is non-empty (the arms run with ``require_interior=False`` so every
  non-empty pair is measured; how many of them touch the region border, which ``synthpair inpaint`` rejects
  by default, is counted separately);
- quality proxies, over kept pairs (defined in the results file):
  * seam ratio: mean gradient magnitude on the region's 1-px boundary ring ÷ elsewhere
    (:func:`synthpair.synthesis.harmonise.seam_ratio`); the same on the REAL source image and region is the
    natural level (no seam);
  * lesion contrast: mean intensity inside the new lesion − mean intensity in the rest of the region (BUSI
    lesions are hypoechoic: negative on real images, measured on the real sources with their own lesions);
  * faithfulness: Dice of a real-only reference segmenter's prediction on the inpainted image vs the new mask
    (on the real sources vs their own masks for the natural level);
  * radiomics FD / KID (:mod:`synthpair.metrics.features`, :mod:`synthpair.metrics.distribution`) of the
    inpainted images vs the real training split; the real source images themselves give the reference level at
    the same n (with n ≈ 12 < feature dim, FD is biased upward and unreliable: compare arms, prefer KID).

    OMP_NUM_THREADS=1 python bench/repaint.py --data runs/mc/busi64 --generator runs/mc/bench/gen/joint \
        --segmenter runs/mc/bench/seg/real_only --sources 12 --out runs/h2/bench_repaint \
        --results bench/results/repaint_busi64
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ARMS = {
    "reference": dict(mode="reference"),                                         # DDPM 250, L=10, r=10
    "fast": dict(mode="fast"),                                                   # DDIM 50, L=5, r=3, eta=1
    "fast-25": dict(mode="fast", steps=25, jump_length=5, resample=3),           # DDIM 25, L=5, r=3
    "no-resample-50": dict(mode="fast", steps=50, jump_length=1, resample=1),    # ablation: plain replacement
}


def lesion_contrast(image: np.ndarray, mask: np.ndarray, region: np.ndarray) -> float:
    """mean(image in lesion) − mean(image in region ∖ lesion); image (C, H, W), mask/region bool (H, W)."""
    ring = region & ~mask
    if not mask.any() or not ring.any():
        return float("nan")
    g = image.mean(axis=0)
    return float(g[mask].mean() - g[ring].mean())


def _ms(v: list[float]) -> str:
    a = np.asarray([x for x in v if x is not None and np.isfinite(x)], dtype=float)
    if a.size == 0:
        return "—"
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0:.3f} (n={a.size})"


def grad_elsewhere(image: np.ndarray, region: np.ndarray) -> float:
    """Mean gradient magnitude off the region's boundary ring: the denominator of the seam ratio (a harmonisation
    that only adds texture noise everywhere lowers the seam ratio by raising this)."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region, border_value=1)
    gy, gx = np.gradient(np.asarray(image, dtype=np.float64), axis=(1, 2))
    return float(np.sqrt(gy ** 2 + gx ** 2).mean(axis=0)[~ring].mean())


def measure(syn: Path, scorer) -> dict:
    """The quality proxies over the pairs of one inpainted (or harmonised) SYN folder."""
    from synthpair.data.dataset import PreparedDataset, read_png
    from synthpair.synthesis.harmonise import seam_ratio
    from synthpair.synthesis.inpaint import region_border
    from synthpair.synthesis.manifest import read_manifest

    ds = PreparedDataset.open(syn, require_splits=False)
    recs = read_manifest(syn)
    if not recs:
        return {"n": 0}
    images, masks = ds.load([r["id"] for r in recs])
    regions = np.stack([read_png(syn / "regions" / f"{r['id']}.png").astype(bool) for r in recs])
    out = {"n": len(recs),
           "seam": [seam_ratio(images[i], regions[i]) for i in range(len(recs))],
           "contrast": [lesion_contrast(images[i], masks[i] > 0, regions[i]) for i in range(len(recs))],
           "grad_elsewhere": [grad_elsewhere(images[i], regions[i]) for i in range(len(recs))],
           "mask_area": [int((m > 0).sum()) for m in masks],
           "touches_border": int(sum(bool((masks[i][region_border(regions[i])] > 0).any()) for i in range(len(recs))))}
    if scorer is not None:
        out["faithfulness"] = scorer.score(images, masks).tolist()
    return out


class RealFeatures:
    """Radiomics features (synthpair.metrics.features, offline) of the real training split, standardised on it,
    and the KID/FD of the real SOURCE images themselves vs the training split (the level an inpainted set that
    changed nothing would get at the same n)."""

    def __init__(self, data: Path, fold: int, n_sources: int) -> None:
        from synthpair.data.dataset import PreparedDataset
        from synthpair.metrics.features import extract, get_extractor

        ds = PreparedDataset.open(data)
        train, _ = ds.split(fold)
        self.extractor = get_extractor("radiomics")
        images, masks = ds.load(train)
        self.real = extract(self.extractor, images)
        srcs = [i for i, m in zip(train, masks) if (m > 0).any()][:n_sources]
        self.baseline = self.compare(extract(self.extractor, ds.load(srcs)[0]))

    def compare(self, fs: np.ndarray) -> dict:
        import warnings

        from synthpair.metrics.distribution import frechet_distance, kid
        from synthpair.metrics.features import standardize

        fr, fs = standardize(self.real, fs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fd = frechet_distance(fr, fs)
        k = kid(fr, fs, subsets=200, subset_size=len(fs))
        return {"fd": float(fd), "kid_mean": float(k["mean"]), "kid_sd": float(k["sd"]), "n": int(len(fs)),
                "feature_dim": int(fr.shape[1])}


def distribution(feats: RealFeatures, syn: Path) -> dict:
    from synthpair.data.dataset import PreparedDataset
    from synthpair.metrics.features import extract

    ds = PreparedDataset.open(syn, require_splits=False)
    return {"dist": feats.compare(extract(feats.extractor, ds.load(ds.ids)[0]))}


def real_baseline(data: Path, fold: int, n_sources: int, dilate_px: float, scorer) -> dict:
    """The proxies on the REAL source images with their own lesions and the same dilated regions."""
    from synthpair.data.dataset import PreparedDataset
    from synthpair.synthesis.harmonise import seam_ratio
    from synthpair.synthesis.inpaint import dilate_region, dilation_scale, select_sources

    ds = PreparedDataset.open(data)
    ids, _ = select_sources(ds, fold, str(n_sources))
    images, masks = ds.load(ids)
    by_id = {it["id"]: it for it in ds.items}
    regions = [dilate_region(m > 0, dilate_px, dilation_scale(by_id[i], ds.size)) for i, m in zip(ids, masks)]
    out = {"n": len(ids), "seam": [seam_ratio(im, r) for im, r in zip(images, regions)],
           "grad_elsewhere": [grad_elsewhere(im, r) for im, r in zip(images, regions)],
           "contrast": [lesion_contrast(im, m > 0, r) for im, m, r in zip(images, masks, regions)],
           "mask_area": [int((m > 0).sum()) for m in masks],
           "region_area": [int(r.sum()) for r in regions]}
    if scorer is not None:
        out["faithfulness"] = scorer.score(images, masks).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--segmenter", help="real-only SEG folder of the generator's fold (faithfulness)")
    ap.add_argument("--sources", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dilate-px", type=float, default=20.0)
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--out", required=True, help="folder for the inpainted SYN folders")
    ap.add_argument("--results", required=True, help="results path stem (.json and .md are written)")
    ap.add_argument("--no-fd", action="store_true", help="skip radiomics FD/KID")
    ap.add_argument("--harmonise-arm", default="fast", help="arm whose pairs are harmonised afterwards ('' = none)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--margins", nargs="+", default=["none"],
                    help="harmonisation margins: none (whole image) and/or px (local harmonisation)")
    args = ap.parse_args()

    import torch

    from synthpair.synthesis.inpaint import InpaintConfig, inpaint

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    scorer = None
    fold = int(json.loads((Path(args.generator) / "training_cases.json").read_text())["fold"])
    if args.segmenter:
        from synthpair.synthesis.faithfulness import FaithfulnessScorer

        scorer = FaithfulnessScorer(args.segmenter, fold=fold, data=args.data)
    feats = None if args.no_fd else RealFeatures(Path(args.data), fold=fold, n_sources=args.sources)
    results: dict = {"data": args.data, "generator": args.generator, "sources": args.sources, "seed": args.seed,
                     "dilate_px": args.dilate_px, "threads": torch.get_num_threads(), "arms": {}}
    results["real_sources"] = real_baseline(Path(args.data), fold, args.sources, args.dilate_px, scorer)
    for name in args.arms:
        syn = out / name
        cfg = InpaintConfig(**ARMS[name], dilate_px=args.dilate_px, items=str(args.sources), seed=args.seed,
                            batch_size=args.batch, device="cpu", require_interior=False)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        inpaint(args.data, [args.generator], syn, cfg, progress=False, overwrite=True)
        cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
        summ = json.loads((syn / "dataset.json").read_text())["inpaint"]
        arm = {"settings": {k: summ[k] for k in ("sampler", "steps", "jump_length", "resample", "eta")},
               "nfe_per_pair": summ["nfe_per_pair"], "attempted": summ["attempted"], "kept": summ["kept"],
               "rejected": summ["rejected"], "cpu_s_per_pair": cpu / summ["attempted"],
               "wall_s_per_pair": wall / summ["attempted"], **measure(syn, scorer)}
        if feats is not None and summ["kept"] >= 2:
            arm.update(distribution(feats, syn))
        results["arms"][name] = arm
        if feats is not None:
            results["real_sources_vs_real"] = feats.baseline
        print(f"{name}: nfe {arm['nfe_per_pair']:.0f} cpu/pair {arm['cpu_s_per_pair']:.1f}s kept "
              f"{arm['kept']}/{arm['attempted']} seam {_ms(arm.get('seam', []))}", flush=True)
        Path(args.results + ".json").write_text(json.dumps(results, indent=2, default=float))
    if args.harmonise_arm and args.harmonise_arm in results["arms"]:
        from synthpair.synthesis.harmonise import HarmoniseConfig, harmonise

        results["harmonise"] = {}
        for st, mg in [(st, mg) for mg in args.margins for st in args.strengths]:
            margin = None if mg == "none" else int(mg)
            src = out / args.harmonise_arm
            key = f"{st}" if margin is None else f"{st}, margin {margin}"
            dst = out / (f"{args.harmonise_arm}-harmonised-{st}" + ("" if margin is None else f"-m{margin}"))
            t_cpu = time.process_time()
            harmonise(src, args.generator, dst, HarmoniseConfig(strength=st, device="cpu", batch_size=args.batch,
                                                                seed=args.seed, margin=margin),
                      progress=False, overwrite=True)
            cpu = time.process_time() - t_cpu
            info = json.loads((dst / "dataset.json").read_text())["harmonise"]
            h = {"strength": st, "cpu_s_per_pair": cpu / max(info["pairs"], 1), "summary": info,
                 **measure(dst, scorer)}
            if feats is not None and info["pairs"] >= 2:
                h.update(distribution(feats, dst))
            results["harmonise"][key] = h
            Path(args.results + ".json").write_text(json.dumps(results, indent=2, default=float))
            print(f"harmonise {key}: seam {info.get('mean_seam_before')} -> {info.get('mean_seam_after')}", flush=True)
    write_table(results, Path(args.results + ".table.md"))


def write_table(res: dict, path: Path) -> None:
    rows = ["| arm | sampler, steps, L, r | NFE/pair | CPU s/pair | wall s/pair | kept | seam ratio | "
            "grad. elsewhere | lesion contrast | faithfulness (Dice) | FD radiomics | KID radiomics |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    first = res["real_sources"]
    for name, a in res["arms"].items():
        s = a["settings"]
        d = a.get("dist")
        fd_s = f"{d['fd']:.1f}" if d else "—"
        kid_s = f"{d['kid_mean']:.4f} ± {d['kid_sd']:.4f}" if d else "—"
        rows.append(f"| {name} | {s['sampler']}, {s['steps']}, {s['jump_length']}, {s['resample']} | "
                    f"{a['nfe_per_pair']:.0f} | {a['cpu_s_per_pair']:.2f} | {a['wall_s_per_pair']:.2f} | "
                    f"{a['kept']}/{a['attempted']} ({a.get('touches_border', 0)} touch border) | {_ms(a.get('seam', []))} | "
                    f"{_ms(a.get('grad_elsewhere', []))} | {_ms(a.get('contrast', []))} | "
                    f"{_ms(a.get('faithfulness', []))} | {fd_s} | {kid_s} |")
    b = res.get("real_sources_vs_real")
    fd_b = f"{b['fd']:.1f}" if b else "—"
    kid_b = f"{b['kid_mean']:.4f} ± {b['kid_sd']:.4f}" if b else "—"
    rows.append(f"| real sources (same regions) | — | — | — | — | — | {_ms(first.get('seam', []))} | "
                f"{_ms(first.get('grad_elsewhere', []))} | "
                f"{_ms(first.get('contrast', []))} | {_ms(first.get('faithfulness', []))} | "
                f"{fd_b} | {kid_b} |")
    if res.get("harmonise"):
        rows += ["", "| harmonised arm (strength) | CPU s/pair | mean abs change inside region | outside | seam before → after | "
                 "grad. elsewhere after | colour dist to source before → after | lesion contrast | faithfulness (Dice) | "
                 "KID radiomics |", "|---|---|---|---|---|---|---|---|---|---|"]
        for st, h in res["harmonise"].items():
            m = h["summary"]
            d = h.get("dist")
            kid_h = f"{d['kid_mean']:.4f} ± {d['kid_sd']:.4f}" if d else "—"
            rows.append(f"| {st} | {h['cpu_s_per_pair']:.2f} | {m.get('mean_delta_inside')} | "
                        f"{m.get('mean_delta_outside')} | {m.get('mean_seam_before')} → {m.get('mean_seam_after')} | "
                        f"{_ms(h.get('grad_elsewhere', []))} | "
                        f"{m.get('mean_colour_dist_before')} → {m.get('mean_colour_dist_after')} | "
                        f"{_ms(h.get('contrast', []))} | {_ms(h.get('faithfulness', []))} | "
                        f"{kid_h} |")
    path.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
