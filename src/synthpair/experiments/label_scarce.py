"""``synthpair experiment label-scarce``: few labels, many images — where synthpair makes a segmenter better.

For each dataset (a folder prepared with ``prepare --splits label-scarce.json``: ONE fold, test = the fixed
200 test images, training side = the pool, named labelled subsets ``seed<S>_N<N>``), each label budget N and
each seed S:

1. ``views``: the label-budget view ``OUT/<data>/views/seed<S>_N<N>`` (:mod:`synthpair.data.budget`): the
   subset's N pool items keep their masks, the rest of the pool is unlabelled, the test set is untouched.
2. ``synth`` (rows with synthetic pairs): a ``mask2image`` generator fine-tuned from the dataset's image-only
   generator (``--generator``, trained on the pool images, no mask) on the N labelled pairs of the view
   (``init_from``: the pretrained U-Net, mask inputs added), then ``--syn-n`` pairs for masks drawn from new
   shapes (``--syn-masks augmented``: deformed real masks of the N items), scored for faithfulness by a
   reference segmenter trained on the same N labels. Every model of the chain saw only the N masks; the label
   accounting proves it and ``segment`` would refuse otherwise.
3. ``seg``: one ``segment`` run per row (:data:`ROWS`) with the same iterations and batch (``--seg-steps`` ×
   ``--seg-batch``), seed S, on the view; evaluated on the 200 test images. Nothing is chosen on the test
   split: blocks/timesteps of the diffusion-feature rows come from the feature analysis on the N labelled
   items; every other setting is fixed in advance (this module).
4. ``curve``: the ``--curve-row`` at ``--curve-n`` for every generator snapshot (``RUN/snapshots/step_*``):
   Dice against the generator's training CPU-minutes.
5. ``table``: ``OUT/results.{json,md}``, ``OUT/figures/*.png``, ``OUT/report.html``: per dataset, N and row:
   Dice, IoU, HD95 as mean ± sd over seeds, the paired Δ against real + classic augmentation (per test image,
   averaged over seeds, Wilcoxon signed-rank), and CPU-minutes (segmenter; generator fine-tune + sampling for
   synthetic rows; the shared image-only pretraining stated once per dataset).

Runs are done N by N (all datasets, seeds and rows at N = 16 first), each skipped when its ``results.json``
exists, so an interrupted study resumes where it stopped and a partial study still tabulates. CPU seconds are
``time.process_time`` of this process around each stage (all threads), saved in ``OUT/<data>/cost.json``
(``--only-data NAME`` runs one dataset, so two datasets can run as two processes into one OUT).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASELINE = "real-classic"

ROWS: dict[str, dict[str, Any]] = {
    # name: SegmentConfig fields (+ "synthetic": True when the row reads the view's synthetic pairs, or the name of the
    # timestep spacing they were sampled with: SYNTH/syn_<spacing>)
    "real-noaug": {"model": "unet", "augment": "none"},
    "real-classic": {"model": "unet", "augment": "deepstack"},
    "syn-ratio": {"model": "unet", "augment": "deepstack", "mixing": "ratio", "ratio": 0.5, "synthetic": True},
    "syn-pretrain": {"model": "unet", "augment": "deepstack", "mixing": "pretrain", "pretrain_fraction": 0.5,
                     "synthetic": True},
    "ddpm-unet": {"model": "ddpm_unet", "augment": "deepstack", "lr": 2e-4, "amp": "bf16"},
    "ddpm-unet-skip": {"model": "ddpm_unet_skip", "augment": "deepstack", "lr": 2e-4, "amp": "bf16"},
    "ddpm-unet-caa": {"model": "ddpm_unet_caa", "augment": "deepstack", "lr": 2e-4, "amp": "bf16"},
    "ddpm-pixel": {"model": "ddpm_pixel", "augment": "flip_rot"},
    # the two label-honest routes together: the diffusion U-Net trained end to end with the synthetic pairs mixed in
    "ddpm-unet-syn": {"model": "ddpm_unet", "augment": "deepstack", "lr": 2e-4, "amp": "bf16", "mixing": "ratio",
                      "ratio": 0.5, "synthetic": True},
    # DiffusionDCI Fig. 6: synthetic share 25 / 50 / 75 / 100 % of the real pairs (ratio mixing)
    "syn-r0.25": {"model": "unet", "augment": "deepstack", "mixing": "ratio", "ratio": 0.25, "synthetic": True},
    "syn-r0.75": {"model": "unet", "augment": "deepstack", "mixing": "ratio", "ratio": 0.75, "synthetic": True},
    "syn-r1": {"model": "unet", "augment": "deepstack", "mixing": "ratio", "ratio": 1.0, "synthetic": True},
    # the same synthetic rows with pairs sampled by DPM-Solver++(2M) on the log-SNR timestep grid (same steps, seeds
    # and masks; bench/results/sampler_fast_busi64_image_step6000_spacing.md: the image-only generator's FD drops
    # from 50 (DDIM-25, uniform grid) to 14 (DPM-Solver++(2M)-20, log-SNR grid))
    "syn-ratio-logsnr": {"model": "unet", "augment": "deepstack", "mixing": "ratio", "ratio": 0.5,
                         "synthetic": "logsnr"},
    "ddpm-unet-syn-logsnr": {"model": "ddpm_unet", "augment": "deepstack", "lr": 2e-4, "amp": "bf16",
                             "mixing": "ratio", "ratio": 0.5, "synthetic": "logsnr"},
    "syn-ratio-faith": {"model": "unet", "augment": "deepstack", "mixing": "ratio", "ratio": 0.5,
                        "min_faithfulness": 0.5, "synthetic": True},
}
DEFAULT_ROWS = ("real-classic", "ddpm-unet", "real-noaug", "ddpm-pixel", "ddpm-unet-skip", "ddpm-unet-caa",
                "syn-ratio", "syn-pretrain")
LABELS = {
    "real-noaug": "real only, no augmentation", "real-classic": "real + classic augmentation (baseline)",
    "syn-ratio": "+ synthetic pairs (r = 0.5)", "syn-pretrain": "+ synthetic pre-training (50 % of steps)",
    "ddpm-unet": "diffusion U-Net end to end", "ddpm-unet-skip": "diffusion U-Net + skip (frozen features)",
    "ddpm-unet-caa": "diffusion U-Net + CAA (frozen features)", "ddpm-pixel": "per-pixel classifier (frozen features)",
    "syn-r0.25": "+ synthetic 25 %", "syn-r0.75": "+ synthetic 75 %", "syn-r1": "+ synthetic 100 %",
    "syn-ratio-faith": "+ synthetic (r = 0.5, faithfulness ≥ 0.5)",
    "ddpm-unet-syn": "diffusion U-Net end to end + synthetic pairs (r = 0.5)",
    "syn-ratio-logsnr": "+ synthetic pairs (r = 0.5), DPM-Solver++(2M) on the log-SNR grid",
    "ddpm-unet-syn-logsnr": "diffusion U-Net end to end + synthetic pairs (r = 0.5), DPM-Solver++(2M), log-SNR grid",
}


@dataclass(frozen=True)
class StudyConfig:
    """The whole study (saved as OUT/config.json; a rerun with another config in the same OUT is refused)."""

    data: dict[str, str] = field(default_factory=dict)        # dataset name → prepared folder
    generator: dict[str, str] = field(default_factory=dict)   # dataset name → image-only generator run
    n: tuple[int, ...] = (16, 32, 64)
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = DEFAULT_ROWS
    seg_steps: int = 1500
    seg_batch: int = 8
    m2i_steps: int = 600
    m2i_batch: int = 16
    m2i_lr: float = 2e-4
    syn_n: int = 256
    syn_masks: str = "augmented"
    syn_sample_steps: int = 25
    curve_row: str = "ddpm-unet"
    curve_n: int = 16
    curve_seeds: tuple[int, ...] = (0, 1, 2)
    curve_steps: tuple[int, ...] = ()      # generator snapshot steps of the curve; () = every snapshot


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="NAME=DATA",
                   help="prepared folders (prepare --splits label-scarce.json), e.g. busi=runs/data/busi64")
    p.add_argument("--generator", nargs="+", default=[], metavar="NAME=RUN",
                   help="image-only generator run per dataset (synthpair train DATA --method image), trained on the "
                        "pool images; needed by the ddpm-* and syn-* rows")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS))
    p.add_argument("--seg-steps", type=int, default=1500)
    p.add_argument("--seg-batch", type=int, default=8)
    p.add_argument("--m2i-steps", type=int, default=600, help="mask2image fine-tuning steps (synthetic rows)")
    p.add_argument("--syn-n", type=int, default=256, help="synthetic pairs per view")
    p.add_argument("--syn-masks", default="augmented", help="mask source of the synthetic pairs: augmented | real")
    p.add_argument("--curve-row", default="ddpm-unet", choices=list(ROWS))
    p.add_argument("--curve-n", type=int, default=16)
    p.add_argument("--curve-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--curve-steps", type=int, nargs="+", default=[],
                   help="generator snapshot steps for the curve (RUN/snapshots/step_<S>; default: every snapshot)")
    p.add_argument("--stages", nargs="+", default=["views", "synth", "seg", "curve", "table"],
                   choices=["views", "synth", "seg", "curve", "table"])
    p.add_argument("--only-data", nargs="+", default=None, metavar="NAME", help="run the stages for these datasets only")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the planned runs, then exit")
    p.add_argument("--no-progress", action="store_true")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from ..errors import fail

    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise fail(f"--{what} {it!r}: expected NAME=PATH, e.g. busi=runs/data/busi64")
        out[name] = path
    return out


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    from ..errors import fail

    cfg = StudyConfig(data=_pairs(args.data, "data"), generator=_pairs(args.generator, "generator"),
                      n=tuple(args.n), seeds=tuple(args.seeds), rows=tuple(dict.fromkeys(args.rows)),
                      seg_steps=args.seg_steps, seg_batch=args.seg_batch, m2i_steps=args.m2i_steps,
                      syn_n=args.syn_n, syn_masks=args.syn_masks, curve_row=args.curve_row, curve_n=args.curve_n,
                      curve_seeds=tuple(args.curve_seeds), curve_steps=tuple(args.curve_steps))
    needs_gen = any(r.startswith(("ddpm", "syn")) for r in cfg.rows)
    for name in cfg.data:
        if needs_gen and name not in cfg.generator:
            raise fail(f"--generator: no image-only generator for {name!r} but rows "
                       f"{', '.join(r for r in cfg.rows if r.startswith(('ddpm', 'syn')))} need one; pass "
                       f"--generator {name}=RUN or drop those rows")
    if BASELINE not in cfg.rows:
        raise fail(f"--rows must include the baseline {BASELINE!r} (every row is compared with it)")
    return cfg


# ------------------------------------------------------------------------------------------------- study
class Study:
    def __init__(self, cfg: StudyConfig, out: Path, progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, out, progress

    @property
    def cost(self) -> dict[str, float]:
        """CPU seconds per stage key (``<data>/...``), from every ``OUT/<data>/cost.json`` (one file per dataset,
        so studies of different datasets can run as separate processes into the same OUT)."""
        out: dict[str, float] = {}
        for f in sorted(self.out.glob("*/cost.json")):
            out.update(json.loads(f.read_text()))
        return out

    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(f"label-scarce: {msg}", file=sys.stderr, flush=True)
        with open(self.out / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def timed(self, key: str, fn, *a, **kw):
        from ..io import write_json_atomic

        t0 = time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            path = self.out / key.split("/")[0] / "cost.json"
            cost = json.loads(path.read_text()) if path.is_file() else {}
            cost[key] = round(cost.get(key, 0.0) + time.process_time() - t0, 2)
            write_json_atomic(path, cost)

    # ---------------------------------------------------------------------------------------------- paths
    def view(self, ds: str, n: int, s: int) -> Path:
        return self.out / ds / "views" / f"seed{s}_N{n}"

    def synth(self, ds: str, n: int, s: int) -> Path:
        return self.out / ds / "synth" / f"seed{s}_N{n}"

    def seg(self, ds: str, n: int, s: int, row: str, snapshot: str | None = None) -> Path:
        """The segment folder of a row; a curve point (``snapshot`` = step_<S>) of the main generator's own
        export is the main row (computed once)."""
        if snapshot is not None and not self.is_main_snapshot(ds, snapshot):
            return self.out / ds / "curve" / snapshot / f"seed{s}_N{n}" / row
        return self.out / ds / "seg" / f"seed{s}_N{n}" / row

    def is_main_snapshot(self, ds: str, snapshot: str) -> bool:
        from ..segmentation.ddfeatures import resolve_export

        main = resolve_export(self.cfg.generator[ds]).resolve()
        return main.name == snapshot and main.parent.name == "snapshots"

    # --------------------------------------------------------------------------------------------- stages
    def make_view(self, ds: str, n: int, s: int) -> Path:
        from ..data.budget import BudgetConfig, make_budget_view

        v = self.view(ds, n, s)
        if not (v / "dataset.json").is_file():
            self.log(f"view {ds} seed{s}_N{n}")
            self.timed(f"{ds}/views/seed{s}_N{n}", make_budget_view, self.cfg.data[ds], v,
                       BudgetConfig(subset=f"seed{s}_N{n}"), overwrite=v.exists(), progress=False)
        return v

    def make_synthetic(self, ds: str, n: int, s: int, spacing: str = "uniform") -> Path:
        """mask2image fine-tuned from the image-only generator on the view's N pairs, then syn_n pairs: SYNTH/syn by
        DDIM on the uniform grid (the study's first sampler), SYNTH/syn_<spacing> by DPM-Solver++(2M) on that
        grid (the default sampler since issue 12); one mask2image run for both."""
        import dataclasses

        from ..config import from_dict
        from ..diffusion.schedule import DiffusionConfig
        from ..io import read_json
        from ..networks.unet import UNetConfig
        from ..segmentation.ddfeatures import resolve_export
        from ..segmentation.reference import generate_scored
        from ..synthesis.generate import GenerateConfig
        from ..networks.export import export_complete
        from ..config import with_legacy
        from ..training.trainer import TRAIN_LEGACY, TrainConfig, train_or_resume

        view = self.make_view(ds, n, s)
        root = self.synth(ds, n, s)
        run, syn = root / "m2i", root / ("syn" if spacing == "uniform" else f"syn_{spacing}")
        export = resolve_export(self.cfg.generator[ds])
        ecfg = read_json(export / "config.json", "generator export config.json")
        # the generator's diffusion settings (a key its export predates: the value of that time, TRAIN_LEGACY)
        diffusion = with_legacy({"diffusion": ecfg["diffusion"]}, TRAIN_LEGACY)["diffusion"]
        tcfg = dataclasses.replace(
            TrainConfig(), method="mask2image", steps=self.cfg.m2i_steps, batch_size=self.cfg.m2i_batch,
            lr=self.cfg.m2i_lr, seed=s, net=from_dict(UNetConfig, ecfg["net"], where=str(export)),
            diffusion=from_dict(DiffusionConfig, diffusion, where=str(export)), init_from=str(export),
            preview_every=0, preview_n=8, checkpoint_every=500, log_every=50)
        if not export_complete(run):
            self.log(f"synth {ds} seed{s}_N{n}: mask2image fine-tune ({self.cfg.m2i_steps} steps)")
            self.timed(f"{ds}/synth/seed{s}_N{n}/m2i", train_or_resume, view, run, tcfg, progress=self.progress)
        if not (syn / "dataset.json").is_file():
            self.log(f"synth {ds} seed{s}_N{n}: {self.cfg.syn_n} pairs ({self.cfg.syn_masks} masks)")
            gcfg = GenerateConfig(n=self.cfg.syn_n, masks=self.cfg.syn_masks, steps=self.cfg.syn_sample_steps,
                                  seed=1_000_000 * (s + 1), segmenter="auto", amp="auto",
                                  sampler="ddim" if spacing == "uniform" else "dpm++2m",
                                  spacing=spacing)  # type: ignore[arg-type]
            # the reference segmenter that scores faithfulness is trained first (its cost counts here)
            self.timed(f"{ds}/synth/seed{s}_N{n}/{syn.name}", generate_scored, run, syn, gcfg, progress=self.progress)
        return syn

    def segment_config(self, ds: str, row: str, s: int, generator: str | None = None) -> Any:
        from ..segmentation.ddfeatures import FeatureConfig
        from ..segmentation.train import SegmentConfig

        spec = {k: v for k, v in ROWS[row].items() if k != "synthetic"}
        kw: dict[str, Any] = {"steps": self.cfg.seg_steps, "batch_size": self.cfg.seg_batch, "seed": s,
                              "folds": (0,), **spec}
        if spec["model"].startswith("ddpm"):
            kw["features"] = FeatureConfig(generator=generator or self.cfg.generator[ds])
        return SegmentConfig(**kw)

    def run_row(self, ds: str, n: int, s: int, row: str, generator: str | None = None,
                snapshot: str | None = None) -> dict[str, Any] | None:
        from ..segmentation.train import segment

        out = self.seg(ds, n, s, row, snapshot)
        if (out / "results.json").is_file():
            return json.loads((out / "results.json").read_text())
        view = self.make_view(ds, n, s)
        variant = ROWS[row].get("synthetic")  # True: the uniform grid; a string: that timestep spacing
        syn = self.make_synthetic(ds, n, s, "uniform" if variant is True else variant) if variant else None
        cfg = self.segment_config(ds, row, s, generator)
        self.log(f"seg {ds} seed{s}_N{n} {row}" + (f" [{snapshot}]" if snapshot else ""))
        key = str(out.relative_to(self.out))
        return self.timed(key, segment, view, out, cfg, synthetic_dir=syn, progress=self.progress,
                          overwrite=out.exists())

    def datasets(self, only: list[str] | None) -> list[str]:
        return [d for d in self.cfg.data if only is None or d in only]

    def plan(self, only: list[str] | None = None) -> list[str]:
        runs = []
        for n in self.cfg.n:
            for ds in self.datasets(only):
                for s in self.cfg.seeds:
                    for row in self.cfg.rows:
                        done = (self.seg(ds, n, s, row) / "results.json").is_file()
                        runs.append(f"{'done' if done else 'todo'} {ds} seed{s}_N{n} {row}")
        return runs

    def snapshots(self, ds: str) -> list[Path]:
        from ..segmentation.ddfeatures import generator_run_of, resolve_export

        run = generator_run_of(resolve_export(self.cfg.generator[ds]))
        if run is None:
            return []
        snaps = sorted((run / "snapshots").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        snaps = [p for p in snaps if (p / "model.safetensors").is_file()]
        if self.cfg.curve_steps:
            snaps = [p for p in snaps if int(p.name.split("_")[1]) in self.cfg.curve_steps]
        return snaps


def run(args: argparse.Namespace) -> int:
    from ..config import claim_config, to_dict
    from ..errors import fail
    from ..io import dumps_json

    cfg = config_from_args(args)
    out = Path(args.out)
    study = Study(cfg, out, progress=not args.no_progress)
    if args.dry_run:
        print(dumps_json(to_dict(cfg)), end="")
        print("\n".join(study.plan(args.only_data)))
        return 0
    for name, path in cfg.data.items():
        from ..data.dataset import PreparedDataset

        ds = PreparedDataset.open(path)
        wanted = [(n, s) for n in cfg.n for s in cfg.seeds]
        if "curve" in args.stages and name in cfg.generator:  # the curve's views, checked before hours of work
            wanted += [(cfg.curve_n, s) for s in cfg.curve_seeds]
        missing = [f"seed{s}_N{n}" for n, s in wanted if f"seed{s}_N{n}" not in ds.subsets]
        if missing:
            raise fail(f"{path}: no labelled subset {missing[0]} (prepare it with --splits label-scarce.json, whose "
                       f"train_subsets name seed<S>_N<N>; the curve uses --curve-n / --curve-seeds)")
    out.mkdir(parents=True, exist_ok=True)
    # the same study may grow (more N / seeds / rows); its settings may not change
    new = claim_config(out / "config.json", to_dict(cfg), what="study",
                 grow=("n", "seeds", "rows", "curve_seeds", "curve_steps"))
    only = args.only_data
    if "views" in args.stages:
        for n in cfg.n:
            for ds in study.datasets(only):
                for s in cfg.seeds:
                    study.make_view(ds, n, s)
    if "synth" in args.stages:
        for n in cfg.n:
            for ds in study.datasets(only):
                if any(ROWS[r].get("synthetic") for r in cfg.rows):
                    for s in cfg.seeds:
                        study.make_synthetic(ds, n, s)
    if "seg" in args.stages:
        for n in cfg.n:
            for ds in study.datasets(only):
                for s in cfg.seeds:
                    for row in cfg.rows:
                        study.run_row(ds, n, s, row)
    if "curve" in args.stages:
        for ds in study.datasets(only):
            if ds not in cfg.generator:
                continue
            for snap in study.snapshots(ds):
                for s in cfg.curve_seeds:
                    study.run_row(ds, cfg.curve_n, s, cfg.curve_row, generator=str(snap), snapshot=snap.name)
    if "table" in args.stages:
        import dataclasses

        from .label_scarce_table import write_tables

        # the table covers the whole study in OUT (config.json: every N, seed and row run so far), not only
        # the N / seeds / rows of this invocation
        whole = dataclasses.replace(cfg, n=tuple(sorted(new["n"])), seeds=tuple(sorted(new["seeds"])),
                                    rows=tuple(new["rows"]))
        path = write_tables(Study(whole, out, progress=study.progress))
        print(f"label-scarce study: {path}")
    return 0


__all__ = ["ROWS", "BASELINE", "StudyConfig", "Study", "add_arguments", "run"]
