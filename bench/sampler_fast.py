"""Benchmark: DPM-Solver++(2M) at few steps vs DDIM-50 on a trained generator — cost and FD/KID (issue 12, item 4).

Every arm runs ``synthpair generate`` (:func:`synthpair.synthesis.generate.generate`) on the SAME run with the
same seeds ``seed .. seed+n-1`` and no pair filter (``keep_empty``, ``min_area 0``, ``min_component 1``; the
faithfulness segmenter off), so the arms differ only in the sampler: DDIM (eta 0) and DPM-Solver++(2M) are both
deterministic solvers of the same probability-flow ODE from the same x_T. Per arm:

- cost: wall seconds and CPU (process) seconds of the generate call (model load and PNG writes included, the same
  for every arm; an untimed 2-step warm-up runs first), images/s, and the network evaluations per image (NFE)
  counted at the sampling loop's predictor (one per step; with classifier-free guidance each evaluation runs the
  network on a doubled batch: ``cfg``);
- quality: Fréchet distance and KID on the radiomics features (:mod:`synthpair.metrics.features`, offline),
  computed exactly as ``synthpair evaluate images --fold K`` does (:mod:`synthpair.evaluation.images`: features
  z-scored on the real set; synthetic vs all real training images, synthetic (subsampled) vs real half A, and the
  **real-vs-real baseline** real half A vs real half B) against the labelled training split of the run's fold;
- ODE error proxy: mean |pixel difference| to the first arm (DDIM-50 by default) on the same seeds.

The goal of the issue: at FD/KID equal to DDIM-50, >= 2.5x fewer network evaluations.

    OMP_NUM_THREADS=2 python bench/sampler_fast.py --run runs/mc/bench/gen/joint --data runs/mc/busi64 \\
        --n 256 --name busi64_joint --threads 2
    # a smoke test (seconds): --n 2 --arms ddim:2,dpm++2m:2 --results-dir /tmp/bench_results
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

DEFAULT_ARMS = "ddim:50,dpm++2m:10,dpm++2m:15,dpm++2m:20,dpm++2m:25"


@contextlib.contextmanager
def counting_evaluations() -> Iterator[dict[str, int]]:
    """Count the sampling loop's network evaluations (predictor calls, the batch rows they covered, and the loop
    runs) by wrapping :func:`synthpair.diffusion.sampling.make_predictor` for the duration of the block."""
    from synthpair.diffusion import sampling

    counts = {"calls": 0, "rows": 0, "runs": 0}
    original = sampling.make_predictor

    def make_predictor(*args: Any, **kwargs: Any) -> Any:
        predict = original(*args, **kwargs)
        counts["runs"] += 1  # one sampling loop (one batch of seeds)

        def counted(x_t: Any, t: Any) -> Any:
            counts["calls"] += 1
            counts["rows"] += int(x_t.shape[0])
            out = predict(x_t, t)
            counted.last_variance = predict.last_variance  # type: ignore[attr-defined]
            return out

        counted.last_variance = None  # type: ignore[attr-defined]
        return counted

    sampling.make_predictor = make_predictor
    try:
        yield counts
    finally:
        sampling.make_predictor = original


def parse_arms(spec: str) -> list[tuple[str, int, str]]:
    """``"ddim:50,dpm++2m:10:logsnr"`` → [("ddim", 50, "uniform"), ("dpm++2m", 10, "logsnr")] (SAMPLER:STEPS[:SPACING])."""
    arms = []
    for part in spec.split(","):
        sampler, steps, *rest = part.strip().split(":")
        spacing = rest[0] if rest else "uniform"
        if (sampler not in ("ddpm", "ddim", "dpm++2m") or not steps.isdigit() or int(steps) < 1 or len(rest) > 1
                or spacing not in ("uniform", "logsnr", "karras")):
            raise SystemExit(f"--arms: {part!r} is not SAMPLER:STEPS[:SPACING] with SAMPLER ddpm|ddim|dpm++2m and "
                             f"SPACING uniform|logsnr|karras, e.g. dpm++2m:15:logsnr")
        arms.append((sampler, int(steps), spacing))
    return arms


def run_arm(run: Path, out: Path, sampler: str, steps: int, args: argparse.Namespace, spacing: str = "uniform"
            ) -> dict[str, Any]:
    """One ``generate`` call → cost numbers and the images (N, C, H, W) in [-1, 1]."""
    from synthpair.data.dataset import PreparedDataset
    from synthpair.synthesis.generate import GenerateConfig, generate, read_manifest

    cfg = GenerateConfig(n=args.n, sampler=sampler, steps=steps, eta=0.0, seed=args.seed,  # type: ignore[arg-type]
                         spacing=spacing,  # type: ignore[arg-type]
                         batch_size=min(args.batch, args.n), min_area=0, min_component=1, keep_empty=True,
                         max_attempts_factor=1.0, device=args.device, amp=args.amp, segmenter="off")
    with counting_evaluations() as counts:
        c0, w0 = time.process_time(), time.perf_counter()
        generate(run, out, cfg, progress=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    lines = read_manifest(out)
    ds = PreparedDataset.open(out, require_splits=False)
    images = ds.load_images([ln["id"] for ln in lines])
    guidance = lines[0].get("guidance") if lines else None
    return {"sampler": sampler, "steps": steps, "spacing": spacing, "n": len(lines), "wall_s": wall, "cpu_s": cpu,
            "images_per_s": len(lines) / wall if wall > 0 else None,
            "nfe_per_image": counts["calls"] / max(counts["runs"], 1), "loop_calls": counts["calls"],
            "images_sampled": counts["rows"] / max(counts["calls"] / max(counts["runs"], 1), 1),
            "cfg": guidance is not None and guidance != 1.0, "guidance": guidance, "images": images}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="generator run folder (synthpair train)")
    ap.add_argument("--data", required=True, help="the run's prepared dataset folder (the real images)")
    ap.add_argument("--n", type=int, default=256, help="images per arm (default 256)")
    ap.add_argument("--arms", default=DEFAULT_ARMS, help=f"SAMPLER:STEPS,... (default {DEFAULT_ARMS}); the first "
                                                         "arm is the reference of the pixel-difference column")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    ap.add_argument("--name", help="results name: bench/results/sampler_fast_<name>.{json,md} "
                                   "(default: the run folder's name)")
    ap.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--work", help="folder for the arms' SYN folders (default: a temporary folder, removed)")
    args = ap.parse_args()

    import torch

    from synthpair.data.dataset import PreparedDataset
    from synthpair.evaluation.images import EvalConfig, _distribution
    from synthpair.io import read_json, write_json_atomic, write_text_atomic
    from synthpair.metrics.features import extract, get_extractor, standardize

    if args.threads:
        torch.set_num_threads(args.threads)
    run, data = Path(args.run), Path(args.data)
    arms = parse_arms(args.arms)
    fold = int(read_json(run / "training_cases.json")["fold"])
    ds = PreparedDataset.open(data)
    real_ids, _ = ds.split(fold)
    real = ds.load_images(real_ids)
    extractor = get_extractor("radiomics")
    fr_raw = extract(extractor, real)
    eval_cfg = EvalConfig()

    results = []
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        warm = argparse.Namespace(**{**vars(args), "n": min(args.n, args.batch)})
        run_arm(run, work / "warm-up", arms[0][0], 2, warm)  # untimed: imports, first kernels, file cache
        for sampler, steps, spacing in arms:
            arm = run_arm(run, work / f"{sampler}_{steps}_{spacing}", sampler, steps, args, spacing)
            fr, fs = standardize(fr_raw, extract(extractor, arm["images"]))
            caught: list[str] = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arm["distribution"] = _distribution(fr, fs, eval_cfg, caught)
            results.append(arm)
            print(f"{sampler}-{steps} ({spacing}): {arm['n']} images in {arm['wall_s']:.1f} s "
                  f"(NFE/image {arm['nfe_per_image']:g}), FD {arm['distribution']['synthetic_vs_real']['fd']}",
                  flush=True)
    ref = results[0]
    for arm in results:
        arm["mean_abs_diff_to_first_arm"] = float(np.abs(arm["images"] - ref["images"]).mean())
        arm["nfe_ratio_vs_first_arm"] = ref["nfe_per_image"] / arm["nfe_per_image"] if arm["nfe_per_image"] else None
        arm["speedup_wall_vs_first_arm"] = ref["wall_s"] / arm["wall_s"] if arm["wall_s"] > 0 else None
    for arm in results:
        del arm["images"]

    name = args.name or run.name
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(run.resolve()), "data": str(data.resolve()), "fold": fold, "n_real": len(real_ids),
            "n_per_arm": args.n, "seed": args.seed, "batch": min(args.batch, args.n), "device": args.device,
            "amp": args.amp,
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "extractor": getattr(extractor, "name", "radiomics"), "arms": args.arms,
            "command": "python bench/sampler_fast.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}
    write_json_atomic(out_dir / f"sampler_fast_{name}.json", {**meta, "results": results})
    write_text_atomic(out_dir / f"sampler_fast_{name}.md", table(meta, results))
    print(f"wrote {out_dir / f'sampler_fast_{name}.json'} and .md")


def arm_name(r: dict[str, Any]) -> str:
    """``ddim-50`` (uniform spacing, the old arms' names) or ``dpm++2m-15 logsnr``."""
    sp = r.get("spacing", "uniform")
    return f"{r['sampler']}-{r['steps']}" + ("" if sp == "uniform" else f" {sp}")


def _num(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The markdown report: one row per arm, the real-vs-real baseline, and which arms reach the first arm's KID."""
    ref = results[0]
    lines = [f"# Fast sampler vs {arm_name(ref)}: cost and FD/KID ({Path(meta['run']).name})", "",
             f"Run `{meta['run']}`, fold {meta['fold']}; real = the fold's {meta['n_real']} labelled training "
             f"images of `{meta['data']}`; {meta['n_per_arm']} images per arm (seeds {meta['seed']}..), "
             f"batch {meta['batch']}, "
             f"device {meta['device']}, amp {meta['amp']}, {meta['threads']} threads; {meta['extractor']} features.",
             "", f"Command: `{meta['command']}`", "",
             "| arm | NFE/image | cfg | wall s | CPU s | images/s | NFE ratio | wall speed-up | FD syn-real | "
             "KID syn-real (mean ± sd) | FD syn-half | KID syn-half | mean abs diff to first arm |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        d = r["distribution"]
        full, half = d["synthetic_vs_real"], d["synthetic_vs_real_half"]
        kid_full = full["kid"] or {}
        lines.append(
            f"| {arm_name(r)} | {r['nfe_per_image']:g} | {'yes' if r['cfg'] else 'no'} | "
            f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {_num(r['images_per_s'], 2)} | "
            f"{_num(r['nfe_ratio_vs_first_arm'], 2)}x | "
            f"{_num(r['speedup_wall_vs_first_arm'], 2)}x | {_num(full['fd'])} | "
            f"{_num(kid_full.get('mean'), 4)} ± {_num(kid_full.get('sd'), 4)} | {_num(half['fd'])} | "
            f"{_num((half['kid'] or {}).get('mean'), 4)} | {r['mean_abs_diff_to_first_arm']:.4f} |")
    base = ref["distribution"]["real_half_vs_real_half"]
    lines += ["", f"Real-vs-real baseline (real half A vs half B, n = {base['n_real']} / {base['n_other']}): FD "
                  f"{_num(base['fd'])}, KID {_num((base['kid'] or {}).get('mean'), 4)} ± "
                  f"{_num((base['kid'] or {}).get('sd'), 4)}. Compare the 'syn-half' columns with it (same n).",
              f"FD reliable (n >= feature dim {ref['distribution']['feature_dim']}): "
              f"{ref['distribution']['synthetic_vs_real']['fd_reliable']}."]
    k_ref = (ref["distribution"]["synthetic_vs_real"]["kid"] or {})
    if k_ref.get("mean") is not None:
        bound = k_ref["mean"] + (k_ref.get("sd") or 0.0)
        ok = [f"{arm_name(r)} ({_num(r['nfe_ratio_vs_first_arm'], 2)}x fewer NFE)" for r in results[1:]
              if (r["distribution"]["synthetic_vs_real"]["kid"] or {}).get("mean", float("inf")) <= bound]
        lines += ["", f"Arms whose KID (syn-real) is at most {arm_name(ref)}'s mean + 1 sd "
                      f"({bound:.4f}): {', '.join(ok) if ok else 'none'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
