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

    python bench/mask_conditioned.py --data runs/mc/busi64 --out runs/mc/bench [--steps 500] [--n 256]
           [--seg-steps 600] [--stage train|rest|all] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def rest(a: argparse.Namespace, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from synthpair.synthesis.faithfulness import train_reference_segmenter

    refseg = out / "reference_segmenter"
    if not (refseg / "results.json").is_file():
        t0 = time.time()
        train_reference_segmenter(a.data, refseg, fold=a.fold, steps=a.seg_steps)
        print(f"reference segmenter in {time.time() - t0:.0f} s", flush=True)
    seg_sets = [f"--set=batch_size={a.batch}", f"--set=seed={a.seg_seed}"]
    base = out / "seg" / "real_only"
    if not (base / "results.json").is_file():
        run(["segment", str(a.data), "--out", str(base), "--folds", str(a.fold), "--steps", str(a.seg_steps),
             *seg_sets], out / "seg_real_only.log")
    rows = []
    times = json.loads((out / "train_times.json").read_text())
    for label, model, guidance in ROWS:
        key = label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("=", "")
        syn = out / "syn" / key
        if not (out / "gen" / model / "export" / "model.safetensors").is_file():
            print(f"skip {label}: generator {model} not trained yet (rerun --stage rest later)", flush=True)
            continue
        if not (syn / "dataset.json").is_file():
            t0 = time.time()
            g = ["--guidance", str(guidance)] if guidance is not None and model != "joint" else []
            masks = [] if model == "joint" else ["--masks", "real", "--reference", "random"]
            run(["generate", str(out / "gen" / model), "--out", str(syn), "--n", str(a.n), "--seed", "0",
                 "--steps", str(a.gen_steps), "--segmenter", str(refseg), *masks, *g], out / f"gen_{key}.log")
            (syn / "bench_time.json").write_text(json.dumps({"generate_s": round(time.time() - t0, 1)}))
        seg = out / "seg" / key
        if not (seg / "results.json").is_file():
            run(["segment", str(a.data), "--out", str(seg), "--folds", str(a.fold), "--steps", str(a.seg_steps),
                 "--synthetic", str(syn), "--mix", "ratio=0.5", *seg_sets], out / f"seg_{key}.log")
        lines = [json.loads(x) for x in (syn / "manifest.jsonl").read_text().splitlines() if x.strip()]
        faith = [r["faithfulness"] for r in lines if r.get("faithfulness") is not None]
        res = json.loads((seg / "results.json").read_text())
        rows.append({"row": label, "model": model, "method": MODELS[model][0], "guidance": guidance,
                     "n_pairs": len(lines), "train_s": times.get(model),
                     "generate_s": json.loads((syn / "bench_time.json").read_text())["generate_s"],
                     "faithfulness_mean": sum(faith) / len(faith) if faith else None,
                     "faithfulness_sd": (float(torch.tensor(faith).std()) if len(faith) > 1 else None),
                     "dice_synthetic": res["summary"]["dice"]["mean"], "dice_real_only": None})
    if len(rows) < len(ROWS):
        return
    real = json.loads((base / "results.json").read_text())
    real_faith = json.loads((refseg / "results.json").read_text())["summary"]["dice"]["mean"]
    for r in rows:
        r["dice_real_only"] = real["summary"]["dice"]["mean"]
    result = {"data": str(Path(a.data).resolve()), "fold": a.fold, "generator_steps": a.steps, "batch": a.batch,
              "lr": a.lr, "net": NET, "n_pairs": a.n, "sampler": f"ddim-{a.gen_steps}", "seg_steps": a.seg_steps,
              "reference_segmenter_test_dice": real_faith, "threads_per_job": 1, "parallel_jobs": a.jobs,
              "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = [f"# Mask-conditioned generators on {Path(a.data).name}, fold {a.fold}",
          "", f"Generator budget (every model): {a.steps} AdamW steps × batch {a.batch} at 64×64, net {NET}, "
              f"bf16 autocast, 1 CPU thread, {a.jobs} jobs in parallel on a shared 2-core machine. "
              f"Sampling: DDIM {a.gen_steps} steps, {a.n} pairs per row, masks = real training-split masks, "
              f"reference = random training image. Segmenter: MONAI UNet, {a.seg_steps} steps, same seed, "
              f"real-only vs +synthetic at ratio 0.5, scored on the held-out test split of fold {a.fold}.",
          "", f"Mask faithfulness = Dice(reference segmenter on the synthetic image, the mask it was generated "
              f"from); the reference segmenter (real training split only) scores Dice {real_faith:.3f} on real "
              f"held-out images (the ceiling for faithfulness).", "",
          "| row | faithfulness (mean ± sd) | Dice real-only | Dice +synthetic (r=0.5) | Δ | train s | generate s |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = "–" if r["faithfulness_mean"] is None else f"{r['faithfulness_mean']:.3f} ± {r['faithfulness_sd'] or 0:.3f}"
        md.append(f"| {r['row']} | {f} | {r['dice_real_only']:.3f} | {r['dice_synthetic']:.3f} | "
                  f"{r['dice_synthetic'] - r['dice_real_only']:+.3f} | {r['train_s']} | {r['generate_s']} |")
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
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--gen-steps", type=int, default=25)
    p.add_argument("--seg-steps", type=int, default=600)
    p.add_argument("--seg-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--stage", choices=["train", "rest", "all"], default="all")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.stage in ("train", "all"):
        train_all(a, out)
    if a.stage in ("rest", "all"):
        rest(a, out)


if __name__ == "__main__":
    main()
