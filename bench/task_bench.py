"""Shared plumbing of the survey-task benches (bench/anomaly_busi.py, denoise.py, medsegdiff.py, modality_lgg.py,
guidance_busi.py; issue 14): prepare the real source once, CPU-sized network settings, a ``--smoke`` mode on
generated phantoms (seconds; what the scripts are checked with), and the writer of
``bench/results/<task>_<data>.{json,md}`` (the task's tables + the command, CPU and wall minutes).

Not a test and not part of the package: run the scripts from the repository root with the venv's python.
"""
from __future__ import annotations

import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from synthpair.diffusion.schedule import DiffusionConfig  # noqa: E402
from synthpair.evaluation.tasks.common import DiffusionFit, NetFit, md_table  # noqa: E402
from synthpair.io import write_json_atomic, write_text_atomic  # noqa: E402
from synthpair.networks.unet import UNetConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# CPU-sized generator (as bench/mask_conditioned.py): ~0.28 CPU-s per step of batch 16 at 64×64 on one core
# (measured 2026-11-29 with 4 single-thread jobs on the 2 cores), so 1000 steps ≈ 5 CPU-minutes
CPU_NET = UNetConfig(channels=(16, 32, 64), attention_levels=(False, False, True), num_head_channels=32,
                     norm_num_groups=16)
TINY_NET = UNetConfig(channels=(8, 8), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)


def cpu_fit(steps: int, batch: int = 16, lr: float = 5e-4) -> DiffusionFit:
    return DiffusionFit(steps=steps, batch_size=batch, lr=lr, net=CPU_NET)


def tiny_fit() -> DiffusionFit:
    return DiffusionFit(steps=3, batch_size=4, warmup_steps=1, net=TINY_NET, amp="off",
                        diffusion=DiffusionConfig(num_timesteps=100))


TINY_NETFIT = NetFit(steps=3, batch_size=4, features=8)


def add_common(ap: Any, default_src: Path, name: str) -> None:
    ap.add_argument("--src", default=str(default_src), help=f"raw source folder (default {default_src})")
    ap.add_argument("--name", default=name, help="data name in the results file names")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", default="", help="working folder (default runs/bench_<task>_<name>)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds-long check on generated phantoms with tiny networks (results under --work)")


def setup(a: Any, task: str) -> tuple[Path, Path]:
    """(work folder, results folder); in --smoke mode both under /tmp unless given."""
    import torch

    torch.set_num_threads(a.threads)
    work = Path(a.work or (f"/tmp/synthpair_smoke_{task}" if a.smoke else ROOT / "runs" / f"bench_{task}_{a.name}"))
    results = work / "results" if a.smoke else Path(a.results)
    if a.smoke:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        a.size = 16
    work.mkdir(parents=True, exist_ok=True)
    return work, results


def prepare_once(src: Path | str, out: Path, size: int, **overrides: Any) -> Path:
    """``synthpair prepare SRC --size SIZE`` into ``out`` unless it is already there (reused across runs)."""
    from synthpair.data.prepare import PrepareConfig, prepare_dataset

    if (out / "dataset.json").is_file():
        return out
    return prepare_dataset(src, out, PrepareConfig(size=size, **overrides))


def smoke_source(work: Path, contrasts: tuple[str, ...] = ("T2w",), n: int = 24, lesion_fraction: float = 0.5
                 ) -> Path:
    """A phantom nnU-Net source (grouped by patient) standing in for the real data in --smoke mode (the one already
    written there is reused, so an interrupted smoke run resumes)."""
    from synthpair.data.phantoms import write_phantom_nnunet

    if (work / "phantom_src" / "dataset.json").is_file():
        return work / "phantom_src"
    return write_phantom_nnunet(work / "phantom_src", n, size=16, contrasts=contrasts, per_patient=2,
                                lesion_fraction=lesion_fraction)


def write_bench(results_dir: Path, tag: str, parts: list[tuple[str, dict[str, Any]]], *, header: list[str],
                cpu0: float, wall0: float) -> None:
    """``<results_dir>/<tag>.json`` ({command, machine, cpu/wall minutes, results per part}) and ``<tag>.md`` (the
    header lines, then each part's tables, notes and cost)."""
    cpu_min = (time.process_time() - cpu0) / 60.0
    wall_min = (time.perf_counter() - wall0) / 60.0
    cmd = " ".join(shlex.quote(x) for x in [Path(sys.executable).name, *sys.argv])
    md = [f"# {tag}", "", *header, "", f"Command: `{cmd}`", "",
          f"CPU time of the whole bench: {cpu_min:.1f} CPU-minutes (this process, all threads); wall {wall_min:.1f} "
          f"min on {platform.machine()} ({platform.processor() or 'cpu'}).", ""]
    for title, res in parts:
        md += [f"## {title}", ""]
        for tb in res["tables"]:
            md += [f"### {tb['title']}", "", md_table(tb["rows"], tb["headers"]), ""]
            if tb.get("note"):
                md += [tb["note"], ""]
        if res.get("notes"):
            md += [f"- {n}" for n in res["notes"]] + [""]
        if res.get("cost"):
            md += ["Cost: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                        for k, v in res["cost"].items()), ""]
    write_json_atomic(results_dir / f"{tag}.json", {
        "tag": tag, "command": cmd, "cpu_minutes": round(cpu_min, 2), "wall_minutes": round(wall_min, 2),
        "parts": [{"title": t, "results": {k: v for k, v in r.items() if k != "figures"}} for t, r in parts]})
    write_text_atomic(results_dir / f"{tag}.md", "\n".join(md))
    print("\n".join(md))


def smoke_overrides(cfg: Any, **fields: Any) -> Any:
    """``cfg`` with the tiny settings of --smoke (only the fields it has)."""
    return replace(cfg, **{k: v for k, v in fields.items() if hasattr(cfg, k)})


class StageCosts:
    """The stages of a resumable bench script and what each cost: ``work/costs.json`` maps a stage key to
    ``{"cpu_min", "wall_min"}`` (process CPU time and wall time of the call), kept across reruns."""

    def __init__(self, work: Path, tag: str) -> None:
        import json

        self.file, self.tag = Path(work) / "costs.json", tag
        self.costs: dict[str, Any] = json.loads(self.file.read_text()) if self.file.is_file() else {}

    def run(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` as stage ``key`` and record its cost; returns its result."""
        print(f"{self.tag}: {key}", file=sys.stderr, flush=True)
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        self.costs[key] = {"cpu_min": round((time.process_time() - c0) / 60, 2),
                           "wall_min": round((time.perf_counter() - w0) / 60, 2)}
        write_json_atomic(self.file, self.costs)
        return out
