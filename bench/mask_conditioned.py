"""Evidence for issue 3: mask faithfulness and held-out segmentation Dice of mask-conditioned generators.

On one fold of a prepared dataset (BUSI lesion images at 64×64: ``synthpair prepare BUSI --size 64
--set keep_empty=false`` drops the normals, whose masks are empty), with the SAME generator budget for every
row (same network widths, batch, number of optimizer steps; wall time is recorded):

    joint | mask2image | dsdm without RI (SPADE + CFG + learned variance) | dsdm with RI (+ reference encoder)
    dsdm with RI at guidance 1, 2, 3, 5 (one CFG-trained model)

For each row: train the generator (``synthpair train``), generate N pairs (``synthpair generate``; masks =
real training-split masks, reference = random training image), score mask faithfulness with ONE reference
segmenter trained on the real training split (shared by all rows), and run ``segment`` real-only vs
+synthetic at ratio 0.5 on the same fold with the same segmenter budget. Writes ``results.json`` and
``results.md`` under ``--out``.

    python bench/mask_conditioned.py --data runs/mc/busi64 --out runs/mc/bench [--steps 500] [--n 128]
           [--seg-steps 600] [--stage train|gen|seg|table|all] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PY = sys.executable
NET = ["net.channels=[16,32,64]", "net.attention_levels=[false,false,true]", "net.num_head_channels=32",
       "net.norm_num_groups=16"]
MODELS = {  # name -> (method, extra --set overrides)
    "joint": ("joint", []),
    "mask2image": ("mask2image", []),
    "dsdm_noRI": ("dsdm", ["cond.reference=false"]),
    "dsdm_RI": ("dsdm", ["cond.encoder_steps=150"]),
}
ROWS = [  # row label, model, guidance
    ("joint", "joint", None),
    ("mask2image", "mask2image", None),
    ("dsdm without RI (s=3)", "dsdm_noRI", 3.0),
    ("dsdm with RI (s=3)", "dsdm_RI", 3.0),
    ("dsdm with RI, s=1", "dsdm_RI", 1.0),
    ("dsdm with RI, s=2", "dsdm_RI", 2.0),
    ("dsdm with RI, s=5", "dsdm_RI", 5.0),
]


def sh(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SYNTHPAIR_THREADS": "1"}
    fh = open(log, "a", encoding="utf-8")
    return subprocess.Popen([PY, "-m", "synthpair", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)


def train_all(a: argparse.Namespace, out: Path) -> None:
    pending = [m for m in MODELS if not (out / "gen" / m / "export" / "model.safetensors").is_file()]
    running: list[tuple[str, subprocess.Popen, float]] = []
    times = json.loads((out / "train_times.json").read_text()) if (out / "train_times.json").is_file() else {}
    while pending or running:
        while pending and len(running) < a.jobs:
            m = pending.pop(0)
            method, extra = MODELS[m]
            run = out / "gen" / m
            if run.exists():
                import shutil
                shutil.rmtree(run)
            sets = [f"--set={s}" for s in NET + extra + [f"batch_size={a.batch}", f"lr={a.lr}", "preview_every=0",
                                                      "checkpoint_every=0", "log_every=25"]]
            p = sh(["train", str(a.data), "--method", method, "--out", str(run), "--fold", str(a.fold),
                    "--steps", str(a.steps), *sets], out / f"train_{m}.log")
            running.append((m, p, time.time()))
        time.sleep(5)
        for item in list(running):
            m, p, t0 = item
            if p.poll() is not None:
                running.remove(item)
                if p.returncode != 0:
                    raise SystemExit(f"training {m} failed; see {out / f'train_{m}.log'}")
                times[m] = round(time.time() - t0, 1)
                (out / "train_times.json").write_text(json.dumps(times, indent=1))
                print(f"trained {m} in {times[m]} s", flush=True)


def run(args: list[str], log: Path) -> None:
    p = sh(args, log)
    if p.wait() != 0:
        raise SystemExit(f"synthpair {args[0]} failed; see {log}")


def _key(label: str) -> str:
    return label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("=", "")


def _trained(out: Path, model: str) -> bool:
    return (out / "gen" / model / "export" / "model.safetensors").is_file()


def _pool(jobs: int, ready, launch, done) -> None:
    """Run up to ``jobs`` subprocesses: ``ready()`` → next item or None (None and nothing left: stop)."""
    running: list[tuple[Any, subprocess.Popen, float]] = []
    while True:
        while len(running) < jobs:
            item = ready()
            if item is None:
                break
            running.append((item, launch(item), time.time()))
        if not running and ready(peek=True) is False:
            return
        time.sleep(5)
        for r in list(running):
            item, p, t0 = r
            if p.poll() is not None:
                running.remove(r)
                if p.returncode != 0:
                    raise SystemExit(f"{item}: failed (exit {p.returncode})")
                done(item, time.time() - t0)


def gen_rows(a: argparse.Namespace, out: Path) -> None:
    """Reference segmenter, then one synthetic folder per row (waiting for generators still in training)."""
    import torch

    torch.set_num_threads(1)
    from synthpair.segmentation.reference import train_reference_segmenter

    refseg = out / "reference_segmenter"
    if not (refseg / "results.json").is_file():
        train_reference_segmenter(a.data, refseg, fold=a.fold, steps=a.seg_steps, seed=a.seg_seed)
    todo = [r for r in ROWS if not (out / "syn" / _key(r[0]) / "bench_time.json").is_file()]

    def ready(peek: bool = False):
        if not todo:
            return False if peek else None
        items = [r for r in todo if _trained(out, r[1])]
        if peek or not items:
            return None
        todo.remove(items[0])
        return items[0]

    def launch(row):
        label, model, guidance = row
        syn = out / "syn" / _key(label)
        g = ["--guidance", str(guidance)] if guidance is not None and model != "joint" else []
        masks = [] if model == "joint" else ["--masks", "real", "--reference", "random"]
        return sh(["generate", str(out / "gen" / model), "--out", str(syn), "--n", str(a.n), "--seed", "0",
                   "--steps", str(a.gen_steps), "--segmenter", str(refseg), *masks, *g], out / f"gen_{_key(label)}.log")

    def done(row, secs):
        (out / "syn" / _key(row[0]) / "bench_time.json").write_text(json.dumps({"generate_s": round(secs, 1)}))
        print(f"generated {row[0]} in {secs:.0f} s", flush=True)

    _pool(a.gen_jobs, ready, launch, done)


def seg_rows(a: argparse.Namespace, out: Path) -> None:
    """Real-only and +synthetic (ratio 0.5) segmentation per row, as soon as its synthetic folder is complete."""
    seg_sets = [f"--set=batch_size={a.batch}", f"--set=seed={a.seg_seed}"]
    base = out / "seg" / "real_only"
    if not (base / "results.json").is_file():
        run(["segment", str(a.data), "--out", str(base), "--folds", str(a.fold), "--steps", str(a.seg_steps),
             *seg_sets], out / "seg_real_only.log")
    todo = [r for r in ROWS if not (out / "seg" / _key(r[0]) / "results.json").is_file()]

    def ready(peek: bool = False):
        if not todo:
            return False if peek else None
        items = [r for r in todo if (out / "syn" / _key(r[0]) / "bench_time.json").is_file()]
        if peek or not items:
            return None
        todo.remove(items[0])
        return items[0]

    def launch(row):
        seg = out / "seg" / _key(row[0])
        return sh(["segment", str(a.data), "--out", str(seg), "--folds", str(a.fold), "--steps", str(a.seg_steps),
                   "--synthetic", str(out / "syn" / _key(row[0])), "--mix", "ratio=0.5", *seg_sets],
                  out / f"seg_{_key(row[0])}.log")

    def done(row, secs):
        print(f"segmented {row[0]} in {secs:.0f} s", flush=True)

    _pool(a.seg_jobs, ready, launch, done)


def table(a: argparse.Namespace, out: Path) -> None:
    import statistics

    refseg = out / "reference_segmenter"
    base = out / "seg" / "real_only"
    times = json.loads((out / "train_times.json").read_text())
    rows = []
    for label, model, guidance in ROWS:
        syn, seg = out / "syn" / _key(label), out / "seg" / _key(label)
        if not (seg / "results.json").is_file():
            print(f"missing: {label}", flush=True)
            continue
        lines = [json.loads(x) for x in (syn / "manifest.jsonl").read_text().splitlines() if x.strip()]
        faith = [r["faithfulness"] for r in lines if r.get("faithfulness") is not None]
        res = json.loads((seg / "results.json").read_text())
        rows.append({"row": label, "model": model, "method": MODELS[model][0], "guidance": guidance,
                     "n_pairs": len(lines), "train_s": times.get(model),
                     "generate_s": json.loads((syn / "bench_time.json").read_text())["generate_s"],
                     "faithfulness_mean": statistics.mean(faith) if faith else None,
                     "faithfulness_sd": statistics.stdev(faith) if len(faith) > 1 else None,
                     "dice_synthetic": res["summary"]["dice"]["mean"],
                     "dice_synthetic_sd": res["summary"]["dice"]["sd"]})
    real = json.loads((base / "results.json").read_text())
    real_faith = json.loads((refseg / "results.json").read_text())["summary"]["dice"]["mean"]
    real_dice = real["summary"]["dice"]["mean"]
    result = {"data": str(Path(a.data).resolve()), "fold": a.fold, "generator_steps": a.steps, "batch": a.batch,
              "lr": a.lr, "net": NET, "n_pairs": a.n, "sampler": f"ddim-{a.gen_steps}", "seg_steps": a.seg_steps,
              "n_test": real["summary"]["dice"]["n"], "dice_real_only": real_dice,
              "dice_real_only_sd": real["summary"]["dice"]["sd"],
              "reference_segmenter_test_dice": real_faith, "threads_per_job": 1, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = [f"# Mask-conditioned generators on {Path(a.data).name}, fold {a.fold}",
          "", f"Generator budget (every model): {a.steps} AdamW steps x batch {a.batch} (lr {a.lr}) at 64x64, "
              f"net {' '.join(NET)}, bf16 autocast, 1 CPU thread per job on a shared 2-core machine (wall times "
              f"below include contention). Sampling: DDIM {a.gen_steps} steps, {a.n} pairs per row, masks = real "
              f"training-split masks, reference = random training image. Segmenter: MONAI UNet, {a.seg_steps} "
              f"steps x batch {a.batch}, seed {a.seg_seed}, real-only vs +synthetic at ratio 0.5, Dice on the "
              f"{result['n_test']} held-out test images of fold {a.fold}.",
          "", f"Mask faithfulness = Dice(reference segmenter on the synthetic image, the mask it was generated "
              f"from); the reference segmenter is trained on the real training split only and scores Dice "
              f"{real_faith:.3f} on the real held-out images (for comparison: synthetic images with exaggerated lesions can score above it). Real-only Dice: {real_dice:.3f} "
              f"(sd over images {result['dice_real_only_sd']:.3f}).", "",
          "| row | faithfulness (mean ± sd) | Dice real-only | Dice +synthetic (r=0.5) | Δ Dice | generator train s | generate s |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = "–" if r["faithfulness_mean"] is None else f"{r['faithfulness_mean']:.3f} ± {r['faithfulness_sd'] or 0:.3f}"
        md.append(f"| {r['row']} | {f} | {real_dice:.3f} | {r['dice_synthetic']:.3f} | "
                  f"{r['dice_synthetic'] - real_dice:+.3f} | {r['train_s']} | {r['generate_s']} |")
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--gen-steps", type=int, default=25)
    p.add_argument("--seg-steps", type=int, default=600)
    p.add_argument("--seg-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="generator trainings in parallel")
    p.add_argument("--gen-jobs", type=int, default=2, help="generate runs in parallel")
    p.add_argument("--seg-jobs", type=int, default=2, help="segment runs in parallel")
    p.add_argument("--stage", choices=["train", "gen", "seg", "table", "all"], default="all")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.stage == "train":
        train_all(a, out)
    if a.stage == "all":  # generation and segmentation overlap with the remaining generator training
        procs = [subprocess.Popen([PY, __file__, *sys.argv[1:], "--stage", st]) for st in ("gen", "seg")]
        train_all(a, out)
        if any(p.wait() for p in procs):
            raise SystemExit("a stage failed")
        table(a, out)
    elif a.stage == "gen":
        gen_rows(a, out)
    elif a.stage == "seg":
        seg_rows(a, out)
    elif a.stage == "table":
        table(a, out)


if __name__ == "__main__":
    main()
