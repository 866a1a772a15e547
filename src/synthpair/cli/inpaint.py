"""``synthpair inpaint`` and ``synthpair harmonise``: argument parsing only; the work is
:func:`synthpair.synthesis.inpaint.inpaint` and :func:`synthpair.synthesis.harmonise.harmonise`."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_inpaint(args: argparse.Namespace) -> int:
    from .main import _config_from_args, _with
    from ..synthesis.inpaint import InpaintConfig, inpaint

    cfg = _config_from_args(InpaintConfig, args.config, args.set, section="inpaint")
    cfg = _with(cfg, mode=args.mode, steps=args.steps, jump_length=args.jump_length, resample=args.resample,
                eta=args.eta, dilate_px=args.dilate_px, per_image=args.per_image, seed=args.seed, items=args.items,
                batch_size=args.batch, device=args.device,
                require_interior=False if args.allow_border else None)
    out = inpaint(args.data, args.generator, args.out, cfg, clusters=args.clusters,
                  progress=not args.no_progress, overwrite=args.overwrite)
    print(f"inpainted pairs: {out}  (manifest: {Path(out) / 'manifest.jsonl'})")
    return 0


def cmd_harmonise(args: argparse.Namespace) -> int:
    from .main import _config_from_args, _with
    from ..synthesis.harmonise import HarmoniseConfig, harmonise

    cfg = _config_from_args(HarmoniseConfig, args.config, args.set, section="harmonise")
    cfg = _with(cfg, strength=args.strength, steps=args.steps, seed=args.seed, batch_size=args.batch,
                colour_match=True if args.colour_match else None, style_weights=args.style_weights, margin=args.margin,
                device=args.device)
    out = harmonise(args.synthetic, args.generator, args.out, cfg, progress=not args.no_progress,
                    overwrite=args.overwrite)
    print(f"harmonised pairs: {out}  (summary: {Path(out) / 'dataset.json'} 'harmonise')")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``inpaint`` and ``harmonise`` on the top-level subparsers."""
    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True)
        sp.add_argument("--seed", type=int)
        sp.add_argument("--steps", type=int)
        sp.add_argument("--batch", type=int)
        sp.add_argument("--device", help="auto | cpu | cuda")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        sp.add_argument("--no-progress", action="store_true")
        sp.add_argument("--config", metavar="FILE", help="JSON config file (whole config or its section)")
        sp.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override a config value")

    sp = sub.add_parser("inpaint", help="RePaint dilated lesions of real training images with joint generator(s) "
                                        "(seed 002)")
    sp.add_argument("data", help="prepared dataset folder (the generators' dataset)")
    sp.add_argument("--generator", nargs="+", required=True,
                    help="one joint_cluster run, several joint runs (one per cluster) or one joint run")
    sp.add_argument("--clusters", help="CLUSTERS folder or clusters.json (records the source cluster)")
    sp.add_argument("--mode", choices=["reference", "fast"],
                    help="reference: DDPM, 250 steps, jump 10, resample 10; fast: DDIM, 50 steps, jump 5, resample 3")
    sp.add_argument("--dilate-px", type=float, help="lesion dilation in pixels of the ORIGINAL image (default 20)")
    sp.add_argument("--jump-length", type=int)
    sp.add_argument("--resample", type=int)
    sp.add_argument("--eta", type=float, help="DDIM eta of the fast mode (default 1)")
    sp.add_argument("--per-image", type=int, help="pairs per source image (default 1)")
    sp.add_argument("--items", help="all | N | id,id,... (training items of the generator's fold)")
    sp.add_argument("--allow-border", action="store_true", help="keep masks that touch the inpainted region border")
    common(sp)
    sp.set_defaults(func=cmd_inpaint)

    sp = sub.add_parser("harmonise", help="re-noise and denoise inpainted images with the mask kept (seam removal)")
    sp.add_argument("synthetic", help="synthetic folder (from 'synthpair inpaint')")
    sp.add_argument("--generator", required=True, help="joint (or joint_cluster) generator run")
    sp.add_argument("--strength", type=float, help="fraction of the chain re-noised (default 0.3; 0 = unchanged)")
    sp.add_argument("--margin", type=int, help="re-synthesise only the inpainted region grown by this many px "
                                               "(default: the whole image)")
    sp.add_argument("--colour-match", action="store_true", help="match mean/sd per channel to the source image")
    sp.add_argument("--style-weights", help="local torchvision VGG16 state dict: add the Gram style step")
    common(sp)
    sp.set_defaults(func=cmd_harmonise)
