"""``synthpair evaluate images --real DIR --synthetic DIR``: argument parsing only; the work is
:func:`synthpair.evaluation.evaluate_images`."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_evaluate_images(args: argparse.Namespace) -> int:
    import warnings

    from ..evaluation import EvalConfig, evaluate_images, generation_table
    from ..metrics.distribution import SampleSizeWarning

    cfg = EvalConfig(extractor=args.extractor, weights=args.weights, seed=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)  # listed under the table instead
        res = evaluate_images(args.real, args.synthetic, out=args.out, cfg=cfg, fold=args.fold)
    print(generation_table(res), end="")
    if args.out:
        print(f"generation metrics: {args.out}  (table: {Path(args.out).with_suffix('.md')})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` (with its ``images`` subcommand) on the top-level subparsers."""
    from ..metrics.features import EXTRACTORS

    sp = sub.add_parser("evaluate", help="generation-quality metrics of a synthetic set against real data")
    ev = sp.add_subparsers(dest="what", metavar="WHAT", required=True)
    ip = ev.add_parser("images", help="FD/KID (+ real-vs-real baseline), paired metrics, diversity, masks, memorisation")
    ip.add_argument("--real", required=True, help="prepared real dataset folder (its training split with --fold)")
    ip.add_argument("--synthetic", required=True, help="synthetic folder written by 'synthpair generate'")
    ip.add_argument("--out", help="write the results JSON here (and the table next to it as .md)")
    ip.add_argument("--extractor", default="radiomics", choices=EXTRACTORS,
                    help="feature extractor for FD/KID (default radiomics: offline, no weights)")
    ip.add_argument("--weights", help="local Inception-v3 state dict (.safetensors/.pt) for --extractor inception")
    ip.add_argument("--fold", type=int, help="use only the training split of this fold of --real")
    ip.add_argument("--seed", type=int, default=0, help="seed of the real half split and the sampled pairs")
    ip.set_defaults(func=cmd_evaluate_images)
