"""Sharing the machine: training speed alone and beside one other CPU-bound process, per thread policy.

Each measurement runs in a fresh subprocess (so OpenMP reads its environment at start): the generator
training step of the default network (MONAI DiffusionModelUNet (32, 64, 64), 64×64, batch 16, bf16 autocast
where the CPU has it, AdamW) for ``--seconds`` after warm-up, reporting steps/s. "Loaded" runs the same with
``--competitors`` CPU-bound processes (pure-Python busy loops, one core each) started first; with ``--late S``
also started S seconds *after* the run (it chose its threads on a quiet machine; measured after one rebalancing
interval). Policies:

* ``default``   — PyTorch's defaults (threads = cores, libgomp's active spin-waiting);
* ``passive``   — same threads, ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning at barriers);
* ``spin:N``    — same threads, ``GOMP_SPINCOUNT=N``: an idle thread spins N iterations at a barrier, then sleeps
  (libgomp's default is 300000 — of the order of a millisecond — and 0 under PASSIVE);
* ``one``       — ``torch.set_num_threads(1)``;
* ``auto``      — the cores not busy at start (:func:`synthpair.env.configure_threads` ``("auto")``), never
  re-chosen;
* ``synthpair`` — what a plain ``synthpair`` command does: the package imported before torch, then
  :func:`synthpair.env.configure_threads` with no setting (= ``auto``), and
  :func:`synthpair.env.rebalance_threads` between steps as the training loops call it.

Usage: ``python bench/threads.py [--seconds 20] [--competitors 1 3] [--late 6] [--out bench/results/threads]``. Ratios are measured side by
side in one run on the same machine; the absolute speeds depend on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import os, sys, time, json
policy, seconds, lead = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
if policy == "synthpair":
    import synthpair  # before torch, as the CLI does
import torch
if policy in ("default", "passive", "spin"):
    pass
elif policy == "one":
    torch.set_num_threads(1)
elif policy == "auto":
    from synthpair.env import configure_threads
    configure_threads("auto")
elif policy == "synthpair":
    from synthpair.env import configure_threads
    configure_threads(None)
from synthpair.env import rebalance_threads
from monai.networks.nets import DiffusionModelUNet
torch.manual_seed(0)
net = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=2, channels=(32, 64, 64),
                         attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=32,
                         norm_num_groups=16, use_flash_attention=True)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
x = torch.randn(16, 2, 64, 64); t = torch.randint(0, 1000, (16,))
from synthpair.env import resolve_autocast
amp = resolve_autocast("auto", torch.device("cpu"))
def step():
    if policy == "synthpair":
        rebalance_threads()  # as the training loops do (only acts under auto threads)
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        out = net(x, t)
    loss = (out.float() - x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
t_lead = time.perf_counter()
while time.perf_counter() - t_lead < lead:  # unmeasured: e.g. a competitor arrives and auto threads adapt
    step()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    step(); n += 1
dt = time.perf_counter() - t0
print(json.dumps({"policy": policy, "threads": torch.get_num_threads(), "steps": n, "seconds": dt,
                  "steps_per_s": n / dt, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""

SPIN = "import time\nt=time.time()\nwhile time.time()-t < 3600: pass\n"


def measure(policy: str, seconds: float, competitors: int, late: float = 0.0) -> dict:
    """steps/s of the worker under ``policy`` with ``competitors`` busy processes: started first, or with ``late``
    > 0 started ``late`` seconds after the worker (which then runs unmeasured for ``late`` + 16 s — past one
    rebalancing interval — before its ``seconds`` of measurement)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "SYNTHPAIR_THREADS")}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = policy.split(":", 1)[1]
    lead = late + 16.0 if late else 0.0
    spinners: list[subprocess.Popen] = []
    try:
        if not late:
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(competitors)]
            time.sleep(1.0 if competitors else 0.0)
        worker = subprocess.Popen([sys.executable, "-c", WORKER, policy.split(":")[0], str(seconds), str(lead)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if late:
            time.sleep(late)
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(competitors)]
        stdout, stderr = worker.communicate()
        if worker.returncode:
            raise SystemExit(f"worker {policy} failed:\n{stderr[-2000:]}")
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    rec = json.loads(stdout.strip().splitlines()[-1])
    rec["competitors"] = competitors
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--policies", nargs="+", default=["default", "passive", "spin:10000", "one", "auto", "synthpair"])
    ap.add_argument("--competitors", type=int, nargs="+", default=[1], help="busy processes beside the loaded runs")
    ap.add_argument("--late", type=float, default=0.0,
                    help="also measure with the competitors arriving this many seconds AFTER the run started "
                         "(e.g. 6: the run chose its threads on a quiet machine)")
    ap.add_argument("--out", default="bench/results/threads")
    a = ap.parse_args()
    if any(c < 1 for c in a.competitors):
        raise SystemExit("--competitors: counts >= 1 (the run alone is always measured)")
    load1 = os.getloadavg()[0]
    rows = []
    for policy in a.policies:
        alone = measure(policy, a.seconds, 0)
        row = {"policy": policy, "threads_alone": alone["threads"], "steps_per_s_alone": round(alone["steps_per_s"], 3),
               "loaded": {}}
        for c in a.competitors:
            loaded = measure(policy, a.seconds, c)
            row["loaded"][str(c)] = {"threads": loaded["threads"], "steps_per_s": round(loaded["steps_per_s"], 3),
                                     "slowdown": round(alone["steps_per_s"] / max(loaded["steps_per_s"], 1e-9), 2)}
            if a.late:
                late = measure(policy, a.seconds, c, a.late)
                row["loaded"][f"{c} late"] = {"threads": late["threads"], "steps_per_s": round(late["steps_per_s"], 3),
                                              "slowdown": round(alone["steps_per_s"] / max(late["steps_per_s"], 1e-9), 2)}
        rows.append(row)
        print(row, flush=True)
    best_alone = max(r["steps_per_s_alone"] for r in rows)
    for r in rows:
        for c in r["loaded"].values():
            c["slowdown_vs_best_alone"] = round(best_alone / max(c["steps_per_s"], 1e-9), 2)
    res = {"cpus": os.cpu_count(), "load_before": load1, "seconds": a.seconds, "competitors": a.competitors,
           "late": a.late,
           "rows": rows, "command": "python " + " ".join(sys.argv),
           "workload": "DiffusionModelUNet (32,64,64) 64x64 batch 16 training step, bf16 autocast when available"}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    keys = [k for c in a.competitors for k in ([str(c), f"{c} late"] if a.late else [str(c)])]
    head = "| policy | threads alone | steps/s alone |"
    for k in keys:
        c, _, late = k.partition(" ")
        head += (f" beside {c} busy{f' (arriving after {a.late:g} s)' if late else ''}: threads, steps/s | slowdown |"
                 f" vs best alone |")
    lines = [f"Command: `{res['command']}` ({res['cpus']} CPUs, load {load1:.2f} before; {a.seconds:g} s per "
             "measurement, each in a fresh process).", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r['policy']} | {r['threads_alone']} | {r['steps_per_s_alone']} |"
        for k in keys:
            x = r["loaded"][k]
            line += f" {x['threads']}, {x['steps_per_s']} | {x['slowdown']}× | {x['slowdown_vs_best_alone']}× |"
        lines.append(line)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
