"""``synthpair experiment pig``: PIG vs joint vs mask2image at equal numbers of synthetic pairs (paper 004, the
"+N pairs" shape of Table 2), on one fold.

Stages (each skipped when its output is complete; rerunning the command resumes):

1. ``train``: the PIG guider (``--method pig``) with the net/steps/lr/seed of the given mask2image run, whose
   image model it reuses frozen (``pig.image_from``, ``pig.freeze_image=true``) → ``OUT/gen/pig``.
2. ``gen``: ``max(N)`` pairs from pig, joint and mask2image (real training-split masks, ``--masks real``), all
   scored for mask faithfulness with the same real-only reference segmenter → ``OUT/syn/<method>_<N>``; the
   smaller N are the first N kept pairs (seed order) of that folder (pair i depends only on its seed, so this is
   what ``generate --n N`` keeps).
3. ``seg``: the segmenter trained on real only and on real + N synthetic pairs with ratio mixing
   ``ratio = N / n_real`` (a batch slot is synthetic with probability N / (n_real + N), the share of the
   synthetic pairs in the pooled set) → ``OUT/seg/<method>_<N>``; the real-only run given by ``--real-only``
   is reused when its config and data are exactly the ones this experiment would use.
4. ``table``: ``OUT/results.{json,md}``: faithfulness, mask area, Dice mean ± sd over the held-out images,
   Δ Dice vs real-only with a paired bootstrap 95% interval over held-out images, CPU seconds per stage.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

METHODS = ("pig", "joint", "mask2image")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared dataset folder (e.g. runs/mc/busi64)")
    p.add_argument("--out", required=True, help="experiment folder")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--n", type=int, nargs="+", default=[100, 300], help="numbers of synthetic pairs (default 100 300)")
    p.add_argument("--mask2image", default="runs/mc/bench/gen/mask2image",
                   help="finished mask2image run: PIG's (frozen) image model and the mask2image baseline")
    p.add_argument("--joint", default="runs/mc/bench/gen/joint", help="finished joint run (baseline)")
    p.add_argument("--pig", default="", help="use this finished pig run instead of training OUT/gen/pig")
    p.add_argument("--segmenter", default="runs/mc/bench/reference_segmenter",
                   help="real-only 'synthpair segment' folder of the same fold that scores mask faithfulness")
    p.add_argument("--real-only", default="runs/mc/bench/seg/real_only",
                   help="existing real-only segment run to reuse when its config matches ('' = always train)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of every generator (eta 0)")
    p.add_argument("--seg-steps", type=int, default=600)
    p.add_argument("--seg-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="segmenter seed")
    p.add_argument("--stages", nargs="+", default=["train", "gen", "seg", "table"],
                   choices=["train", "gen", "seg", "table"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="restrict gen/seg to these generators (to run them as parallel jobs)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the planned runs, then exit")


# config.json keys that may differ when resuming or when stages / generators run as separate jobs
RESUME_FREE = ("stages", "methods", "no_progress", "n")


def _seg_config(args: argparse.Namespace, ratio: float):
    from ..segmentation.train import SegmentConfig

    return SegmentConfig(steps=args.seg_steps, batch_size=args.seg_batch, seed=args.seed, folds=(args.fold,),
                         ratio=ratio)


def _timed(record: dict, key: str, fn, *a, **kw):
    """Run fn, add its wall and CPU seconds (this process) to ``record[key]``."""
    import time

    w, c = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    rec = record.setdefault(key, {"wall_s": 0.0, "cpu_s": 0.0})
    rec["wall_s"] += time.perf_counter() - w
    rec["cpu_s"] += time.process_time() - c
    return out


def subset_synthetic(src: Path, dst: Path, n: int) -> Path:
    """Write ``dst``: the first ``n`` pairs (manifest order = seed order) of the synthetic folder ``src``, with
    their manifest lines, PNGs and a ``dataset.json`` listing only them (``subset_of`` records the source)."""
    from ..errors import fail
    from ..synthesis.manifest import read_manifest, subset_folder

    if (dst / "manifest.jsonl").is_file():
        return dst
    lines = read_manifest(src, allow_empty=False)
    if len(lines) < n:
        raise fail(f"{src}: holds {len(lines)} pairs, fewer than the {n} asked for; generate more first")
    keep = lines[:n]
    info: dict[str, Any] = {"subset_of": {"folder": str(src.resolve()), "first": n}}
    vals = [r["faithfulness"] for r in keep if r.get("faithfulness") is not None]
    if vals:
        from ..metrics.faithfulness import summarize_faithfulness

        info["faithfulness"] = summarize_faithfulness(vals)
    return subset_folder(src, dst, [r["id"] for r in keep], files="copy", info=info)


def _stage_train(args: argparse.Namespace, out: Path, times: dict) -> Path:
    import dataclasses

    from ..methods.pig import PigConfig
    from ..networks.export import export_complete
    from ..training.trainer import load_train_config, train_or_resume

    if args.pig:
        return Path(args.pig)
    run = out / "gen" / "pig"
    if export_complete(run):
        return run
    m2i = load_train_config(Path(args.mask2image) / "config.json")
    cfg = dataclasses.replace(m2i, method="pig", checkpoint_every=100,
                              pig=PigConfig(image_from=str(args.mask2image), freeze_image=True))
    _timed(times, "train_pig", train_or_resume, args.data, run, cfg, progress=not args.no_progress)
    return run


def _runs(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    return {"pig": Path(args.pig) if args.pig else out / "gen" / "pig", "joint": Path(args.joint),
            "mask2image": Path(args.mask2image)}


def _stage_gen(args: argparse.Namespace, out: Path, times: dict) -> None:
    from ..segmentation.reference import generate_scored
    from ..synthesis.generate import GenerateConfig

    runs, nmax = _runs(args, out), max(args.n)
    for m in args.methods:
        cfg = GenerateConfig(n=nmax, steps=args.sample_steps, seed=0, segmenter=args.segmenter, masks="real",
                             sampler="ddim", spacing="uniform")  # the study's sampler (bench/results/pig_busi64.md)
        full = out / "syn" / f"{m}_{nmax}"
        full.mkdir(parents=True, exist_ok=True)
        _timed(times, f"gen_{m}", generate_scored, runs[m], full, cfg, progress=not args.no_progress)
        for n in sorted(set(args.n) - {nmax}):
            subset_synthetic(full, out / "syn" / f"{m}_{n}", n)


def _real_only(args: argparse.Namespace, out: Path, times: dict) -> Path:
    """The real-only SEG folder: ``--real-only`` if its config and data match exactly, else trained here."""
    from ..config import to_dict
    from ..io import read_json
    from ..segmentation.train import segment

    cfg = _seg_config(args, 0.0)
    want = to_dict(cfg)
    if args.real_only and (Path(args.real_only) / "results.json").is_file():
        old = read_json(Path(args.real_only) / "config.json", "segment config.json")
        old.pop("_type", None)
        res = read_json(Path(args.real_only) / "results.json", "results.json")
        same = all(old.get(k, v) == v for k, v in want.items()) and not (set(old) - set(want))
        same = same and Path(res["data"]).resolve() == Path(args.data).resolve() and not res.get("synthetic")
        if same:
            return Path(args.real_only)
    seg = out / "seg" / "real_only"
    if not (seg / "results.json").is_file():
        _timed(times, "seg_real_only", segment, args.data, seg, cfg, progress=not args.no_progress, overwrite=True)
    return seg


def _stage_seg(args: argparse.Namespace, out: Path, times: dict) -> None:
    from ..data.dataset import PreparedDataset
    from ..segmentation.train import segment

    n_real = len(PreparedDataset.open(args.data).split(args.fold)[0])
    if set(args.methods) == set(METHODS):
        _real_only(args, out, times)
    for n in sorted(args.n):
        for m in args.methods:
            seg = out / "seg" / f"{m}_{n}"
            if (seg / "results.json").is_file():
                continue
            _timed(times, f"seg_{m}_{n}", segment, args.data, seg, _seg_config(args, n / n_real),
                   synthetic_dir=out / "syn" / f"{m}_{n}", progress=not args.no_progress, overwrite=True)


def _bootstrap_delta(a: dict[str, float], b: dict[str, float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(b - a) over the common held-out ids."""
    import numpy as np

    ids = sorted(set(a) & set(b))
    d = np.array([b[i] - a[i] for i in ids])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (reps, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _stage_table(args: argparse.Namespace, out: Path, times: dict) -> None:
    import numpy as np

    from ..io import read_json, write_json_atomic, write_text_atomic
    from ..synthesis.manifest import read_manifest

    real = _real_only(args, out, times)
    rr = read_json(real / "results.json", "results.json")
    base = {r["id"]: float(r["dice"]) for r in rr["per_case"]}
    rows = [{"setting": "real only", "n_synthetic": 0, "dice_mean": rr["summary"]["dice"]["mean"],
             "dice_sd": rr["summary"]["dice"]["sd"], "n_test": rr["summary"]["dice"]["n"], "seg": str(real)}]
    for n in sorted(args.n):
        for m in METHODS:
            seg, syn = out / "seg" / f"{m}_{n}", out / "syn" / f"{m}_{n}"
            if not (seg / "results.json").is_file():
                continue
            r = read_json(seg / "results.json", "results.json")
            lines = read_manifest(syn)
            faith = np.array([ln["faithfulness"] for ln in lines if ln.get("faithfulness") is not None], float)
            area = np.array([ln["mask_area"] for ln in lines], float)
            per = {x["id"]: float(x["dice"]) for x in r["per_case"]}
            lo, hi = _bootstrap_delta(base, per)
            mix = r["folds"][0]["mixing"]
            rows.append({"setting": f"+{m} {n}", "method": m, "n_synthetic": n, "ratio": mix.get("ratio"),
                         "p_synthetic_per_slot": mix.get("p_synthetic_per_slot"),
                         "faithfulness_mean": float(faith.mean()) if faith.size else None,
                         "faithfulness_sd": float(faith.std(ddof=1)) if faith.size > 1 else None,
                         "mask_area_mean": float(area.mean()), "mask_area_sd": float(area.std(ddof=1)),
                         "dice_mean": r["summary"]["dice"]["mean"], "dice_sd": r["summary"]["dice"]["sd"],
                         "n_test": r["summary"]["dice"]["n"],
                         "delta_dice": r["summary"]["dice"]["mean"] - rows[0]["dice_mean"],
                         "delta_ci95": [lo, hi], "seg": str(seg), "synthetic": str(syn)})
    all_times: dict = {}
    for path in sorted(out.glob("times_*.json")):  # CPU/wall seconds of stages run as separate jobs
        all_times.update(read_json(path, "times"))
    all_times.update(times)
    write_json_atomic(out / "results.json", {"experiment": "pig", "data": str(Path(args.data).resolve()),
                                              "fold": args.fold, "sample_steps": args.sample_steps,
                                              "seg_steps": args.seg_steps, "seg_batch": args.seg_batch,
                                              "rows": rows, "times": all_times})

    def f(v: float | None, nd: int = 3) -> str:
        return "–" if v is None else f"{v:.{nd}f}"

    md = ["| setting | faithfulness (mean ± sd) | mask area px (mean ± sd) | Dice (mean ± sd) | Δ Dice [95% CI] |",
          "|---|---|---|---|---|",
          f"| real only | – | – | {f(rows[0]['dice_mean'])} ± {f(rows[0]['dice_sd'])} | – |"]
    for r in rows[1:]:
        md.append(f"| {r['setting']} (ratio {r['ratio']:.3f}) | {f(r['faithfulness_mean'])} ± {f(r['faithfulness_sd'])} "
                  f"| {r['mask_area_mean']:.0f} ± {r['mask_area_sd']:.0f} | {f(r['dice_mean'])} ± {f(r['dice_sd'])} "
                  f"| {r['delta_dice']:+.3f} [{r['delta_ci95'][0]:+.3f}, {r['delta_ci95'][1]:+.3f}] |")
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Check the arguments before anything is written → the experiment's ``config.json``."""
    from ..config import args_config
    from ..data.dataset import PreparedDataset
    from ..errors import fail
    from ..networks.export import export_complete

    PreparedDataset.open(args.data).split(args.fold)
    if min(args.n) < 1:
        raise fail(f"--n {args.n}: numbers of synthetic pairs must be >= 1")
    runs = _runs(args, Path(args.out))
    need = []  # finished runs this command reads (the pig run is trained here unless --pig names one)
    if "train" in args.stages:
        need.append("pig" if args.pig else "mask2image")
    if "gen" in args.stages:
        need += [m for m in args.methods if m != "pig" or args.pig or "train" not in args.stages]
    for m in dict.fromkeys(need):
        if not export_complete(runs[m]):
            raise fail(f"{runs[m]}: no finished {m} run (RUN/export); pass --{m} with "
                       f"a finished 'synthpair train --method {m}' folder")
    if "gen" in args.stages and not (Path(args.segmenter) / "results.json").is_file():
        raise fail(f"{args.segmenter}: not a finished 'synthpair segment' folder (the faithfulness scorer); pass "
                   f"--segmenter")
    cfg = args_config(args, drop=("out",))
    for k in ("data", "mask2image", "joint", "pig", "segmenter", "real_only"):
        cfg[k] = str(Path(cfg[k]).resolve()) if cfg[k] else ""
    return cfg


def plan(args: argparse.Namespace) -> list[str]:
    """The runs this command would make (``--dry-run``), each marked done when its output is complete."""
    from ..networks.export import export_complete

    out, nmax = Path(args.out), max(args.n)
    lines = []
    if "train" in args.stages:
        run = Path(args.pig) if args.pig else out / "gen" / "pig"
        lines.append(f"train: pig guider over the frozen image model of {args.mask2image} -> {run}"
                     f"{' (done)' if export_complete(run) else ''}")
    for m in args.methods if "gen" in args.stages else ():
        d = out / "syn" / f"{m}_{nmax}"
        lines.append(f"gen: {nmax} {m} pairs (DDIM {args.sample_steps}) -> {d}"
                     f"{' (done)' if (d / 'dataset.json').is_file() else ''}")
    if "seg" in args.stages:
        lines.append(f"seg: real only (reused from {args.real_only} when its config matches) -> {out / 'seg' / 'real_only'}")
        lines += [f"seg: real + {n} {m} pairs, {args.seg_steps} steps x batch {args.seg_batch} -> "
                  f"{out / 'seg' / f'{m}_{n}'}" for n in sorted(args.n) for m in args.methods]
    if "table" in args.stages:
        lines.append(f"table: {out / 'results.json'}, {out / 'results.md'}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..config import claim_config
    from ..io import dumps_json

    cfg = resolve(args)
    if args.dry_run:
        print(dumps_json(cfg), end="")
        print("\n".join(plan(args)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    claim_config(out / "config.json", cfg, what="experiment", ignore=RESUME_FREE)
    times: dict = {}
    if "train" in args.stages:
        _stage_train(args, out, times)
    if "gen" in args.stages:
        _stage_gen(args, out, times)
    if "seg" in args.stages:
        _stage_seg(args, out, times)
    if "table" in args.stages:
        _stage_table(args, out, times)
    elif times:
        from ..io import read_json, write_json_atomic

        path = out / f"times_{'_'.join(args.stages)}_{'_'.join(args.methods)}.json"
        old = read_json(path, "times") if path.is_file() else {}
        write_json_atomic(path, {**old, **times})
    return 0
