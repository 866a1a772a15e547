"""``synthpair inpaint``: new pairs by RePaint-inpainting dilated lesions of real training images (seed 002).

Seed paper 002 (Saragih et al.), sec. 2.4 and appendix A.2: for each real *training* image with a lesion, the
lesion mask is dilated by ``dilate_px`` pixels (20 px at full resolution in the paper, so that the lesion is
fully hidden) and the dilated region is inpainted — image AND mask channels of the joint representation
``x = cat(image, one-hot foreground in {-1, 1})`` (:mod:`synthpair.methods.joint`) — by a joint model of a
randomly chosen cluster ``j`` (the "target" cluster; the source image's own cluster ``i`` is only recorded).
Outside the region the new pair is the source image with background mask.

Dilation is given in pixels of the source's ORIGINAL resolution (``dataset.json`` item ``original_size``):
the region is every prepared pixel whose Euclidean distance to the lesion, measured in original pixels
(``scipy.ndimage.distance_transform_edt`` with ``sampling = original / prepared`` per axis), is at most
``dilate_px``. That is a binary dilation by a disk of radius ``dilate_px`` on the original grid (an ellipse of
radii ``dilate_px * prepared / original`` on the prepared, possibly anisotropic, grid); for square resizes it
equals ``skimage.morphology.binary_dilation(mask, disk(r))`` with ``r = dilate_px * prepared / original``.

Generators (``--generator RUN [RUN ...]``): (a) one ``joint_cluster`` run (export ``clusters.k``; its network
reads ``Cond(label=j)``) → ``j ~ U{0..k-1}``; (b) several ``joint`` runs (one per cluster, in the given order)
→ ``j ~ U`` over them; (c) one ``joint`` run (Full-Diff) → no choice (``target_cluster`` null).

One seed per pair: pair ``p`` (source ``s`` in order, copy ``m``: ``p = s * per_image + m``) uses seed
``seed + p``; its CPU generator draws ``j`` first, then every RePaint noise. Kept pairs: the new mask (inside the
region by construction, components < ``min_component`` removed) has at least ``min_area`` pixels and, with
``require_interior``, does not touch the region's border (a lesion cut by the known background looks pasted);
rejections are counted in ``dataset.json`` ``inpaint.rejected``. The output is written atomically
(:func:`synthpair.io.atomic_output_dir`): the folder appears complete or not at all. ``regions/<id>.png``
(uint8 0/1) stores each pair's inpainted region for harmonisation and seam metrics.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..config import save_config, to_dict
from ..data.dataset import PreparedDataset, dataset_info
from ..errors import fail
from ..io import atomic_output_dir
from .generate import generator_provenance, clean_mask, pair_id
from .manifest import PairRecord, SyntheticWriter, dataset_items



def joint_methods() -> list[str]:
    """The registered methods whose network denoises the packed image+mask tensor (``Method.joint_state``)."""
    from ..methods import methods_where

    return methods_where(lambda m: m.joint_state)


MODES = {  # (sampler, steps, jump_length, resample, eta) defaults per mode
    "reference": ("ddpm", 250, 10, 10, 1.0),   # RePaint's reference settings
    "fast": ("ddim", 50, 5, 3, 1.0),           # 140 network evaluations instead of 2410
}


@dataclass(frozen=True)
class InpaintConfig:
    """Settings of one inpainting job (saved as ``SYN/inpaint_config.json``); None = the mode's default."""

    mode: Literal["reference", "fast"] = "fast"
    steps: int | None = None
    jump_length: int | None = None
    resample: int | None = None
    eta: float | None = None          # DDIM eta of the fast mode (reference mode is DDPM: ignored)
    dilate_px: float = 20.0           # at the source's original resolution (paper: 20 px)
    per_image: int = 1                # pairs per source image
    seed: int = 0                     # pair p uses seed + p
    items: str = "all"                # all | N (first N eligible training items) | id,id,...
    batch_size: int = 8
    min_area: int = 4
    min_component: int = 3
    require_interior: bool = True     # reject masks touching the region border
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "off"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise fail(f"mode={self.mode!r}: choose 'reference' or 'fast'")
        if self.dilate_px < 0:
            raise fail(f"dilate_px={self.dilate_px}: must be >= 0 (pixels at the original resolution)")
        if self.per_image < 1 or self.batch_size < 1:
            raise fail("per_image and batch_size must be >= 1")
        for name in ("steps", "jump_length", "resample"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise fail(f"{name}={v}: must be >= 1")

    def resolved(self) -> dict[str, Any]:
        """The RePaint parameters actually used: sampler, steps, jump_length, resample, eta."""
        sampler, steps, jl, r, eta = MODES[self.mode]
        return {"sampler": sampler, "steps": self.steps or steps, "jump_length": self.jump_length or jl,
                "resample": self.resample or r, "eta": eta if self.eta is None else float(self.eta)}


# ------------------------------------------------------------------ dilation

def dilation_scale(item: dict[str, Any], size: Sequence[int]) -> tuple[float, float]:
    """Original pixels per prepared pixel ``(row, col)`` from the item's ``original_size`` (1, 1 when unknown)."""
    orig = item.get("original_size")
    if not orig:
        return 1.0, 1.0
    return float(orig[0]) / float(size[0]), float(orig[1]) / float(size[1])


def dilate_region(mask: np.ndarray, dilate_px: float, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """bool (H, W) lesion → bool (H, W) region: pixels within ``dilate_px`` ORIGINAL pixels of the lesion.

    ``scale`` = original pixels per prepared pixel (row, col) (:func:`dilation_scale`). Exact Euclidean
    dilation by a disk on the original grid via ``scipy.ndimage.distance_transform_edt(sampling=scale)``.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("empty lesion mask")
    if dilate_px <= 0:
        return mask.copy()
    dist = ndimage.distance_transform_edt(~mask, sampling=scale)
    return dist <= dilate_px + 1e-9


def region_border(region: np.ndarray) -> np.ndarray:
    """bool (H, W): region pixels with a 4-neighbour outside the region (the image edge does not count)."""
    from scipy import ndimage

    return region & ~ndimage.binary_erosion(region, border_value=1)


# ------------------------------------------------------------------ generators

class GeneratorSet:
    """The joint generator(s) of one inpainting job and the target-cluster choice (module docstring a/b/c)."""

    def __init__(self, runs: Sequence[Path | str], device: str) -> None:
        from ..config import from_dict
        from ..diffusion.schedule import DiffusionConfig, NoiseSchedule
        from ..methods import get_method
        from ..methods.export import load_export

        if not runs:
            raise fail("--generator: pass at least one generator run (RUN/export of a joint or joint_cluster train)")
        self.runs = [Path(r) for r in runs]
        self.provs = []
        for run in self.runs:
            if not run.is_dir():
                raise fail(f"{run}: generator run folder not found; pass the --out folder of 'synthpair train'")
            prov = generator_provenance(run)
            if not get_method(prov["method"]).joint_state:
                raise fail(f"{run}: method {prov['method']!r} does not generate masks; inpainting needs a joint "
                           f"image+mask generator ({' or '.join(joint_methods())})")
            self.provs.append(prov)
        # a label-conditioned network (its export records clusters.k) holds every cluster in one run
        labels = [get_method(p["method"]).label_classes(p["export_config"]) for p in self.provs]
        if labels[0] is not None and len(self.runs) > 1:
            raise fail(f"--generator: a {self.provs[0]['method']} run already holds every cluster; pass it alone (or "
                       f"several plain joint runs, one per cluster)")
        datas = {json.dumps(p["export_config"]["data"], sort_keys=True) for p in self.provs}
        folds = {p["fold"] for p in self.provs}
        if len(datas) > 1 or len(folds) > 1:
            raise fail(f"--generator {' '.join(map(str, self.runs))}: the runs differ in data shape or fold "
                       f"({sorted(folds)}); pass generators trained on the same dataset and fold")
        self.fold = int(self.provs[0]["fold"])
        self.data = self.provs[0]["export_config"]["data"]
        self.cluster_mode = ("label" if labels[0] is not None else "runs" if len(self.runs) > 1 else "none")
        if self.cluster_mode == "label":
            self.k = int(labels[0])
        else:
            self.k = len(self.runs) if self.cluster_mode == "runs" else 1
        self.device = device
        self.bundles = [load_export(r / "export", device=device) for r in self.runs]
        self.schedules = [NoiseSchedule(from_dict(DiffusionConfig, b[1]["diffusion"],
                                                  where=f"{r}/export/config.json:diffusion"), device=device)
                          for r, b in zip(self.runs, self.bundles)]
        self.train_cases = sorted(set().union(*[p["train_cases"] for p in self.provs]))

    def check_data(self, ds: PreparedDataset) -> None:
        """Refuse a dataset of another size/channels/classes than the generators."""
        want = (int(self.data["channels"]), int(self.data["num_classes"]), tuple(int(v) for v in self.data["size"]))
        have = (ds.channels, ds.num_classes, ds.size)
        if want != have:
            raise fail(f"{ds.root}: (channels, classes, size) = {have} but the generator {self.runs[0]} was trained "
                       f"on {want}; pass the generator's own dataset")
        _, test = ds.fold_cases(self.fold)
        bad = sorted(set(self.train_cases) & set(test))
        if bad:
            raise fail(f"{self.runs[0]}: its training cases include {len(bad)} test case(s) of fold {self.fold} of "
                       f"{ds.root} (e.g. {bad[0]}); pass the dataset the generator was trained on")

    def pick(self, gen: Any) -> int | None:
        """Draw the target cluster from the pair's generator (None for a single Full-Diff run)."""
        import torch

        if self.cluster_mode == "none":
            return None
        return int(torch.randint(self.k, (1,), generator=gen).item())

    def model_index(self, j: int | None) -> int:
        return j if self.cluster_mode == "runs" else 0


def read_source_clusters(path: Path | str, fold: int) -> dict[str, int]:
    """``CLUSTERS/clusters.json`` (``synthpair cluster``; read by :func:`synthpair.data.clustering.read_clusters`)
    → ``{item_id: cluster}``, refused when its fold differs from the generator's."""
    from ..data.clustering import read_clusters

    info = read_clusters(path)
    if info.get("fold") is not None and int(info["fold"]) != fold:
        raise fail(f"{path}: clusters of fold {info['fold']} but the generator is of fold {fold}; pass matching ones")
    return {str(k): int(v) for k, v in info["assignments"].items()}


# ------------------------------------------------------------------ sources

def select_sources(ds: PreparedDataset, fold: int, items: str) -> tuple[list[str], int]:
    """Source item ids (training split of ``fold``, non-empty lesion) and the number of empty-mask items skipped.

    ``items``: ``all``; ``N`` (the first N eligible items in dataset order); or ``id,id,...`` (each must be a
    training item with a lesion: one-line error otherwise).
    """
    train_ids, test_ids = ds.split(fold)
    train_set, test_set = set(train_ids), set(test_ids)
    spec = items.strip()
    if spec == "all" or spec.isdigit():
        limit = None if spec == "all" else int(spec)
        if limit is not None and limit < 1:
            raise fail(f"--items {spec}: must be >= 1 (or all)")
        chosen, skipped = [], 0
        for iid in train_ids:
            if limit is not None and len(chosen) >= limit:
                break
            _, m = ds.load([iid])
            if (m[0] > 0).any():
                chosen.append(iid)
            else:
                skipped += 1
        return chosen, skipped
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    known = set(ds.ids)
    for iid in chosen:
        if iid not in known:
            raise fail(f"--items {iid}: no such item in {ds.root}/dataset.json")
        if iid in test_set or iid not in train_set:
            raise fail(f"--items {iid}: not in the training split of fold {fold}; only the generator's training "
                       f"images may be inpainted (its test images must stay unseen)")
        _, m = ds.load([iid])
        if not (m[0] > 0).any():
            raise fail(f"--items {iid}: its lesion mask is empty, nothing to inpaint; choose an image with a lesion")
    return chosen, 0


def inpainted_mask(mask: np.ndarray, region: np.ndarray, min_component: int) -> np.ndarray:
    """The kept mask of an inpainted pair: the decoded mask (H, W) inside ``region`` only, components smaller
    than ``min_component`` removed."""
    mask = np.asarray(mask).copy()
    mask[~region] = 0
    return clean_mask(mask, min_component)


def repaint_block(gens: "GeneratorSet", ds: PreparedDataset, items: Sequence[str], seeds: Sequence[int],
                  params: dict[str, Any], *, dilate_px: float, device: str, autocast: Any) -> dict[str, Any]:
    """Inpaint one block: source ``items[r]`` with pair seed ``seeds[r]`` (its CPU generator draws the target
    cluster first, then every RePaint noise). Rows are grouped by generator and each group runs as one batch.

    → {"images" float32 (B, C, H, W), "masks" int64 (B, H, W) (decoded, not yet cut to the region), "regions"
    bool (B, H, W), "targets" (target cluster per row or None), "nfe"}."""
    import torch

    from ..diffusion.cond import Cond
    from ..diffusion.repaint import repaint
    from ..methods.joint import pack_joint, seed_generators, unpack_joint

    items_by_id = {it["id"]: it for it in ds.items}
    generators = seed_generators(seeds)
    targets = [gens.pick(g) for g in generators]
    images, masks = ds.load(list(items))
    regions = np.stack([dilate_region(msk > 0, dilate_px, dilation_scale(items_by_id[iid], ds.size))
                        for iid, msk in zip(items, masks)])
    x_known = pack_joint(torch.from_numpy(images), torch.from_numpy(masks), ds.num_classes)
    # outside the region the lesion is absent: the mask channels are known background there
    known_mask = torch.from_numpy(~regions)[:, None]
    out_x = torch.empty_like(x_known)
    nfe = 0
    for gi in sorted({gens.model_index(t) for t in targets}):
        rows = [r for r, t in enumerate(targets) if gens.model_index(t) == gi]
        model, _ = gens.bundles[gi]
        cond = None
        if gens.cluster_mode == "label":
            cond = Cond(label=torch.tensor([targets[r] for r in rows], dtype=torch.long, device=device))
        res = repaint(model, gens.schedules[gi], x_known[rows].to(device), known_mask[rows].to(device),
                      steps=params["steps"], jump_length=params["jump_length"], resample=params["resample"],
                      sampler=params["sampler"], eta=params["eta"], cond=cond,
                      generators=[generators[r] for r in rows], autocast_dtype=autocast)
        out_x[rows] = res.x0.cpu()
        nfe = res.nfe
    new_images, new_masks = unpack_joint(out_x, ds.channels, ds.num_classes)
    return {"images": new_images.numpy(), "masks": new_masks.numpy(), "regions": regions, "targets": targets,
            "nfe": nfe}


def replay_inpainted(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Recipe ``inpaint`` (:mod:`.replay`): re-run the recorded RePaint block (``batch_seeds`` / ``batch_items`` of
    ``source_data``) with the recorded generators and settings → (image float32 (C, H, W), kept mask int64 (H, W)).
    Refuses lines written before the block was recorded and generators whose weights changed."""
    from ..env import resolve_autocast
    from ..networks.export import sha256_file

    if "batch_items" not in rec or "batch_seeds" not in rec:
        raise fail(f"pair {rec['id']}: its manifest line has no batch_seeds/batch_items (inpainted before replay was "
                   f"recorded); inpaint again to make it replayable")
    runs = [Path(r) for r in rec["generator_runs"]]
    shas = rec.get("generator_sha256s") or [rec["model_sha256"]] * len(runs)
    for run, sha in zip(runs, shas):
        if sha256_file(run / "export" / "model.safetensors") != sha:
            raise fail(f"{run}: weights changed since {rec['id']} was inpainted (sha256 differs); cannot replay it")
    gens = GeneratorSet(runs, rec["device"])
    ds = PreparedDataset.open(rec["source_data"])
    params = {k: rec[k] for k in ("sampler", "steps", "jump_length", "resample", "eta")}
    res = repaint_block(gens, ds, rec["batch_items"], rec["batch_seeds"], params, dilate_px=rec["dilate_px"],
                        device=rec["device"], autocast=resolve_autocast(rec["amp"], rec["device"]))
    r = list(rec["batch_seeds"]).index(rec["seed"])
    return res["images"][r], inpainted_mask(res["masks"][r], res["regions"][r], int(rec["min_component"]))


# ------------------------------------------------------------------ main

def inpaint(data_dir: Path | str, runs: Sequence[Path | str], out_dir: Path | str,
            cfg: InpaintConfig = InpaintConfig(), clusters: Path | str | None = None,
            progress: bool = True, overwrite: bool = False) -> Path:
    """Inpaint dilated lesions of DATA's training images with the joint generator(s) → SYN folder.

    Writes ``images/``, ``masks/``, ``regions/`` (uint8 0/1), ``manifest.jsonl``, ``inpaint_config.json`` and
    ``dataset.json`` (with an ``inpaint`` summary: attempted, kept, rejected by reason, empty sources skipped,
    NFE per pair, seconds). Returns ``out_dir``.
    """
    import torch

    from ..env import resolve_autocast, resolve_device

    ds = PreparedDataset.open(data_dir)
    device = str(resolve_device(cfg.device))
    gens = GeneratorSet(runs, device)
    gens.check_data(ds)
    source_clusters = read_source_clusters(clusters, gens.fold) if clusters is not None else {}
    sources, skipped_empty = select_sources(ds, gens.fold, cfg.items)
    if not sources:
        raise fail(f"{ds.root}: no training image of fold {gens.fold} has a lesion to inpaint")
    train_cases_fold = set(ds.fold_cases(gens.fold)[0])
    for iid in sources:
        if ds.case_of(iid) not in train_cases_fold:
            raise fail(f"{iid}: case {ds.case_of(iid)} is not in the training split of fold {gens.fold}")
    params = cfg.resolved()
    method_name = "repaint" if cfg.mode == "reference" else "fast-repaint"
    autocast = resolve_autocast(cfg.amp, device)
    C = ds.channels
    size = ds.size
    items_by_id = {it["id"]: it for it in ds.items}

    # all pair jobs: (pair index, source id, copy m, seed)
    jobs = [(s * cfg.per_image + m, iid, m, cfg.seed + s * cfg.per_image + m)
            for s, iid in enumerate(sources) for m in range(cfg.per_image)]
    rejected = {"empty": 0, "touches_region_border": 0}
    lines: list[PairRecord] = []
    nfe_total = 0
    t0 = time.time()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=method_name, unit="pair", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writer = SyntheticWriter(tmp)
        save_config(cfg, tmp / "inpaint_config.json")
        for start in range(0, len(jobs), cfg.batch_size):
            block = jobs[start:start + cfg.batch_size]
            seeds = [j[3] for j in block]
            block_items = [j[1] for j in block]
            res = repaint_block(gens, ds, block_items, seeds, params, dilate_px=cfg.dilate_px, device=device,
                                autocast=autocast)
            nfe_total += res["nfe"] * len(block)
            for r, (p, iid, m, seed) in enumerate(block):
                region = res["regions"][r]
                mask = inpainted_mask(res["masks"][r], region, cfg.min_component)
                area = int((mask > 0).sum())
                if area < max(cfg.min_area, 1):
                    rejected["empty"] += 1
                    continue
                if cfg.require_interior and (mask[region_border(region)] > 0).any():
                    rejected["touches_region_border"] += 1
                    continue
                j = res["targets"][r]
                gi = gens.model_index(j)
                case = ds.case_of(iid)
                sc = dilation_scale(items_by_id[iid], size)
                rec = PairRecord(
                    id=pair_id(seed), seed=seed, method=method_name, generator_run=gens.provs[gi]["generator_run"],
                    model_sha256=gens.provs[gi]["model_sha256"], fold=gens.fold,
                    train_cases=sorted(set(gens.train_cases) | {case}), source_case=case, mask_area=area,
                    faithfulness=None, fields={
                        **params, "generator_runs": [p_["generator_run"] for p_ in gens.provs],
                        "generator_sha256s": [p_["model_sha256"] for p_ in gens.provs],
                        "source_data": str(ds.root.resolve()), "source_item": iid,
                        "source_cluster": source_clusters.get(iid), "target_cluster": j, "copy": m,
                        "dilate_px": cfg.dilate_px, "dilate_px_prepared": [round(cfg.dilate_px / sc[0], 4),
                                                                           round(cfg.dilate_px / sc[1], 4)],
                        "region_area": int(region.sum()), "nfe": res["nfe"], "amp": cfg.amp, "device": device,
                        "cpu_threads": torch.get_num_threads(),
                        "min_component": cfg.min_component, "batch_seeds": seeds, "batch_items": block_items})
                writer.pair(rec, res["images"][r], mask, region)
                lines.append(rec)
            bar.update(len(block))
            bar.set_postfix(kept=f"{len(lines)}/{start + len(block)}")
        bar.close()
        seconds = time.time() - t0
        writer.rewrite(lines)
        items = dataset_items(lines, size, spacing=lambda r: ds.spacing_of(r.get("source_item")), source_item=True)
        summary = {"mode": cfg.mode, **params, "sources": len(sources), "attempted": len(jobs), "kept": len(lines),
                   "rejected": rejected, "skipped_empty_sources": skipped_empty,
                   "nfe_per_pair": nfe_total / max(len(jobs), 1), "seconds": round(seconds, 2),
                   "seconds_per_pair": round(seconds / max(len(jobs), 1), 4), "config": to_dict(cfg)}
        info = dataset_info(
            name=f"inpainted-{ds.info.get('name', 'data')}", modality=ds.modality, channels=C,
            labels=ds.labels, size=size, normalisation={"method": "synthetic"},
            items=items, synthetic=True, generator_run=gens.provs[0]["generator_run"],
            generator_runs=[p["generator_run"] for p in gens.provs],
            model_sha256=gens.provs[0]["model_sha256"], fold=gens.fold,
            train_cases=sorted(set(gens.train_cases).union(*[{r.source_case} for r in lines])),
            inpaint=summary)
        writer.finish(info)
    if progress:
        print(f"inpainted {len(lines)} of {len(jobs)} pairs ({rejected}) in {seconds:.1f}s", file=sys.stderr)
    return Path(out_dir)
