"""``synthpair evaluate images --real DIR --synthetic DIR``: generation quality of a synthetic set.

Both folders use the prepared-dataset layout (docs/architecture.md); images are read as ``(N, C, H, W)`` in
``[-1, 1]``. The result (a JSON-able dict, also written to ``--out``) holds, each with its sample counts:

* ``distribution``: Fréchet distance and KID on the extractor's features (z-scored with the real set's
  statistics), for synthetic vs all real, for synthetic (subsampled to the half size) vs real half A, and
  the **real-vs-real baseline**: real half A vs real half B (a seeded random split of the real set). A score
  is only meaningful next to that baseline;
* ``diversity``: mean pairwise MS-SSIM within the synthetic and within the real set (and the LPIPS-style
  distance when ``--extractor inception --weights`` gives a network);
* ``paired``: PSNR, SSIM, MS-SSIM, MAE, MSE, RMSE, NMAE (images mapped to [0, 1], data range 1) of each
  synthetic image against its source real image when the manifest names one (``source_id``), else against
  its nearest real training image by SSIM (a closeness measure, stated in ``paired.reference``); beside it
  the real-vs-real baseline: each real image against its SSIM-nearest *other* real image. PSNR of an exact
  copy is infinite and left out of the mean (``n_infinite_psnr`` counts them);
* ``masks``: area / components / perimeter / compactness, real vs synthetic (None when either set has
  image-only items: unlabelled real images, or the output of an image-only generator); ``faithfulness``: the mean ±
  sd of the manifest's per-pair mask faithfulness (Dice of a reference segmenter, written by mask-conditioned
  generation) when present, else None;
* ``memorisation``: nearest real training image per synthetic image by features and by SSIM, flags.

Compatibility policy: the channel counts must agree (a clear error otherwise: converting grey↔RGB would
invent or discard information); when the image sizes differ the **synthetic** images are resized to the real
size (bilinear with anti-aliasing for images, nearest for masks) and ``resize_policy`` says so.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import fail
from ..metrics.distribution import SampleSizeWarning, frechet_distance, kid
from ..metrics.diversity import pairwise_lpips, pairwise_ms_ssim
from ..metrics.features import extract, get_extractor, standardize
from ..metrics.image import PAIRED_METRICS, paired_metrics, to_unit
from ..metrics.masks import compare_mask_stats
from ..metrics.memorisation import memorisation
from ..metrics.statistics import mean_sd


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the generation evaluation."""

    extractor: str = "radiomics"       # radiomics (offline default) | inception (needs weights)
    weights: str | None = None         # local Inception-v3 state dict for extractor=inception / LPIPS-style
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    diversity_pairs: int = 500         # random pairs for mean pairwise MS-SSIM
    lpips_pairs: int = 50
    memorisation_quantile: float = 0.05
    seed: int = 0


@dataclass
class ImageSet:
    images: np.ndarray        # (N, C, H, W) float32 in [-1, 1]
    masks: np.ndarray | None  # (N, H, W) int64; None when any item is image-only (no mask)
    ids: list[str]
    num_classes: int
    root: Path | None = None
    source_ids: list[str | None] | None = None     # manifest "source_id", else the item of "source_case"
    cases: list[str] | None = None                 # case id of each item (real sets)
    faithfulness: list[float | None] | None = None  # manifest "faithfulness" (mask-conditioned generation)


def load_set(root: Path | str, ids: list[str] | None = None, what: str = "dataset") -> ImageSet:
    """Read a prepared/synthetic folder (all items, or ``ids``) → :class:`ImageSet`."""
    from ..data.dataset import PreparedDataset

    root = Path(root)
    if not (root / "dataset.json").is_file():
        raise fail(f"{root}: no dataset.json — not a {what} folder; pass a folder written by 'synthpair prepare' "
                   f"or 'synthpair generate'")
    ds = PreparedDataset.open(root, require_splits=False)
    ids = list(ds.ids if ids is None else ids)
    if len(ids) < 2:
        raise fail(f"{root}: {len(ids)} image(s); the {what} set needs at least 2 images to compare distributions")
    if all(ds.is_labelled(i) for i in ids):
        images, masks = ds.load(ids)
    else:  # unlabelled real images or an image-only generator's output: images only, no mask statistics
        images, masks = ds.load_images(ids), None
    source = faith = None
    man = root / "manifest.jsonl"
    if man.is_file():
        by_id = {}
        for line in man.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                by_id[rec.get("id")] = rec
        recs = [by_id.get(i, {}) for i in ids]
        source = [r.get("source_id") or (f"case:{r['source_case']}" if r.get("source_case") else None) for r in recs]
        faith = [r.get("faithfulness") for r in recs]
    return ImageSet(images, masks, ids, ds.num_classes, root, source, [ds.case_of(i) for i in ids], faith)


def _source_index(real: ImageSet, syn: ImageSet) -> np.ndarray | None:
    """Index of each synthetic pair's source real image (manifest ``source_id``, or ``source_case`` when that
    case has exactly one image in the real set), or None when any pair has none."""
    if not syn.source_ids:
        return None
    index = {i: k for k, i in enumerate(real.ids)}
    by_case: dict[str, list[int]] = {}
    for k, c in enumerate(real.cases or []):
        by_case.setdefault(c, []).append(k)
    out = []
    for s in syn.source_ids:
        if s is None:
            return None
        if s.startswith("case:") and len(by_case.get(s[5:], [])) == 1:
            out.append(by_case[s[5:]][0])
        elif s in index:
            out.append(index[s])
        else:
            return None
    return np.array(out)


def _resize(images: np.ndarray, masks: np.ndarray | None, size: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray | None]:
    import torch
    import torch.nn.functional as F

    t = F.interpolate(torch.from_numpy(images), size=size, mode="bilinear", antialias=True, align_corners=False)
    if masks is None:
        return t.clamp(-1, 1).numpy(), None
    m = F.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=size, mode="nearest")
    return t.clamp(-1, 1).numpy(), m[:, 0].long().numpy()


def match_sets(real: ImageSet, syn: ImageSet) -> str:
    """Apply the compatibility policy in place (see the module docstring) → the policy sentence."""
    rc, sc = real.images.shape[1], syn.images.shape[1]
    if rc != sc:
        raise fail(f"{syn.root or 'synthetic'}: {sc} channel(s) but the real set {real.root or ''} has {rc}; "
                   f"evaluate sets with the same channels (regenerate, or prepare the real data with matching channels)")
    if real.images.shape[2:] != syn.images.shape[2:]:
        rs, ss = tuple(real.images.shape[2:]), tuple(syn.images.shape[2:])
        syn.images, syn.masks = _resize(syn.images, syn.masks, rs)
        return (f"synthetic images resized from {ss[0]}×{ss[1]} to the real size {rs[0]}×{rs[1]} "
                f"(bilinear, anti-aliased; masks nearest)")
    return "same size and channels; no resizing"


def _distribution(fr: np.ndarray, fs: np.ndarray, cfg: EvalConfig, caught: list[str]) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(fr))
    half = len(fr) // 2
    a, b = fr[perm[:half]], fr[perm[half:]]
    fs_sub = fs[rng.permutation(len(fs))[:len(b)]]

    def fd(x: np.ndarray, y: np.ndarray) -> float | None:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always", SampleSizeWarning)
            v = frechet_distance(x, y)
        for item in w:
            if issubclass(item.category, SampleSizeWarning):
                caught.append(str(item.message))
                warnings.warn(str(item.message), SampleSizeWarning, stacklevel=4)
        return v

    def kd(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        return kid(x, y, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed)

    dim = fr.shape[1]
    pairs = {"synthetic_vs_real": (fr, fs), "synthetic_vs_real_half": (a, fs_sub), "real_half_vs_real_half": (a, b)}
    out: dict[str, Any] = {"feature_dim": dim}
    for name, (x, y) in pairs.items():
        ok = len(x) >= 2 and len(y) >= 2
        out[name] = {"n_real": int(len(x)), "n_other": int(len(y)),
                     "fd": fd(x, y) if ok else None, "kid": kd(x, y) if ok else None,
                     "fd_reliable": bool(min(len(x), len(y)) >= dim)}
    return out


def evaluate_arrays(real: ImageSet, syn: ImageSet, cfg: EvalConfig = EvalConfig(),
                    extractor: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """All generation metrics for two in-memory sets (see the module docstring) → JSON-able dict."""
    policy = match_sets(real, syn)
    ex = extractor or get_extractor(cfg.extractor, cfg.weights)
    caught: list[str] = []
    fr_raw, fs_raw = extract(ex, real.images), extract(ex, syn.images)
    fr, fs = standardize(fr_raw, fs_raw)
    res: dict[str, Any] = {
        "extractor": getattr(ex, "name", cfg.extractor), "counts": {"real": len(real.ids), "synthetic": len(syn.ids)},
        "image_size": list(real.images.shape[1:]), "resize_policy": policy, "data_range": "[0, 1] (images mapped from [-1, 1])",
        "distribution": _distribution(fr, fs, cfg, caught)}
    res["diversity"] = {"ms_ssim_synthetic": pairwise_ms_ssim(syn.images, cfg.diversity_pairs, cfg.seed),
                        "ms_ssim_real": pairwise_ms_ssim(real.images, cfg.diversity_pairs, cfg.seed)}
    model = getattr(ex, "model", None)
    if model is None and cfg.weights:
        from ..metrics.features import load_inception

        model = load_inception(cfg.weights)
    if model is not None:
        res["diversity"]["lpips_synthetic"] = pairwise_lpips(syn.images, model, cfg.lpips_pairs, cfg.seed)
        res["diversity"]["lpips_real"] = pairwise_lpips(real.images, model, cfg.lpips_pairs, cfg.seed)
    mem = memorisation(real.images, fr, syn.images, fs, quantile=cfg.memorisation_quantile)
    for r in mem["rows"]:
        r["id"] = syn.ids[r["index"]]
        r["feat_nn_id"] = real.ids[r["feat_nn"]]
        r["ssim_nn_id"] = real.ids[r["ssim_nn"]]
    res["memorisation"] = mem
    src = _source_index(real, syn)
    if src is not None:
        ref_idx = src
        reference = "the source real image of each pair's mask (manifest source_id / source_case)"
    else:
        ref_idx = np.array([r["ssim_nn"] for r in mem["rows"]])
        reference = "nearest real training image by SSIM (unpaired generation: a closeness measure, not fidelity)"
    finite = lambda v: mean_sd(np.where(np.isinf(v), np.nan, v))  # noqa: E731 (PSNR of an exact copy is inf)
    vals = paired_metrics(to_unit(syn.images), to_unit(real.images[ref_idx]))
    base = paired_metrics(to_unit(real.images), to_unit(real.images[np.array(mem["real_ssim_nn"])]))
    res["paired"] = {"reference": reference, **{k: finite(vals[k]) for k in PAIRED_METRICS},
                     "real_vs_real": {k: finite(base[k]) for k in PAIRED_METRICS},
                     "real_vs_real_reference": "each real training image vs its SSIM-nearest other real image",
                     "n_infinite_psnr": int(np.isinf(vals["psnr"]).sum())}
    res["masks"] = (None if real.masks is None or syn.masks is None else
                    compare_mask_stats(real.masks, syn.masks, max(real.num_classes, syn.num_classes)))
    faith = [f for f in (syn.faithfulness or []) if f is not None]
    res["faithfulness"] = ({**mean_sd(faith), "source": "manifest 'faithfulness': Dice of a reference segmenter "
                                                        "trained on real data vs the generating mask"} if faith else None)
    res["warnings"] = sorted(set(caught))
    return res


def evaluate_images(real_dir: Path | str, synthetic_dir: Path | str, out: Path | str | None = None,
                    cfg: EvalConfig = EvalConfig(), fold: int | None = None) -> dict[str, Any]:
    """Evaluate ``synthetic_dir`` against ``real_dir`` (all items, or the training split of ``fold``).

    Writes ``out`` (JSON) and ``out`` with suffix ``.md`` (the generation table) when given.
    """
    real_ids = None
    if fold is not None:
        from ..data.dataset import PreparedDataset

        real_ids, _ = PreparedDataset.open(real_dir).split(fold)
    real = load_set(real_dir, real_ids, "real dataset")
    syn = load_set(synthetic_dir, None, "synthetic")
    res = evaluate_arrays(real, syn, cfg)
    res["real"] = str(real_dir)
    res["synthetic"] = str(synthetic_dir)
    res["fold"] = fold
    if out is not None:
        from ..io import write_json_atomic, write_text_atomic

        out = Path(out)
        write_json_atomic(out, res)
        write_text_atomic(out.with_suffix(".md"), generation_table(res))
    return res


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        if v.get("mean") is None:
            return "–"
        return f"{v['mean']:.{digits}g} ± {v['sd']:.{digits}g}" if v.get("sd") else f"{v['mean']:.{digits}g}"
    return f"{v:.{digits}g}"


def generation_rows(res: dict[str, Any]) -> list[dict[str, str]]:
    """The generation table as rows {metric, synthetic, real-vs-real baseline, n} (strings, for MD/CSV/HTML)."""
    d = res["distribution"]
    ex = res["extractor"]
    s, sh, rr = d["synthetic_vs_real"], d["synthetic_vs_real_half"], d["real_half_vs_real_half"]
    rows = []
    def cell(x: dict[str, Any], key: str) -> str:
        flag = " (n < dim: unreliable)" if key == "fd" and x[key] is not None and not x["fd_reliable"] else ""
        return _fmt(x[key]) + flag

    for key, label in (("fd", f"FD-{ex} ↓"), ("kid", f"KID-{ex} ↓")):
        rows.append({"metric": label, "synthetic": cell(s, key), "synthetic (half-size)": cell(sh, key),
                     "real-vs-real baseline": cell(rr, key),
                     "n": f"real {s['n_real']} / syn {s['n_other']}; halves {rr['n_real']} / {rr['n_other']}"})
    dv = res["diversity"]
    rows.append({"metric": "pairwise MS-SSIM (diversity) ↓", "synthetic": _fmt(dv["ms_ssim_synthetic"]),
                 "synthetic (half-size)": "", "real-vs-real baseline": _fmt(dv["ms_ssim_real"]),
                 "n": f"pairs {dv['ms_ssim_synthetic']['n']} / {dv['ms_ssim_real']['n']}"})
    if "lpips_synthetic" in dv:
        rows.append({"metric": "pairwise LPIPS-style (diversity) ↑", "synthetic": _fmt(dv["lpips_synthetic"]),
                     "synthetic (half-size)": "", "real-vs-real baseline": _fmt(dv["lpips_real"]),
                     "n": f"pairs {dv['lpips_synthetic']['n']} / {dv['lpips_real']['n']}"})
    p = res["paired"]
    for k in PAIRED_METRICS:
        arrow = "↑" if k in ("psnr", "ssim", "ms_ssim") else "↓"
        rr_k = p.get("real_vs_real", {}).get(k)
        rows.append({"metric": f"{k.upper().replace('_', '-')} vs reference {arrow}", "synthetic": _fmt(p[k]),
                     "synthetic (half-size)": "", "real-vs-real baseline": _fmt(rr_k),
                     "n": f"{p[k]['n']} / {rr_k['n'] if rr_k else '–'}"})
    f = res.get("faithfulness")
    if f:
        rows.append({"metric": "mask faithfulness (Dice) ↑", "synthetic": _fmt(f), "synthetic (half-size)": "",
                     "real-vs-real baseline": "", "n": str(f["n"])})
    m = res["memorisation"]
    rows.append({"metric": "memorisation: flagged near-copies", "synthetic": f"{m['n_flagged']} / {m['n_synthetic']}",
                 "synthetic (half-size)": "",
                 "real-vs-real baseline": f"NN dist median {m['real_nn']['feat_dist_median']:.3g}, "
                                          f"NN SSIM median {m['real_nn']['ssim_median']:.3g}",
                 "n": f"real train {m['n_real']}"})
    return rows


def generation_table(res: dict[str, Any]) -> str:
    """Markdown table of :func:`generation_rows` plus the notes (reference, policy, warnings)."""
    rows = generation_rows(res)
    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(r[h] for h in heads) + " |" for r in rows]
    notes = [f"- paired metrics reference: {res['paired']['reference']}", f"- {res['resize_policy']}"]
    notes += [f"- warning: {w}" for w in res.get("warnings", [])]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


__all__ = ["EvalConfig", "ImageSet", "evaluate_arrays", "evaluate_images", "generation_rows", "generation_table",
           "load_set", "match_sets"]
