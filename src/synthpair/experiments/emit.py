"""``synthpair experiment emit-diff DATA --out DIR``: EMIT-Diff (paper 000) end to end, resumable by stage.

Stages (each writes its own folder under DIR; a stage whose output is complete is skipped, an interrupted one
resumes; ``--stages`` runs a subset):

1. ``pretrain`` (only with ``--pretrain DATA2[:PROMPT] ...``): pool the given datasets with
   ``synthpair.data.pool`` and train the ``prompt`` base on the pool (paper sec. 4.2, RadImageNet stand-in).
   The pool must not contain any test case of the target's evaluated folds (checked by case id and by image
   content; one-line error otherwise).
2. ``base`` — per fold: the ``prompt`` base on the target fold's training split (fine-tuned from the pretrained
   base when there is one: ``--finetune full|lora``; sec. 4.3).
3. ``control`` — per fold: the ControlNet edge branch over the frozen base (method ``controlnet``).
4. ``generate`` — per fold: ``max(--n)`` synthetic versions of every real training pair from its edge map and
   prompt + a random augmentation phrase (sec. 4.4, Algorithm 1 line 1).
5. ``table`` — per fold: the segmentation table shaped like Table 2 (backbone ``--table-model``, AttentionUnet
   as in the paper): Baseline (no augmentation, the paper's baseline), Baseline + flip_rot (synthpair's
   default), each classic augmentation, DeepStack, and ours = patch mixing (Algorithm 1: each real image's
   patches replaced by one of its synthetic versions, ``alpha``, ``patch``) without other augmentation, and
   ours + flip_rot. Every row trains ``--seg-steps`` optimizer steps with the same batch size and seed
   (compute-matched).
6. ``ablations`` — per fold, at ``--ablation-steps`` (a reduced budget, equal within each table): number of
   synthetic versions n, alpha, patch size, backbones (each with and without ours) and loss mixing
   (``patch_loss``); each table has its own baseline row at the same budget.
7. ``report`` — ``results.json`` / ``results.md``: mean ± sd over the held-out cases of all run folds (Dice,
   precision, recall in %, HD95/ASSD in the dataset's unit) and, per row, the paired per-case Dice difference
   to the table's baseline with the Wilcoxon signed-rank p-value, so differences within the case-to-case
   noise are visible as such.

Top-level imports stay light (argparse, pathlib); the library is imported inside :func:`run`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

STAGES = ("pretrain", "base", "control", "generate", "table", "ablations", "report")
CLASSIC = ("random_contrast", "random_gamma", "random_brightness", "random_noise", "random_resolution",
           "random_mirror", "random_rotate", "random_scale")
PAPER_NAMES = {"random_contrast": "RandomContrast", "random_gamma": "RandomGamma",
               "random_brightness": "RandomBrightness", "random_noise": "RandomNoise",
               "random_resolution": "RandomResolution", "random_mirror": "RandomMirror",
               "random_rotate": "RandomRotate", "random_scale": "RandomScale", "deepstack": "DeepStack"}
# keys of config.json that may change when resuming (they do not change any result)
RESUME_FREE = ("stages", "device", "progress")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="prepared dataset folder (or a source folder, prepared into OUT/data at --size)")
    p.add_argument("--out", required=True, help="experiment folder (rerun the same command to resume)")
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--size", type=int, default=None, help="image size (checked against a prepared DATA)")
    p.add_argument("--gen-steps", type=int, default=600, help="optimizer steps of the prompt base")
    p.add_argument("--control-steps", type=int, default=None, help="steps of the ControlNet branch (default --gen-steps)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="steps of the pool pre-training (default --gen-steps)")
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--net-channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--sample-steps", type=int, default=15, help="DDIM steps of the per-real generation")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale on the prompt")
    p.add_argument("--seg-steps", type=int, default=300, help="segmenter steps of the Table-2 rows")
    p.add_argument("--ablation-steps", type=int, default=None, help="segmenter steps of the ablations (default --seg-steps)")
    p.add_argument("--seg-batch", type=int, default=16)
    p.add_argument("--table-model", default="attention_unet", help="segmentation backbone of the main table")
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 5, 10], help="synthetic versions per real pair")
    p.add_argument("--alpha", type=float, default=0.5, help="patch-mixing alpha of 'ours' in the main table")
    p.add_argument("--patch", type=int, default=8, help="patch size of 'ours' in the main table")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    p.add_argument("--patches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--models", nargs="+", default=["unet", "attention_unet", "segresnet"])
    p.add_argument("--augmentations", nargs="+", default=list(CLASSIC) + ["deepstack"],
                   help="classic augmentation rows of the main table")
    p.add_argument("--pretrain", nargs="+", default=[], metavar="DATA2[:PROMPT]",
                   help="datasets pooled for pre-training the prompt base (prompt template per dataset)")
    p.add_argument("--finetune", choices=["full", "lora"], default="full",
                   help="with --pretrain: fine-tune the whole base or LoRA adapters")
    p.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override for the prompt base, e.g. 'prompt.template=US, breast, {finding}'")
    p.add_argument("--control-set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override for the ControlNet branch, e.g. control.edges.sigma=2")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the planned runs, then exit")


# --------------------------------------------------------------------------------------------- helpers
def _log(out: Path, msg: str) -> None:
    import sys
    import time

    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
    print(f"emit-diff: {msg}", file=sys.stderr)
    with open(out / "log.txt", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def _check_config(out: Path, cfg: dict[str, Any]) -> None:
    """Write ``config.json`` or refuse to resume with other result-relevant settings (one-line error)."""
    from ..config import claim_config

    claim_config(out / "config.json", cfg, what="experiment", ignore=RESUME_FREE)


def _train(data: Path, run: Path, cfg: Any, progress: bool) -> Path:
    """Train (or resume, or skip when the export exists) one generator run."""
    from ..training.trainer import train_or_resume

    return train_or_resume(data, run, cfg, progress=progress)


def _train_config(method: str, fold: int, steps: int, args: argparse.Namespace, overrides: list[str],
                  **changes: Any) -> Any:
    import dataclasses

    from ..config import apply_overrides
    from ..networks.unet import UNetConfig
    from ..training.trainer import TrainConfig

    ch = tuple(int(c) for c in args.net_channels)
    net = UNetConfig(channels=ch, attention_levels=tuple([False] * (len(ch) - 1) + [True]),
                     num_head_channels=min(32, ch[-1]), norm_num_groups=min(16, ch[0]))
    cfg = TrainConfig(method=method, fold=fold, steps=steps, batch_size=args.gen_batch, seed=args.seed, net=net,
                      preview_every=0, preview_n=8, preview_steps=10, checkpoint_every=100, log_every=25,
                      device=args.device)
    cfg = dataclasses.replace(cfg, **changes)
    return apply_overrides(cfg, list(overrides)) if overrides else cfg


def subset_synthetic(src: Path, dst: Path, n: int) -> Path:
    """A synthetic folder with only versions ``< n`` of each real pair (for the n ablation); skipped when
    complete. Files are hard links (copies where links are impossible); manifest and dataset.json filtered."""
    from ..synthesis.manifest import subset_folder

    return subset_folder(src, dst, lambda r: int(r.get("version") or 0) < n, files="link", overwrite=True,
                         info={"subset_of": str(src.resolve()), "versions_per_real": n})


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("_")


def _segment(data: Path, out: Path, syn: Path | None, fold: int, steps: int, args: argparse.Namespace,
             **kw: Any) -> dict[str, Any]:
    """One segmentation setting on one fold (skipped when its results.json exists)."""
    from ..io import read_json
    from ..segmentation.train import SegmentConfig, segment

    if (out / "results.json").is_file():
        return read_json(out / "results.json", "results.json")
    cfg = SegmentConfig(steps=steps, batch_size=args.seg_batch, folds=(fold,), seed=args.seed, device=args.device,
                        **kw)
    return segment(data, out, cfg, synthetic_dir=syn, progress=args.progress, overwrite=out.exists())


# ------------------------------------------------------------------------------------------ the stages
def _pool_stage(args: argparse.Namespace, out: Path, data: Path, folds: list[int]) -> Path | None:
    """Pool + pre-train (stage 1) → the pretrained base RUN, or None without --pretrain."""
    if not args.pretrain:
        return None
    from ..data.dataset import PreparedDataset
    from ..errors import fail

    from ..data.pool import build_pool, parse_source

    sources = [parse_source(str(s)) for s in args.pretrain]
    target = [src for src, _ in sources if Path(src).resolve() == data.resolve()]
    if target and len(folds) > 1:
        raise fail("--pretrain includes the target dataset: its pool can exclude the test split of one fold only; "
                   "run one experiment per fold")
    pool = out / "pretrain" / "pool"
    if not (pool / "dataset.json").is_file():
        ds = PreparedDataset.open(data)
        build_pool(pool, sources, channels=ds.channels, size=ds.size[0],
                   exclude_test={str(target[0]): folds[0]} if target else None, progress=args.progress)
    check_pool_leakage(PreparedDataset.open(pool), PreparedDataset.open(data), folds)
    run = out / "pretrain" / "base"
    cfg = _train_config("prompt", 0, args.pretrain_steps or args.gen_steps, args, args.base_set)
    _train(pool, run, cfg, args.progress)
    return run


def check_pool_leakage(pool: Any, target: Any, folds: list[int]) -> None:
    """Refuse a pre-training pool that holds a test case of the target's folds ``folds``: by case id, or by
    identical image content (the same scan prepared twice under other names). One-line error."""
    import hashlib

    import numpy as np

    from ..errors import fail

    test_ids = sorted({i for k in folds for i in target.split(k)[1]})
    test_cases = {target.case_of(i) for i in test_ids}
    pool_cases = {pool.case_of(i) for i in pool.ids}
    bad = sorted(test_cases & pool_cases)
    if not bad and pool.size == target.size and pool.channels == target.channels:
        def digests(ds: Any, ids: list[str]) -> dict[str, str]:
            out: dict[str, str] = {}
            for j in range(0, len(ids), 256):
                imgs, _ = ds.load(ids[j:j + 256])
                for i, im in zip(ids[j:j + 256], imgs):
                    out[hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()] = i
            return out

        tdig = digests(target, test_ids)
        pdig = digests(pool, list(pool.ids))
        bad = sorted(target.case_of(tdig[h]) for h in set(tdig) & set(pdig))
    if bad:
        raise fail(f"{pool.root}: the pre-training pool contains {len(bad)} test case(s) of the target folds "
                   f"{folds} (e.g. {bad[0]}); pool only data disjoint from the evaluation split")


def _fold_generator(args: argparse.Namespace, out: Path, data: Path, fold: int, pretrained: Path | None,
                    stages: set[str]) -> tuple[Path, Path, Path]:
    """Stages 2-4 for one fold → (base RUN, control RUN, SYN)."""
    from ..synthesis.generate import GenerateConfig, generate

    fdir = out / f"fold_{fold}"
    base, control, syn = fdir / "base", fdir / "control", fdir / "synthetic"
    if "base" in stages:
        extra: dict[str, Any] = {}
        over = list(args.base_set)
        if pretrained is not None:
            extra["init_from"] = str(pretrained)
            if args.finetune == "lora":
                over.append("lora.enabled=true")
        _log(out, f"fold {fold}: prompt base ({args.gen_steps} steps) -> {base}")
        _train(data, base, _train_config("prompt", fold, args.gen_steps, args, over, **extra), args.progress)
    if "control" in stages:
        import dataclasses

        from ..networks.controlnet import ControlConfig

        steps = args.control_steps or args.gen_steps
        _log(out, f"fold {fold}: ControlNet branch ({steps} steps) -> {control}")
        cfg = _train_config("controlnet", fold, steps, args, [],
                            control=dataclasses.replace(ControlConfig(), base_run=str(base.resolve())))
        if args.control_set:
            from ..config import apply_overrides

            cfg = apply_overrides(cfg, list(args.control_set))
        _train(data, control, cfg, args.progress)
    if "generate" in stages:
        n = max(args.n)
        _log(out, f"fold {fold}: {n} synthetic version(s) per real training pair -> {syn}")
        syn.mkdir(parents=True, exist_ok=True)
        generate(control, syn, GenerateConfig(per_real=n, steps=args.sample_steps, guidance=args.guidance,
                                              batch_size=64, seed=args.seed, device=args.device, segmenter="off",
                                              sampler="ddim", spacing="uniform"),  # the study's sampler
                 progress=args.progress)
    return base, control, syn


def table_settings(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], str | None]]:
    """Rows of the main table: (row name, SegmentConfig changes, synthetic: None | 'full')."""
    ours = {"mixing": "patch", "alpha": args.alpha, "patch": args.patch}
    rows: list[tuple[str, dict[str, Any], str | None]] = [
        ("Baseline (no augmentation)", {"augment": "none"}, None),
        ("Baseline + flip_rot (synthpair default)", {"augment": "flip_rot"}, None)]
    rows += [(PAPER_NAMES.get(a, a), {"augment": a}, None) for a in args.augmentations]
    rows += [(f"EMIT-Diff (ours): patch a={args.alpha:g} p={args.patch}", {**ours, "augment": "none"}, "full"),
             (f"EMIT-Diff (ours) + flip_rot", {**ours, "augment": "flip_rot"}, "full")]
    return [(n, {"model": args.table_model, **kw}, s) for n, kw, s in rows]


def ablation_settings(args: argparse.Namespace) -> dict[str, list[tuple[str, dict[str, Any], str | None]]]:
    """Tables of the ablations: name → rows (row name, SegmentConfig changes, synthetic 'full' | 'n=K' | None)."""
    m = args.table_model
    base = ("Baseline (no augmentation)", {"model": m, "augment": "none"}, None)
    ours = {"model": m, "augment": "none", "mixing": "patch", "alpha": args.alpha, "patch": args.patch}
    nmax = max(args.n)
    tables = {
        "n (synthetic versions per real pair)": [base] + [
            (f"ours n={n}", ours, "full" if n == nmax else f"n={n}") for n in sorted(set(args.n))],
        "alpha (real fraction of patches)": [base] + [
            (f"ours alpha={a:g}", {**ours, "alpha": a}, "full") for a in args.alphas],
        "patch size": [base] + [(f"ours patch={p}", {**ours, "patch": p}, "full") for p in args.patches],
        "backbone": [r for model in args.models for r in (
            (f"{model} baseline", {"model": model, "augment": "none"}, None),
            (f"{model} + ours", {**ours, "model": model}, "full"))],
        "mixing (image vs loss)": [base, ("ours: patch mixing of images", ours, "full"),
                                   ("ours: patch mixing of the loss", {**ours, "mixing": "patch_loss"}, "full")],
    }
    return tables


def _setting_key(kw: dict[str, Any], syn: str | None, steps: int) -> str:
    import json

    return json.dumps({"kw": kw, "syn": syn, "steps": steps}, sort_keys=True)


def _run_rows(args: argparse.Namespace, out: Path, data: Path, fold: int, rows: list, steps: int,
              syn_full: Path, cache: dict[str, Path], execute: bool = True) -> dict[str, Path]:
    """Run (or reuse) every row's segmentation on ``fold`` → row name → SEG folder (``execute=False``: only
    the rows already complete). Rows with the same setting (model, mixing, alpha, patch, augmentation,
    synthetic folder, steps) share one SEG folder, also across processes and reruns."""
    from ..io import write_json_atomic

    done: dict[str, Path] = {}
    for name, kw, syn in rows:
        key = _setting_key(kw, syn, steps)
        if key not in cache:
            seg_dir = out / f"fold_{fold}" / "seg" / _slug(f"{steps}steps_{kw.get('model')}_{name}_{syn or 'real'}")
            same = _same_setting(seg_dir.parent, key)
            if same is not None:  # this setting already ran under another row's name (maybe in another process)
                done[name] = cache[key] = same
                continue
            if (seg_dir / "results.json").is_file():
                write_json_atomic(seg_dir / SETTING_FILE, {"key": key})  # (folders of earlier versions)
                done[name] = cache[key] = seg_dir
                continue
            if not execute:
                continue
            if syn is not None and not (syn_full / "dataset.json").is_file():
                continue  # the generate stage has not finished yet (rows with synthetic data run later)
            syn_dir = None
            if syn == "full":
                syn_dir = syn_full
            elif syn is not None:
                syn_dir = subset_synthetic(syn_full, syn_full.parent / f"synthetic_{syn.replace('=', '')}",
                                           int(syn.split("=")[1]))
            lock = seg_dir.parent / f".{seg_dir.name}.lock"
            if not claim(lock):
                continue  # another process of this experiment is training this row
            try:
                _log(out, f"fold {fold}: segment '{name}' ({steps} steps) -> {seg_dir.name}")
                _segment(data, seg_dir, syn_dir, fold, steps, args, **kw)
                write_json_atomic(seg_dir / SETTING_FILE, {"key": key})
            finally:
                lock.unlink(missing_ok=True)
            cache[key] = seg_dir
        done[name] = cache[key]
    return done


SETTING_FILE = "experiment_setting.json"


def _same_setting(seg_root: Path, key: str) -> Path | None:
    """A finished SEG folder of this experiment with the same setting key (written after each row), or None."""
    import json

    if not seg_root.is_dir():
        return None
    for f in sorted(seg_root.glob(f"*/{SETTING_FILE}")):
        try:
            if json.loads(f.read_text()).get("key") == key and (f.parent / "results.json").is_file():
                return f.parent
        except (OSError, ValueError):
            continue
    return None


def claim(lock: Path) -> bool:
    """Claim a segmentation row for this process (lock file holding the pid, created exclusively), so several
    processes of one experiment can share the rows; a lock whose process is gone is taken over."""
    import os

    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
                os.kill(pid, 0)
                return False  # alive: its row
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def summarise_table(rows: dict[str, list[Path]], baseline: str, against: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """Row name → SEG folders (one per fold) → {"rows": {name: summary}, "paired": {name: Dice vs its reference
    row}, "distance_unit"}; cases pooled over folds (each held out once). The reference row is ``baseline``
    unless ``against`` names another (backbone table: each "+ ours" row against its own backbone)."""
    from ..io import read_json
    from ..metrics.statistics import paired_comparison, summarize_rows

    per_case: dict[str, list[dict[str, Any]]] = {}
    unit = "pixel"
    for name, dirs in rows.items():
        per_case[name] = []
        for d in dirs:
            res = read_json(Path(d) / "results.json", "results.json")
            unit = res.get("distance_unit", unit)
            per_case[name] += res["per_case"]
    summaries = {name: summarize_rows(rs) for name, rs in per_case.items()}
    against = {name: (against or {}).get(name, baseline) for name in per_case if name != baseline}
    paired = {name: {**paired_comparison(per_case[ref], per_case[name], "dice"), "against": ref}
              for name, ref in against.items()}
    return {"rows": summaries, "paired": paired, "baseline": baseline, "distance_unit": unit,
            "seg_dirs": {n: [str(d) for d in ds] for n, ds in rows.items()}}


def table_markdown(title: str, table: dict[str, Any]) -> str:
    """A Table-2-shaped markdown table + a ΔDice vs baseline column (paired, Wilcoxon)."""
    from ..report.tables import METRICS

    unit = table["distance_unit"]
    cols = [m for m in METRICS if m != "iou"]
    heads = {"dice": "Dice ↑", "precision": "Precision ↑", "recall": "Recall ↑", "pixel_accuracy": "Pixel acc. ↑",
             "hd95": f"HD95 ({unit}) ↓", "assd": f"ASSD ({unit}) ↓"}
    lines = [f"### {title}", "", "| Method | " + " | ".join(heads[c] for c in cols) + " | ΔDice vs baseline (p) | n |",
             "|" + "---|" * (len(cols) + 3)]
    for name, summ in table["rows"].items():
        cells = []
        for c in cols:
            s = summ[c]
            k = 100.0 if c in ("dice", "precision", "recall", "pixel_accuracy") else 1.0
            cells.append("–" if s["mean"] is None else f"{s['mean'] * k:.2f} ± {s['sd'] * k:.2f}")
        pc = table["paired"].get(name)
        if pc is None:
            delta = "(baseline)"
        elif pc["mean_diff"] is None:
            delta = "–"
        else:
            p = "n/a" if pc["p_value"] is None else f"{pc['p_value']:.3f}"
            ref = "" if pc.get("against", table["baseline"]) == table["baseline"] else f" vs {pc['against']}"
            delta = f"{pc['mean_diff'] * 100:+.2f} (p={p}){ref}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} | {summ['dice']['n']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- run
def resolve(args: argparse.Namespace) -> tuple[Path, bool, list[int], dict[str, Any]]:
    """Check the arguments before anything is written → (DATA, whether it must be prepared into OUT/data first,
    folds, the ``config.json`` of the experiment)."""
    from ..config import args_config
    from ..errors import fail

    data = Path(args.data)
    prepared = (data / "dataset.json").is_file()
    if not prepared and not (data / "images").is_dir():
        raise fail(f"{data}: neither a prepared dataset (dataset.json) nor a raw source (images/ + masks/); pass "
                   f"one of them")
    if min(args.n) < 1 or not 0 < args.alpha < 1 or any(not 0 <= a <= 1 for a in args.alphas):
        raise fail("--n must be >= 1 and alphas in [0, 1] (ours' --alpha strictly inside)")
    folds = sorted(set(args.folds))
    if prepared:
        check_prepared(data, args.size, folds)
    cfg = args_config(args)
    cfg["data"] = str((data if prepared else Path(args.out) / "data").resolve())
    return data, not prepared, folds, cfg


def check_prepared(data: Path, size: int | None, folds: list[int]) -> None:
    """One-line error when DATA is not at ``--size`` or lacks one of the folds."""
    from ..data.dataset import PreparedDataset
    from ..errors import fail

    ds = PreparedDataset.open(data)
    if size is not None and tuple(ds.size) != (size, size):
        raise fail(f"{data}: prepared at {ds.size[0]}x{ds.size[1]}, not --size {size}; drop --size or "
                   f"prepare the data at that size")
    for k in folds:
        ds.split(k)


def plan(args: argparse.Namespace, folds: list[int], needs_prepare: bool) -> list[str]:
    """The runs this command would make (``--dry-run``), each marked done when its output is complete."""
    from ..networks.export import export_complete

    out, stages = Path(args.out), set(args.stages)

    def mark(done: bool) -> str:
        return " (done)" if done else ""

    lines = []
    if needs_prepare:
        lines.append(f"prepare: {args.data} -> {out / 'data'} at {args.size or 64} px{mark((out / 'data' / 'dataset.json').is_file())}")
    if args.pretrain and "pretrain" in stages:
        lines.append(f"pretrain: pool of {len(args.pretrain)} dataset(s) -> {out / 'pretrain' / 'pool'}; prompt base "
                     f"{args.pretrain_steps or args.gen_steps} steps -> {out / 'pretrain' / 'base'}"
                     f"{mark(export_complete(out / 'pretrain' / 'base'))}")
    abl = ablation_settings(args)
    for k in folds:
        f = out / f"fold_{k}"
        if "base" in stages:
            lines.append(f"fold {k}: prompt base {args.gen_steps} steps -> {f / 'base'}{mark(export_complete(f / 'base'))}")
        if "control" in stages:
            lines.append(f"fold {k}: ControlNet branch {args.control_steps or args.gen_steps} steps -> {f / 'control'}"
                         f"{mark(export_complete(f / 'control'))}")
        if "generate" in stages:
            lines.append(f"fold {k}: {max(args.n)} synthetic version(s) per real training pair, DDIM "
                         f"{args.sample_steps} steps -> {f / 'synthetic'}{mark((f / 'synthetic' / 'dataset.json').is_file())}")
        if "table" in stages:
            lines.append(f"fold {k}: main table, {len(table_settings(args))} rows x {args.seg_steps} segmenter steps "
                         f"-> {f / 'seg'}")
        if "ablations" in stages:
            lines += [f"fold {k}: ablation '{t}', {len(rows)} rows x {args.ablation_steps or args.seg_steps} steps"
                      for t, rows in abl.items()]
    if "report" in stages:
        lines.append(f"report: {out / 'results.json'}, {out / 'results.md'}")
    return lines


def run(args: argparse.Namespace) -> int:
    import time

    from ..io import dumps_json, ensure_dir, write_json_atomic, write_text_atomic

    data, needs_prepare, folds, cfg = resolve(args)
    if args.dry_run:
        print(dumps_json(cfg), end="")
        print("\n".join(plan(args, folds, needs_prepare)))
        return 0
    out = ensure_dir(Path(args.out))
    if needs_prepare:
        from ..data.prepare import PrepareConfig, prepare_dataset

        prepared = out / "data"
        if not (prepared / "dataset.json").is_file():
            prepare_dataset(data, prepared, PrepareConfig(size=args.size or 64), progress=args.progress)
        data = prepared
        check_prepared(data, args.size, folds)
    _check_config(out, cfg)
    stages = set(args.stages)
    t0 = time.time()
    abl_steps = args.ablation_steps or args.seg_steps

    pretrained = _pool_stage(args, out, data, folds) if "pretrain" in stages else (
        out / "pretrain" / "base" if (out / "pretrain" / "base" / "export").is_dir() else None)
    main_rows = table_settings(args)
    abl = ablation_settings(args)
    main_dirs: dict[str, list[Path]] = {n: [] for n, _, _ in main_rows}
    abl_dirs: dict[str, dict[str, list[Path]]] = {t: {n: [] for n, _, _ in rows} for t, rows in abl.items()}
    for k in folds:
        _, _, syn = _fold_generator(args, out, data, k, pretrained, stages)
        cache: dict[str, Path] = {}
        for name, d in _run_rows(args, out, data, k, main_rows, args.seg_steps, syn, cache,
                                 execute="table" in stages).items():
            main_dirs[name].append(d)
        for title, rows in abl.items():
            for name, d in _run_rows(args, out, data, k, rows, abl_steps, syn, cache,
                                     execute="ablations" in stages).items():
                abl_dirs[title][name].append(d)
    if "report" in stages:
        results: dict[str, Any] = {"experiment": "emit-diff", "config": cfg, "folds": folds,
                                   "seg_steps": args.seg_steps, "ablation_steps": abl_steps, "tables": {}}
        md = [f"# EMIT-Diff experiment ({data.name}, folds {folds})", "",
              f"Segmenter: {args.table_model}, {args.seg_steps} steps (ablations {abl_steps}), batch {args.seg_batch}; "
              f"generator: prompt base {args.gen_steps} steps, ControlNet {args.control_steps or args.gen_steps} steps, "
              f"DDIM {args.sample_steps} steps, guidance {args.guidance:g}, n = {max(args.n)} versions per real pair. "
              "Mean ± sd over held-out cases; ΔDice = paired mean difference to the table's baseline "
              "(Wilcoxon signed-rank p).", ""]
        if all(len(v) == len(folds) for v in main_dirs.values()):
            t = summarise_table(main_dirs, main_rows[0][0])
            results["tables"]["main"] = t
            md.append(table_markdown("Table 2 shape: augmentations vs EMIT-Diff", t))
        for title, rows in abl_dirs.items():
            if all(len(v) == len(folds) for v in rows.values()):
                against = {n: n.replace(" + ours", " baseline") for n in rows if n.endswith(" + ours")}
                t = summarise_table(rows, next(iter(rows)), against)
                results["tables"][f"ablation: {title}"] = t
                md.append(table_markdown(f"Ablation: {title} ({abl_steps} steps)", t))
        results["seconds"] = round(time.time() - t0, 1)
        write_json_atomic(out / "results.json", results)
        write_text_atomic(out / "results.md", "\n".join(md))
        print(f"emit-diff results: {out / 'results.md'}")
    return 0
