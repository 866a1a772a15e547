"""Trainer overhead: a synthpair training step vs the bare forward + backward + optimizer step of the same network,
measured side by side in one process (issue 12, item 2; goal: trainer step <= 1.05x bare).

Both arms train the default image-only generator network (``TrainConfig().net``: MONAI DiffusionModelUNet
(32, 64, 64), attention at the last level, SDPA) at 64x64 with batch 16 and the same autocast (``amp="auto"``:
bf16 where the CPU has it), AdamW, on the same phantom data:

* **bare**: a tight loop — batch from an in-memory tensor, t and noise drawn, x_t, v-target, forward, MSE,
  backward, ``opt.step()`` — nothing else;
* **trainer**: :func:`synthpair.training.trainer.train_generator` (method ``image``) with previews, checkpoints
  and snapshots off, ``log_every`` = 10: its own images/s from ``metrics.jsonl`` after the first log interval
  (warm-up), so setup (reading data, writing the export) is not counted; EMA update, gradient clipping, the
  paired flips, the LR schedule and logging are.

The bare loop runs before and after the trainer (drift check); the ratio uses their mean.

    OMP_NUM_THREADS=2 python bench/trainer_overhead.py --steps 120 --out bench/results/trainer_overhead

Writes ``<out>.json`` and ``<out>.md``. Needs a quiet machine: any other CPU-bound process changes the ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def bare_steps_per_s(cfg, seconds: float) -> float:
    import torch

    from synthpair.diffusion.schedule import NoiseSchedule
    from synthpair.env import resolve_autocast
    from synthpair.networks.unet import build_unet

    torch.manual_seed(0)
    net = build_unet(cfg.net, in_channels=1, out_channels=1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    sched = NoiseSchedule(cfg.diffusion)
    amp = resolve_autocast(cfg.amp, torch.device("cpu"))
    data = torch.randn(64, 1, 64, 64)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        t = torch.randint(0, sched.T, (cfg.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t, target = sched.q_sample(x0, t, noise), sched.target(x0, t, noise)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = net(x_t, t)
        loss = (out.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def trainer_steps_per_s(cfg, work: Path) -> float:
    from synthpair.data.phantoms import write_phantom_source
    from synthpair.data.prepare import PrepareConfig, prepare_dataset
    from synthpair.training.trainer import train_generator

    src = write_phantom_source(work / "src", n=64, size=64, seed=0)
    data = prepare_dataset(src, work / "data", PrepareConfig(size=64, folds=2), progress=False)
    run = train_generator(data, work / "run", cfg, progress=False)
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()][1:]  # first = warm-up
    return sum(r["img_per_s"] for r in recs) / len(recs) / cfg.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=120, help="trainer steps (logged every 10)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of each bare measurement")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trainer_overhead")
    args = p.parse_args()

    import dataclasses

    import torch

    from synthpair.training.trainer import TrainConfig

    cfg = dataclasses.replace(TrainConfig(), method="image", steps=args.steps, batch_size=16, log_every=10,
                              preview_every=0, preview_n=0, checkpoint_every=0, snapshot_every=0)
    bare1 = bare_steps_per_s(cfg, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_steps_per_s(cfg, Path(tmp))
    bare2 = bare_steps_per_s(cfg, args.seconds)
    bare = (bare1 + bare2) / 2
    res = {"command": "python " + " ".join(sys.argv), "threads": torch.get_num_threads(), "amp": cfg.amp,
           "batch_size": cfg.batch_size, "net": dataclasses.asdict(cfg.net),
           "bare_steps_per_s": [round(bare1, 4), round(bare2, 4)], "trainer_steps_per_s": round(trainer, 4),
           "trainer_step_over_bare": round(bare / trainer, 4), "goal": "<= 1.05"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = (f"# Trainer step vs bare step (issue 12, item 2)\n\n`{res['command']}`\n\n"
          f"| arm | steps/s |\n|---|---|\n| bare (before) | {bare1:.3f} |\n| synthpair trainer | {trainer:.3f} |\n"
          f"| bare (after) | {bare2:.3f} |\n\nTrainer step / bare step = **{bare / trainer:.3f}** (goal <= 1.05); "
          f"{res['threads']} threads, amp {cfg.amp}, batch {cfg.batch_size}.\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
