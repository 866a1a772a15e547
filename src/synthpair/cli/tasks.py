"""``synthpair anomaly | denoise | segdiff | translate | guidance``: the survey's other tasks (issue 14), each
beside its non-diffusion baseline. Each command resolves its frozen config (defaults ← ``--config FILE`` ←
``--set k=v`` ← the flags), prints it with ``--dry-run``, or runs the task's library function
(:mod:`synthpair.evaluation.tasks`) and renders ``OUT/report.html`` (:mod:`synthpair.report.tasks`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def _run(args: argparse.Namespace, cls: type, fn: Callable[..., Any], flags: dict[str, Any]) -> int:
    from ..config import to_dict
    from ..io import dumps_json
    from ..report.tasks import write_task_report
    from .main import _config_from_args, _with

    cfg = _config_from_args(cls, args.config, args.set, section=args.command)
    cfg = _with(cfg, **flags)
    if args.dry_run:
        print(dumps_json(to_dict(cfg)), end="")
        return 0
    fn(args.data, args.out, cfg, overwrite=args.overwrite, progress=not args.no_progress)
    page = write_task_report(args.out)
    print(f"{args.command} results: {Path(args.out) / 'results.md'}  (report: {page})")
    return 0


def cmd_anomaly(args: argparse.Namespace) -> int:
    from ..evaluation.tasks.anomaly import AnomalyConfig, run_anomaly

    return _run(args, AnomalyConfig, run_anomaly, {
        "fold": args.fold, "seed": args.seed, "train_items": args.train_items, "t_star": args.t_star,
        "noise_types": args.noise, "generator.steps": args.steps, "device": args.device})


def cmd_denoise(args: argparse.Namespace) -> int:
    from ..evaluation.tasks.denoise import DenoiseConfig, run_denoise

    return _run(args, DenoiseConfig, run_denoise, {
        "fold": args.fold, "seed": args.seed, "noise": args.noise, "segmenter": args.segmenter,
        "conditional": True if args.conditional else None, "generator.steps": args.steps, "device": args.device})


def cmd_segdiff(args: argparse.Namespace) -> int:
    from ..evaluation.tasks.segdiff import SegDiffConfig, run_segdiff

    return _run(args, SegDiffConfig, run_segdiff, {
        "fold": args.fold, "seed": args.seed, "k": args.k, "fusion": args.fusion, "generator.steps": args.steps,
        "device": args.device})


def cmd_translate(args: argparse.Namespace) -> int:
    from ..evaluation.tasks.translate import TranslateConfig, run_translate

    return _run(args, TranslateConfig, run_translate, {
        "fold": args.fold, "seed": args.seed, "source": args.source, "target": args.target,
        "generator.steps": args.steps, "device": args.device})


def cmd_guidance(args: argparse.Namespace) -> int:
    from ..evaluation.tasks.guidance import GuidanceConfig, run_guidance

    return _run(args, GuidanceConfig, run_guidance, {
        "fold": args.fold, "seed": args.seed, "classes": args.classes, "keep": args.keep,
        "cg_scales": args.cg_scales, "cfg_scales": args.cfg_scales, "generator.steps": args.steps,
        "device": args.device})


def add_parser(sub: Any) -> None:
    def common(sp: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], int]) -> None:
        sp.add_argument("data", help="prepared dataset folder ('synthpair prepare'; a 'synthpair budget' view works)")
        sp.add_argument("--out", required=True, help="output folder (results.json/md, report.html, figures/)")
        sp.add_argument("--fold", type=int, help="fold of DATA: train on its training side, evaluate on its test "
                                                 "items (default 0)")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--steps", type=int, help="training steps of the diffusion network (generator.steps)")
        sp.add_argument("--device", help="auto | cpu | cuda | cuda:<i>")
        sp.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        sp.add_argument("--config", metavar="FILE", help="JSON config file (whole config or its section)")
        sp.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. --set generator.net.channels=[32,64] (repeatable)")
        sp.set_defaults(func=fn)

    sp = sub.add_parser("anomaly", help="anomaly detection: AnoDDPM (partial noising to t*, Gaussian/simplex noise, "
                                        "reconstruction error) vs a convolutional autoencoder and a supervised "
                                        "classifier; trains on normal (empty-mask) items")
    sp.add_argument("--train-items", metavar="FILE", help="JSON list of training items (all normal) for the "
                                                          "generative models (default: every normal training item)")
    sp.add_argument("--t-star", type=int, nargs="+", help="noising timesteps to sweep (default 100 200 300 500)")
    sp.add_argument("--noise", nargs="+", help="arms: gaussian simplex simplex-on-gaussian (default all)")
    common(sp, cmd_anomaly)

    sp = sub.add_parser("denoise", help="denoising: diffusion started at the observation's noise level (and a "
                                        "conditional variant) vs DnCNN and non-local means; Gaussian, Poisson and "
                                        "speckle noise; RMSE/PSNR/SSIM and a fixed segmenter's Dice")
    sp.add_argument("--noise", nargs="+", metavar="MODEL:LEVEL",
                    help="noise specs, e.g. gaussian:0.1 poisson:30 speckle:0.2 (levels in [0, 1] intensity units; "
                         "poisson: peak photon count)")
    sp.add_argument("--segmenter", metavar="SEG", help="a 'synthpair segment DATA --folds F' folder: its Dice on the "
                                                       "denoised test images")
    sp.add_argument("--conditional", action="store_true", help="also train the conditional (noisy→clean) diffusion")
    common(sp, cmd_denoise)

    sp = sub.add_parser("segdiff", help="diffusion as the segmenter (MedSegDiff-style): the mask denoised conditioned "
                                        "on the image, K samples fused, their spread as uncertainty; vs the MONAI U-Net "
                                        "with the same data and budget")
    sp.add_argument("--k", type=int, nargs="+", help="ensemble sizes K to report (default 1 2 4 8)")
    sp.add_argument("--fusion", nargs="+", help="mean majority staple (default all)")
    common(sp, cmd_segdiff)

    sp = sub.add_parser("translate", help="modality conversion: conditional diffusion (source channels "
                                          "concatenated) vs a pix2pix-style U-Net (L1); NMAE/PSNR/SSIM on held-out "
                                          "patients")
    sp.add_argument("--source", nargs="+", required=False, help="source channel names, e.g. T1 FLAIR")
    sp.add_argument("--target", nargs="+", required=False, help="target channel names, e.g. T1c")
    common(sp, cmd_translate)

    sp = sub.add_parser("guidance", help="classifier guidance (noise-aware classifier's gradient) vs classifier-free "
                                         "guidance: class faithfulness of a clean classifier and FD")
    sp.add_argument("--classes", help="class of each item: 'prefix' (id before the first '_', default), "
                                      "'field:NAME' (a dataset.json item field) or a JSON file {item: class}")
    sp.add_argument("--keep", nargs="+", help="classes to use (default every class with training items)")
    sp.add_argument("--cg-scales", type=float, nargs="+", help="classifier-guidance scales")
    sp.add_argument("--cfg-scales", type=float, nargs="+", help="classifier-free guidance scales")
    common(sp, cmd_guidance)


__all__ = ["add_parser"]
