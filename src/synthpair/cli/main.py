"""``synthpair <command>``: prepare, budget, train, generate, segment, run, demo, report, replay, evaluate, pool, cluster,
inpaint, harmonise, experiment, export, reader-study, anomaly, denoise, segdiff, translate, guidance.

Each command parses its arguments, builds a frozen config (defaults ← ``--config FILE`` ← ``--set k=v``)
and calls one library function. Errors the user can fix print one line (``synthpair: error: …``) and exit
with status 2; an interrupt exits 130 and says how to resume.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _config_from_args(cls: type, config_file: str | None, overrides: Sequence[str], section: str | None = None,
                      base: Any = None, preset: str | None = None) -> Any:
    """defaults (or ``base``) ← named preset (its ``section``) ← JSON file (whole config or its ``section``) ←
    ``--set`` overrides."""
    from ..config import apply_overrides, from_dict, preset_overrides, to_dict
    from ..io import read_json

    cfg = base if base is not None else cls()
    if preset is not None:
        cfg = apply_overrides(cfg, preset_overrides(preset, section or ""))
    if config_file:
        data = read_json(config_file, "config file")
        if section is not None and isinstance(data, dict) and section in data and isinstance(data[section], dict):
            data = data[section]
        data = {k: v for k, v in dict(data).items() if k != "_type"}
        merged = {**to_dict(cfg), **data}
        cfg = from_dict(cls, merged, where=str(config_file))
    return apply_overrides(cfg, list(overrides or []))


def _with(cfg: Any, **changes: Any) -> Any:
    """Replace fields whose CLI value was given (None = not given), type-checked like ``--set``."""
    from ..config import apply_overrides

    import json

    items = [f"{k}={json.dumps(v)}" for k, v in changes.items() if v is not None]
    return apply_overrides(cfg, items) if items else cfg


# ---------------------------------------------------------------- commands

def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import PrepareConfig, prepare_dataset

    cfg = _config_from_args(PrepareConfig, args.config, args.set, section="prepare")
    cfg = _with(cfg, size=args.size, folds=args.folds, seed=args.seed, modality=args.modality, axis=args.axis,
                empty_fraction=args.empty_fraction,
                foreground_only=True if args.foreground_only else None,
                dedup=False if args.no_dedup else None, dedup_threshold=args.dedup_threshold,
                colour_normalisation=args.colour_norm, unlabelled=args.unlabelled, splits_file=args.splits,
                splits_key=args.splits_key)
    out = prepare_dataset(args.src, args.out, cfg, overwrite=args.overwrite)
    print(f"prepared dataset: {out}")
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    from ..data.budget import BudgetConfig, make_budget_view

    cfg = BudgetConfig(fold=args.fold or 0, n=args.n or 0, seed=args.seed or 0, subset=args.subset or "")
    out = make_budget_view(args.data, args.out, cfg, overwrite=args.overwrite)
    print(f"label-budget view: {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.trainer import TrainConfig, load_train_config, train_generator

    saved = Path(args.out) / "config.json"
    # --resume starts from the run's own config, so overrides given at the start need not be repeated
    base = load_train_config(saved) if args.resume and saved.is_file() else None
    if base is None and args.method:  # the method first: it decides which sections --set may reach (prompt.*, ...)
        base = _with(TrainConfig(), method=args.method)
    cfg = _config_from_args(TrainConfig, args.config, args.set, section="train", base=base, preset=args.preset)
    cfg = _with(cfg, method=args.method, fold=args.fold, steps=args.steps)
    out = train_generator(args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress,
                          tensorboard=args.tensorboard)
    if out is not None:
        print(f"generator run: {out}  (weights: {Path(out) / 'export'})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..segmentation.reference import generate_scored
    from ..synthesis.generate import GenerateConfig

    cfg = _config_from_args(GenerateConfig, args.config, args.set, section="generate", preset=args.preset)
    cfg = _with(cfg, n=args.n, sampler=args.sampler, steps=args.steps, spacing=args.spacing, seed=args.seed,
                batch_size=args.batch, eta=args.eta, min_area=args.min_area, keep_empty=True if args.keep_empty else None,
                masks=args.masks, reference=args.reference, guidance=args.guidance,
                min_faithfulness=args.min_faithfulness, segmenter=args.segmenter, per_real=args.per_real,
                aug_prompts=args.aug_prompts, prompts=args.prompt, aug_prompt=args.aug_prompt, snapshot=args.snapshot)
    out = generate_scored(args.run, args.out, cfg)  # trains the --segmenter auto reference segmenter first
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns here; rank 0 reports
        print(f"synthetic pairs: {out}  (manifest: {Path(out) / 'manifest.jsonl'})")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ..synthesis.generate import verify_pair

    same = verify_pair(args.synthetic, args.id)
    print(f"{args.id}: {'reproduced bit for bit' if same else 'DIFFERS from the stored files'}")
    return 0 if same else 1


def _parse_mix(text: str | None) -> dict[str, Any]:
    """``--mix`` grammar → SegmentConfig fields (:func:`synthpair.segmentation.mixing.parse_mix`, generated from
    the mixing registry)."""
    from ..segmentation.mixing import parse_mix

    return parse_mix(text)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..errors import fail
    from ..segmentation.train import SegmentConfig, segment

    cfg = _config_from_args(SegmentConfig, args.config, args.set, section="segment")
    mix = _parse_mix(args.mix)
    folds = tuple(args.folds) if args.folds else None
    cfg = _with(cfg, model=args.model, steps=args.steps, folds=list(folds) if folds else None,
                augment=args.augment, n_real=args.n_real, subset_seed=args.subset_seed,
                allow_label_excess=True if args.allow_more_labels else None, min_faithfulness=args.min_faithfulness,
                **({"features.generator": args.generator} if args.generator else {}), **mix)
    if args.synthetic is None and cfg.needs_synthetic:
        raise fail(f"--mix {args.mix or cfg.mixing}: needs --synthetic SYN (a folder written by 'synthpair generate')")
    if args.synthetic is not None and not args.mix and not cfg.needs_synthetic:
        cfg = _with(cfg, ratio=0.5)
    results = segment(args.data, args.out, cfg, synthetic_dir=args.synthetic, tensorboard=args.tensorboard)
    from ..report.tables import format_summary

    print(format_summary(results))
    print(f"segmentation results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import RunConfig, run_pipeline

    cfg = _config_from_args(RunConfig, args.config, args.set)
    if args.dry_run:
        from ..io import dumps_json
        from ..config import to_dict

        print(dumps_json(to_dict(cfg)), end="")
        return 0
    run_pipeline(args.src, args.out, cfg, overwrite=args.overwrite)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..pipeline import demo_config, run_pipeline

    cfg = _config_from_args(type(demo_config()), args.config, args.set, base=demo_config())
    if args.dry_run:
        from ..io import dumps_json
        from ..config import to_dict

        print(dumps_json(to_dict(cfg)), end="")
        return 0
    run_pipeline(None, args.out, cfg, overwrite=args.overwrite)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.build import build_report

    path = build_report(args.run_dir)
    html = Path(args.run_dir) / "report" / "report.html"
    print(f"tables: {path}")
    print(f"report: {html if html.is_file() else path}")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthpair", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--threads", metavar="N|auto",
                   help="CPU threads for PyTorch: a number (fixed: bit-for-bit reruns), or 'auto' = the cores other "
                        "processes leave free, re-read every 15 s while training (default: $SYNTHPAIR_THREADS, "
                        "else auto)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def preset(sp: argparse.ArgumentParser) -> None:
        from ..config import PRESETS

        sp.add_argument("--preset", metavar="NAME", help="a paper's named settings, under --config/--set: "
                        + "; ".join(f"{k}: {v['about']}" for k, v in sorted(PRESETS.items())))

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE", help="JSON config file (whole config or its section)")
        sp.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. --set steps=500 (repeatable; unknown keys are errors)")

    sp = sub.add_parser("prepare", help="read a dataset folder and write a prepared folder with case-level splits")
    sp.add_argument("src", help="images/+masks/ folder, nnU-Net raw folder, or NIfTI images/+labels/ folder")
    sp.add_argument("--out", required=True)
    sp.add_argument("--size", type=int)
    sp.add_argument("--folds", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--modality", help="US, MR, CT, endoscopy, … (default: auto)")
    sp.add_argument("--axis", type=int, help="slicing axis for volumes (default 2)")
    sp.add_argument("--foreground-only", action="store_true", help="volumes: keep only slices with foreground")
    sp.add_argument("--empty-fraction", type=float, help="with --foreground-only: fraction of empty slices to keep")
    sp.add_argument("--no-dedup", action="store_true", help="skip near-duplicate grouping")
    sp.add_argument("--dedup-threshold", type=float)
    sp.add_argument("--colour-norm", choices=["none", "reinhard"],
                    help="RGB only: Reinhard colour normalisation to the dataset's mean L*a*b* statistics")
    sp.add_argument("--unlabelled", metavar="DIR",
                    help="folder of images WITHOUT masks, added as unlabelled training-side items (default: "
                         "SRC/unlabelled/ when present)")
    sp.add_argument("--splits", metavar="FILE",
                    help="fixed splits: {test, pool, train_subsets} by stem (e.g. label-scarce.json) or nnU-Net "
                         "splits_final.json, instead of --folds")
    sp.add_argument("--splits-key", metavar="KEY", help="dataset inside a split file that holds several")
    sp.add_argument("--overwrite", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("budget", help="label-budget view: N labelled training items, the rest of the training "
                                       "side unlabelled (a prepared folder every stage can use)")
    sp.add_argument("data", help="prepared dataset folder")
    sp.add_argument("--out", required=True)
    sp.add_argument("--fold", type=int, help="fold of DATA (default 0)")
    sp.add_argument("--n", type=int, help="labelled items: a seeded, nested subset of the fold's training items")
    sp.add_argument("--seed", type=int, help="seed of the --n subset (default 0)")
    sp.add_argument("--subset", help="a named subset recorded by 'prepare --splits FILE', e.g. seed0_N16")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_budget)

    sp = sub.add_parser("train", help="train a generator on the training split of one fold")
    sp.add_argument("data", help="prepared dataset folder")
    sp.add_argument("--method", help="generator method (default joint)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--fold", type=int)
    sp.add_argument("--steps", type=int)
    sp.add_argument("--resume", action="store_true",
                    help="continue exactly from out/checkpoints/state.pt (starts from out/config.json)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.txt)")
    preset(sp)
    common(sp)
    sp.add_argument("--tensorboard", action="store_true",
                    help="also write the logged scalars and preview grids as TensorBoard events to OUT/tensorboard "
                         "(needs the tensorboard package: pip install 'synthpair[tensorboard]')")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("generate", help="sample image+mask pairs from a trained generator (one seed per pair)")
    sp.add_argument("run", help="generator run folder (written by 'synthpair train')")
    sp.add_argument("--n", type=int, help="number of pairs to keep")
    sp.add_argument("--out", required=True)
    sp.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++2m"],
                    help="dpm++2m (default: DPM-Solver++(2M), a deterministic second-order multistep ODE solver "
                         "meant for few steps, 10-25; ignores --eta), ddim (deterministic with --eta 0) or ddpm "
                         "(ancestral; needs many steps). One network evaluation per step for all three")
    sp.add_argument("--steps", type=int, help="sampling steps (default 20)")
    sp.add_argument("--spacing", choices=["uniform", "logsnr", "karras"],
                    help="which --steps timesteps are sampled: logsnr (default: evenly in log-SNR, DPM-Solver's "
                         "choice for small images), uniform (evenly in t, the grid before issue 12) or karras (EDM, "
                         "rho 7); bench/results/sampler_fast_busi64_image_step6000_spacing.md measures them")
    sp.add_argument("--eta", type=float)
    sp.add_argument("--seed", type=int, help="seed of the first pair; pair i uses seed+i")
    sp.add_argument("--batch", type=int)
    sp.add_argument("--min-area", type=int, help="drop pairs whose mask has fewer pixels")
    sp.add_argument("--keep-empty", action="store_true", help="keep pairs with empty/small masks")
    sp.add_argument("--masks", help="mask-conditioned generators: real | augmented | joint:RUN (default real)")
    sp.add_argument("--reference", choices=["random", "own"],
                    help="dsdm reference image: a random training image or the mask's own image (default random)")
    sp.add_argument("--guidance", type=float,
                    help="classifier-free guidance scale s (1 = conditional; default 3 for CFG-trained dsdm)")
    sp.add_argument("--min-faithfulness", type=float, help="drop pairs whose mask faithfulness (Dice) is lower")
    sp.add_argument("--segmenter", help="reference segmenter for faithfulness: auto | off | SEG folder (real-only "
                                        "'synthpair segment' of the generator's fold)")
    preset(sp)
    common(sp)
    sp.add_argument("--per-real", type=int, metavar="N",
                    help="controlnet generators: N synthetic versions of every real training pair (EMIT-Diff)")
    sp.add_argument("--aug-prompts", choices=["random", "none"],
                    help="with --per-real: append a random augmentation phrase per sample (default) or none")
    sp.add_argument("--prompt", action="append", metavar="TEXT",
                    help="prompt generators: the prompt to sample for (repeat for several; cycled over the seeds); "
                         "default: the run's training prompts, e.g. --prompt 'US, breast, malignant'")
    sp.add_argument("--snapshot", type=int, metavar="STEP",
                    help="sample from RUN/snapshots/step_STEP (train --set snapshot_every=N) instead of RUN/export")
    sp.add_argument("--aug-prompt", metavar="PHRASE",
                    help="prompt generators: an augmentation phrase appended to every prompt, e.g. 'low brightness'")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("replay", help="regenerate one synthetic pair from its manifest line and compare")
    sp.add_argument("synthetic", help="synthetic folder")
    sp.add_argument("id", help="pair id (manifest 'id')")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("segment", help="train segmenters on real (+synthetic) data, evaluate on held-out real")
    sp.add_argument("data", help="prepared dataset folder")
    sp.add_argument("--out", required=True)
    sp.add_argument("--synthetic", help="synthetic folder from 'synthpair generate'")
    from ..segmentation.mixing import mix_help

    sp.add_argument("--mix", help=mix_help())
    sp.add_argument("--min-faithfulness", type=float,
                    help="use only synthetic pairs whose manifest mask faithfulness (Dice) is at least this")
    sp.add_argument("--augment", help="paired augmentation: flip_rot (default), none, affine, random_contrast, "
                                      "random_gamma, random_brightness, random_noise, random_resolution, "
                                      "random_mirror, random_rotate, random_scale, deepstack (nnU-Net-style chain)")
    sp.add_argument("--n-real", type=int, help="train on a seeded, nested subset of N real training items (0 = all)")
    sp.add_argument("--subset-seed", type=int, help="seed of the --n-real subset (default 0)")
    sp.add_argument("--allow-more-labels", action="store_true",
                    help="accept synthetic pairs whose models saw masks of items outside this run's labelled "
                         "training items (paper replications); the row is marked")
    sp.add_argument("--model", help="unet, attention_unet, basic_unet, segresnet, swin_unetr; diffusion-feature "
                                    "segmenters (need --generator): ddpm_unet (the generator's U-Net trained end to "
                                    "end), ddpm_unet_skip / ddpm_unet_caa (+ frozen features by skip connections / "
                                    "cross-attention), ddpm_pixel (per-pixel classifier on frozen features)")
    sp.add_argument("--generator", metavar="RUN",
                    help="generator run (e.g. --method image on DATA with its unlabelled images) whose frozen U-Net "
                         "gives the features of a ddpm_* model (= --set features.generator=RUN)")
    sp.add_argument("--folds", type=int, nargs="+")
    sp.add_argument("--steps", type=int)
    common(sp)
    sp.add_argument("--tensorboard", action="store_true",
                    help="also write the loss / learning rate per step and the test summary as TensorBoard events "
                         "to OUT/fold_<k>/tensorboard (needs the tensorboard package)")
    sp.set_defaults(func=cmd_segment)

    sp = sub.add_parser("run", help="prepare → train → generate → segment (real vs real+synthetic) → report")
    sp.add_argument("src", help="dataset source folder")
    sp.add_argument("--out", required=True)
    sp.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    sp.add_argument("--overwrite", action="store_true", help="start over in a non-empty --out")
    common(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("demo", help="the whole pipeline on embedded phantoms, CPU-sized")
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--dry-run", action="store_true")
    sp.add_argument("--overwrite", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("report", help="(re)build the report of a run folder")
    sp.add_argument("run_dir")
    sp.set_defaults(func=cmd_report)

    from .pool import add_parser as add_pool

    add_pool(sub)
    from .evaluate import add_parser as add_evaluate

    add_evaluate(sub)

    from .inpaint import add_parser as add_inpaint

    add_inpaint(sub)

    from .experiment import add_parser as add_experiment

    add_experiment(sub)

    from .cluster import add_parser as add_cluster

    add_cluster(sub)

    from .export import add_parser as add_export

    add_export(sub)

    from .reader_study import add_parser as add_reader_study

    add_reader_study(sub)

    from .tasks import add_parser as add_tasks

    add_tasks(sub)  # anomaly, denoise, segdiff, translate, guidance (the survey's other tasks)
    return p


def _version() -> str:
    from .. import __version__

    return f"synthpair {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import SynthpairError

    parser = build_parser()
    args = parser.parse_args(argv)
    restore = _sigterm_as_interrupt()
    try:
        _set_threads(args.threads)
        return int(args.func(args) or 0)
    except SynthpairError as err:
        print(f"synthpair: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthpair: interrupted; rerun the same command (with --resume for 'train') to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        restore()
        _close_distributed()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """``kill`` (SIGTERM: a scheduler's time limit, a supervisor stopping the job) ends a command the way Ctrl-C
    does — KeyboardInterrupt: the trainer saves its checkpoint, half-written output folders are removed, exit code
    EXIT_INTERRUPTED — instead of dying mid-write. Only when SIGTERM has its default action and in the main thread
    (an embedding program's own handler is left alone). Returns the function that restores the previous handler."""
    import signal
    import threading

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _set_threads(threads: str | None) -> None:
    """``--threads N|auto`` (else ``$SYNTHPAIR_THREADS``) → :func:`synthpair.env.configure_threads`."""
    from ..env import configure_threads

    configure_threads(threads)


def _close_distributed() -> None:
    """Under torchrun, leave the process group cleanly (the trainer joins it on first use)."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
