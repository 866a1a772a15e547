"""Minimal entry point for ``torchrun``: ``python -m synthpair.training.ddp_entry DATA OUT [--resume] [--set k=v ...]``.

Builds a TrainConfig from ``--config FILE`` and ``--set`` overrides and calls :func:`train_generator` on every
rank (used by the DDP test; the package CLI ``synthpair train`` does the same).
"""
from __future__ import annotations

import argparse
import sys

import torch.distributed as dist

from ..config import apply_overrides, load_config
from ..errors import SynthpairError
from .trainer import TrainConfig, train_generator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synthpair.training.ddp_entry")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config) if args.config else TrainConfig()
        cfg = apply_overrides(cfg, args.set)
        train_generator(args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress)
    except SynthpairError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
