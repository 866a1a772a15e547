"""``synthpair evaluate images --real DIR --synthetic DIR`` and ``synthpair evaluate segmenter SEG [SEG ...] --data
DATA --out DIR``: argument parsing only; the work is :func:`synthpair.evaluation.evaluate_images` and
:func:`synthpair.segmentation.transfer.evaluate_transfer`."""
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


def cmd_evaluate_segmenter(args: argparse.Namespace) -> int:
    from ..segmentation.transfer import evaluate_transfer, transfer_markdown

    res = evaluate_transfer(args.seg, args.data, args.out, split=args.split, fold=args.fold, folds=args.folds,
                            device=args.device, overwrite=args.overwrite)
    print(transfer_markdown(res), end="")
    print(f"{res['kind']} results: {Path(args.out) / 'results.json'}  (table: {Path(args.out) / 'results.md'})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` (with its ``images`` and ``segmenter`` subcommands) on the top-level subparsers."""
    from ..metrics.features import EXTRACTORS

    sp = sub.add_parser("evaluate", help="generation-quality metrics of a synthetic set against real data; "
                                         "trained segmenters on another dataset (transfer test)")
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

    tp = ev.add_parser("segmenter", help="transfer test: segmenters from 'synthpair segment' on another prepared "
                                         "dataset with the same channels, labels and size (one row per SEG)")
    tp.add_argument("seg", nargs="+", metavar="SEG", help="segmentation folder(s) written by 'synthpair segment'")
    tp.add_argument("--data", required=True, help="target prepared dataset folder")
    tp.add_argument("--out", required=True, help="output folder: results.json, results.md, per_case.csv")
    tp.add_argument("--split", default="all", choices=["all", "test"],
                    help="all = every labelled item of --data (default); test = the test split of --fold")
    tp.add_argument("--fold", type=int, help="with --split test: the fold of --data whose test split is scored")
    tp.add_argument("--folds", type=int, nargs="+", metavar="K",
                    help="fold models of each SEG, averaged per case (default: all it trained)")
    tp.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    tp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    tp.set_defaults(func=cmd_evaluate_segmenter)
