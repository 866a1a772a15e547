"""The survey's fine-tuning study (paper 003 sec. 4.1, Fig. 5, Table 6) on the prompt model: full, LoRA, DreamBooth,
HyperNetwork and Embedding (textual inversion) fine-tuning of one pool-pre-trained base on 100 / 500 / all BUSI
training images (64x64, fold 0), evaluated per prompt ("US, breast, benign|malignant|normal").

Stages (each skipped when its output exists; an interrupted training run resumes from its checkpoint):

1. data: BUSI prepared WITH the normal images (``synthpair prepare /work/shared/data/busi --size 64 --folds 5``;
   the older ``runs/mc/busi64`` dropped them), phantoms + Kvasir-SEG (gray) → ``synthpair pool`` → the base
   ``synthpair train --method prompt`` (``--pre-steps``), exactly as ``bench/prompt_finetune.py`` (its helpers);
2. item subsets of the fold-0 training split: a seeded permutation (seed 0), the first 100 / 500 / all
   (nested), written to ``OUT/items_<n>.json`` (``--set items=``);
3. 5 modes x 3 sizes, ``--ft-steps`` steps each from the base (``init_from``), batch 16:
   full (lr 2e-4); LoRA (rank 8, lr 1e-3); DreamBooth (``finetune.mode=dreambooth``, lr 2e-4, identifier ``sks``,
   64 prior images of the base's ultrasound class prompt "US, phantom, lesion" — the base never saw "breast",
   so it cannot make "US, breast, …" class images —, lambda 1); HyperNetwork (``finetune.mode=hypernetwork``,
   lr 1e-3; the rows of the words the base lacks — breast, benign, malignant, normal — train too); Embedding
   (``finetune.mode=embedding``, ``finetune.init_word=lesion``, lr 5e-3: only the new words' rows train);
4. per model and prompt ``--n`` images (seeds 0..n-1, DPM-Solver++(2M) ``--sample-steps`` on the log-SNR grid,
   ``--guidance``); DreamBooth and Embedding prompts carry the identifier ("sks US, breast, benign");
5. metrics per (mode, size, prompt):
   - PSNR / SSIM as the survey reports them (Fig. 5: "average and standard deviation" per prompt; the survey does
     not say what a generated image is compared with). Here: every generated image g of prompt p against every
     REAL held-out image r of that finding (fold-0 TEST split, e.g. the benign test images for "US, breast,
     benign"): PSNR(g, r) and SSIM(g, r) (``synthpair.metrics.image``, images in [-1, 1], data range 2, SSIM
     Gaussian 11x11 sigma 1.5); per g the mean over r, then mean ± sd over the n generated images. Higher = the
     generated images are closer in pixels/structure to real images of that class (unpaired, so values are low);
   - FD / KID (radiomics features, ``synthpair.evaluation.images.evaluate_images``) of all 3n images of the model
     against the fold-0 TRAINING images (as ``bench/prompt_finetune.py``), and per prompt against that finding's
     training images;
   - trainable parameters (the run's log), training CPU seconds (``getrusage`` of the ``synthpair train`` child:
     DreamBooth's prior generation included) and generation CPU seconds.
6. ``bench/results/finetune_variants_busi64.{json,md}`` (``--results``).

``--smoke``: tiny synthetic data made here (3 findings x 8 images 16x16 + a 12-image "phantom" pool), a 16/32
channel net, 3 / 2 steps, 2 images per prompt; sizes 4 / 8 / all; results under ``OUT`` only (never
``bench/results``): checks that every stage runs, not the numbers.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/finetune_variants.py --smoke --out /tmp/ftv_smoke
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/finetune_variants.py --out runs/ftv/bench
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prompt_finetune as pf  # noqa: E402  (run, trainable, final_loss, NET, COMMON)

ROOT = Path(__file__).resolve().parents[1]
SYNTHPAIR = [sys.executable, "-m", "synthpair"]  # this interpreter (a worktree has no .venv/bin/synthpair)
FINDINGS = ("benign", "malignant", "normal")
PROMPT = "US, breast, {finding}"
BASE_CLASS = "US, phantom, lesion"
SMOKE_NET = ["net.channels=[16,32]", "net.attention_levels=[false,true]", "net.num_head_channels=16",
             "net.norm_num_groups=8", "prompt.dim=16", "prompt.heads=2", "diffusion.num_timesteps=50"]
SMOKE_COMMON = ["amp=off", "device=cpu", "batch_size=4", "log_every=1", "preview_every=0", "preview_n=0",
                "checkpoint_every=0", "warmup_steps=1", "prompt.aug_prob=0.1"]
MODES: dict[str, list[str]] = {
    "full": ["lr=2e-4"],
    "lora": ["lr=1e-3", "lora.enabled=true", "lora.rank=8", "lora.alpha=8"],
    "dreambooth": ["lr=2e-4", "finetune.mode=dreambooth", "finetune.prior_n=64", "finetune.prior_weight=1.0",
                   f'finetune.class_prompts=["{BASE_CLASS}"]'],
    "hypernetwork": ["lr=1e-3", "finetune.mode=hypernetwork"],
    "embedding": ["lr=5e-3", "finetune.mode=embedding", "finetune.init_word=lesion"],
}


def instance_prompt(mode: str, finding: str) -> str:
    p = PROMPT.format(finding=finding)
    return f"sks {p}" if mode in ("dreambooth", "embedding") else p  # finetune.template "{identifier} {prompt}"


# ------------------------------------------------------------------------------------------------ data
def smoke_data(out: Path) -> tuple[Path, Path]:
    """(DATA with benign_/malignant_/normal_ items, POOL with item prompts "US, phantom, lesion"), 16x16."""
    import numpy as np

    from synthpair.data.dataset import dataset_info, write_dataset_json, write_pair
    from synthpair.io import write_json_atomic

    def write(root: Path, names: list[str], prompt: str | None, seed: int) -> Path:
        if (root / "dataset.json").is_file():
            return root
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:16, :16]
        items = []
        for i, name in enumerate(names):
            r = 0 if name.startswith("normal") else rng.uniform(2, 5) * (1.5 if name.startswith("malig") else 1)
            mask = (((yy - 8) ** 2 + (xx - rng.uniform(5, 11)) ** 2) < r * r).astype(np.int64)
            img = np.clip(rng.normal(-0.4, 0.15, (1, 16, 16)) + 0.9 * mask[None], -1, 1)
            write_pair(root, name, img, mask)
            items.append({"id": name, "case": name, "spacing": [1.0, 1.0], "slice_index": None,
                          "foreground_fraction": float(mask.mean()), **({"prompt": prompt} if prompt else {})})
        write_dataset_json(root, dataset_info(name=root.name, modality="US", channels=1,
                                              labels={"background": 0, "lesion": 1}, size=(16, 16),
                                              normalisation={"method": "none"}, items=items))
        ids = [it["id"] for it in items]
        test = ids[::4] if prompt is None else []
        write_json_atomic(root / "splits.json", {"by": "case", "seed": 0, "num_folds": 1, "folds": [
            {"fold": 0, "train": [c for c in ids if c not in test], "test": test}]})
        return root

    data = write(out / "data", [f"{f}_{i:03d}" for f in FINDINGS for i in range(8)], None, 0)
    pool = write(out / "pool", [f"phantom_{i:03d}" for i in range(12)], BASE_CLASS, 1)
    return data, pool


def item_subsets(data: Path, out: Path, sizes: list[int]) -> dict[str, Path | None]:
    """{"100": OUT/items_100.json, ..., "all": None}: nested first-n of a seeded permutation (seed 0) of the
    fold-0 image training items."""
    import numpy as np

    from synthpair.data.dataset import PreparedDataset

    ids = PreparedDataset.open(data).image_train_ids(0, unlabelled=True)
    order = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]
    res: dict[str, Path | None] = {}
    for n in sizes:
        if n >= len(ids):
            continue
        path = out / f"items_{n}.json"
        if not path.is_file():
            path.write_text(json.dumps(order[:n]))
        res[str(n)] = path
    res["all"] = None
    return res


def train(data: str, out: Path, steps: int, sets: list[str], log: Path) -> dict[str, float]:
    """``synthpair train --method prompt`` (resumed with --resume after an interruption; CPU of the child)."""
    cmd = [*SYNTHPAIR, "train", data, "--method", "prompt", "--out", str(out), "--no-progress"]
    if (out / "checkpoints" / "state.pt").is_file() and not (out / "export").exists():
        cmd += ["--resume", "--steps", str(steps)]
    else:
        for s in [*sets, f"steps={steps}"]:
            cmd += ["--set", s]
    return pf.run(cmd, log)


# ------------------------------------------------------------------------------------------- generation
def generate(run_dir: Path, mode: str, out: Path, n: int, steps: int, guidance: float, ref_data: Path
             ) -> dict[str, float]:
    """n images per finding prompt → a synthetic folder (items carry prompt and finding; masks background)."""
    import numpy as np
    import torch

    from synthpair.config import from_dict
    from synthpair.data.dataset import PreparedDataset, dataset_info, write_dataset_json, write_pair
    from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from synthpair.io import atomic_output_dir
    from synthpair.methods import DataInfo, get_method
    from synthpair.methods.export import load_export

    torch.set_num_threads(1)
    c0, w0 = time.process_time(), time.time()
    model, cfg = load_export(run_dir / "export")
    method = get_method("prompt")
    info = DataInfo.from_dict(cfg["data"])
    sched = NoiseSchedule(from_dict(DiffusionConfig, cfg["diffusion"]))
    ds = PreparedDataset.open(ref_data)
    with atomic_output_dir(out) as tmp:
        items = []
        for finding in FINDINGS:
            prompt = instance_prompt(mode, finding)
            for s in range(0, n, 32):
                seeds = list(range(s, min(n, s + 32)))
                with torch.no_grad():
                    imgs, _ = method.sample(model, sched, seeds, data=info, sampler="dpm++2m", spacing="logsnr",
                                            steps=steps, guidance=guidance, prompts=[prompt] * len(seeds))
                for k, seed in enumerate(seeds):
                    sid = f"{finding}_syn_{seed:04d}"
                    write_pair(tmp, sid, imgs[k].numpy(), np.zeros(info.size, dtype=np.int64))
                    items.append({"id": sid, "case": sid, "seed": seed, "prompt": prompt, "finding": finding})
        write_dataset_json(tmp, dataset_info(name=f"{run_dir.name}-syn", modality=ds.modality, channels=info.channels,
                                             labels=ds.labels, size=info.size, normalisation={"method": "generated"},
                                             items=items, generator_run=str(run_dir), guidance=guidance,
                                             sampler="dpm++2m", steps=steps))
    return {"cpu_s": time.process_time() - c0, "wall_s": time.time() - w0}


def finding_of(item_id: str) -> str:
    return item_id.split("_", 1)[0]


def evaluate(data: Path, syn: Path, out: Path) -> dict[str, Any]:
    """PSNR/SSIM per prompt vs the finding's test images; FD/KID overall and per finding vs training images."""
    import numpy as np

    from synthpair.data.dataset import PreparedDataset
    from synthpair.evaluation.images import EvalConfig, evaluate_arrays, evaluate_images, load_set
    from synthpair.metrics.image import psnr, ssim

    ds = PreparedDataset.open(data)
    train_ids, test_ids = ds.split(0)
    res: dict[str, Any] = {"overall": evaluate_images(data, syn, fold=0)["distribution"]["synthetic_vs_real"]}
    gen = load_set(syn, None, "synthetic")
    per: dict[str, Any] = {}
    for finding in FINDINGS:
        g_idx = [i for i, sid in enumerate(gen.ids) if finding_of(sid) == finding]
        real_test = [i for i in test_ids if finding_of(i) == finding]
        real_train = [i for i in train_ids if finding_of(i) == finding]
        if not g_idx or not real_test:
            continue
        g = gen.images[g_idx].astype(np.float32)
        r = ds.load_images(real_test).astype(np.float32)
        x, y = np.repeat(g, len(r), axis=0), np.tile(r, (len(g), 1, 1, 1))
        p = psnr(x, y, data_range=2.0).reshape(len(g), len(r)).mean(axis=1)
        s = ssim(x, y, data_range=2.0).reshape(len(g), len(r)).mean(axis=1)
        row = {"psnr": float(p.mean()), "psnr_sd": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
               "ssim": float(s.mean()), "ssim_sd": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
               "n_generated": len(g), "n_real_test": len(r)}
        sub = type(gen)(images=g, masks=None, ids=[gen.ids[i] for i in g_idx], num_classes=gen.num_classes)
        real = load_set(data, real_train, "real dataset")
        dist = evaluate_arrays(real, sub, EvalConfig())["distribution"]["synthetic_vs_real"]
        row["fd"], row["kid"] = dist.get("fd"), dist.get("kid")
        per[finding] = row
    res["per_prompt"] = per
    out.write_text(json.dumps(res, indent=1))
    return res


def timed(fn, *a: Any) -> dict[str, float]:
    c0, w0 = time.process_time(), time.time()
    fn(*a)
    return {"cpu_s": time.process_time() - c0, "wall_s": time.time() - w0}


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ftv/bench")
    ap.add_argument("--busi-src", default="/work/shared/data/busi")
    ap.add_argument("--phantoms", default="runs/h5/phantom64")
    ap.add_argument("--kvasir", default="runs/h5/kvasir64")
    ap.add_argument("--pre-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--sizes", default="100,500")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--n", type=int, default=32, help="images per prompt and model")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "finetune_variants_busi64"))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    timing_path = out / "timing.json"
    timing: dict[str, Any] = json.loads(timing_path.read_text()) if timing_path.is_file() else {}

    def stage(name: str, done: Path, fn) -> None:
        if done.exists() and name in timing:
            return
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        timing[name] = fn()
        timing_path.write_text(json.dumps(timing, indent=1))

    if args.smoke:
        data, pool = smoke_data(out)
        net, common = SMOKE_NET, SMOKE_COMMON
        pre_steps, ft_steps, n, sample_steps = 3, 2, 2, 2
        sizes = [4, 8]
        results = str(out / "finetune_variants_smoke")
        modes = {k: [s.replace("finetune.prior_n=64", "finetune.prior_n=3") for s in v] + (
            ["finetune.prior_steps=2", "finetune.prior_batch=2"] if k == "dreambooth" else []) for k, v in MODES.items()}
    else:
        data, pool = out / "busi64", out / "pool"
        net, common = pf.NET, pf.COMMON
        pre_steps, ft_steps, n, sample_steps = args.pre_steps, args.ft_steps, args.n, args.sample_steps
        sizes = [int(s) for s in args.sizes.split(",") if s]
        results = args.results
        modes = dict(MODES)
        stage("prepare_busi", data, lambda: pf.run([*SYNTHPAIR, "prepare", args.busi_src, "--out", str(data), "--size",
                                                    "64", "--folds", "5"], log))
        for name, path in (("phantoms", args.phantoms), ("kvasir", args.kvasir)):
            if not (Path(path) / "dataset.json").is_file():
                sys.exit(f"{path}: prepare it first (commands in bench/results/prompt_finetune_busi64.md)")
        stage("pool", pool, lambda: pf.run([*SYNTHPAIR, "pool", "--out", str(pool), f"{args.phantoms}:{BASE_CLASS}",
                                            f"{args.kvasir}:endoscopy, colon, polyp", "--channels", "1", "--size",
                                            "64"], log))
    modes = {k: v for k, v in modes.items() if k in args.modes.split(",")}
    pre = out / "pretrain"
    stage("pretrain", pre / "export", lambda: train(str(pool), pre, pre_steps, net + common, log))
    subsets = item_subsets(data, out, sizes)
    template = f'prompt.template="{PROMPT}"'  # JSON-quoted: --set splits bare commas
    rows = []
    for size, items in subsets.items():
        for mode, extra in modes.items():
            key = f"{mode}_{size}"
            run_dir = out / key
            sets = net + common + [f"init_from={pre}", template, *extra] + ([f"items={items}"] if items else [])
            stage(f"train_{key}", run_dir / "export", lambda r=run_dir, s=sets: train(str(data), r, ft_steps, s, log))
            syn = out / f"syn_{key}"
            stage(f"generate_{key}", syn, lambda r=run_dir, m=mode, s=syn: generate(
                r, m, s, n, sample_steps, args.guidance, data))
            ev = out / f"eval_{key}.json"
            stage(f"evaluate_{key}", ev, lambda s=syn, e=ev: timed(evaluate, data, s, e))
            res = json.loads(ev.read_text())
            params, n_train = pf.trainable(run_dir)
            rows.append({"mode": mode, "size": size, "n_items": len(json.loads(Path(items).read_text())) if items
                         else None, "trainable_params": n_train, "params": params,
                         "train_cpu_s": timing[f"train_{key}"]["cpu_s"], "gen_cpu_s": timing[f"generate_{key}"]["cpu_s"],
                         "final_loss": pf.final_loss(run_dir), "overall": res["overall"], "per_prompt": res["per_prompt"],
                         "sets": extra})
    total = sum(float(v.get("cpu_s", 0.0)) for v in timing.values())
    summary = {"rows": rows, "timing": timing, "total_cpu_s": total, "pre_steps": pre_steps, "ft_steps": ft_steps,
               "n_per_prompt": n, "sample_steps": sample_steps, "guidance": args.guidance, "smoke": args.smoke,
               "prompts": {m: [instance_prompt(m, f) for f in FINDINGS] for m in modes}}
    Path(results + ".json").write_text(json.dumps(summary, indent=1))

    def f(v: Any, d: int = 3) -> str:
        if isinstance(v, dict):
            return "–" if v.get("mean") is None else f"{v['mean']:.{d}g} ± {v['sd']:.2g}"
        return "–" if v is None else f"{v:.{d}g}"

    lines = ["| mode | images | trainable / all params | train CPU s | FD ↓ | KID ↓ | " +
             " | ".join(f"PSNR {x} | SSIM {x}" for x in FINDINGS) + " |",
             "|---|---|---|---|---|---|" + "---|---|" * len(FINDINGS)]
    for r in rows:
        cells = []
        for x in FINDINGS:
            p = r["per_prompt"].get(x)
            cells += (["–", "–"] if p is None else [f"{p['psnr']:.2f} ± {p['psnr_sd']:.2f}",
                                                    f"{p['ssim']:.3f} ± {p['ssim_sd']:.3f}"])
        lines.append(f"| {r['mode']} | {r['size']} | {r['trainable_params']:,} / {r['params']:,} | "
                     f"{r['train_cpu_s']:.0f} | {f(r['overall'].get('fd'))} | {f(r['overall'].get('kid'))} | "
                     + " | ".join(cells) + " |")
    table = "\n".join(lines)
    Path(results + ".md").write_text(
        "# Fine-tuning methods of the survey (sec. 4.1) on the prompt model\n\n"
        f"{'SMOKE RUN (tiny synthetic data: the numbers mean nothing)' if args.smoke else ''}\n\n"
        f"pre-training {pre_steps} steps, fine-tuning {ft_steps} steps, {n} images per prompt, DPM-Solver++(2M) "
        f"{sample_steps} steps, guidance {args.guidance:g}; PSNR/SSIM: generated vs the finding's real test images "
        f"(mean over pairs per generated image, then mean ± sd); FD/KID: radiomics, all generated vs fold-0 "
        f"training images. Total CPU {total:.0f} s.\n\n{table}\n")
    print(table)
    print(f"total CPU seconds: {total:.0f}; results: {results}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
