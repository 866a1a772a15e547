"""Evidence for issue 14, task 3: diffusion as the segmenter (MedSegDiff-style, K samples fused, uncertainty) vs
the MONAI U-Net with the same data and budget, at full data and at N = 16/32/64 labels.

Default: BUSI at 64×64 on the fixed label-scarce benchmark split (``../shared/splits/label-scarce.json``: the
200-image test set and the pool; its 133 normal images are in neither), so the figures sit beside the label-scarce
study's. For each subset in ``--subsets`` (``seed0_N16`` … nested labelled subsets of the pool; ``all`` = every pool
item) a ``synthpair budget --subset`` view and one ``synthpair segdiff`` run: the diffusion segmenter
``--steps`` × batch 16 (CPU_NET: ~0.28 CPU-s per step on one core, so 1000 steps ≈ 5 CPU-minutes), the U-Net the
same steps × batch, K = 1/2/4/8 samples of DDIM 25 steps, fusions mean/majority/STAPLE. ``--splits ''`` falls
back to 5 seeded folds of ``--src`` (normals dropped) and ``--n`` seeded budget views.

    python bench/medsegdiff.py [--src ../shared/data/busi --name busi] [--subsets seed0_N16 ... all] [--steps 1000]
    python bench/medsegdiff.py --smoke

Writes ``bench/results/medsegdiff_<name>.{json,md}``; task folders under ``runs/bench_medsegdiff_<name>/``.
"""
from __future__ import annotations

import argparse
import time

from task_bench import SHARED, add_common, cpu_fit, prepare_once, setup, smoke_source, tiny_fit, write_bench

from synthpair.data.budget import BudgetConfig, make_budget_view
from synthpair.evaluation.tasks.segdiff import SegDiffConfig, run_segdiff
from synthpair.report.tasks import write_task_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(ap, SHARED / "busi", "busi")
    ap.add_argument("--splits", default=str(SHARED.parent / "splits" / "label-scarce.json"),
                    help="split file of the benchmark ('' = 5 seeded folds of --src and --n budget views)")
    ap.add_argument("--subsets", nargs="+", default=["seed0_N16", "seed0_N32", "seed0_N64", "all"],
                    help="named labelled subsets of the split file's pool ('all' = the whole pool)")
    ap.add_argument("--n", type=int, nargs="+", default=[16, 32, 64, 0],
                    help="without --splits: labelled items per seeded budget view (0 = all)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    a = ap.parse_args()
    work, results = setup(a, "medsegdiff")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if a.smoke:
        data = prepare_once(smoke_source(work, lesion_fraction=0.9), work / "data", 16, folds=2, dedup=False)
        base = SegDiffConfig(fold=a.fold, seed=a.seed, generator=tiny_fit(), k=(1, 2), steps=2, eval_batch=8,
                             n_examples=2, device=a.device)
        views: list[tuple[str, BudgetConfig | None]] = [("n4", BudgetConfig(fold=a.fold, n=4, seed=a.seed)),
                                                         ("nall", None)]  # a 4-label view and the full data
    else:
        base = SegDiffConfig(fold=a.fold, seed=a.seed, generator=cpu_fit(a.steps), k=tuple(a.k), steps=25,
                             device=a.device)
        if a.splits:
            data = prepare_once(a.src, work / f"data{a.size}_split", a.size, splits_file=a.splits)
            a.fold = 0  # a split file gives one fold: train = pool, test = its test set
            views = [(f"{s}", None if s == "all" else BudgetConfig(fold=0, subset=s)) for s in a.subsets]
        else:
            data = prepare_once(a.src, work / f"data{a.size}", a.size, folds=5, seed=a.seed, keep_empty=False)
            views = [(f"n{n or 'all'}", BudgetConfig(fold=a.fold, n=n, seed=a.seed) if n else None) for n in a.n]
    parts = []
    for tag, budget in views:
        if budget is not None:
            view = work / f"view_{tag}"
            if not (view / "dataset.json").is_file():
                make_budget_view(data, view, budget)
            target, fold = view, 0
        else:
            target, fold = data, a.fold
        out = work / f"segdiff_{tag}"
        if (out / "results.json").is_file():  # a finished view is kept (the bench resumes view by view)
            import json

            res = json.loads((out / "results.json").read_text())
        else:
            res = run_segdiff(target, out, SegDiffConfig(**{**base.__dict__, "fold": fold}), overwrite=True)
            write_task_report(out)
        parts.append((f"{tag}: {res['n_labelled']} labelled items", res))
    write_bench(results, f"medsegdiff_{a.name}", parts, cpu0=cpu0, wall0=wall0, header=[
        f"MedSegDiff-style diffusion segmenter vs MONAI U-Net on {a.name} ({a.size}×{a.size}), fold {a.fold}, "
        f"{', '.join(t for t, _ in views)} (label-budget views"
        f"{' of the split file ' + a.splits if a.splits and not a.smoke else ''}); same steps × batch for both. "
        f"Survey Table 11: nnU-Net 0.91/0.88/0.96 Dice vs IDDPM 0.90/0.83/0.90.",
        f"Task folders with figures and report.html: {work}/segdiff_*"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
