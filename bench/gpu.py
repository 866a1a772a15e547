"""The GPU check of issue 12 (item 6): one prepared script for a session that is lent a CUDA machine.

What it measures, on the default recipe (``TrainConfig(method="image")``: EDM-preconditioned VP diffusion, MONAI
DiffusionModelUNet (32, 64, 64), batch 16, AdamW 1e-3 with cosine decay — the recipe of the CPU convergence bench's
``edm`` arm):

1. **Training steps/s** at 64×64 and (with ``--data128``) 128×128, under bf16 autocast and in fp32: the trainer's
   own images/s from ``metrics.jsonl`` after the first log interval (warm-up and data loading excluded), / batch.
2. **Sampling images/s** from each timing run: ``synthpair generate`` (:func:`synthpair.synthesis.generate.generate`)
   with DPM-Solver++(2M) 20 steps and DDIM-50, batch ``--sample-batch``, bf16, wall time of the call after an
   untimed warm-up (PNG writes included, the same for both samplers).
3. **A fixed-budget run** next to the CPU one: the same recipe for ``--budget-steps`` (2000) on the 64×64 data,
   its final snapshot sampled and scored exactly as ``bench/convergence.py`` scores a snapshot (DDIM-25 on the
   log-SNR grid, 256 images, radiomics FD/KID vs the fold-0 training images), reported beside the CPU arm's FD and
   CPU-minutes read from ``--cpu-result`` (``bench/results/convergence_busi64_image.json``, arm ``edm``).

The data travel with the working tree (the device machine has no ``../shared``): prepare them here into an
ignored folder at the repository root and carry it, e.g.::

    synthpair prepare ../shared/data/busi --out runs/gpu/busi64 --size 64 --splits ../shared/splits/label-scarce.json --splits-key busi
    synthpair prepare ../shared/data/busi --out runs/gpu/busi128 --size 128 --splits ../shared/splits/label-scarce.json --splits-key busi
    # device tool: run(command="python bench/gpu.py --data64 runs/gpu/busi64 --data128 runs/gpu/busi128 --out $OUT/gpu",
    #                  carry=["runs/gpu"])  — about 5 minutes on one H200
    python bench/gpu.py --smoke --out /tmp/gpu_smoke   # checks the script on the CPU in a minute (phantom data)

Writes ``<out>.json`` and ``<out>.md``. Refuses to run without CUDA unless ``--smoke`` (the numbers would be CPU
numbers under a GPU heading).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def trainer_steps_per_s(run: Path, batch_size: int) -> float:
    """Median of the trainer's logged images/s after the first record (warm-up), per step."""
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()][1:]
    return statistics.median(r["img_per_s"] for r in recs) / batch_size


def sampling_images_per_s(run: Path, out: Path, sampler: str, steps: int, n: int, batch: int) -> dict[str, Any]:
    """Wall-clock images/s of ``generate`` (bf16 autocast), after an untimed one-batch warm-up."""
    import torch

    from synthpair.synthesis.generate import GenerateConfig, generate

    def cfg(count: int, seed: int) -> GenerateConfig:
        return GenerateConfig(n=count, steps=steps, sampler=sampler, eta=0.0, seed=seed, segmenter="off",  # type: ignore[arg-type]
                              batch_size=batch, amp="bf16" if torch.cuda.is_available() else "off",
                              keep_empty=True, min_area=0, min_component=1)

    generate(run, out / f"{sampler}{steps}_warmup", cfg(batch, 10_000), progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate(run, out / f"{sampler}{steps}", cfg(n, 0), progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"sampler": sampler, "steps": steps, "n": n, "batch": batch, "wall_s": round(wall, 2),
            "images_per_s": round(n / wall, 1)}


def cpu_reference(path: Path, arm: str, step: int) -> dict[str, Any] | None:
    """The CPU convergence bench's point (FD, KID, train CPU-min) of ``arm`` at ``step``, or None."""
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    for p in res.get("arms", {}).get(arm, {}).get("points", []):
        if p["step"] == step:
            return {"arm": arm, "step": step, "fd": p["fd"], "kid": p["kid"], "train_cpu_min": p["train_cpu_min"],
                    "fd_real_real": p["fd_real_real"]}
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data64", type=Path, help="prepared 64x64 dataset (BUSI with the label-scarce split)")
    ap.add_argument("--data128", type=Path, help="prepared 128x128 dataset (optional)")
    ap.add_argument("--work", type=Path, default=Path("runs/gpu/work"), help="run folders (kept for inspection)")
    ap.add_argument("--timing-steps", type=int, default=300, help="training steps of each timing run")
    ap.add_argument("--budget-steps", type=int, default=2000, help="steps of the fixed-budget run (CPU arm: 2000)")
    ap.add_argument("--sample-n", type=int, default=512)
    ap.add_argument("--sample-batch", type=int, default=128)
    ap.add_argument("--cpu-result", type=Path,
                    default=Path(__file__).parent / "results" / "convergence_busi64_image.json")
    ap.add_argument("--cpu-arm", default="edm")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu")
    ap.add_argument("--smoke", action="store_true", help="phantom data, tiny network, CPU allowed")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("bench/gpu.py: no CUDA device here; run it on a lent GPU machine (or pass --smoke to check "
                         "the script on the CPU)")
    if not args.smoke and (args.data64 is None or not (args.data64 / "dataset.json").is_file()):
        raise SystemExit(f"--data64 {args.data64}: not a prepared dataset (no dataset.json); see the docstring")
    if args.data128 is not None and not (args.data128 / "dataset.json").is_file():
        raise SystemExit(f"--data128 {args.data128}: not a prepared dataset (no dataset.json)")

    from convergence import evaluate_snapshot
    from task_bench import StageCosts, prepare_once, smoke_source

    from synthpair.training.trainer import TrainConfig, train_or_resume

    args.work.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(method="image")
    datasets: dict[int, Path] = {}
    if args.smoke:
        src = smoke_source(args.work, n=24)
        datasets = {16: prepare_once(src, args.work / "data16", 16), 32: prepare_once(src, args.work / "data32", 32)}
        base = dataclasses.replace(base, batch_size=4, net=dataclasses.replace(
            base.net, channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8))
        args.timing_steps, args.budget_steps, args.sample_n, args.sample_batch = 6, 4, 4, 2
    else:
        datasets[64] = args.data64
        if args.data128 is not None:
            datasets[128] = args.data128
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)"
    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    stages = StageCosts(args.work, "gpu")
    timing: list[dict[str, Any]] = []
    for size, data in datasets.items():
        for amp in ("bf16", "off"):
            cfg = dataclasses.replace(base, steps=args.timing_steps, log_every=max(1, args.timing_steps // 12),
                                      preview_every=0, preview_n=0, checkpoint_every=0, snapshot_every=0,
                                      amp=amp if (bf16 or amp == "off") else "off")
            run = stages.run(f"{size}px {amp}: train", train_or_resume, data, args.work / f"time{size}_{amp}", cfg,
                             progress=False)
            row: dict[str, Any] = {"size": size, "amp": cfg.amp, "train_steps_per_s": round(
                trainer_steps_per_s(run, cfg.batch_size), 2)}
            if amp == "bf16":
                row["sampling"] = [stages.run(f"{size}px: sample {s}{k}", sampling_images_per_s, run,
                                              args.work / f"samples{size}", s, k, args.sample_n, args.sample_batch)
                                   for s, k in (("dpm++2m", 20), ("ddim", 50))]
            timing.append(row)
            print(f"gpu: {row}", file=sys.stderr, flush=True)
    size64 = min(datasets)
    budget_cfg = dataclasses.replace(base, steps=args.budget_steps, snapshot_every=args.budget_steps, preview_every=0,
                                     preview_n=0, amp="bf16" if bf16 else "off")
    wall0 = time.perf_counter()
    run = stages.run("budget: train", train_or_resume, datasets[size64], args.work / "budget", budget_cfg,
                     progress=False)
    budget_wall = time.perf_counter() - wall0
    point = evaluate_snapshot(run, args.budget_steps, datasets[size64], args.work / "eval_budget",
                              256 if not args.smoke else 4, 25 if not args.smoke else 2, 0, stages, "budget",
                              "logsnr")
    cpu = cpu_reference(args.cpu_result, args.cpu_arm, args.budget_steps)
    res = {"command": "python " + " ".join(sys.argv), "device": device, "bf16": bf16, "torch": torch.__version__,
           "recipe": "TrainConfig(method='image') (the default)", "batch_size": base.batch_size, "timing": timing,
           "budget": {"steps": args.budget_steps, "size": size64, "train_wall_s": round(budget_wall, 1),
                      "gpu_point": point, "cpu_point": cpu}, "stage_costs": stages.costs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = table(res)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def table(res: dict[str, Any]) -> str:
    lines = [f"# The default recipe on a GPU ({res['device']}, torch {res['torch']})", "", f"Command: `{res['command']}`",
             "", "| size | autocast | train steps/s | sampler | images/s | wall s (n) |", "|---|---|---|---|---|---|"]
    for r in res["timing"]:
        samples = r.get("sampling") or [None]
        for i, s in enumerate(samples):
            lines.append(f"| {r['size']} | {r['amp']} | {r['train_steps_per_s'] if i == 0 else ''} | "
                         + ("– | – | – |" if s is None else f"{s['sampler']}-{s['steps']} | {s['images_per_s']} | "
                                                           f"{s['wall_s']} ({s['n']}) |"))
    b = res["budget"]
    g, c = b["gpu_point"], b["cpu_point"]
    lines += ["", f"Fixed budget: {b['steps']} steps at {b['size']}×{b['size']}, the final snapshot sampled with DDIM-25 "
              "(log-SNR grid, 256 images) and scored as in `bench/convergence.py`.", "",
              "| where | train time | FD | KID×100 |", "|---|---|---|---|",
              f"| GPU | {b['train_wall_s']} s wall | {g['fd']:.1f} | {100 * g['kid']:.2f} |"]
    if c:
        lines.append(f"| CPU (`{c['arm']}` arm, bench/results/convergence_busi64_image) | {c['train_cpu_min']} "
                     f"CPU-min | {c['fd']:.1f} | {100 * c['kid']:.2f} |")
    lines.append(f"\nReal-vs-real FD (half vs half): {g['fd_real_real']:.2f}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
