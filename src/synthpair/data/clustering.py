"""Cluster the training image+mask pairs of one fold (seed paper 002, sec. 2.2) with scikit-learn KMeans.

Why: one diffusion model struggles with the large variation between polyp images; the paper groups similar
pairs first and trains one model per cluster (or, here, also one cluster-conditioned model,
:mod:`synthpair.methods.cluster`). Only the **training** split of the chosen fold is clustered, so test
images never influence the clusters (nor, through them, a generator).

Features of pair i: ``f_i = [ z(image_features_i) / sqrt(D_img), z(mask_features_i) / sqrt(D_mask) ]`` where
``z`` standardises each feature with the mean/sd over the clustered training pairs
(:func:`synthpair.metrics.features.standardize`) and the ``1/sqrt(D)`` factor gives both blocks the same
total variance (each block contributes 1 to the expected squared distance per pair of points), so a
2048-d image block cannot drown a 15-d mask block. KMeans (Lloyd, k-means++ init, ``n_init=10``,
``random_state=seed``) on ``f`` → the same assignment for the same data, extractor and seed.

Extractors:

``handcrafted`` (default; offline, no weights)
    image block = per-channel 8-bin colour/intensity histograms of the image in [-1, 1] (fraction of pixels
    per bin, ``8 C`` values) + the radiomics-style texture descriptors of
    :class:`synthpair.metrics.features.RadiomicsExtractor` (first order, GLCM at distances 1/3, LBP,
    Sobel/Laplacian gradient statistics, spectral bands, local variation, per-channel mean/sd — reused, not
    duplicated); mask block = shape of the foreground (labels > 0) from ``skimage.measure.regionprops`` of the
    union: area / (H W), perimeter / (2 (H + W)), eccentricity, solidity, centroid row / H, centroid col / W,
    number of connected components, and the 7 Hu moments mapped to ``-sign(h) log10(|h| + 1e-30)``
    (the usual log scaling, Hu 1962); an empty mask gives zeros.
``inception`` (the paper's choice; needs a LOCAL Inception-v3 state dict, ``--weights PATH``)
    image block = Inception-v3 2048-d pool features of the image; mask block = the same network on the mask
    rendered as a grey image (foreground +1, background -1), as the paper passes "the mask separately".
    Loading and preprocessing are :mod:`synthpair.metrics.features` (``get_extractor("inception", weights)``).

Output folder CL: ``clusters.json`` ``{"format": "synthpair-clusters", "version": 1, "k", "fold", "data",
"extractor", "weights", "seed", "n_init", "assignments": {item_id: cluster}, "sizes": [...], "inertia",
"feature_dims": {"image", "mask"}}`` and ``cluster_<i>.json`` ``{"items": [...], "cluster": i, "k": k}`` —
usable as ``--set items=CL/cluster_<i>.json`` for a per-cluster ``joint`` run. Clusters are numbered by
decreasing size (ties: by the first training item they contain), so cluster 0 is the largest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import fail

CLUSTERS_FORMAT = "synthpair-clusters"
CLUSTERS_VERSION = 1
EXTRACTORS = ("handcrafted", "inception")
HIST_BINS = 8
MASK_FEATURES = ("area", "perimeter", "eccentricity", "solidity", "centroid_row", "centroid_col", "components",
                 *(f"hu{i}" for i in range(1, 8)))


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of ``synthpair cluster`` (saved inside clusters.json)."""

    k: int = 10
    fold: int = 0
    extractor: Literal["handcrafted", "inception"] = "handcrafted"
    weights: str = ""
    seed: int = 0
    n_init: int = 10

    def __post_init__(self) -> None:
        if self.k < 1:
            raise fail(f"--k {self.k}: the number of clusters must be >= 1")
        if self.extractor not in EXTRACTORS:
            raise fail(f"--extractor {self.extractor!r}: unknown; choose one of {', '.join(EXTRACTORS)}")
        if self.n_init < 1:
            raise fail(f"n_init={self.n_init}: must be >= 1")


def colour_histograms(images: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """images float (N, C, H, W) in [-1, 1] → (N, C·bins) fraction of pixels in each of ``bins`` equal bins."""
    n, c = images.shape[:2]
    idx = np.clip(((np.asarray(images, dtype=np.float64) + 1.0) * 0.5 * bins).astype(np.int64), 0, bins - 1)
    flat = idx.reshape(n, c, -1)
    out = np.stack([np.stack([np.bincount(flat[i, j], minlength=bins) for j in range(c)]) for i in range(n)])
    return (out / flat.shape[-1]).reshape(n, c * bins).astype(np.float64)


def mask_shape_features(masks: np.ndarray) -> np.ndarray:
    """masks int (N, H, W) labels → (N, 14) shape features of the foreground union (see module docstring)."""
    from skimage.measure import label as cc_label
    from skimage.measure import regionprops

    masks = np.asarray(masks)
    n, h, w = masks.shape
    out = np.zeros((n, len(MASK_FEATURES)), dtype=np.float64)
    for i in range(n):
        fg = (masks[i] > 0).astype(np.uint8)
        if not fg.any():
            continue
        props = regionprops(fg)[0]
        hu = np.asarray(props.moments_hu, dtype=np.float64)
        hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
        r, c = props.centroid
        out[i] = [props.area / (h * w), props.perimeter / (2.0 * (h + w)), props.eccentricity, props.solidity,
                  r / h, c / w, float(cc_label(fg, connectivity=2).max()), *hu]
    return out


def pair_features(images: np.ndarray, masks: np.ndarray, extractor: str = "handcrafted",
                  weights: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image block (N, D_img), mask block (N, D_mask)), raw (not standardised).

    images float32 (N, C, H, W) in [-1, 1]; masks int64 (N, H, W). ``inception`` needs ``weights`` (a local
    state dict); a missing file or one of another architecture is a one-line error from
    :func:`synthpair.metrics.features.load_inception`.
    """
    from ..metrics.features import RadiomicsExtractor, extract, get_extractor

    if extractor == "handcrafted":
        img = np.concatenate([colour_histograms(images), extract(RadiomicsExtractor(), images)], axis=1)
        return img, mask_shape_features(masks)
    if extractor == "inception":
        if not weights:
            raise fail("--extractor inception needs --weights PATH (a local Inception-v3 state dict, .safetensors "
                       "or .pt); nothing is downloaded — or use the default --extractor handcrafted")
        net = get_extractor("inception", weights)
        mask_img = np.where(np.asarray(masks)[:, None] > 0, 1.0, -1.0).astype(np.float32)
        return extract(net, images, batch_size=32), extract(net, mask_img, batch_size=32)
    raise fail(f"--extractor {extractor!r}: unknown; choose one of {', '.join(EXTRACTORS)}")


def combine_blocks(*blocks: np.ndarray) -> np.ndarray:
    """Standardise each feature (mean/sd over the rows) and scale block b by ``1/sqrt(D_b)`` → (N, ΣD_b)."""
    from ..metrics.features import standardize

    out = []
    for b in blocks:
        z = standardize(np.asarray(b, dtype=np.float64))[0]
        out.append(z / np.sqrt(max(b.shape[1], 1)))
    return np.concatenate(out, axis=1)


def kmeans(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, float]:
    """scikit-learn KMeans → (labels int64 (N,) renumbered by decreasing cluster size, inertia).

    Ties in size keep the order of the first row of each cluster, so the numbering is deterministic."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)
    raw = km.labels_.astype(np.int64)
    sizes = np.bincount(raw, minlength=k)
    first = np.array([np.flatnonzero(raw == c)[0] if sizes[c] else len(raw) for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[raw], float(km.inertia_)


def cluster_dataset(data_dir: Path | str, out_dir: Path | str, cfg: ClusterConfig = ClusterConfig(),
                    overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Cluster the training pairs of fold ``cfg.fold`` of DATA; write CL (see module docstring); return clusters.json.

    One-line errors: k larger than the number of training pairs, inception without weights / with weights of
    another architecture, an existing non-empty ``out_dir`` (unless ``overwrite``).
    """
    from ..data.dataset import PreparedDataset
    from ..io import atomic_output_dir, write_json_atomic

    ds = PreparedDataset.open(data_dir)
    train_ids, _ = ds.split(cfg.fold)
    if cfg.k > len(train_ids):
        raise fail(f"--k {cfg.k}: larger than the {len(train_ids)} training images of fold {cfg.fold} in {data_dir}; "
                   f"choose k <= {len(train_ids)}")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # before the (slow) features
        raise fail(f"{out}: output folder already exists and is not empty; choose a new --out or pass --overwrite")
    images, masks = ds.load(train_ids)
    if progress:
        import sys
        print(f"cluster: features ({cfg.extractor}) of {len(train_ids)} training pairs of fold {cfg.fold}",
              file=sys.stderr)
    img_f, mask_f = pair_features(images, masks, cfg.extractor, cfg.weights or None)
    labels, inertia = kmeans(combine_blocks(img_f, mask_f), cfg.k, cfg.seed, cfg.n_init)
    sizes = np.bincount(labels, minlength=cfg.k).astype(int).tolist()
    result = {
        "format": CLUSTERS_FORMAT, "version": CLUSTERS_VERSION, "k": cfg.k, "fold": cfg.fold,
        "data": str(Path(data_dir).resolve()), "extractor": cfg.extractor,
        "weights": str(Path(cfg.weights).resolve()) if cfg.weights else None, "seed": cfg.seed,
        "n_init": cfg.n_init, "feature_dims": {"image": int(img_f.shape[1]), "mask": int(mask_f.shape[1])},
        "assignments": {i: int(c) for i, c in zip(train_ids, labels)}, "sizes": sizes, "inertia": inertia,
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for c in range(cfg.k):
            write_json_atomic(tmp / f"cluster_{c}.json",
                              {"items": [i for i, l in zip(train_ids, labels) if l == c], "cluster": c, "k": cfg.k})
        write_json_atomic(tmp / "clusters.json", result)
    return result


def read_clusters(path: Path | str, train_ids: list[str] | None = None) -> dict[str, Any]:
    """Read and check ``clusters.json`` (a file, or the CL folder holding it).

    With ``train_ids``, every one of them must have an assignment (one-line error naming the file and the
    fix otherwise)."""
    from ..io import read_json

    p = Path(path)
    if p.is_dir():
        p = p / "clusters.json"
    data = read_json(p, "clusters.json")
    if not isinstance(data, dict) or data.get("format") != CLUSTERS_FORMAT:
        raise fail(f"{p}: not a synthpair clusters file; write one with 'synthpair cluster DATA --fold F --k K --out CL'")
    k = int(data.get("k", 0))
    assign = data.get("assignments", {})
    bad = [i for i, c in assign.items() if not (isinstance(c, int) and 0 <= c < k)]
    if k < 1 or bad:
        raise fail(f"{p}: cluster labels must be integers in 0..k-1 (k={k}); rerun 'synthpair cluster'")
    if train_ids is not None:
        missing = [i for i in train_ids if i not in assign]
        if missing:
            raise fail(f"{p}: {len(missing)} training item(s) have no cluster (e.g. {missing[0]!r}); rerun "
                       f"'synthpair cluster' on the same data and fold as the training run")
    return data


__all__ = ["ClusterConfig", "cluster_dataset", "read_clusters", "pair_features", "combine_blocks", "kmeans",
           "colour_histograms", "mask_shape_features", "MASK_FEATURES", "EXTRACTORS"]
