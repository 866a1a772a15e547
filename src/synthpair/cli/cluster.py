"""``synthpair cluster DATA --fold F --k K --out CL``: argument parsing only; the work is
:func:`synthpair.data.clustering.cluster_dataset` (features of the fold's training pairs + KMeans)."""
from __future__ import annotations

import argparse


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..data.clustering import ClusterConfig, cluster_dataset

    cfg = ClusterConfig(k=args.k, fold=args.fold, extractor=args.extractor, weights=args.weights or "", seed=args.seed)
    res = cluster_dataset(args.data, args.out, cfg, overwrite=args.overwrite, progress=True)
    print(f"clusters: {args.out}/clusters.json  (k={res['k']}, sizes {res['sizes']}; per-cluster item lists "
          f"{args.out}/cluster_<i>.json for --set items=...)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``cluster`` on the top-level subparsers."""
    sp = sub.add_parser("cluster", help="cluster the training image+mask pairs of one fold (KMeans; paper 002 sec. 2.2)")
    sp.add_argument("data", help="prepared dataset folder")
    sp.add_argument("--out", required=True, help="output folder CL (clusters.json, cluster_<i>.json)")
    sp.add_argument("--fold", type=int, default=0, help="cluster this fold's training split (test images never)")
    sp.add_argument("--k", type=int, default=10, help="number of clusters")
    sp.add_argument("--extractor", default="handcrafted", choices=["handcrafted", "inception"],
                    help="features: handcrafted (offline default) or inception (needs --weights)")
    sp.add_argument("--weights", help="local Inception-v3 state dict (.safetensors/.pt) for --extractor inception")
    sp.add_argument("--seed", type=int, default=0, help="KMeans random_state")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing CL folder")
    sp.set_defaults(func=cmd_cluster)
