"""Benchmark: our DDIM loop vs MONAI's DiffusionInferer + DDIMScheduler vs the bare network forward passes.

All three use the SAME MONAI ``DiffusionModelUNet`` weights (random init, seed 0), the same batch, image
size and number of network calls, under ``torch.inference_mode()``. Repeats are interleaved
(ours, MONAI, bare, ours, ...) and the median is reported, so a change of machine load hits all three alike.
Other processes' CPU load during each repeat is read from /proc/stat (busy ticks minus our own CPU time).

    python bench/sampling.py [--size 64] [--batch 8] [--steps 20] [--repeats 5] [--amp off|bf16]
                             [--quiet-below 0.08] [--max-wait 30]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch


def _busy_ticks() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None when unavailable."""
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            vals = [float(v) for v in fh.readline().split()[1:]]
    except OSError:
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def timed(fn) -> tuple[float, float | None]:
    """(wall seconds, other-process CPU share of the machine in [0, 1] during the call or None)."""
    b0, t0c, c0, w0 = _busy_ticks(), os.times(), None, time.perf_counter()
    fn()
    wall = time.perf_counter() - w0
    b1, t1c = _busy_ticks(), os.times()
    if b0 is None or b1 is None:
        return wall, c0
    hz = os.sysconf("SC_CLK_TCK")
    own = (t1c.user + t1c.system) - (t0c.user + t0c.system)
    total_busy = (b1[0] - b0[0]) / hz
    ncpu = os.cpu_count() or 1
    return wall, max(0.0, (total_busy - own) / (wall * ncpu))


def wait_for_quiet(threshold: float, max_wait: float) -> float | None:
    """Sleep until other processes use < ``threshold`` of the machine (0.5 s probes), at most ``max_wait`` s.

    Returns the last measured load (None without /proc/stat)."""
    deadline = time.perf_counter() + max_wait
    while True:
        _, load = timed(lambda: time.sleep(0.5))
        if load is None or load < threshold or time.perf_counter() > deadline:
            return load
        time.sleep(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--channels", default="32,64,64")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet-below", type=float, default=0.08,
                    help="before each round wait until other processes use less than this share of the machine")
    ap.add_argument("--max-wait", type=float, default=30.0, help="longest wait for a quiet machine per round (s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    from synthpair.diffusion import DiffusionConfig, NoiseSchedule, sample
    from synthpair.diffusion.sampling import respaced_timesteps
    from synthpair.networks import UNetConfig, build_unet

    chans = tuple(int(c) for c in args.channels.split(","))
    torch.manual_seed(0)
    wrapper = build_unet(UNetConfig(channels=chans, attention_levels=(False,) * (len(chans) - 1) + (True,)), 2, 2)
    net = wrapper.unet.eval()  # the plain MONAI network, shared by all three
    T, B, S = 1000, args.batch, args.steps
    # MONAI's DDIM default: linear betas 1e-4..0.02, eps prediction, clip_sample → match it.
    schedule = NoiseSchedule(DiffusionConfig(schedule="linear", prediction="eps", num_timesteps=T))
    scheduler = DDIMScheduler(num_train_timesteps=T, schedule="linear_beta", clip_sample=True)
    scheduler.set_timesteps(S)
    inferer = DiffusionInferer(scheduler)
    x_T = torch.randn(B, 2, args.size, args.size, generator=torch.Generator().manual_seed(0))
    ts = [torch.full((B,), t, dtype=torch.long) for t in respaced_timesteps(T, S)]
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype else contextlib.nullcontext

    in_net = [0.0]

    def timed_net(x: torch.Tensor, t: torch.Tensor, c: object = None) -> torch.Tensor:
        t0 = time.perf_counter()
        out = net(x, t)
        in_net[0] += time.perf_counter() - t0
        return out

    loop_overhead: list[float] = []

    def ours() -> None:
        in_net[0] = 0.0
        t0 = time.perf_counter()
        sample(timed_net, schedule, x_T, sampler="ddim", steps=S, eta=0.0, autocast_dtype=dtype)
        loop_overhead.append((time.perf_counter() - t0 - in_net[0]) / in_net[0])

    def monai() -> None:
        with torch.inference_mode(), amp():
            inferer.sample(input_noise=x_T, diffusion_model=net, scheduler=scheduler, verbose=False)

    def bare() -> None:
        with torch.inference_mode(), amp():
            for t in ts:  # same input each call: keeps values in the normal range (no denormal slow-down)
                net(x_T, t)

    fns = {"ours": ours, "monai": monai, "bare": bare}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    loads: list[float] = []
    for _ in range(args.repeats):
        wait_for_quiet(args.quiet_below, args.max_wait)
        for name, fn in fns.items():
            wall, load = timed(fn)
            times[name].append(wall)
            if load is not None:
                loads.append(load)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in net.parameters())
    print(f"DDIM {S} steps, batch {B}, {args.size}x{args.size}, MONAI DiffusionModelUNet{chans} "
          f"({n_params} params), amp={args.amp}, threads={args.threads}, {args.repeats} interleaved repeats")
    for k in fns:
        print(f"  {k:6s} median {med[k]:.3f} s  (min {min(times[k]):.3f}, max {max(times[k]):.3f})")
    print(f"  ours/MONAI = {med['ours'] / med['monai']:.3f}   ours/bare = {med['ours'] / med['bare']:.3f}   "
          f"MONAI/bare = {med['monai'] / med['bare']:.3f}")
    print(f"  our loop's own overhead (time outside the network / time inside it, same run): median "
          f"{100 * statistics.median(loop_overhead):.2f} %")
    if loads:
        print(f"  other-process CPU load during repeats: median {100 * statistics.median(loads):.0f} % "
              f"(max {100 * max(loads):.0f} %) of the machine")


if __name__ == "__main__":
    main()
