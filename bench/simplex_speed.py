"""Speed of multi-scale simplex noise: synthpair's vectorised torch implementation vs the ``opensimplex`` package.

AnoDDPM draws a fresh multi-scale simplex field for every training batch and every reconstruction, so the
noise must be cheap next to a network evaluation. This bench draws the same workload both ways — B images ×
C channels of H × W pixels, K octaves — and times it (best of ``--repeat`` after one warm-up call, wall and
CPU time), then writes ``bench/results/simplex_speed.{json,md}``.

* ``torch``: :func:`synthpair.diffusion.simplex.simplex_noise` (one tensor expression over batch × channels ×
  octaves × pixels);
* ``opensimplex``: ``OpenSimplex(seed).noise2array(x, y)`` per (image, channel, octave) on the same lattice
  coordinates (its own gradients, so the fields differ; the cost is what is compared). Without numba the
  package loops over pixels in Python; with numba installed it JIT-compiles that loop (the warm-up call pays
  the compilation, which is reported separately).

opensimplex is not a dependency of synthpair; point ``--opensimplex-path`` at a folder where it was installed
(``pip install --target DIR opensimplex``, optionally ``numba`` too), or leave it out to time torch only.

Usage: ``python bench/simplex_speed.py [--batch 16 --channels 1 --size 64 --octaves 6 --repeat 3
--opensimplex-path DIR [--numba-path DIR]]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from synthpair.diffusion.simplex import SimplexConfig, simplex_noise  # noqa: E402
from synthpair.io import write_json_atomic, write_text_atomic  # noqa: E402


def timed(fn, repeat: int) -> dict:
    """Warm-up call (timed separately), then the best of ``repeat`` calls: wall and process-CPU seconds."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    warm = {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    best = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        r = {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
        best = r if best is None or r["wall_s"] < best["wall_s"] else best
    return {"first_call": warm, "best": best}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--octaves", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--opensimplex-path", default="", help="folder holding the opensimplex package")
    ap.add_argument("--numba-path", default="", help="folder holding numba + llvmlite (optional)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = SimplexConfig(octaves=a.octaves)
    shape = (a.batch, a.channels, a.size, a.size)
    g = torch.Generator().manual_seed(0)
    rows = {"torch": timed(lambda: simplex_noise(shape, cfg, g), a.repeat)}

    if a.opensimplex_path:
        if a.numba_path:
            sys.path.append(a.numba_path)
        sys.path.append(a.opensimplex_path)  # after the venv: keep the venv's numpy
        import opensimplex

        try:
            import numba  # noqa: F401
            has_numba = True
        except ImportError:
            has_numba = False
        gen = opensimplex.OpenSimplex(seed=0)
        side = float(a.size)
        rng = np.random.default_rng(0)

        def draw() -> np.ndarray:
            out = np.zeros(shape)
            for b in range(a.batch):
                for c in range(a.channels):
                    for o in range(a.octaves):
                        s = 2.0 ** o / (cfg.period * side)
                        ox, oy = rng.uniform(0, 256, 2)
                        xs = np.arange(a.size) * s + ox
                        ys = np.arange(a.size) * s + oy
                        out[b, c] += cfg.persistence ** o * gen.noise2array(xs, ys)
            out -= out.mean(axis=(-2, -1), keepdims=True)
            return out / out.std(axis=(-2, -1), keepdims=True)

        key = "opensimplex+numba" if has_numba else "opensimplex (no numba)"
        rows[key] = timed(draw, a.repeat)

    ref = rows["torch"]["best"]["wall_s"]
    md = [f"# Simplex noise speed: {a.batch} × {a.channels} × {a.size}² px, {a.octaves} octaves, "
          f"{a.threads} thread(s)", "", "| implementation | best wall s | best CPU s | first call wall s | × torch |",
          "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['best']['wall_s']:.4f} | {r['best']['cpu_s']:.4f} | "
                  f"{r['first_call']['wall_s']:.3f} | {r['best']['wall_s'] / ref:.1f} |")
    out = Path(a.out)
    tag = f"simplex_speed_{a.size}"
    write_json_atomic(out / f"{tag}.json", {"shape": list(shape), "octaves": a.octaves, "threads": a.threads,
                                             "results": rows})
    write_text_atomic(out / f"{tag}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
