"""``synthpair pool --out POOL DATA1:"prompt" DATA2:"prompt" ... [--channels 1] [--size 64]
[--exclude-test TARGET_DATA:fold]``: argument parsing only; the work is :func:`synthpair.data.pool.build_pool`."""
from __future__ import annotations

import argparse


def _parse_exclude(specs: list[str]) -> dict[str, int]:
    from ..errors import fail

    out: dict[str, int] = {}
    for spec in specs or []:
        path, sep, fold = spec.rpartition(":")
        if not sep or not path or not fold.strip().lstrip("-").isdigit():
            raise fail(f"--exclude-test {spec!r}: expected DATA:FOLD, e.g. --exclude-test runs/busi64:0")
        out[path] = int(fold)
    return out


def cmd_pool(args: argparse.Namespace) -> int:
    from ..data.pool import build_pool, parse_source

    out = build_pool(args.out, [parse_source(s) for s in args.sources], channels=args.channels, size=args.size,
                     exclude_test=_parse_exclude(args.exclude_test), overwrite=args.overwrite)
    print(f"pool dataset: {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pool`` on the top-level subparsers."""
    sp = sub.add_parser("pool", help="merge prepared datasets (with prompts) into one pre-training folder")
    sp.add_argument("sources", nargs="+", metavar="DATA[:PROMPT]",
                    help="prepared folder and its prompt, e.g. runs/kvasir64:\"endoscopy, colon, polyp\"; "
                         "{finding} (item id prefix, else label name), {name}, {modality} are filled per item")
    sp.add_argument("--out", required=True)
    sp.add_argument("--channels", type=int, default=1, choices=[1, 3],
                    help="convert every image to this many channels (RGB→gray by luminance; default 1)")
    sp.add_argument("--size", type=int, help="required image size (default: the first dataset's)")
    sp.add_argument("--exclude-test", action="append", default=[], metavar="DATA:FOLD",
                    help="a target dataset enters with only the training split of FOLD (repeatable)")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_pool)
