"""Benchmark: generator quality per CPU-minute — FD/KID of snapshots against training CPU-minutes for training
recipes that differ in one or a few settings (issue 12, item 1).

Every arm is the image-only generator (``--method image``) of one prepared dataset (e.g. BUSI 64x64 with the
label-scarce split: the 447 pool images, no masks), trained from the SAME base config (``--base``: a run's
``config.json``; the label-scarce study's generator by default) with the arm's ``--set`` overrides, and exported
every ``--snapshot-every`` steps. An arm may instead reuse the snapshots of a finished run (``--existing``), which
is how the current recipe enters without retraining. Each evaluated snapshot generates ``--n`` images with the
same sampler and seeds (DDIM-25, seeds 0..n-1 by default) and is scored exactly as
``synthpair evaluate images --fold 0`` scores a synthetic folder (:func:`synthpair.evaluation.images.evaluate_images`:
radiomics features, FD and KID against the fold's training images, the real-vs-real baseline half vs half).

The x axis is the trainer's own CPU time of the snapshot (``cpu_seconds`` in its ``config.json``: process CPU
time of the training loop, comparable across arms when every arm trains with the same thread count on a quiet
machine — use ``OMP_NUM_THREADS=1`` and one bench at a time). The goal of the issue: a recipe that reaches the
current recipe's final FD in at most half of its CPU-minutes.

    OMP_NUM_THREADS=1 python bench/convergence.py --data /work/runs/data/busi64 --work /work/runs/bench/convergence \\
        --base /work/runs/gen/busi_image/config.json --existing current=/work/runs/gen/busi_image \\
        --arm min_snr="diffusion.loss_weighting=min_snr" --steps 3000 --snapshot-every 1000 --name busi64_image
    # a smoke test (a minute): add --smoke (tiny phantom data, 4-step arms, 4 images)

Resumable: training resumes from its checkpoint and every finished evaluation is kept (WORK/<arm>/eval_step_<S>.json).
Writes bench/results/convergence_<name>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from task_bench import StageCosts


def parse_arm(spec: str) -> tuple[str, list[str]]:
    """``NAME=key=value;key=value`` (or ``NAME=`` for the base recipe) → (NAME, ["key=value", ...])."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--arm {spec!r}: expected NAME=key=value;key=value (NAME letters, digits, - and _)")
    return name, [s.strip() for s in rest.split(";") if s.strip()]


def snapshot_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run / "snapshots").glob("step_*") if (p / "config.json").is_file())


def evaluate_snapshot(run: Path, step: int, data: Path, work: Path, n: int, sampler_steps: int, seed: int,
                      stages: StageCosts, arm: str, spacing: str = "uniform", segmenter: Path | None = None
                      ) -> dict[str, Any]:
    """Generate ``n`` images (pairs, for a joint generator) from snapshot ``step`` of ``run`` and score them (cached
    in WORK/eval_step_<S>.json). With ``segmenter`` (a real-only SEG folder of the same fold) every pair's mask
    faithfulness is scored too: Dice of that segmenter's prediction on the synthetic image vs the synthetic mask."""
    from synthpair.evaluation.images import evaluate_images
    from synthpair.io import write_json_atomic
    from synthpair.synthesis.generate import GenerateConfig, generate

    cached = work / f"eval_step_{step}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    syn = work / f"samples_step_{step}"
    if not (syn / "dataset.json").is_file():
        stages.run(f"{arm}: generate step {step}", generate, run, syn,
                   GenerateConfig(n=n, steps=sampler_steps, sampler="ddim", eta=0.0, seed=seed,
                                  segmenter=str(segmenter) if segmenter else "off",
                                  spacing=spacing,  # type: ignore[arg-type]
                                  keep_empty=True, min_area=0, min_component=1, snapshot=step), progress=False)
    res = stages.run(f"{arm}: evaluate step {step}", evaluate_images, data, syn, fold=0)
    d = res["distribution"]
    snap_cfg = json.loads((run / "snapshots" / f"step_{step}" / "config.json").read_text())
    out = {"step": step, "train_cpu_min": round(snap_cfg.get("cpu_seconds", 0.0) / 60, 2), "n": res["counts"]["synthetic"],
           "fd": d["synthetic_vs_real"]["fd"], "kid": d["synthetic_vs_real"]["kid"]["mean"],
           "kid_sd": d["synthetic_vs_real"]["kid"]["sd"], "fd_half": d["synthetic_vs_real_half"]["fd"],
           "fd_real_real": d["real_half_vs_real_half"]["fd"], "kid_real_real": d["real_half_vs_real_half"]["kid"]["mean"]}
    out.update(mask_summary(res))
    write_json_atomic(cached, out)
    return out


def mask_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The pair figures of one evaluation (empty for image-only generators): the mean mask faithfulness (Dice, see
    :func:`evaluate_snapshot`), the share of synthetic masks with no foreground, and the 1-D Wasserstein distance
    between real and synthetic lesion area (fraction of the image) and compactness (4π·area/perimeter²)."""
    out: dict[str, Any] = {}
    if res.get("faithfulness"):
        out["faithfulness"] = res["faithfulness"]["mean"]
    lesion = (res.get("masks") or {}).get("class_1")
    if lesion:
        out["mask_area_w1"] = lesion["area"]["wasserstein"]
        out["mask_compactness_w1"] = lesion["compactness"]["wasserstein"]
        n_syn, n_drawn = lesion["compactness"]["synthetic"]["n"], res["counts"]["synthetic"]
        out["empty_mask_share"] = 1.0 - n_syn / n_drawn  # compactness is NaN (left out) exactly for empty masks
    return out


IGNORED = {"steps", "snapshot_every", "preview_every", "checkpoint_every", "device", "log_every", "preview_n",
           "preview_steps", "_type"}


def settings_diff(base: dict[str, Any], cfg: dict[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` of every setting in which an existing run's config differs from the base (what the arm is), run
    length and logging keys left out; ``["(base)"]`` when it has none."""
    out: list[str] = []
    for k in sorted(set(base) | set(cfg)):
        if not prefix and k in IGNORED:
            continue
        a, b = base.get(k), cfg.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{prefix}{k}.")
        elif a != b and b is not None:
            out.append(f"{prefix}{k}={json.dumps(b) if not isinstance(b, str) else b}")
    return out if out or prefix else ["(base)"]


def time_to_reach(points: list[dict[str, Any]], fd: float) -> float | None:
    """CPU-minutes of the first evaluated snapshot whose FD is at most ``fd`` (None if none)."""
    for p in sorted(points, key=lambda p: p["step"]):
        if p["fd"] is not None and p["fd"] <= fd:
            return p["train_cpu_min"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="the prepared dataset every arm trains on (fold 0)")
    ap.add_argument("--work", type=Path, required=True, help="work folder: one run folder per trained arm")
    ap.add_argument("--base", type=Path, help="base TrainConfig (a run's config.json); default: TrainConfig(method=image)")
    ap.add_argument("--arm", action="append", default=[], help="NAME=key=value;key=value (repeatable)")
    ap.add_argument("--existing", action="append", default=[], help="NAME=RUN: reuse the snapshots of a run (repeatable)")
    ap.add_argument("--reference", help="the arm whose last evaluated FD is the target (default: the first --existing,"
                                        " else the first --arm)")
    ap.add_argument("--steps", type=int, default=3000, help="training steps of each --arm")
    ap.add_argument("--snapshot-every", type=int, default=1000)
    ap.add_argument("--eval-steps", type=int, nargs="+", help="snapshot steps to evaluate (default: every snapshot)")
    ap.add_argument("--n", type=int, default=256, help="images per evaluated snapshot")
    ap.add_argument("--sampler-steps", type=int, default=25, help="DDIM steps (eta 0)")
    ap.add_argument("--spacing", default="uniform", choices=["uniform", "logsnr", "karras"],
                    help="timestep grid of the evaluation sampler (the same for every arm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the same for every arm)")
    ap.add_argument("--faithfulness", action="store_true",
                    help="joint (image+mask) generators: score every pair's mask faithfulness with one real-only "
                         "reference segmenter of fold 0, trained once into WORK/reference_segmenter")
    ap.add_argument("--segmenter-steps", type=int, default=300, help="training steps of that reference segmenter")
    ap.add_argument("--name", default="busi64_image")
    ap.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--smoke", action="store_true", help="tiny phantom data and 4-step arms (checks the script)")
    args = ap.parse_args()
    arms = [parse_arm(a) for a in args.arm]
    existing = [parse_arm(e) for e in args.existing]
    for name, rest in existing:
        if len(rest) != 1 or not (Path(rest[0]) / "snapshots").is_dir():
            raise SystemExit(f"--existing {name}=...: expected NAME=RUN with RUN/snapshots/step_*")
    names = [n for n, _ in existing] + [n for n, _ in arms]
    if len(set(names)) != len(names) or not names:
        raise SystemExit("give at least one --arm or --existing, with distinct names")

    import torch

    from synthpair.config import apply_overrides, to_dict
    from synthpair.methods import get_method
    from synthpair.io import write_bytes_atomic, write_json_atomic, write_text_atomic
    from synthpair.training.trainer import TrainConfig, load_train_config, train_or_resume

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        from task_bench import prepare_once, smoke_source

        args.data = prepare_once(smoke_source(args.work, n=24), args.work / "data", 16)
        args.steps, args.snapshot_every, args.n, args.sampler_steps = 4, 2, 4, 2
    if args.data is None:
        raise SystemExit("--data is required (or --smoke)")
    # a run's config.json: keys it predates take their value of that time (TRAIN_LEGACY), not today's default
    base = load_train_config(args.base) if args.base else TrainConfig(method="image")
    base = apply_overrides(base, [f"steps={args.steps}", f"snapshot_every={args.snapshot_every}", "preview_every=0",
                                  "checkpoint_every=500"] + (["net.channels=[8,16]", "net.attention_levels=[false,true]",
                                                              "net.num_head_channels=8", "net.norm_num_groups=8",
                                                              "batch_size=4"] if args.smoke else []))
    stages = StageCosts(args.work, "convergence")
    segmenter = None
    if args.faithfulness:
        from synthpair.segmentation.reference import train_reference_segmenter

        segmenter = args.work / "reference_segmenter"
        if not (segmenter / "results.json").is_file():
            stages.run("reference segmenter: train", train_reference_segmenter, args.data, segmenter, fold=0,
                       steps=4 if args.smoke else args.segmenter_steps)
    runs: dict[str, Path] = {n: Path(rest[0]) for n, rest in existing}
    configs: dict[str, dict[str, Any]] = {}
    for name, overrides in arms:
        cfg = apply_overrides(base, overrides)  # bad keys fail here, before any training
        run = args.work / name
        configs[name] = {"overrides": overrides}
        stages.run(f"{name}: train", train_or_resume, args.data, run, cfg, progress=False)
        runs[name] = run
    results: dict[str, Any] = {}
    for name, run in runs.items():
        steps = [s for s in snapshot_steps(run) if not args.eval_steps or s in args.eval_steps]
        cache = args.work / (f"eval_{name}" + ("" if args.spacing == "uniform" else f"_{args.spacing}"))
        cfg = to_dict(load_train_config(run / "config.json"))  # legacy keys and sections as the trainer reads them
        scorer = segmenter if get_method(cfg["method"]).uses_masks else None  # image-only arms have no masks
        pts = [evaluate_snapshot(run, s, args.data, cache, args.n, args.sampler_steps, args.seed, stages, name,
                                 args.spacing, scorer) for s in steps]
        results[name] = {"run": str(run), "points": pts, **configs.get(name, {"overrides": settings_diff(to_dict(base), cfg)}),
                         "config": {k: cfg.get(k) for k in ("lr", "batch_size", "ema_decay", "warmup_steps", "amp")}
                         | {"diffusion": cfg.get("diffusion"), "net": cfg.get("net")}}
        print(f"convergence: {name}: " + ", ".join(f"step {p['step']} ({p['train_cpu_min']} CPU-min) FD {p['fd']:.1f}"
                                                    for p in pts), file=sys.stderr, flush=True)
    ref_name = args.reference or names[0]
    ref_pts = results[ref_name]["points"]
    target = max(ref_pts, key=lambda p: p["step"]) if ref_pts else None
    summary = {}
    for name, r in results.items():
        reach = time_to_reach(r["points"], target["fd"]) if target else None
        summary[name] = {"cpu_min_to_reference_fd": reach,
                         "fraction_of_reference": (reach / target["train_cpu_min"]) if reach and target else None}
    meta = {"command": "python " + " ".join(sys.argv), "data": str(args.data), "base": to_dict(base),
            "segmenter": None if segmenter is None else {"folder": str(segmenter), "steps": args.segmenter_steps,
                                                         "trained_on": "fold 0 real training pairs"},
            "n": args.n, "sampler": f"ddim-{args.sampler_steps} ({args.spacing} grid)", "seed": args.seed, "threads": args.threads,
            "reference": ref_name, "target": target, "stage_costs": stages.costs}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"convergence_{args.name}"
    write_json_atomic(stem.with_suffix(".json"), {**meta, "arms": results, "summary": summary})
    write_text_atomic(stem.with_suffix(".md"), table(meta, results, summary))
    png = figure(results, target)
    if png:
        write_bytes_atomic(stem.with_suffix(".png"), png)
    print(table(meta, results, summary))


def table(meta: dict[str, Any], results: dict[str, Any], summary: dict[str, Any]) -> str:
    t = meta["target"]
    method = meta["base"].get("method", "image")
    pairs = any("empty_mask_share" in p for r in results.values() for p in r["points"])
    lines = [f"# Generator quality per CPU-minute ({Path(meta['data']).name}, method {method})", "",
             f"One arm per recipe; every snapshot sampled with {meta['sampler']} "
             f"({meta['n']} {'pairs' if pairs else 'images'}, seeds {meta['seed']}..) and scored as "
             f"`synthpair evaluate images --fold 0` (radiomics FD/KID of the images vs the fold-0 training images); "
             f"{meta['threads']} thread(s). Training CPU-minutes from each snapshot's `cpu_seconds`.", ""]
    if pairs:
        seg = meta.get("segmenter")
        lines += ["Pair columns: *faithfulness* = mean Dice between a real-only reference segmenter's prediction on "
                  "the synthetic image and the synthetic mask" + (f" (U-Net, {seg['steps']} steps, {seg['trained_on']})"
                                                                  if seg else " (not scored: no --faithfulness)") +
                  "; *empty* = share of synthetic masks with no lesion; *area W1* / *compactness W1* = Wasserstein "
                  "distance of the lesion-area fraction / isoperimetric compactness, synthetic vs real training masks.",
                  ""]
    lines += [f"Command: `{meta['command']}`", ""]
    if t:
        lines += [f"Target: the final FD of `{meta['reference']}` — **{t['fd']:.1f}** at step {t['step']} "
                  f"({t['train_cpu_min']} CPU-min). Real-vs-real FD (half vs half): {t['fd_real_real']:.2f}.", ""]
    head = "| arm | settings | step | train CPU-min | FD | KID (± sd) | FD vs real half |"
    if pairs:
        head += " faithfulness | empty | area W1 | compactness W1 |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, d: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for name, r in results.items():
        for p in r["points"]:
            row = (f"| {name} | {'; '.join(r['overrides']) or '(base)'} | {p['step']} | {p['train_cpu_min']} | "
                   f"{p['fd']:.1f} | {p['kid']:.2f} ± {p['kid_sd']:.2f} | {p['fd_half']:.1f} |")
            if pairs:
                row += (f" {fmt(p.get('faithfulness'), 3)} | {fmt(p.get('empty_mask_share'), 3)} | "
                        f"{fmt(p.get('mask_area_w1'), 4)} | {fmt(p.get('mask_compactness_w1'), 3)} |")
            lines.append(row)
    lines += ["", "| arm | CPU-min to reach the target FD | fraction of the reference's CPU-min |", "|---|---|---|"]
    for name, s in summary.items():
        reach, frac = s["cpu_min_to_reference_fd"], s["fraction_of_reference"]
        lines.append(f"| {name} | {'not reached' if reach is None else reach} | "
                     f"{'–' if frac is None else f'{frac:.2f}'} |")
    return "\n".join(lines) + "\n"


def figure(results: dict[str, Any], target: dict[str, Any] | None) -> bytes | None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r["points"] for r in results.values()):
        return None
    faith = any(p.get("faithfulness") is not None for r in results.values() for p in r["points"])
    fig, axes = plt.subplots(1, 2 if faith else 1, figsize=(11.0 if faith else 6.0, 4.0), dpi=110, squeeze=False)
    ax = axes[0, 0]
    for name, r in results.items():
        pts = sorted(r["points"], key=lambda p: p["step"])
        ax.plot([p["train_cpu_min"] for p in pts], [p["fd"] for p in pts], marker="o", label=name)
        if faith:
            axes[0, 1].plot([p["train_cpu_min"] for p in pts], [p.get("faithfulness") for p in pts], marker="o",
                            label=name)
    if faith:
        axes[0, 1].set_xlabel("training CPU-minutes")
        axes[0, 1].set_ylabel("mask faithfulness (Dice) ↑")
        axes[0, 1].grid(alpha=0.3)
    if target:
        ax.axhline(target["fd"], color="grey", ls="--", lw=0.8, label="target FD")
    ax.set_xlabel("training CPU-minutes")
    ax.set_ylabel("FD (radiomics) vs real")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
