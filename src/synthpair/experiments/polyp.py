"""``synthpair experiment polyp``: the synthetic-polyp recipe of seed paper 002 (Saragih et al.), Tables 6/7 shape.

Stages (each skipped when its output is complete, so rerunning the same command resumes):

1. ``data/``: ``synthpair prepare`` of a raw source (a prepared folder is used in place);
2. ``clusters/``: :func:`synthpair.data.clustering.cluster_dataset` of the fold's **training** split (k clusters);
3. generators ``gen/cond`` (``joint_cluster``: one cluster-conditioned joint model, the default),
   optionally ``gen/cluster_<i>`` (``--per-cluster``: one plain ``joint`` model per cluster, the paper's
   sec. 2.3, each trained on ``clusters/cluster_<i>.json`` for a share of ``--gen-steps`` proportional to
   the cluster's size, at least ``--gen-steps // (2 k)``, i.e. roughly compute-matched with ``gen/cond``),
   and ``gen/full`` (``joint`` on the whole training split: Full-Diff);
4. synthetic sets with ``M = max(--samples)`` pairs per real **training** image (``syn/<name>/``):

   * ``diff`` — ``--diff sample`` (default): pairs *sampled* from the cluster model(s), each conditioned on
     the cluster of its real image (``source_item``); ``--diff inpaint``: the paper's sec. 2.4 — new lesions
     RePainted into the real training images (mask dilated by 20 px) by ``synthpair inpaint`` (helper
     command; each image uses a randomly chosen cluster model);
   * ``styled`` — ``diff`` after ``synthpair harmonise`` (Styled-Diff; only when that command exists);
   * ``full`` — the same from ``gen/full`` (Full-Diff; with ``--diff sample`` its pairs are unconditional
     samples assigned to training images in turn, they do not depend on that image);
   * ``diff_pc`` (with ``--per-cluster``) — ``diff`` from the per-cluster models; both are compared with
     FD/KID (handcrafted colour + radiomics features) against the real training split and with a per-cluster
     agreement (share of samples whose nearest real cluster centroid, in the clustering feature space, is the
     requested cluster), :func:`set_metrics`.

   Sets with fewer samples per image (``--samples 1 2 3``) are views of the M set (``syn/<name>_m<m>/``:
   the first m versions of each image; images are symlinked, not copied);
5. study (a), full-synthetic (paper sec. 2.6.1, Table 6): segmenters trained **only** on each synthetic set
   (``mixing=synthetic_only``) vs real-only on all training images, tested on the fold's real held-out images;
6. study (b), small data (paper sec. 2.6.2): ``n_real`` random training images (subset seed = seed),
   real-only with flips/rotations vs real + replace mixing (each real image is replaced by one of its
   synthetic versions with probability ``p``) using the Styled-Diff set (Diff when not styled). As in the
   paper, the generators are the fold's full-training-split models: they saw more real images than the
   small-data segmenter (never a test image); only the synthetic versions of the n subset images are used.

Outputs: ``config.json``, ``results.json`` and ``results.md`` (Dice/IoU mean ± sd over seeds).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# config.json keys a resumed run must share (the generators, clusters and synthetic sets depend on them; seeds,
# segmenter steps and the studies may change: each segmenter run is cached in its own folder)
RESULT_KEYS = ("size", "fold", "k", "extractor", "net_channels", "gen_steps", "gen_batch", "seed", "diff",
               "sample_steps")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="raw polyp dataset (images/ + masks/) or a prepared folder")
    p.add_argument("--out", required=True, help="experiment folder")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--folds", type=int, default=5, help="folds of prepare (raw source only)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--k", type=int, default=4, help="number of clusters")
    p.add_argument("--extractor", default="handcrafted", choices=["handcrafted", "inception"])
    p.add_argument("--weights", help="local Inception-v3 weights for --extractor inception")
    p.add_argument("--net-channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--gen-steps", type=int, default=800)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--per-cluster", action="store_true", help="also train one joint model per cluster (paper)")
    p.add_argument("--diff", choices=["sample", "inpaint"], default="sample",
                   help="Diff set: samples of the cluster models, or RePaint-inpainted real images (synthpair inpaint)")
    p.add_argument("--inpaint-mode", choices=["fast", "reference"], default="fast")
    p.add_argument("--harmonise-strength", type=float, default=0.3)
    p.add_argument("--colour-match", action="store_true", help="harmonise: match colour statistics to the source image")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the sampled sets")
    p.add_argument("--samples", type=int, nargs="+", default=[1], help="synthetic pairs per real image (1-3)")
    p.add_argument("--seg-steps", type=int, default=300)
    p.add_argument("--seg-batch", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--real-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--replace-p", type=float, default=0.5, help="replace probability p of the small-data study")
    p.add_argument("--studies", nargs="+", choices=["full", "small"], default=["full", "small"])
    p.add_argument("--seed", type=int, default=0, help="seed of clustering, generator training and sampling")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the planned runs, then exit")


def plan(args: argparse.Namespace) -> list[str]:
    """The runs this command would make (``--dry-run``), each marked done when its output is complete."""
    from ..networks.export import export_complete

    out, src, m = Path(args.out), Path(args.src), max(args.samples)

    def mark(done: bool) -> str:
        return " (done)" if done else ""

    lines = []
    if not (src / "dataset.json").is_file():
        lines.append(f"prepare: {src} -> {out / 'data'} ({args.size} px, {args.folds} folds)"
                     f"{mark((out / 'data' / 'dataset.json').is_file())}")
    lines.append(f"clusters: k = {args.k} ({args.extractor} features) of fold {args.fold}'s training pairs -> "
                 f"{out / 'clusters'}{mark((out / 'clusters' / 'clusters.json').is_file())}")
    gens = [("cond", "joint_cluster", args.gen_steps), ("full", "joint", args.gen_steps)]
    lines += [f"generator: {name} ({method}, {steps} steps x batch {args.gen_batch}) -> {out / 'gen' / name}"
              f"{mark(export_complete(out / 'gen' / name))}" for name, method, steps in gens]
    if args.per_cluster:
        lines.append(f"generators: one joint model per cluster -> {out / 'gen'}/cluster_<i> (steps by cluster size)")
    sets = ["diff", "full"] + (["diff_pc"] if args.per_cluster else []) + ["styled"]
    how = f"DDIM {args.sample_steps} samples" if args.diff == "sample" else f"RePaint ({args.inpaint_mode})"
    lines += [f"synthetic: {s}, {m} pair(s) per training image ({how if s != 'styled' else 'harmonised diff'}) -> "
              f"{out / 'syn' / s}{mark((out / 'syn' / s / 'dataset.json').is_file())}" for s in sets]
    if "full" in args.studies:
        lines.append(f"study (a) full-synthetic: real-only + {len(sets)} sets x samples {args.samples} x seeds "
                     f"{args.seeds}, {args.seg_steps} segmenter steps")
    if "small" in args.studies:
        lines.append(f"study (b) small data: n_real {args.real_sizes} x seeds {args.seeds}, real vs real + replace "
                     f"(p = {args.replace_p})")
    lines.append(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..config import args_config
    from ..errors import fail
    from ..io import dumps_json

    if not 1 <= min(args.samples) <= max(args.samples) <= 3:
        raise fail(f"--samples {args.samples}: 1 to 3 synthetic pairs per real image (paper sec. 2.4)")
    if not 0.0 <= args.replace_p <= 1.0:
        raise fail(f"--replace-p {args.replace_p}: a probability in [0, 1]")
    src = Path(args.src)
    if not (src / "dataset.json").is_file() and not (src / "images").is_dir():
        raise fail(f"{src}: neither a prepared dataset (dataset.json) nor a raw polyp source (images/ + masks/)")
    if args.dry_run:
        print(dumps_json(args_config(args)), end="")
        print("\n".join(plan(args)))
        return 0
    res = PolypExperiment(args).run()
    print(f"polyp experiment: {Path(args.out) / 'results.md'}")
    return 0 if res else 1


# ---------------------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    import sys
    import time

    print(f"[polyp {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _unet_config(channels: list[int]) -> Any:
    from ..networks.unet import UNetConfig

    groups = min(16, min(channels))
    return UNetConfig(channels=tuple(channels), attention_levels=tuple([False] * (len(channels) - 1) + [True]),
                      num_head_channels=min(16, channels[-1]), norm_num_groups=groups)


def train_run(data: Path, out: Path, cfg: Any, progress: bool) -> Path:
    """Train (or resume, or skip when ``out/export`` is complete) one generator run."""
    from ..training.trainer import train_or_resume

    return train_or_resume(data, out, cfg, progress=progress)


def sample_for_items(runs: dict[int, Path] | Path, data: Path, fold: int, items: list[str], per_item: int,
                     out: Path, *, seed: int = 0, clusters: dict[str, int] | None = None, steps: int = 25,
                     batch_size: int = 16, min_area: int = 4, min_component: int = 3, progress: bool = False,
                     relation: str = "cluster") -> Path:
    """Write a synthetic folder with ``per_item`` sampled pairs per real training item (skip when complete).

    ``runs``: one generator run (``joint`` or ``joint_cluster``) or {cluster: run} (per-cluster ``joint``
    models; item i uses the model of its cluster). A ``joint_cluster`` run samples item i's pairs with
    ``labels = clusters[i]``. Slot s (item j, copy r; s = j·per_item + r) uses seed ``seed + s``; a pair whose
    cleaned mask has fewer than ``min_area`` pixels is redrawn with seed ``seed + s + a·len(slots)`` (attempt
    a = 1, 2, 3). Manifest lines are those of ``synthpair generate`` plus ``source_item``, ``source_case``
    (the real item the pair stands for), ``cluster`` and ``source_relation`` (``cluster``: sampled for that
    item's cluster; ``none``: an unconditional sample assigned to the item in turn) and, for a ``joint_cluster``
    run, ``batch_labels`` (the clusters of the batch) so that ``synthpair replay`` samples with the same labels.
    """
    import numpy as np

    from ..data.dataset import PreparedDataset, dataset_info
    from ..io import atomic_output_dir
    from ..methods import get_method
    from ..methods.export import load_export
    from ..synthesis.generate import clean_mask, generator_provenance, label_names, pair_id, sample_batch, sample_record
    from ..synthesis.manifest import SyntheticWriter, dataset_items

    if (out / "dataset.json").is_file():
        return out
    ds = PreparedDataset.open(data)
    run_of = runs if isinstance(runs, dict) else None
    slots = [(it, r) for it in items for r in range(per_item)]
    group_run: dict[int, Path] = {}
    slot_group = []
    for it, _ in slots:
        c = int(clusters[it]) if clusters is not None else 0
        g = c if run_of is not None else 0
        group_run[g] = run_of[c] if run_of is not None else Path(runs)  # type: ignore[arg-type]
        slot_group.append(g)
    provs, bundles = {}, {}
    for g, r in group_run.items():
        provs[g] = generator_provenance(r)
        bundles[g] = load_export(r / "export")
    recipe = dict(sampler="ddim", steps=steps, eta=0.0, spacing="uniform", device="cpu", amp="auto")
    kept: dict[int, tuple[np.ndarray, np.ndarray, int, list[int], list[int] | None]] = {}
    pending = list(range(len(slots)))
    attempts = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(slots), desc=f"sample {out.name}", disable=not progress, leave=False)
    while pending and attempts < 4:
        for g in sorted(group_run):
            todo = [s for s in pending if slot_group[s] == g]
            for b in range(0, len(todo), batch_size):
                chunk = todo[b:b + batch_size]
                seeds = [seed + s + attempts * len(slots) for s in chunk]
                # a cluster-conditioned run samples each item's pairs for the item's cluster (recorded for replay)
                labels = ([int(clusters[slots[s][0]]) for s in chunk]  # type: ignore[index]
                          if get_method(bundles[g][1]["method"]).accepts_labels else None)
                imgs, msks, _, _ = sample_batch(bundles[g], seeds, labels=labels, **recipe)
                for s, sd, im, m in zip(chunk, seeds, imgs, msks):
                    m = clean_mask(m, min_component)
                    if int((m > 0).sum()) >= min_area:
                        kept[s] = (im, m, sd, seeds, labels)
                        bar.update(1)
        pending = [s for s in pending if s not in kept]
        attempts += 1
    bar.close()
    with atomic_output_dir(out) as tmp:
        writer = SyntheticWriter(tmp)
        lines = []
        for s, (it, r) in enumerate(slots):
            if s not in kept:
                continue
            im, m, sd, seeds, labels = kept[s]
            g = slot_group[s]
            prov = provs[g]
            rec = sample_record(
                f"{pair_id(sd)}_{g}" if run_of is not None else pair_id(sd), sd, seeds, prov, **recipe,
                min_component=min_component, train_cases=prov["train_cases"], mask_area=int((m > 0).sum()),
                faithfulness=None, source_case=ds.case_of(it),
                **({"batch_labels": labels} if labels is not None else {}),
                source_item=it, source_id=it, source_data=str(ds.root.resolve()), copy=r,
                cluster=None if clusters is None else int(clusters[it]),
                source_cluster=None if clusters is None else int(clusters[it]),
                target_cluster=None if clusters is None or relation == "none" else int(clusters[it]),
                source_relation=relation)
            writer.pair(rec, im, m)
            lines.append(rec)
        writer.rewrite(lines)
        ecfg = bundles[min(group_run)][1]
        info = dataset_info(
            name=f"synthetic-{out.name}", modality=ds.modality, channels=ds.channels,
            labels=label_names({**ecfg["data"], "labels": ecfg.get("labels")}), size=list(ds.size),
            normalisation={"method": "synthetic"}, items=dataset_items(lines, ds.size), synthetic=True,
            generator_runs=sorted(str(p["generator_run"]) for p in provs.values()), fold=fold,
            train_cases=sorted(set().union(*[set(p["train_cases"]) for p in provs.values()])),
            per_item=per_item, unfilled_slots=len(slots) - len(kept))
        writer.finish(info)
    return out


def view_set(full: Path, out: Path, m: int) -> Path:
    """A view of synthetic folder ``full`` with the first ``m`` versions (manifest ``copy`` < m) of each item.

    Writes ``dataset.json`` and ``manifest.jsonl`` subsets; ``images``/``masks`` are symlinks to ``full``'s."""
    from ..synthesis.manifest import subset_folder

    return subset_folder(full, out, lambda r: int(r.get("copy") or 0) < m, files="symlink",
                         info={"per_item": m, "view_of": str(full)})


def set_metrics(data: Path, fold: int, clusters: dict[str, Any], syn: Path,
                real_features: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Generation metrics of a synthetic set in the handcrafted clustering feature space (one extraction).

    Image block = colour histograms + radiomics texture (:func:`synthpair.data.clustering.pair_features`),
    z-scored with the **real** training pairs' mean/sd (:func:`synthpair.metrics.features.standardize`):
    ``fd`` / ``kid`` (Fréchet distance, KID) synthetic vs all real training pairs, and the split-half baseline
    ``fd_synthetic_vs_real_half`` vs ``fd_real_half_vs_half`` (same sample sizes; a seeded half of the real set).
    Mask block = shape features; with the image block both z-scored and scaled by ``1/sqrt(D)`` each synthetic
    pair is assigned to the nearest real cluster centroid: ``clusters.agreement`` = share assigned to the cluster
    it was sampled for (manifest ``cluster``), ``clusters.per_cluster`` = that share and KID per cluster.
    ``real_features`` caches ``pair_features`` of the real training pairs across sets.
    """
    import numpy as np

    from ..data.clustering import pair_features
    from ..data.dataset import PreparedDataset
    from ..metrics.distribution import frechet_distance, kid
    from ..metrics.features import standardize
    from ..synthesis.manifest import read_manifest

    ds = PreparedDataset.open(data)
    train_ids, _ = ds.split(fold)
    ri, rm = real_features if real_features is not None else pair_features(*ds.load(train_ids))
    rl = np.array([clusters["assignments"][i] for i in train_ids])
    recs = {r["id"]: r for r in read_manifest(syn)}
    sds = PreparedDataset.open(syn, require_splits=False)
    si, sm = pair_features(*sds.load(sds.ids))
    zr_i, zs_i = standardize(ri, si)
    zr_m, zs_m = standardize(rm, sm)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(zr_i))
    a, b = zr_i[perm[: len(perm) // 2]], zr_i[perm[len(perm) // 2:]]
    sub = zs_i[rng.permutation(len(zs_i))[: len(b)]]
    out: dict[str, Any] = {
        "n": int(len(zs_i)), "features": "handcrafted image block (colour histograms + radiomics), z-scored by real",
        "fd": frechet_distance(zr_i, zs_i), "kid": kid(zr_i, zs_i, subsets=50, subset_size=200, seed=0)["mean"],
        "fd_synthetic_vs_real_half": frechet_distance(a, sub), "fd_real_half_vs_half": frechet_distance(a, b)}
    labels = [recs[i].get("cluster") for i in sds.ids]
    if all(v is not None for v in labels):
        sl = np.array([int(v) for v in labels])
        fr = np.concatenate([zr_i / np.sqrt(ri.shape[1]), zr_m / np.sqrt(rm.shape[1])], 1)
        fs = np.concatenate([zs_i / np.sqrt(si.shape[1]), zs_m / np.sqrt(sm.shape[1])], 1)
        k = int(clusters["k"])
        cent = np.stack([fr[rl == c].mean(0) for c in range(k)])
        nearest = ((fs[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        per = []
        for c in range(k):
            sel = sl == c
            row: dict[str, Any] = {"cluster": c, "n": int(sel.sum()), "n_real": int((rl == c).sum())}
            if sel.any():
                row["agreement"] = float((nearest[sel] == c).mean())
                if sel.sum() >= 2 and (rl == c).sum() >= 2:
                    row["kid"] = kid(zr_i[rl == c], zs_i[sel], subsets=50, subset_size=100, seed=0)["mean"]
            per.append(row)
        out["clusters"] = {"agreement": float((nearest == sl).mean()), "per_cluster": per}
    return out


def _fmt(ms: dict[str, Any] | None) -> str:
    if not ms or ms.get("mean") is None:
        return "–"
    return f"{ms['mean']:.3f} ± {ms['sd']:.3f}"


# ------------------------------------------------------------------------------------------ experiment
class PolypExperiment:
    """The stages of the module docstring; every stage writes under ``args.out`` and is skipped when done."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.out = Path(args.out)
        self.progress = not args.no_progress
        self.notes: list[str] = []

    # ---------------------------------------------------------------- stages
    def prepare(self) -> Path:
        from ..data.prepare import PrepareConfig, prepare_dataset

        src = Path(self.a.src)
        if (src / "dataset.json").is_file() and (src / "splits.json").is_file():
            return src
        data = self.out / "data"
        if not (data / "dataset.json").is_file():
            _log(f"prepare {src} → {data} ({self.a.size}px, {self.a.folds} folds)")
            prepare_dataset(src, data, PrepareConfig(size=self.a.size, folds=self.a.folds), overwrite=data.exists())
        return data

    def cluster(self, data: Path) -> dict[str, Any]:
        from ..data.clustering import ClusterConfig, cluster_dataset, read_clusters

        cl = self.out / "clusters"
        if not (cl / "clusters.json").is_file():
            _log(f"cluster fold {self.a.fold} training pairs, k={self.a.k}")
            cluster_dataset(data, cl, ClusterConfig(k=self.a.k, fold=self.a.fold, extractor=self.a.extractor,
                                                    weights=self.a.weights or "", seed=self.a.seed),
                            overwrite=cl.exists())
        return read_clusters(cl / "clusters.json")

    def train_cfg(self, method: str, steps: int, **kw: Any) -> Any:
        from ..training.trainer import TrainConfig

        return TrainConfig(method=method, fold=self.a.fold, steps=steps, batch_size=self.a.gen_batch,
                           net=_unet_config(self.a.net_channels), preview_every=0, preview_n=8,
                           checkpoint_every=200, seed=self.a.seed, **kw)

    def generators(self, data: Path, clusters: dict[str, Any]) -> dict[str, Any]:
        gen = self.out / "gen"
        cl = self.out / "clusters"
        runs: dict[str, Any] = {}
        _log("generator gen/cond (joint_cluster)")
        runs["cond"] = train_run(data, gen / "cond", self.train_cfg(
            "joint_cluster", self.a.gen_steps, clusters=str((cl / "clusters.json").resolve())), self.progress)
        _log("generator gen/full (joint, Full-Diff)")
        runs["full"] = train_run(data, gen / "full", self.train_cfg("joint", self.a.gen_steps), self.progress)
        if self.a.per_cluster:
            k = int(clusters["k"])
            total = sum(clusters["sizes"])
            runs["per_cluster"] = {}
            for c in range(k):
                steps = max(int(round(self.a.gen_steps * clusters["sizes"][c] / total)), self.a.gen_steps // (2 * k), 1)
                _log(f"generator gen/cluster_{c} (joint on {clusters['sizes'][c]} items, {steps} steps)")
                runs["per_cluster"][c] = train_run(data, gen / f"cluster_{c}", self.train_cfg(
                    "joint", steps, items=str((cl / f"cluster_{c}.json").resolve())), self.progress)
        return runs

    def synthetic(self, data: Path, clusters: dict[str, Any], runs: dict[str, Any]) -> dict[str, Path | None]:
        from ..data.dataset import PreparedDataset

        ds = PreparedDataset.open(data)
        train_ids, _ = ds.split(self.a.fold)
        m = max(self.a.samples)
        syn = self.out / "syn"
        assign = {i: int(c) for i, c in clusters["assignments"].items()}
        sets: dict[str, Path | None] = {}
        kw = dict(seed=self.a.seed, clusters=assign, steps=self.a.sample_steps, progress=self.progress)
        if self.a.diff == "sample":
            _log(f"Diff: {m} sampled pair(s) per training image from gen/cond")
            sets["diff"] = sample_for_items(runs["cond"], data, self.a.fold, train_ids, m, syn / "diff", **kw)
            _log(f"Full-Diff: {m} unconditional pair(s) per training image from gen/full")
            sets["full"] = sample_for_items(runs["full"], data, self.a.fold, train_ids, m, syn / "full",
                                            relation="none", **kw)
            if self.a.per_cluster:
                _log("Diff (per-cluster models)")
                sets["diff_pc"] = sample_for_items(runs["per_cluster"], data, self.a.fold, train_ids, m,
                                                   syn / "diff_pc", **kw)
        else:
            sets["diff"] = self._inpaint(data, [runs["cond"]], syn / "diff", m, cluster_file=True)
            sets["full"] = self._inpaint(data, [runs["full"]], syn / "full", m, cluster_file=False)
            if self.a.per_cluster:
                sets["diff_pc"] = self._inpaint(data, [runs["per_cluster"][c] for c in sorted(runs["per_cluster"])],
                                                syn / "diff_pc", m, cluster_file=True)
        sets["styled"] = self._harmonise(sets["diff"], runs["cond"], syn / "styled")
        return sets

    def _inpaint(self, data: Path, runs: list[Path], out: Path, m: int, cluster_file: bool) -> Path | None:
        """RePaint of the training images' dilated lesions (:func:`synthpair.synthesis.inpaint.inpaint`); a failure
        is a note of the results, not the end of the study."""
        from ..errors import SynthpairError
        from ..synthesis.inpaint import InpaintConfig, inpaint

        if (out / "dataset.json").is_file():
            return out
        cfg = InpaintConfig(mode=self.a.inpaint_mode, dilate_px=20.0, per_image=m, seed=self.a.seed)
        _log(f"inpaint {data} with {', '.join(map(str, runs))} -> {out}")
        try:
            return inpaint(data, runs, out, cfg, clusters=self.out / "clusters" / "clusters.json" if cluster_file
                           else None, progress=self.progress)
        except SynthpairError as err:
            self.notes.append(f"{out.name}: inpainting failed ({err})")
            return None

    def _harmonise(self, src: Path | None, run: Path, out: Path) -> Path | None:
        """Styled-Diff: :func:`synthpair.synthesis.harmonise.harmonise` of the Diff set (a failure is a note)."""
        from ..errors import SynthpairError
        from ..synthesis.harmonise import HarmoniseConfig, harmonise

        if (out / "dataset.json").is_file():
            return out
        if src is None:
            return None
        cfg = HarmoniseConfig(strength=self.a.harmonise_strength, colour_match=self.a.colour_match)
        _log(f"harmonise {src} with {run} -> {out}")
        try:
            return harmonise(src, run, out, cfg, progress=self.progress)
        except SynthpairError as err:
            self.notes.append(f"styled: harmonisation failed ({err})")
            return None

    def generation_metrics(self, data: Path, clusters: dict[str, Any], sets: dict[str, Path | None]) -> dict[str, Any]:
        """:func:`set_metrics` of each set vs the real training split (cached in ``eval/<set>.json``)."""
        import warnings

        from ..data.clustering import pair_features
        from ..data.dataset import PreparedDataset
        from ..io import read_json, write_json_atomic

        out: dict[str, Any] = {}
        real = None
        for name, path in sets.items():
            if path is None:
                continue
            f = self.out / "eval" / f"{name}.json"
            if f.is_file():
                out[name] = read_json(f, "evaluation")
                continue
            _log(f"evaluate {name}")
            if real is None:
                ds = PreparedDataset.open(data)
                real = pair_features(*ds.load(ds.split(self.a.fold)[0]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = set_metrics(data, self.a.fold, clusters, path, real)
            write_json_atomic(f, out[name])
        return out

    def _segment(self, data: Path, out: Path, syn: Path | None, **cfg_kw: Any) -> dict[str, Any]:
        from ..io import read_json
        from ..segmentation.train import SegmentConfig, segment

        if (out / "results.json").is_file():
            return read_json(out / "results.json", "results.json")
        cfg = SegmentConfig(steps=self.a.seg_steps, batch_size=self.a.seg_batch, folds=(self.a.fold,), **cfg_kw)
        _log(f"segment {out.relative_to(self.out)}")
        return segment(data, out, cfg, synthetic_dir=syn, progress=self.progress, overwrite=out.exists())

    def study_full(self, data: Path, sets: dict[str, Path | None]) -> dict[str, Any]:
        """Table 6 shape: rows Real, Diff, Styled-Diff, Full-Diff (+ per-cluster Diff) × samples per image."""
        rows: dict[str, Any] = {}
        seg = self.out / "seg" / "full"
        vals = [self._segment(data, seg / f"real_s{s}", None, seed=s) for s in self.a.seeds]
        rows["Real"] = {"all": self._agg(vals)}
        names = {"diff": "Diff", "styled": "Styled-Diff", "full": "Full-Diff", "diff_pc": "Diff (per-cluster)"}
        for key, label in names.items():
            if key not in sets:
                continue
            if sets[key] is None:
                rows[label] = None
                continue
            rows[label] = {}
            for m in self.a.samples:
                view = sets[key] if m == max(self.a.samples) else view_set(sets[key], self.out / "syn" / f"{key}_m{m}", m)
                vals = [self._segment(data, seg / f"{key}_m{m}_s{s}", view, seed=s, mixing="synthetic_only")
                        for s in self.a.seeds]
                rows[label][str(m)] = self._agg(vals)
        return rows

    def study_small(self, data: Path, sets: dict[str, Path | None]) -> dict[str, Any] | None:
        """Small-data study: real-only vs real + replace mixing (p) for each n_real, mean ± sd over seeds."""
        key = "styled" if sets.get("styled") is not None else "diff"
        syn = sets.get(key)
        if syn is None:
            self.notes.append("small-data study: not run — no synthetic set")
            return None
        from ..data.dataset import PreparedDataset

        n_train = len(PreparedDataset.open(data).split(self.a.fold)[0])
        seg = self.out / "seg" / "small"
        rows: dict[str, Any] = {"synthetic_set": key, "p": self.a.replace_p, "rows": {}}
        for n in self.a.real_sizes:
            if n > n_train:
                self.notes.append(f"small-data study: n_real={n} skipped (only {n_train} training images)")
                continue
            real = [self._segment(data, seg / f"n{n}_real_s{s}", None, seed=s, n_real=n, subset_seed=s)
                    for s in self.a.seeds]
            # paper 002 sec. 2.6.2 trains the generator on every training image and the segmenter on n of them:
            # allowed on purpose here (a replication), and marked "[generator saw more labels]" in the results
            mix = [self._segment(data, seg / f"n{n}_{key}_s{s}", syn, seed=s, n_real=n, subset_seed=s,
                                 allow_label_excess=True,
                                 mixing="replace", replace_p=self.a.replace_p) for s in self.a.seeds]
            rows["rows"][str(n)] = {"real": self._agg(real), "synthetic": self._agg(mix)}
        return rows

    @staticmethod
    def _agg(results: list[dict[str, Any]]) -> dict[str, Any]:
        from ..metrics.statistics import mean_sd

        return {m: mean_sd([r["summary"][m]["mean"] for r in results]) for m in ("dice", "iou")}

    # ---------------------------------------------------------------- driver
    def run(self) -> dict[str, Any]:
        import time

        from ..config import args_config, claim_config
        from ..io import ensure_dir, write_json_atomic, write_text_atomic

        ensure_dir(self.out)
        cfg = args_config(self.a)
        claim_config(self.out / "config.json", cfg, what="experiment", only=RESULT_KEYS)
        t0 = time.time()
        data = self.prepare()
        clusters = self.cluster(data)
        runs = self.generators(data, clusters)
        sets = self.synthetic(data, clusters, runs)
        gen_metrics = self.generation_metrics(data, clusters, sets)
        full = self.study_full(data, sets) if "full" in self.a.studies else None
        small = self.study_small(data, sets) if "small" in self.a.studies else None
        res = {"format": "synthpair-experiment", "experiment": "polyp", "config": cfg, "data": str(data),
               "clusters": {"k": clusters["k"], "sizes": clusters["sizes"], "extractor": clusters["extractor"]},
               "diff_source": ("samples of the cluster-conditioned model, each conditioned on its real image's "
                               "cluster" if self.a.diff == "sample" else "RePaint inpainting of real training images"),
               "synthetic_sets": {k: None if v is None else str(v) for k, v in sets.items()},
               "generation": gen_metrics, "full_synthetic": full, "small_data": small, "notes": self.notes,
               "seconds_this_call": round(time.time() - t0, 1)}
        write_json_atomic(self.out / "results.json", res)
        write_text_atomic(self.out / "results.md", results_markdown(res))
        return res


def results_markdown(res: dict[str, Any]) -> str:
    """The two tables (and the generation metrics) of ``results.json`` as Markdown."""
    cfg = res["config"]
    lines = [f"# Polyp experiment (paper 002 shape): {res['data']}", "",
             f"fold {cfg['fold']}, {cfg['size']} px, k={res['clusters']['k']} clusters (sizes "
             f"{res['clusters']['sizes']}, {res['clusters']['extractor']} features), generators "
             f"{cfg['gen_steps']} steps × batch {cfg['gen_batch']}, net {cfg['net_channels']}; segmenters "
             f"{cfg['seg_steps']} steps; seeds {cfg['seeds']}. Diff = {res['diff_source']}.", ""]
    gen = res.get("generation") or {}
    if gen:
        lines += ["## Generation vs the real training split (handcrafted colour + radiomics features, z-scored by real)",
                  "", "| set | n | FD | FD vs real half (real half vs half) | KID | cluster agreement |",
                  "|---|---|---|---|---|---|"]
        for k, r in gen.items():
            ag = (r.get("clusters") or {}).get("agreement")
            lines.append(f"| {k} | {r.get('n')} | {r['fd']:.3f} | {r['fd_synthetic_vs_real_half']:.3f} "
                         f"({r['fd_real_half_vs_half']:.3f}) | {r['kid']:.4f} | {'–' if ag is None else f'{ag:.2f}'} |")
        lines.append("")
    full = res.get("full_synthetic")
    if full:
        ms_list = [str(m) for m in cfg["samples"]]
        lines += ["## (a) Full-synthetic training (Table 6 shape): Dice / IoU on real held-out images, mean ± sd over seeds",
                  "", "| data | " + " | ".join(f"N={m} Dice | N={m} IoU" for m in ms_list) + " |",
                  "|---|" + "---|---|" * len(ms_list)]
        for name, row in full.items():
            if row is None:
                lines.append(f"| {name} | " + " | ".join("not run | not run" for _ in ms_list) + " |")
            elif "all" in row:
                lines.append(f"| {name} (all real training images) | " + " | ".join(
                    f"{_fmt(row['all']['dice'])} | {_fmt(row['all']['iou'])}" for _ in ms_list) + " |")
            else:
                lines.append(f"| {name} | " + " | ".join(
                    f"{_fmt(row[m]['dice'])} | {_fmt(row[m]['iou'])}" if m in row else "– | –" for m in ms_list) + " |")
        lines.append("")
    small = res.get("small_data")
    if small:
        lines += [f"## (b) Small data: real-only vs real + {small['synthetic_set']} (replace mixing, p={small['p']})",
                  "", "| n_real | Real Dice | Real IoU | +Syn Dice | +Syn IoU |", "|---|---|---|---|---|"]
        for n, row in small["rows"].items():
            lines.append(f"| {n} | {_fmt(row['real']['dice'])} | {_fmt(row['real']['iou'])} | "
                         f"{_fmt(row['synthetic']['dice'])} | {_fmt(row['synthetic']['iou'])} |")
        lines += ["", "The generators were trained on the fold's whole training split (paper sec. 2.6.2 setting): "
                      "they saw more real images than the small-data segmenter, never a test image.", ""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)
