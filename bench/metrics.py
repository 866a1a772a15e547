"""Time the evaluation metrics on N synthetic 128×128 image+mask pairs (default 2,000) on this CPU.

Real set: N phantoms (synthpair.data.phantoms, 128 px). "Synthetic" set: the same phantoms with speckle-like
noise, a slight blur and a random shift of the mask (cheap to make, realistic enough for timing). Prints one
line per metric: wall seconds and the CPU share other processes used meanwhile (from /proc/stat), because
the machine is shared (see /work/shared/stack-notes.md: treat ±30 % as noise).

    .venv/bin/python bench/metrics.py [--n 2000] [--size 128]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch


def _busy() -> tuple[float, float] | None:
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            v = [float(x) for x in fh.readline().split()[1:]]
    except OSError:
        return None
    return sum(v) - v[3] - (v[4] if len(v) > 4 else 0.0), sum(v)


def timed(label: str, fn):
    b0, t0, w0 = _busy(), os.times(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - w0
    b1, t1 = _busy(), os.times()
    load = "n/a"
    if b0 and b1:
        own = (t1.user + t1.system) - (t0.user + t0.system)
        other = ((b1[0] - b0[0]) / os.sysconf("SC_CLK_TCK") - own) / (wall * (os.cpu_count() or 1))
        load = f"{100 * max(0.0, other):.0f}%"
    print(f"{label:<58s} {wall:8.2f} s   (other processes: {load})", flush=True)
    return out


def make_pairs(n: int, size: int, seed: int = 0):
    from scipy.ndimage import gaussian_filter, shift

    from synthpair.data.phantoms import phantom_pair

    imgs, masks = zip(*(phantom_pair(i, size, seed) for i in range(n)))
    real = (np.stack(imgs).astype(np.float32) / 127.5 - 1.0)[:, None]
    rmask = np.stack(masks).astype(np.int64)
    rng = np.random.default_rng(seed + 1)
    syn = gaussian_filter(real, (0, 0, 0.7, 0.7)) * rng.gamma(8.0, 1 / 8.0, real.shape).astype(np.float32)
    syn = np.clip(syn + 0.05, -1, 1).astype(np.float32)
    smask = np.stack([shift(m, rng.integers(-4, 5, 2), order=0) for m in rmask]).astype(np.int64)
    return real, rmask, syn, smask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    warnings.simplefilter("ignore")
    from synthpair.evaluation.images import EvalConfig, ImageSet, evaluate_arrays
    from synthpair.metrics.distribution import frechet_distance, kid
    from synthpair.metrics.diversity import pairwise_ms_ssim
    from synthpair.metrics.features import RadiomicsExtractor, extract, standardize
    from synthpair.metrics.image import mae, ms_ssim, mse, nmae, psnr, rmse, ssim, to_unit
    from synthpair.metrics.masks import compare_mask_stats
    from synthpair.metrics.memorisation import memorisation
    from synthpair.metrics.segmentation import per_case_metrics

    print(f"{args.n} pairs at {args.size}×{args.size}, torch threads {torch.get_num_threads()}, "
          f"loadavg {open('/proc/loadavg').read().split()[:3]}")
    real, rmask, syn, smask = timed(f"make {2 * args.n} pairs (phantoms + degraded copies)",
                                    lambda: make_pairs(args.n, args.size))
    ru, su = to_unit(real), to_unit(syn)
    t0 = time.perf_counter()
    for name, fn in (("PSNR", psnr), ("SSIM", ssim), ("MS-SSIM", ms_ssim), ("MAE", mae), ("MSE", mse),
                     ("RMSE", rmse), ("NMAE", nmae)):
        timed(f"paired {name} ({args.n} pairs)", lambda fn=fn: fn(su, ru))
    ex = RadiomicsExtractor()
    fr = timed(f"radiomics features, real ({args.n})", lambda: extract(ex, real))
    fs = timed(f"radiomics features, synthetic ({args.n})", lambda: extract(ex, syn))
    zr, zs = standardize(fr, fs)
    timed(f"Fréchet distance ({zr.shape[1]}-d)", lambda: frechet_distance(zr, zs))
    timed("KID (100 subsets of 1000)", lambda: kid(zr, zs))
    timed("diversity: pairwise MS-SSIM, 1000 pairs × 2 sets",
          lambda: (pairwise_ms_ssim(syn, 1000), pairwise_ms_ssim(real, 1000)))
    timed("mask statistics real vs synthetic", lambda: compare_mask_stats(rmask, smask))
    timed(f"memorisation ({args.n} syn vs {args.n} real, incl. real-vs-real)",
          lambda: memorisation(real, zr, syn, zs))
    timed(f"segmentation Dice/IoU/P/R/HD95/ASSD ({args.n} cases, MONAI)",
          lambda: per_case_metrics(smask, rmask, 2))
    print(f"{'sum of the above metric timings':<58s} {time.perf_counter() - t0:8.2f} s")
    timed("evaluate_arrays end to end (what 'evaluate images' runs)",
          lambda: evaluate_arrays(ImageSet(real, rmask, [str(i) for i in range(args.n)], 2),
                                  ImageSet(syn, smask, [str(i) for i in range(args.n)], 2), EvalConfig()))


if __name__ == "__main__":
    main()
