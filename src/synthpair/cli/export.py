"""``synthpair export nnunet DATA --out RAW [--synthetic SYN ...]``: argument parsing only; the work is
:func:`synthpair.segmentation.nnunet_export.export_nnunet` (an nnU-Net v2 raw dataset + splits_final.json)."""
from __future__ import annotations

import argparse


def cmd_export_nnunet(args: argparse.Namespace) -> int:
    from ..segmentation.nnunet_export import NnunetExportConfig, export_nnunet
    from ..io import read_json

    cfg = NnunetExportConfig(dataset_id=args.dataset_id, name=args.name or "", folds=tuple(args.fold or ()),
                             allow_label_excess=bool(args.allow_more_labels))
    out = export_nnunet(args.data, args.out, cfg, synthetic=args.synthetic or (), overwrite=args.overwrite)
    prov = read_json(out / "synthpair_export.json")
    print(f"nnU-Net raw dataset: {out}  ({len(prov['cases'])} cases; splits_final.json with "
          f"{len(prov['folds'])} fold(s))")
    for f in prov["folds"]:
        print(f"  fold {f['fold']}: train {f['train_real']} real + {f['train_synthetic']} synthetic, "
              f"val {f['val']} real held-out")
    ident = int(args.dataset_id)
    print(f"next (GPU machine): export nnUNet_raw={out.parent}; nnUNetv2_plan_and_preprocess -d {ident} "
          f"--verify_dataset_integrity; nnUNetv2_train {ident} 2d FOLD (see docs/architecture.md, 'nnU-Net export')")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` (formats as sub-commands; ``nnunet`` for now) on the top-level subparsers."""
    sp = sub.add_parser("export", help="write a prepared folder (+ synthetic pairs) in another tool's format")
    fmt = sp.add_subparsers(dest="format", metavar="FORMAT", required=True)
    sp = fmt.add_parser("nnunet", help="nnU-Net v2 raw dataset (imagesTr/, labelsTr/, dataset.json) + "
                                       "splits_final.json: synthetic pairs only in training lists, DATA's real test "
                                       "split as each fold's validation")
    sp.add_argument("data", help="prepared dataset folder (a label-budget view exports its labelled items only)")
    sp.add_argument("--out", required=True, metavar="RAW",
                    help="nnUNet_raw folder; the dataset is written to RAW/DatasetXXX_Name")
    sp.add_argument("--synthetic", nargs="+", metavar="SYN",
                    help="synthetic folders ('synthpair generate'), checked like 'synthpair segment' (leakage, label "
                         "budget); their pairs go into the training lists of the --fold folds only")
    sp.add_argument("--fold", type=int, nargs="+", metavar="K",
                    help="folds whose training lists get the synthetic pairs (default: every fold; "
                         "splits_final.json always has every fold of DATA under its own index)")
    sp.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id, 1..999 (default 501)")
    sp.add_argument("--name", help="nnU-Net dataset name (default: DATA's name)")
    sp.add_argument("--allow-more-labels", action="store_true",
                    help="accept synthetic pairs whose models saw masks outside a fold's labelled training items")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing RAW/DatasetXXX_Name")
    sp.set_defaults(func=cmd_export_nnunet)
