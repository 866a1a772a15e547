"""``synthpair run`` / ``synthpair demo``: the whole loop in one resumable job.

prepare → for each fold: train generator (training split only) → generate pairs → segment real-only and
real+synthetic at each ratio on the *same* fold → aggregate per-case results over folds → report.

Folder layout of ``DIR``::

    config.json  env.json  log.txt
    source/                  (demo only: the embedded phantom source folder)
    data/                    prepared dataset (splits.json decides every fold)
    generator/fold_<k>/      generator run (export/, metrics.jsonl, samples/)
    synthetic/fold_<k>/      synthetic pairs + manifest.jsonl
    segment/<setting>/fold_<k>/   segmentation results of one setting on one fold
    report/                  results.json, results.md, results.csv, figures/*.png

Every stage is skipped when its output is complete, so rerunning the same command after an interruption
continues where it stopped (the generator resumes from its checkpoint, generation from its progress file).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import load_config, save_config, to_dict
from .data.prepare import PrepareConfig
from .errors import fail
from .io import check_writable_dir, read_json
from .segmentation.train import SegmentConfig
from .synthesis.generate import GenerateConfig
from .training.trainer import TrainConfig


@dataclass(frozen=True)
class RunConfig:
    """Everything ``synthpair run`` does, as one config (``--set train.steps=500``, ``--dry-run``)."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    folds: tuple[int, ...] = (0,)          # folds to run (each trains its own generator)
    ratios: tuple[float, ...] = (0.5,)     # synthetic:real ratios compared with real-only
    phantoms: int = 0                      # > 0: ignore SRC and use this many embedded phantoms
    phantom_size: int = 128                # size the phantoms are drawn at (prepare resizes)
    phantom_seed: int = 0

    def __post_init__(self) -> None:
        if not self.folds:
            raise ValueError("folds must list at least one fold")
        if any(r <= 0 for r in self.ratios):
            raise ValueError("ratios must be > 0 (real-only is always run)")


def demo_config() -> RunConfig:
    """CPU-sized settings of ``synthpair demo`` (≈ 5 minutes on 2 cores)."""
    from .networks.unet import UNetConfig

    return RunConfig(
        prepare=PrepareConfig(size=64, folds=2, seed=0),
        train=dataclasses.replace(
            TrainConfig(), steps=900, batch_size=16, lr=1e-3, preview_every=450, checkpoint_every=300,
            net=UNetConfig(channels=(16, 32, 32), attention_levels=(False, False, True), num_head_channels=16)),
        generate=GenerateConfig(n=64, steps=20, batch_size=32),
        segment=dataclasses.replace(SegmentConfig(), steps=300),
        folds=(0,), ratios=(0.5, 1.0), phantoms=64, phantom_size=128)


def setting_name(ratio: float | None) -> str:
    return "real-only" if not ratio else f"real+synthetic r={ratio:g}"


def _setting_dir(ratio: float | None) -> str:
    return "real" if not ratio else f"ratio_{ratio:g}"


class _Log:
    """Stage headers with elapsed time, to stdout and ``DIR/log.txt``."""

    def __init__(self, out: Path):
        self.path = out / "log.txt"
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _check_config(out: Path, cfg: RunConfig, overwrite: bool) -> None:
    cfg_path = out / "config.json"
    if cfg_path.is_file() and not overwrite:
        old = load_config(RunConfig, cfg_path)
        if to_dict(old) != to_dict(cfg):
            diff = [k for k, v in to_dict(cfg).items() if to_dict(old).get(k) != v]
            raise fail(f"{out}: holds a run with another config (differs in: {', '.join(diff)}); rerun with "
                       f"the same settings to resume, pass --overwrite to start over, or choose a new --out")
    elif not cfg_path.is_file() and any(p for p in out.iterdir() if not p.name.startswith(".")) and not overwrite:
        raise fail(f"{out}: folder is not empty and is not a synthpair run; choose a new --out or pass --overwrite")


def run_pipeline(src: Path | str | None, out_dir: Path | str, cfg: RunConfig, *, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Run the whole loop into ``out_dir``; returns the aggregated results (also in ``report/results.json``)."""
    import shutil

    from .data.dataset import PreparedDataset
    from .data.prepare import prepare_dataset
    from .report.build import build_report, results_table
    from .segmentation.train import segment
    from .segmentation.reference import generate_scored
    from .training.trainer import train_or_resume

    out = Path(out_dir)
    if src is None and cfg.phantoms <= 0:
        raise fail("no source: pass a dataset folder (synthpair run SRC) or set phantoms=N for embedded phantoms")
    if src is not None and cfg.phantoms <= 0 and not Path(src).is_dir():
        raise fail(f"{src}: dataset folder not found; pass a folder with images/ and masks/")
    check_writable_dir(out)
    if overwrite:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    _check_config(out, cfg, overwrite)
    save_config(cfg, out / "config.json")
    from .env import write_env

    write_env(out / "env.json")
    log = _Log(out)
    n_stages = 3 + 2 * len(cfg.folds)
    stage = 0

    def header(text: str) -> None:
        nonlocal stage
        stage += 1
        log(f"[{stage}/{n_stages}] {text}")

    # 1. source + prepare
    if cfg.phantoms > 0:
        from .data.phantoms import write_phantom_source

        src_dir = out / "source"
        if not (src_dir / "images").is_dir():
            log(f"writing {cfg.phantoms} embedded ultrasound-like phantoms ({cfg.phantom_size}px) to {src_dir}")
            write_phantom_source(src_dir, n=cfg.phantoms, size=cfg.phantom_size, seed=cfg.phantom_seed)
        src = src_dir
    data_dir = out / "data"
    header(f"prepare {src} → {data_dir}")
    if not (data_dir / "splits.json").is_file():
        prepare_dataset(src, data_dir, cfg.prepare, progress=progress)
    ds = PreparedDataset.open(data_dir)
    for k in cfg.folds:
        if not 0 <= k < ds.num_folds:
            raise fail(f"folds={list(cfg.folds)}: {data_dir} has folds 0..{ds.num_folds - 1}; set folds accordingly")
    log(f"  {len(ds.items)} images, {len(ds.cases())} cases, {ds.num_folds} folds, size {ds.size}, "
        f"{ds.channels} channel(s), classes {ds.labels}")

    # 2. per fold: generator, synthetic pairs
    for k in cfg.folds:
        gen_dir = out / "generator" / f"fold_{k}"
        header(f"fold {k}: train '{cfg.train.method}' generator ({cfg.train.steps} steps) → {gen_dir}")
        train_or_resume(data_dir, gen_dir, dataclasses.replace(cfg.train, fold=k), progress=progress)
        syn_dir = out / "synthetic" / f"fold_{k}"
        header(f"fold {k}: generate {cfg.generate.n} pairs ({cfg.generate.sampler}, {cfg.generate.steps} steps) → {syn_dir}")
        generate_scored(gen_dir, syn_dir, cfg.generate, progress=progress)

    # 3. segmentation: real-only and each ratio, on the same folds
    header(f"segment ({cfg.segment.model}, {cfg.segment.steps} steps): real-only vs "
           + ", ".join(f"ratio {r:g}" for r in cfg.ratios))
    for ratio in (0.0, *cfg.ratios):
        for k in cfg.folds:
            seg_dir = out / "segment" / _setting_dir(ratio) / f"fold_{k}"
            if (seg_dir / "results.json").is_file():
                continue
            seg_cfg = dataclasses.replace(cfg.segment, folds=(k,), ratio=float(ratio))
            segment(data_dir, seg_dir, seg_cfg, synthetic_dir=(out / "synthetic" / f"fold_{k}") if ratio else None,
                    progress=progress)
            log(f"  {setting_name(ratio)}, fold {k}: done")

    # 4. report
    header(f"report → {out / 'report'}")
    report_path = build_report(out)
    results = read_json(out / "report" / "results.json")
    print()
    print(results_table(results), end="")
    html = out / "report" / "report.html"
    log(f"done in {time.time() - log.t0:.0f}s. tables: {report_path}")
    print(f"report: {html if html.is_file() else report_path}", file=sys.stdout)
    return results
