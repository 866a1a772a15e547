"""Benchmark: what image-only pretraining on the unlabelled pool buys a mask-conditioned generator that then sees
only N labelled pairs (issue 10, "Evidence").

Three generators on one label-budget view (e.g. the BUSI benchmark split, seed 0, N = 16 labelled items, the
rest of the 447-image pool unlabelled):

1. **image-only** — the unconditional DDPM trained on every pool image (no masks; the label-scarce study's
   generator, a snapshot of ``synthpair train --method image``): its images are sampled with ``synthpair generate``
   (no masks, so no faithfulness);
2. **mask2image fine-tuned** from it on the N pairs (``init_from``; the study's ``syn`` rows use exactly this run
   and its 256 pairs, so they are reused when given);
3. **mask2image from scratch** — the SAME training config (steps, batch, lr, seed, network, reference encoder)
   without ``init_from``: the same training CPU budget, no pretraining.

Both mask2image runs generate with the same GenerateConfig (the study's: 256 pairs for augmented real masks of the
N items, DDIM-25, seed 1e6·(s+1)), so their pairs share masks and seeds. Metrics, exactly as
``synthpair evaluate images --fold 0`` computes them against the pool images (the training split of fold 0 of
the prepared dataset — images only, which the image-only model learnt from and the mask-aware ones may also use):
FD and KID on radiomics features vs all pool images, vs a real half, and the real-vs-real baseline (half vs half);
mask faithfulness (Dice of the reference segmenter, trained on the N labelled pairs only, between its prediction on
the synthetic image and the mask it was generated for) for the mask2image arms.

    OMP_NUM_THREADS=1 python bench/image_pretrain.py --data /work/runs/data/busi64 \\
        --view /work/runs/study/ls64/busi/views/seed0_N16 \\
        --image-run /work/runs/gen/busi_image --image-step 6000 \\
        --finetuned /work/runs/study/ls64/busi/synth/seed0_N16 --out /work/runs/bench/image_pretrain_busi \\
        --name busi64_seed0_N16

Writes bench/results/image_pretrain_<name>.{json,md} (with the command and CPU minutes of each stage).
Resumable: every stage is skipped when its output is complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from task_bench import StageCosts


def arm_metrics(data: Path, syn: Path) -> dict[str, Any]:
    from synthpair.evaluation.images import evaluate_images

    res = evaluate_images(data, syn, fold=0)
    d = res["distribution"]
    return {"n": res["counts"]["synthetic"],
            "fd": d["synthetic_vs_real"]["fd"], "kid": d["synthetic_vs_real"]["kid"]["mean"],
            "fd_half": d["synthetic_vs_real_half"]["fd"], "kid_half": d["synthetic_vs_real_half"]["kid"]["mean"],
            "fd_real_real": d["real_half_vs_real_half"]["fd"], "kid_real_real": d["real_half_vs_real_half"]["kid"]["mean"],
            "faithfulness": res["faithfulness"], "ms_ssim_synthetic": res["diversity"]["ms_ssim_synthetic"]["mean"],
            "ms_ssim_real": res["diversity"]["ms_ssim_real"]["mean"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the prepared dataset (FD/KID reference: fold-0 train)")
    p.add_argument("--view", type=Path, required=True, help="the label-budget view the mask2image runs train on")
    p.add_argument("--image-run", type=Path, required=True, help="the image-only generator run")
    p.add_argument("--image-step", type=int, required=True, help="its snapshot step (the study's generator)")
    p.add_argument("--finetuned", type=Path, required=True,
                   help="the study's synth folder of this view (m2i/ = the fine-tuned run, syn/ = its pairs)")
    p.add_argument("--out", type=Path, required=True, help="work folder (the scratch run and the samples)")
    p.add_argument("--name", required=True)
    p.add_argument("--image-n", type=int, default=256, help="image-only samples")
    p.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()

    from synthpair.config import to_dict
    from synthpair.io import write_json_atomic, write_text_atomic
    from synthpair.networks.export import export_complete
    from synthpair.segmentation.reference import generate_scored
    from synthpair.synthesis.generate import GenerateConfig, generate, load_generate_config
    from synthpair.training.trainer import load_train_config, train_or_resume

    args.out.mkdir(parents=True, exist_ok=True)
    stages = StageCosts(args.out, "image_pretrain")
    stage, costs = stages.run, stages.costs

    # 1. image-only samples (generate --snapshot: the run need not be finished)
    img_syn = args.out / "image_samples"
    gcfg = load_generate_config(args.finetuned / "syn" / "generate_config.json")
    if not (img_syn / "dataset.json").is_file():
        stage("image-only: generate", generate, args.image_run, img_syn,
              GenerateConfig(n=args.image_n, steps=gcfg.steps, seed=gcfg.seed, segmenter="off", amp=gcfg.amp,
                             keep_empty=True, min_area=0, min_component=1, snapshot=args.image_step),
              progress=False)
    # 2. fine-tuned (the study's)
    ft_run, ft_syn = args.finetuned / "m2i", args.finetuned / "syn"
    ft_cfg = load_train_config(ft_run / "config.json")  # legacy keys + sections (TRAIN_LEGACY)
    # 3. scratch: the same config without init_from
    sc_run, sc_syn = args.out / "m2i_scratch", args.out / "m2i_scratch_syn"
    sc_cfg = dataclasses.replace(ft_cfg, init_from="")  # "" = random init (None was written and did not load back)
    if not export_complete(sc_run):
        stage("scratch: train", train_or_resume, args.view, sc_run, sc_cfg, progress=False)
    if not (sc_syn / "dataset.json").is_file():
        stage("scratch: reference segmenter + generate", generate_scored, sc_run, sc_syn, gcfg, progress=False)

    def train_cpu(run: Path) -> float | None:
        cfg = json.loads((run / "export" / "config.json").read_text())
        return round(cfg["cpu_seconds"] / 60, 2) if cfg.get("cpu_seconds") is not None else None

    arms = {
        "image-only (pool images, no masks)": {"syn": img_syn, "train_cpu_min": None},
        f"mask2image fine-tuned from it on the view's labelled pairs": {"syn": ft_syn, "train_cpu_min": train_cpu(ft_run)},
        f"mask2image from scratch, same config": {"syn": sc_syn, "train_cpu_min": train_cpu(sc_run)},
    }
    img_cfg = json.loads((args.image_run / "snapshots" / f"step_{args.image_step}" / "config.json").read_text())
    arms["image-only (pool images, no masks)"]["train_cpu_min"] = (
        round(img_cfg["cpu_seconds"] / 60, 1) if img_cfg.get("cpu_seconds") is not None else None)
    results = []
    for name, a in arms.items():
        print(f"image_pretrain: metrics {name}", file=sys.stderr, flush=True)
        results.append({"arm": name, "folder": str(a["syn"]), "train_cpu_min": a["train_cpu_min"],
                        **arm_metrics(args.data, a["syn"])})
    meta = {"command": "python " + " ".join(sys.argv), "data": str(args.data), "view": str(args.view),
            "image_run": str(args.image_run), "image_step": args.image_step,
            "train_config": {k: v for k, v in to_dict(sc_cfg).items() if k in ("method", "steps", "batch_size", "lr",
                                                                             "seed")},
            "generate_config": to_dict(gcfg), "stage_costs": costs}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results_dir / f"image_pretrain_{args.name}.json", {**meta, "results": results})
    write_text_atomic(args.results_dir / f"image_pretrain_{args.name}.md", table(meta, results))
    print(table(meta, results))


def _n(v: Any, d: int = 3) -> str:
    return "–" if v is None else f"{v:.{d}f}"


def table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [f"# Image-only pretraining → mask2image on a label budget ({meta['view']})", "",
             f"`{meta['command']}`", "",
             "FD / KID on radiomics features against the pool images (training split of fold 0); the real-vs-real "
             "row compares two halves of the pool. Faithfulness: Dice of the reference segmenter (trained on the "
             "labelled items of the view only) vs the generating mask.", "",
             "| Arm | pairs | train CPU-min | FD | FD vs half | KID | KID vs half | faithfulness | "
             "MS-SSIM (div.) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = r["faithfulness"]
        faith = "–" if not f else f"{f['mean']:.3f} ± {f['sd']:.3f}"
        lines.append(f"| {r['arm']} | {r['n']} | {_n(r['train_cpu_min'], 1)} | {_n(r['fd'], 2)} | {_n(r['fd_half'], 2)} "
                     f"| {_n(r['kid'], 2)} | {_n(r['kid_half'], 2)} | "
                     f"{faith} | {_n(r['ms_ssim_synthetic'])} |")
    r0 = results[0]
    lines.append(f"| real vs real (pool half vs half) | – | – | – | {_n(r0['fd_real_real'], 2)} | – | "
                 f"{_n(r0['kid_real_real'], 2)} | – | {_n(r0['ms_ssim_real'])} |")
    lines += ["", "Stage costs (CPU-minutes of this script's process): "
              + ", ".join(f"{k} {v['cpu_min']}" for k, v in meta["stage_costs"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
