"""Evidence for issue 14, task 5: classifier guidance (GDDPM-style noise-aware classifier) vs classifier-free
guidance on BUSI benign vs malignant — class faithfulness (a clean classifier's accuracy on the samples) and FD.

Default: BUSI at 64×64, 5 folds, fold 0, classes from the item ids (benign_*, malignant_*; normals left out).
One class-conditional DDPM (null class on 20 % of the rows) 1000 steps × batch 16 (~5 CPU-minutes); noise-aware
and clean classifiers 1500 steps; 32 samples per class per arm, DDIM 25 steps; classifier-guidance scales 1/3/10,
classifier-free scales 1/2/4.

    python bench/guidance_busi.py [--src ../shared/data/busi --name busi] [--steps 1000] [--smoke]

Writes ``bench/results/guidance_<name>.{json,md}``; the task folder under ``runs/bench_guidance_<name>/``.
"""
from __future__ import annotations

import argparse
import json
import time

from task_bench import (SHARED, TINY_NETFIT, add_common, cpu_fit, prepare_once, setup, smoke_source, tiny_fit,
                        write_bench)

from synthpair.evaluation.tasks.common import NetFit
from synthpair.evaluation.tasks.guidance import GuidanceConfig, run_guidance
from synthpair.report.tasks import write_task_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(ap, SHARED / "busi", "busi")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--keep", nargs="+", default=["benign", "malignant"])
    ap.add_argument("--n-per-class", type=int, default=32)
    a = ap.parse_args()
    work, results = setup(a, "guidance")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if a.smoke:
        data = prepare_once(smoke_source(work), work / "data", 16, folds=2, dedup=False)
        info = json.loads((data / "dataset.json").read_text())
        classes = work / "classes.json"   # phantom ids carry no class: lesion vs none stands in for benign/malignant
        classes.write_text(json.dumps({it["id"]: "lesion" if it["foreground_fraction"] else "clear"
                                       for it in info["items"]}))
        cfg = GuidanceConfig(fold=a.fold, seed=a.seed, classes=str(classes), generator=tiny_fit(),
                             classifier=TINY_NETFIT, clean_classifier=TINY_NETFIT, cg_scales=(1.0, 3.0),
                             cfg_scales=(1.0, 2.0), n_per_class=2, steps=2, eval_batch=8, device=a.device)
    else:
        data = prepare_once(a.src, work / f"data{a.size}", a.size, folds=5, seed=a.seed, keep_empty=True)
        net = NetFit(steps=1500, batch_size=16, lr=1e-3)
        cfg = GuidanceConfig(fold=a.fold, seed=a.seed, keep=tuple(a.keep), generator=cpu_fit(a.steps), classifier=net,
                             clean_classifier=net, n_per_class=a.n_per_class, steps=25, device=a.device)
    res = run_guidance(data, work / "guidance", cfg, overwrite=True)
    write_task_report(work / "guidance")
    write_bench(results, f"guidance_{a.name}", [(f"{a.name}, fold {a.fold}", res)], cpu0=cpu0, wall0=wall0, header=[
        f"Classifier guidance vs classifier-free guidance on {a.name} ({a.size}×{a.size}), fold {a.fold}, classes "
        f"{', '.join(res['classes'])}; one class-conditional network (its null branch is what classifier guidance "
        f"steers).", f"Task folder with figures and report.html: {work / 'guidance'}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
