"""Evidence for the prompt-conditioned base model (EMIT-Diff sec. 4.2-4.3): pre-train on a pool, fine-tune on
BUSI (full vs LoRA) and compare with BUSI from scratch at the same fine-tuning budget.

Stages (each skipped when its output exists, so rerunning resumes):

1. ``synthpair pool`` of phantoms ("US, phantom, lesion") + Kvasir-SEG converted to gray ("endoscopy, colon,
   polyp"), 64x64 (both prepared beforehand with ``synthpair prepare --size 64``; commands in the results);
2. ``synthpair train --method prompt`` on the pool (``--pre-steps``);
3. on BUSI lesion-only 64x64 fold 0 (prompts "US, breast, {finding}" = benign/malignant from the ids), each
   ``--ft-steps`` steps: full fine-tuning (``init_from``), LoRA fine-tuning (``lora.enabled``), from scratch;
4. 128 images per model (seeds 0..127, prompts = training prompts of a seeded permutation of the fold-0
   training items, DDIM ``--sample-steps`` (25), ``--guidance`` (1: no CFG doubling, CPU budget)) → ``synthpair evaluate images --real BUSI --fold 0``
   (radiomics FD/KID vs the training images);
5. the table ``bench/results/prompt_finetune_busi64_s<steps>_g<guidance>.table.md`` (+ .json): trainable parameters, CPU seconds, final
   training loss, FD/KID.

Everything runs on CPU with ``OMP_NUM_THREADS=1`` (children inherit it); CPU seconds are measured with
``getrusage(RUSAGE_CHILDREN)`` per command and ``process_time`` for in-process generation.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/prompt_finetune.py --out runs/h5/bench
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYNTHPAIR = str(ROOT / ".venv" / "bin" / "synthpair")
NET = ["net.channels=[16,32,64]", "net.attention_levels=[false,false,true]", "net.num_head_channels=32",
       "net.norm_num_groups=16"]
COMMON = ["amp=off", "device=cpu", "batch_size=16", "log_every=25", "preview_every=0", "preview_n=8",
          "preview_steps=10", "checkpoint_every=0", "warmup_steps=20", "prompt.aug_prob=0.1"]
BUSI_PROMPT = 'prompt.template="US, breast, {finding}"'  # JSON-quoted: --set splits bare commas


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], log: Path) -> dict[str, float]:
    """Run a command (stdout/stderr appended to ``log``) → {"cpu_s", "wall_s"}; exits on failure."""
    c0, w0 = _cpu_children(), time.time()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if rc != 0:
        sys.exit(f"command failed ({rc}): {' '.join(cmd)}; see {log}")
    return {"cpu_s": _cpu_children() - c0, "wall_s": time.time() - w0}


def train(data: str, out: Path, steps: int, extra: list[str], log: Path) -> dict[str, float]:
    """``synthpair train``; a run interrupted with Ctrl-C (checkpoint, no export) is resumed with ``--resume``
    and the CPU seconds of its first part (``<run>.prior_cpu``, read from /proc before the interrupt) added."""
    sets = NET + COMMON + [f"steps={steps}"] + extra
    cmd = [SYNTHPAIR, "train", data, "--method", "prompt", "--out", str(out), "--no-progress"]
    resume = (out / "checkpoints" / "state.pt").is_file() and not (out / "export").exists()
    if resume:
        cmd += ["--resume", "--steps", str(steps)]
    else:
        for s in sets:
            cmd += ["--set", s]
    res = run(cmd, log)
    prior = out.parent / f"{out.name}.prior_cpu"
    if resume and prior.is_file():
        res["cpu_s"] += float(prior.read_text())
        res["resumed"] = True
    return res


def final_loss(run_dir: Path) -> float:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return rows[-1]["loss"]


def trainable(run_dir: Path) -> tuple[int, int]:
    for line in (run_dir / "log.txt").read_text().splitlines():
        if " start: " in line:
            kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
            return int(kv["params"]), int(kv["trainable"])
    raise RuntimeError(f"{run_dir}/log.txt: no start line")


def generate(run_dir: Path, busi: str, out: Path, n: int, steps: int, guidance: float) -> dict[str, float]:
    """n images from the run's export with BUSI training prompts → a synthetic folder (masks: background)."""
    import numpy as np
    import torch

    from synthpair.data.dataset import PreparedDataset, dataset_info, write_dataset_json, write_pair
    from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from synthpair.io import atomic_output_dir
    from synthpair.methods import DataInfo, get_method
    from synthpair.methods.prompt import item_prompts
    from synthpair.methods.export import load_export
    from synthpair.networks.prompt import PromptConfig
    from synthpair.config import from_dict

    torch.set_num_threads(1)
    c0, w0 = time.process_time(), time.time()
    model, cfg = load_export(run_dir / "export")
    method = get_method("prompt")
    ds = PreparedDataset.open(busi)
    train_ids, _ = ds.split(0)
    pc = from_dict(PromptConfig, cfg["prompt"])
    order = np.random.default_rng(0).permutation(len(train_ids))
    ids = [train_ids[order[i % len(order)]] for i in range(n)]
    prompts = item_prompts(ds, ids, pc)
    info = DataInfo.from_dict(cfg["data"])
    sched = NoiseSchedule(from_dict(DiffusionConfig, cfg["diffusion"]))
    with atomic_output_dir(out) as tmp:
        items = []
        for s in range(0, n, 64):
            seeds = list(range(s, min(n, s + 64)))
            with torch.no_grad():
                imgs, _ = method.sample(model, sched, seeds, data=info, steps=steps, guidance=guidance,
                                        prompts=prompts[s:s + len(seeds)])
            for k, seed in enumerate(seeds):
                sid = f"syn_{seed:04d}"
                write_pair(tmp, sid, imgs[k].numpy(), np.zeros(info.size, dtype=np.int64))
                items.append({"id": sid, "case": sid, "seed": seed, "prompt": prompts[seed]})
        write_dataset_json(tmp, dataset_info(name=f"{run_dir.name}-syn", modality=ds.modality, channels=info.channels,
                                             labels=ds.labels, size=info.size, normalisation={"method": "generated"},
                                             items=items, generator_run=str(run_dir), guidance=guidance,
                                             sampler="ddim", steps=steps))
    return {"cpu_s": time.process_time() - c0, "wall_s": time.time() - w0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/h5/bench")
    ap.add_argument("--busi", default="runs/mc/busi64")
    ap.add_argument("--phantoms", default="runs/h5/phantom64")
    ap.add_argument("--kvasir", default="runs/h5/kvasir64")
    ap.add_argument("--pre-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "prompt_finetune_busi64"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}

    def stage(name: str, done: Path, fn) -> None:
        if done.exists() and name in timing:
            return
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        timing[name] = fn()
        timing_path.write_text(json.dumps(timing, indent=1))

    pool = out / "pool"
    stage("pool", pool, lambda: run([SYNTHPAIR, "pool", "--out", str(pool), f"{args.phantoms}:US, phantom, lesion",
                                     f"{args.kvasir}:endoscopy, colon, polyp", "--channels", "1", "--size", "64"], log))
    pre = out / "pretrain"
    stage("pretrain", pre / "export", lambda: train(str(pool), pre, args.pre_steps, [], log))
    runs = {
        "full fine-tune (pool → BUSI)": ("full", [f"init_from={pre}", BUSI_PROMPT, "lr=2e-4"]),
        "LoRA fine-tune (pool → BUSI)": ("lora", [f"init_from={pre}", BUSI_PROMPT, "lr=1e-3", "lora.enabled=true",
                                                 "lora.rank=8", "lora.alpha=8"]),
        "LoRA attention-only (pool → BUSI)": ("lora_attn", [f"init_from={pre}", BUSI_PROMPT, "lr=1e-3",
                                                            "lora.enabled=true", "lora.rank=8", "lora.alpha=8",
                                                            'lora.targets=["attention"]']),
        "BUSI from scratch": ("scratch", [BUSI_PROMPT, "lr=2e-4"]),
    }
    for label, (key, extra) in runs.items():
        stage(f"train_{key}", out / key / "export", lambda k=key, e=extra: train(args.busi, out / k, args.ft_steps, e, log))
    tag = f"s{args.sample_steps}_g{args.guidance:g}"
    for label, (key, _) in runs.items():
        syn = out / f"syn_{key}_{tag}"
        stage(f"generate_{key}_{tag}", syn, lambda k=key, s=syn: generate(out / k, args.busi, s, args.n, args.sample_steps,
                                                                    args.guidance))
        ev = out / f"eval_{key}_{tag}.json"
        stage(f"evaluate_{key}_{tag}", ev, lambda s=syn, e=ev: run([SYNTHPAIR, "evaluate", "images", "--real", args.busi,
                                                              "--fold", "0", "--synthetic", str(s), "--out", str(e)], log))

    rows = []
    for label, (key, extra) in runs.items():
        ev = json.loads((out / f"eval_{key}_{tag}.json").read_text())
        d = ev["distribution"]
        params, n_train = trainable(out / key)
        rows.append({"setting": label, "trainable_params": n_train, "params": params,
                     "train_cpu_s": timing[f"train_{key}"]["cpu_s"], "train_wall_s": timing[f"train_{key}"]["wall_s"],
                     "final_loss": final_loss(out / key), "fd": d["synthetic_vs_real"]["fd"],
                     "kid": d["synthetic_vs_real"]["kid"], "fd_half": d["synthetic_vs_real_half"]["fd"],
                     "rr_fd": d["real_half_vs_real_half"]["fd"], "rr_kid": d["real_half_vs_real_half"]["kid"],
                     "extra": extra, "gen_cpu_s": timing[f"generate_{key}_{tag}"]["cpu_s"]})
    total_cpu = sum(v["cpu_s"] for v in timing.values())
    res = {"rows": rows, "timing": timing, "total_cpu_s": total_cpu, "pre_steps": args.pre_steps,
           "ft_steps": args.ft_steps, "n": args.n, "sample_steps": args.sample_steps, "guidance": args.guidance,
           "pretrain_final_loss": final_loss(pre), "pretrain_params": trainable(pre)}
    results = f"{args.results}_{tag}"
    Path(results + ".json").write_text(json.dumps(res, indent=1))

    def f(v: Any, d: int = 3) -> str:
        if isinstance(v, dict):  # KID: {"mean", "sd"} over subsets
            return "–" if v.get("mean") is None else f"{v['mean']:.{d}g} ± {v['sd']:.2g}"
        return "–" if v is None else (f"{v:.{d}g}" if abs(v) < 1e4 else f"{v:.0f}")

    lines = ["| setting | trainable params | train CPU s (wall s) | final loss | FD-radiomics ↓ | KID-radiomics ↓ | FD half-size |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['trainable_params']:,} / {r['params']:,} | {r['train_cpu_s']:.0f} "
                     f"({r['train_wall_s']:.0f}) | {r['final_loss']:.4f} | {f(r['fd'])} | {f(r['kid'])} | {f(r['fd_half'])} |")
    lines.append(f"| real vs real (halves of the training images) | | | | {f(rows[0]['rr_fd'])} | {f(rows[0]['rr_kid'])} | |")
    table = "\n".join(lines)
    print(table)
    Path(results + ".table.md").write_text(table + "\n")
    print(f"total CPU seconds (children + generation): {total_cpu:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
