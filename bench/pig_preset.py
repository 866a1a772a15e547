"""Benchmark: the PIG paper preset run once (issue 15) — ``--preset pig-paper`` (paper 004 sec. 3.1: T = 1024,
linear betas 1e-4 .. 0.02, eps prediction; DDIM 256 sampling steps) on a prepared dataset, CPU-sized.

1. ``train`` with the preset's train section (method pig) for ``--steps`` steps (the paper trains far longer;
   the CPU budget is stated);
2. ``generate`` with the preset's generate section (DDIM, eta 0, 256 steps) and, for comparison on the same run
   and seeds, DDIM 25 steps; both scored for mask faithfulness by the run's reference segmenter
   (``--segmenter auto`` with ``min_faithfulness`` 0: real-only, the run's fold; no pair dropped);
3. FD/KID (radiomics) of both sets against the fold's training images with the real-vs-real baseline,
   as ``synthpair evaluate images --fold 0`` computes them.

    OMP_NUM_THREADS=1 python bench/pig_preset.py --data /work/runs/data/busi64 --out /work/runs/bench/pig_preset \\
        --steps 600 --n 64 --name busi64

Writes bench/results/pig_preset_<name>.{json,md} with the command and the CPU minutes of each stage. Resumable
(finished stages are skipped). Label note: the generator and the reference segmenter learn from the labelled
training items of fold 0 of DATA (all of them), so this is a check of the preset, not a label-scarce result.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from task_bench import StageCosts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=600, help="training steps (CPU budget)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n", type=int, default=64, help="pairs per sampling arm")
    p.add_argument("--name", required=True)
    p.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()

    from synthpair.config import PRESETS, apply_overrides, preset_overrides, to_dict
    from synthpair.evaluation.images import evaluate_images
    from synthpair.io import write_json_atomic, write_text_atomic
    from synthpair.networks.export import export_complete
    from synthpair.segmentation.reference import generate_scored
    from synthpair.synthesis.generate import GenerateConfig
    from synthpair.training.trainer import TrainConfig, train_or_resume

    args.out.mkdir(parents=True, exist_ok=True)
    stages = StageCosts(args.out, "pig_preset")
    stage, costs = stages.run, stages.costs

    tcfg = apply_overrides(TrainConfig(), preset_overrides("pig-paper", "train")
                           + [f"steps={args.steps}", f"batch_size={args.batch}", "preview_every=0",
                              "checkpoint_every=200"])
    run = args.out / "run"
    if not export_complete(run):
        stage("train", train_or_resume, args.data, run, tcfg, progress=False)
    paper = apply_overrides(GenerateConfig(), preset_overrides("pig-paper", "generate"))
    arms = {"ddim-256 (paper preset)": paper,
            "ddim-25 (synthpair default)": apply_overrides(paper, ["steps=25"])}
    results = []
    for name, gcfg in arms.items():
        # min_faithfulness 0: every pair is scored by the run's reference segmenter (PIG makes its own masks, so
        # 'auto' alone would not score them) and none is dropped
        gcfg = apply_overrides(gcfg, [f"n={args.n}", "keep_empty=true", "min_area=0", "min_component=1",
                                      "segmenter=\"auto\"", "min_faithfulness=0.0"])
        syn = args.out / f"syn_{gcfg.sampler}{gcfg.steps}"
        if not (syn / "dataset.json").is_file():
            stage(f"generate {name}", generate_scored, run, syn, gcfg, progress=False)
        res = evaluate_images(args.data, syn, fold=0)
        d = res["distribution"]
        results.append({"arm": name, "sampler": gcfg.sampler, "steps": gcfg.steps, "n": res["counts"]["synthetic"],
                        "fd": d["synthetic_vs_real"]["fd"], "kid": d["synthetic_vs_real"]["kid"]["mean"],
                        "fd_half": d["synthetic_vs_real_half"]["fd"], "fd_real_real": d["real_half_vs_real_half"]["fd"],
                        "kid_real_real": d["real_half_vs_real_half"]["kid"]["mean"],
                        "faithfulness": res["faithfulness"], "gen_cpu_min": costs.get(f"generate {name}", {}).get("cpu_min")})
    train_cpu = json.loads((run / "export" / "config.json").read_text()).get("cpu_seconds")
    meta = {"command": "python " + " ".join(sys.argv), "preset": PRESETS["pig-paper"],
            "train_config": to_dict(tcfg), "train_cpu_min": None if train_cpu is None else round(train_cpu / 60, 1),
            "stage_costs": costs}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results_dir / f"pig_preset_{args.name}.json", {**meta, "results": results})
    write_text_atomic(args.results_dir / f"pig_preset_{args.name}.md", table(meta, results))
    print(table(meta, results))


def table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    def n(v: Any, d: int = 2) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    tc = meta["train_config"]
    lines = ["# PIG paper preset, run once", "", f"`{meta['command']}`", "",
             f"Preset: {meta['preset']['about']}. Trained {tc['steps']} steps × batch {tc['batch_size']} "
             f"({meta['train_cpu_min']} CPU-min; the paper trains far longer).", "",
             "| arm | pairs | FD | FD vs half | KID | faithfulness | generation CPU-min |", "|---|---|---|---|---|---|---|"]
    for r in results:
        f = r["faithfulness"]
        faith = "–" if not f else f"{f['mean']:.3f} ± {f['sd']:.3f}"
        lines.append(f"| {r['arm']} | {r['n']} | {n(r['fd'])} | {n(r['fd_half'])} | {n(r['kid'])} | {faith} | "
                     f"{n(r['gen_cpu_min'])} |")
    r0 = results[0]
    lines.append(f"| real vs real (half vs half) | – | – | {n(r0['fd_real_real'])} | {n(r0['kid_real_real'])} | – | – |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
