"""``synthpair harmonise``: smooth the seam of inpainted pairs with the trained joint diffusion model.

Seed paper 002 styles every inpainted image (sec. 2.4, appendix A.3: diffusion-based translation with ZeCon /
VGG content losses and DINO-ViT style losses towards the source image) because RePaint leaves "sudden changes
in colour at the boundary of the inpainting region" (sec. 3). The DINO-ViT and VGG weights are not available
offline, so harmonisation here is done by the generator itself (SDEdit-style partial re-noising, Meng et al.
2022, on the joint representation):

1. ``x = cat(image, one-hot mask in {-1, 1})``; noise it to ``t ≈ strength · T`` (``q(x_t | x)``, DDPM eq. 4);
2. denoise with :func:`synthpair.diffusion.repaint.repaint` where the MASK channels are known everywhere
   (replaced each step by the noised known mask, RePaint eq. 8–9) and the image channels are free, so the
   image is re-synthesised coherently around a fixed mask; the mask is kept exactly; with ``margin = m`` the
   image is also known outside the inpainted region grown by m px (local harmonisation: the rest of the image
   stays exact, only the region and a band around it are re-synthesised);
3. optionally (``colour_match``) match per-channel mean/sd to the source real image (L*a*b* for RGB,
   ``skimage.color``; intensity for grey);
4. optionally (``style_weights`` = local torchvision VGG16 state dict) a few Adam steps matching the source
   image's VGG Gram statistics while keeping the content (:func:`synthpair.metrics.perceptual.style_transfer`),
   the VGG part of the paper's styling, restricted to the inpainted region (dilated by ``style_margin`` px).

``strength = 0`` returns the input unchanged. Each pair ``i`` (manifest order) uses seed ``seed + i``.
What harmonisation changes is measured per pair (:func:`harmonisation_metrics`) and summarised in
``dataset.json`` ``harmonise``: mean |Δ| inside vs outside the inpainted region, colour-statistics distance
to the source before/after, boundary seam ratio before/after.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import save_config, to_dict
from ..data.dataset import PreparedDataset, read_png
from ..errors import fail
from ..io import atomic_output_dir
from .generate import generator_provenance
from .manifest import PairRecord, SyntheticWriter, read_manifest


@dataclass(frozen=True)
class HarmoniseConfig:
    """Settings of one harmonisation job (saved as ``SYN2/harmonise_config.json``)."""

    strength: float = 0.3             # fraction of the chain re-noised (0 = no change)
    steps: int = 50                   # respaced steps over the full chain; those < strength*T are run
    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "ddim"
    eta: float = 0.0
    jump_length: int = 1
    resample: int = 1                 # > 1: RePaint resampling during harmonisation too
    margin: int | None = None         # px: re-synthesise only the inpainted region grown by this (None = whole image)
    colour_match: bool = False
    style_weights: str | None = None  # local VGG16 state dict → Gram style step
    style_steps: int = 20
    style_lr: float = 0.02
    style_weight: float = 1e4
    style_margin: int = 2             # px around the inpainted region that the style step may change
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "off"

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise fail(f"strength={self.strength}: must be in [0, 1] (fraction of the chain re-noised)")
        if self.steps < 1 or self.batch_size < 1 or self.jump_length < 1 or self.resample < 1:
            raise fail("steps, batch_size, jump_length and resample must be >= 1")


# ------------------------------------------------------------------ measurements

def _ring(region: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region, border_value=1)


def _grad_mag(image: np.ndarray) -> np.ndarray:
    """image float (C, H, W) → gradient magnitude (H, W) averaged over channels (central differences)."""
    gy, gx = np.gradient(np.asarray(image, dtype=np.float64), axis=(1, 2))
    return np.sqrt(gy ** 2 + gx ** 2).mean(axis=0)


def seam_ratio(image: np.ndarray, region: np.ndarray) -> float:
    """Boundary seam of an inpainted image: mean gradient magnitude on the region's 1-px boundary ring
    (both sides) ÷ mean gradient magnitude elsewhere. image float (C, H, W) in [-1, 1], region bool (H, W).
    ≈ 1: the border is no sharper than the rest of the image; > 1: a visible seam. NaN without a ring."""
    ring = _ring(np.asarray(region, dtype=bool))
    if not ring.any() or ring.all():
        return float("nan")
    g = _grad_mag(image)
    return float(g[ring].mean() / max(g[~ring].mean(), 1e-12))


def colour_distance(image: np.ndarray, source: np.ndarray) -> float:
    """Mean over channels of ``|mean − mean_src| + |sd − sd_src|`` (whole image, [-1, 1] units; RGB in L*a*b*
    scaled to [-1, 1] per channel range). image, source float (C, H, W)."""
    a, b = _colour_space(image), _colour_space(source)
    return float(np.mean(np.abs(a.mean(axis=(1, 2)) - b.mean(axis=(1, 2)))
                         + np.abs(a.std(axis=(1, 2)) - b.std(axis=(1, 2)))))


def harmonisation_metrics(before: np.ndarray, after: np.ndarray, source: np.ndarray | None,
                          region: np.ndarray | None) -> dict[str, float | None]:
    """What harmonisation changed for one pair (float (C, H, W) images in [-1, 1], region bool (H, W))."""
    d = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64)).mean(axis=0)
    out: dict[str, float | None] = {"delta_all": float(d.mean())}
    if region is not None and region.any():
        out["delta_inside"] = float(d[region].mean())
        out["delta_outside"] = float(d[~region].mean()) if (~region).any() else None
        out["seam_before"] = seam_ratio(before, region)
        out["seam_after"] = seam_ratio(after, region)
    if source is not None:
        out["colour_dist_before"] = colour_distance(before, source)
        out["colour_dist_after"] = colour_distance(after, source)
    return out


# ------------------------------------------------------------------ colour matching

_LAB_SCALE = np.array([50.0, 128.0, 128.0])[:, None, None]
_LAB_SHIFT = np.array([50.0, 0.0, 0.0])[:, None, None]


def _colour_space(image: np.ndarray) -> np.ndarray:
    """float (C, H, W) in [-1, 1] → channels to compare: grey as is, RGB as L*a*b* mapped to ≈ [-1, 1]."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[0] != 3:
        return image
    from skimage.color import rgb2lab

    lab = rgb2lab(((image + 1.0) / 2.0).clip(0, 1).transpose(1, 2, 0)).transpose(2, 0, 1)
    return (lab - _LAB_SHIFT) / _LAB_SCALE


def _from_colour_space(values: np.ndarray) -> np.ndarray:
    if values.shape[0] != 3:
        return values
    from skimage.color import lab2rgb

    lab = values * _LAB_SCALE + _LAB_SHIFT
    return lab2rgb(lab.transpose(1, 2, 0)).transpose(2, 0, 1) * 2.0 - 1.0


def match_colour(image: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Per-channel mean/sd of ``image`` matched to ``source`` (Reinhard et al. 2001 transfer; L*a*b* for RGB).

    image, source float (C, H, W) in [-1, 1] → float32 (C, H, W) clipped to [-1, 1].
    """
    a, b = _colour_space(image), _colour_space(source)
    mu_a, sd_a = a.mean(axis=(1, 2), keepdims=True), a.std(axis=(1, 2), keepdims=True)
    mu_b, sd_b = b.mean(axis=(1, 2), keepdims=True), b.std(axis=(1, 2), keepdims=True)
    out = (a - mu_a) / np.maximum(sd_a, 1e-8) * sd_b + mu_b
    return np.clip(_from_colour_space(out), -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ main

def _load_regions(syn: Path, ids: list[str]) -> list[np.ndarray | None]:
    """``regions/<id>.png`` of an inpainted SYN as bool (H, W), or None where a pair has none."""
    out = []
    for pid in ids:
        p = syn / "regions" / f"{pid}.png"
        out.append(read_png(p).astype(bool) if p.is_file() else None)
    return out


def harmonise(syn_dir: Path | str, run: Path | str, out_dir: Path | str, cfg: HarmoniseConfig = HarmoniseConfig(),
              progress: bool = True, overwrite: bool = False) -> Path:
    """Harmonise every pair of SYN with the joint generator ``run`` → SYN2 (same layout, masks unchanged).

    SYN2's manifest lines are SYN's plus ``harmonise`` (settings, seed, metrics) and the harmonising generator's
    provenance (``harmonise_generator_run``, ``harmonise_model_sha256``; its cases join ``train_cases``).
    """
    import torch

    from ..env import resolve_device
    from ..methods import get_method

    syn_dir, run = Path(syn_dir), Path(run)
    records = read_manifest(syn_dir, allow_empty=False)
    syn = PreparedDataset.open(syn_dir, require_splits=False)
    if not run.is_dir():
        raise fail(f"{run}: generator run folder not found; pass the --out folder of 'synthpair train'")
    prov = generator_provenance(run)
    method = get_method(prov["method"])
    if not method.joint_state:
        raise fail(f"{run}: method {prov['method']!r}; harmonisation needs a joint image+mask generator")
    data = prov["export_config"]["data"]
    want = (int(data["channels"]), int(data["num_classes"]), tuple(int(v) for v in data["size"]))
    if want != (syn.channels, syn.num_classes, syn.size):
        raise fail(f"{syn_dir}: (channels, classes, size) = {(syn.channels, syn.num_classes, syn.size)} but "
                   f"{run} generates {want}; pass the generator of this dataset")
    by_id = {str(r["id"]): r for r in records}
    ids = [i for i in syn.ids if i in by_id]
    label_mode = method.label_classes(prov["export_config"]) is not None  # the network reads Cond.label
    if label_mode and any(by_id[i].get("target_cluster") is None for i in ids):
        raise fail(f"{syn_dir}: pairs without target_cluster cannot be harmonised by the {prov['method']} run {run}; "
                   f"pass a plain joint run")
    if cfg.colour_match or cfg.style_weights is not None:
        for i in ids:
            r = by_id[i]
            if not r.get("source_item") or not r.get("source_data"):
                raise fail(f"{syn_dir}: pair {i} has no source_item/source_data; --colour-match and the style "
                           f"step need pairs written by 'synthpair inpaint'")
    device = str(resolve_device(cfg.device))
    job = _Harmoniser(run, cfg, device)
    if cfg.margin is not None:
        for pid, reg in zip(ids, _load_regions(syn_dir, ids)):
            if reg is None:
                raise fail(f"{syn_dir}: pair {pid} has no regions/ file; --set margin needs pairs "
                           f"written by 'synthpair inpaint' (or leave margin unset)")

    from tqdm import tqdm

    bar = tqdm(total=len(ids), desc="harmonise", unit="pair", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    t0 = time.time()
    lines: list[PairRecord] = []
    all_metrics = []
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writer = SyntheticWriter(tmp)
        save_config(cfg, tmp / "harmonise_config.json")
        for start in range(0, len(ids), cfg.batch_size):
            block = ids[start:start + cfg.batch_size]
            seeds = [cfg.seed + start + r for r in range(len(block))]
            res = job.block(syn, syn_dir, [by_id[i] for i in block], seeds)
            for r, pid in enumerate(block):
                rec = PairRecord.from_json(by_id[pid])
                metrics = harmonisation_metrics(res["before"][r], res["images"][r], res["sources"][r],
                                                res["regions"][r])
                all_metrics.append(metrics)
                out = rec.replace(
                    train_cases=sorted(set(rec.train_cases) | set(prov["train_cases"])),
                    harmonise={"seed": seeds[r], "nfe": res["nfe"], **to_dict(cfg), **metrics},
                    harmonise_generator_run=prov["generator_run"], harmonise_model_sha256=prov["model_sha256"],
                    harmonise_input=str(syn_dir.resolve()), harmonise_batch_ids=list(block),
                    harmonise_batch_seeds=seeds, cpu_threads=torch.get_num_threads())  # replay uses the same
                writer.pair(out, res["images"][r], res["masks"][r], res["regions"][r])
                lines.append(out)
            bar.update(len(block))
        bar.close()
        writer.rewrite(lines)
        info = dict(syn.info)
        info["train_cases"] = sorted(set(info.get("train_cases", [])).union(*[r.train_cases for r in lines]))
        info["items"] = [it for it in syn.items if it["id"] in by_id]
        info["harmonise"] = {"generator_run": prov["generator_run"], "config": to_dict(cfg),
                             "seconds": round(time.time() - t0, 2), "pairs": len(lines),
                             **summarise_metrics(all_metrics)}
        writer.finish(info)
    return Path(out_dir)


class _Harmoniser:
    """One harmonisation job's generator, schedule, settings and (optional) VGG16 style network; :meth:`block`
    harmonises one block of pairs (used by :func:`harmonise` and by the replay)."""

    def __init__(self, run: Path, cfg: HarmoniseConfig, device: str) -> None:
        from ..config import from_dict
        from ..diffusion.schedule import DiffusionConfig, NoiseSchedule
        from ..env import resolve_autocast
        from ..methods import get_method
        from ..methods.export import load_export

        self.cfg, self.device = cfg, device
        self.style_net = None
        if cfg.style_weights is not None:
            from ..metrics.perceptual import load_vgg16_features

            self.style_net = load_vgg16_features(cfg.style_weights, device=device)
        self.model, export_cfg = load_export(run / "export", device=device)
        self.label_mode = get_method(export_cfg["method"]).label_classes(export_cfg) is not None
        self.schedule = NoiseSchedule(from_dict(DiffusionConfig, export_cfg["diffusion"],
                                                where=f"{run}/export/config.json"), device=device)
        self.autocast = resolve_autocast(cfg.amp, device)
        self._sources: dict[str, PreparedDataset] = {}

    def source_image(self, rec: dict[str, Any]) -> np.ndarray | None:
        """The real source image of an inpainted pair (``source_data`` / ``source_item``), or None."""
        if not rec.get("source_item") or not rec.get("source_data") or not Path(rec["source_data"]).is_dir():
            return None
        root = rec["source_data"]
        if root not in self._sources:
            self._sources[root] = PreparedDataset.open(root, require_splits=False)
        return self._sources[root].load([rec["source_item"]])[0][0]

    def block(self, syn: PreparedDataset, syn_dir: Path, recs: list[dict[str, Any]], seeds: list[int]
              ) -> dict[str, Any]:
        """Harmonise the pairs ``recs`` of ``syn`` with pair seeds ``seeds`` → {"images" (harmonised, float32
        (C, H, W) each), "before", "masks", "regions", "sources", "nfe"}."""
        import torch

        from ..diffusion.cond import Cond
        from ..diffusion.repaint import repaint
        from ..methods.joint import pack_joint, seed_generators

        cfg, device = self.cfg, self.device
        ids = [str(r["id"]) for r in recs]
        C = syn.channels
        images, masks = syn.load(ids)
        x = pack_joint(torch.from_numpy(images), torch.from_numpy(masks), syn.num_classes).to(device)
        known_mask = torch.zeros_like(x, dtype=torch.bool)
        known_mask[:, C:] = True  # mask channels known everywhere, image channels free
        regions = _load_regions(syn_dir, ids)
        if cfg.margin is not None:  # local harmonisation: the image is known outside region ⊕ margin
            from scipy import ndimage

            for r, reg in enumerate(regions):
                grown = ndimage.binary_dilation(reg, iterations=cfg.margin) if cfg.margin > 0 else reg
                known_mask[r, :C] = torch.from_numpy(~grown).to(device)
        cond = None
        if self.label_mode:
            cond = Cond(label=torch.tensor([int(r["target_cluster"]) for r in recs], device=device))
        res = repaint(self.model, self.schedule, x, known_mask, steps=cfg.steps, jump_length=cfg.jump_length,
                      resample=cfg.resample, sampler=cfg.sampler, eta=cfg.eta, cond=cond,
                      generators=seed_generators(seeds), autocast_dtype=self.autocast, strength=cfg.strength)
        out = res.x0[:, :C].float().clamp(-1, 1).cpu().numpy()
        imgs, srcs = [], []
        for r, rec in enumerate(recs):
            src = self.source_image(rec)
            img = out[r]
            if cfg.colour_match and src is not None:
                img = match_colour(img, src)
            if self.style_net is not None and src is not None and cfg.strength > 0:
                from scipy import ndimage

                from ..metrics.perceptual import style_transfer

                reg = regions[r]
                keep = None
                if reg is not None:
                    grown = ndimage.binary_dilation(reg, iterations=cfg.style_margin) if cfg.style_margin else reg
                    keep = torch.from_numpy(grown)[None, None].to(device)
                img = style_transfer(self.style_net, torch.from_numpy(img)[None].to(device),
                                     torch.from_numpy(src)[None].to(device), steps=cfg.style_steps,
                                     lr=cfg.style_lr, style_weight=cfg.style_weight,
                                     region=keep)[0].cpu().numpy()
            if cfg.strength == 0 and not cfg.colour_match:
                img = images[r]  # exactly the input (no rounding through the network path)
            imgs.append(img)
            srcs.append(src)
        return {"images": imgs, "before": images, "masks": masks, "regions": regions, "sources": srcs,
                "nfe": res.nfe}


def replay_harmonised(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Recipe ``harmonise`` (:mod:`.replay`): harmonise the recorded block (``harmonise_batch_ids`` with
    ``harmonise_batch_seeds`` of the input folder ``harmonise_input``) again with the recorded generator, settings and seeds → (image float32 (C, H, W),
    mask int64 (H, W)). Refuses lines written before the block was recorded and a generator whose weights
    changed."""
    from ..config import from_dict
    from ..env import resolve_device
    from ..networks.export import sha256_file

    if not rec.get("harmonise_input") or not rec.get("harmonise_batch_ids") or not rec.get("harmonise_batch_seeds"):
        raise fail(f"pair {rec['id']}: its manifest line has no harmonise_input/harmonise_batch_ids (harmonised "
                   f"before replay was recorded); harmonise again to make it replayable")
    run = Path(rec["harmonise_generator_run"])
    if sha256_file(run / "export" / "model.safetensors") != rec["harmonise_model_sha256"]:
        raise fail(f"{run}: weights changed since {rec['id']} was harmonised (sha256 differs); cannot replay it")
    h = dict(rec["harmonise"])
    names = {f.name for f in dataclasses.fields(HarmoniseConfig)}
    cfg = from_dict(HarmoniseConfig, {k: v for k, v in h.items() if k in names}, where=f"{rec['id']}: harmonise")
    syn_dir = Path(rec["harmonise_input"])
    syn = PreparedDataset.open(syn_dir, require_splits=False)
    inputs = {str(r["id"]): r for r in read_manifest(syn_dir)}
    block = list(rec["harmonise_batch_ids"])
    missing = [i for i in block if i not in inputs]
    if missing:
        raise fail(f"{syn_dir}: the input folder of {rec['id']} lacks pair {missing[0]} of its harmonisation block; "
                   f"restore that folder to replay")
    res = _Harmoniser(run, cfg, str(resolve_device(cfg.device))).block(
        syn, syn_dir, [inputs[i] for i in block], [int(v) for v in rec["harmonise_batch_seeds"]])
    r = block.index(rec["id"])
    return np.asarray(res["images"][r], dtype=np.float32), res["masks"][r]


def summarise_metrics(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over pairs (NaN/None skipped) → ``{"mean_<name>": value}``."""
    keys = sorted({k for r in rows for k in r})
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [v for r in rows if (v := r.get(k)) is not None and np.isfinite(v)]
        out[f"mean_{k}"] = round(float(np.mean(vals)), 6) if vals else None
    return out
