"""Feature extractors for the distribution metrics (pluggable: ``get_extractor(name, weights)``).

Every extractor maps a batch of images ``(N, C, H, W)`` float in ``[-1, 1]`` (the dataset convention) to
features ``(N, D)`` float64. Two are built in:

``radiomics`` (the default; no downloaded weights)
    Hand-crafted, radiomics-style descriptors computed with vectorised numpy/torch on the grey-level image
    (mean of the channels), in the spirit of the Fréchet Radiomics Distance (Osuala et al., "Towards
    learning-independent, interpretable, and reliable evaluation of medical image synthesis", 2024) and of
    the IBSI first-order and GLCM definitions (Zwanenburg et al. 2020). Why this default: it needs no
    network trained on natural images (Inception's ImageNet features are known to transfer poorly to
    grey-scale medical images), it is deterministic and identical on every machine, each feature has a
    meaning (so a large distance can be read), and the groups cover exactly the failure modes of small-data
    diffusion models — wrong intensity distribution (first order), wrong speckle/texture (GLCM, LBP, local
    variation), over-smoothing or noise (gradient and spectral bands). Groups (``RADIOMICS_NAMES``):

    * first order (14): mean, sd, skewness, kurtosis, percentiles 5/25/50/75/95, IQR, 1–99 % range, mean
      absolute deviation, 32-bin entropy and uniformity (percentiles from a 1024-bin histogram);
    * GLCM (16 = 8 × 2 distances): the symmetric, normalised grey-level co-occurrence matrix of the image
      quantised to 16 levels, averaged over the four directions 0°/45°/90°/135°, at distances 1 and 3:
      contrast, dissimilarity, homogeneity, ASM, correlation, entropy, cluster shade, cluster prominence;
    * LBP (10): histogram of rotation-invariant uniform local binary patterns (8 neighbours, radius 1;
      Ojala et al. 2002);
    * gradient (5): Sobel magnitude mean, sd, edge density (share > 0.25); Laplacian variance and mean |·|;
    * spectrum (4): share of the (non-DC) power in four radial frequency bands (octaves up to Nyquist);
    * local variation (4): mean local sd and mean local coefficient of variation in 3×3 and 7×7 windows
      (speckle statistics);
    * per channel mean and sd when ``C > 1`` (2 C).

    Shape lives with the masks (:mod:`synthpair.metrics.masks`), not here: these features are of images.
    The features have different units, so the evaluation z-scores both sets with the mean/sd of the *real*
    set (:func:`standardize`) before Fréchet distance / KID ("FD-radiomics", "KID-radiomics").

``inception`` (the familiar FID, from a local weights file)
    Inception-v3 (Szegedy et al. 2016) defined here in torch (torchvision is unusable on this stack) with
    torchvision's module names, so a ``state_dict`` of ``torchvision.models.inception_v3`` or pytorch-fid's
    ``pt_inception`` weights (``.safetensors`` or ``.pt``/``.pth``, loaded with ``weights_only=True``) fits;
    ``fc.*``/``AuxLogits.*`` keys are ignored. Features: the 2048-d global average pool of ``Mixed_7c``.
    Preprocessing is clean-fid's (Parmar et al. 2022, "On aliased resizing and surprising subtleties in GAN
    evaluation"), identical for both sets: quantise to uint8 (what is stored on disk), resize each channel to
    299×299 with PIL bicubic on float32 (anti-aliased), grey → 3 channels by repetition, scale
    ``(x − 128) / 128``. ``variant="fid"`` uses the TF-FID pooling quirks of pytorch-fid's ``FIDInception``
    blocks (average pools exclude padding, the last block max-pools).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import fail

# ------------------------------------------------------------------ protocol


class Extractor(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray:  # (N, C, H, W) in [-1, 1] → (N, D)
        ...


def extract(extractor: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run an extractor over ``images`` (N, C, H, W) in [-1, 1] in batches → (N, D) float64."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"extract: expected images (N, C, H, W), got shape {images.shape}")
    out = [np.asarray(extractor(images[i:i + batch_size]), dtype=np.float64) for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def standardize(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score ``reference`` and ``others`` (each (N, D)) with the per-feature mean/sd of ``reference``
    (sd floored at 1e-8·max sd so constant features stay 0 instead of exploding)."""
    mu = reference.mean(axis=0)
    sd = reference.std(axis=0)
    sd = np.maximum(sd, 1e-8 * max(float(sd.max(initial=0.0)), 1.0))
    return [(f - mu) / sd for f in (reference, *others)]


# ------------------------------------------------------------------ radiomics-style default

FIRST_ORDER = ("mean", "sd", "skewness", "kurtosis", "p05", "p25", "p50", "p75", "p95", "iqr", "range_1_99", "mad",
               "entropy", "uniformity")
GLCM = ("contrast", "dissimilarity", "homogeneity", "asm", "correlation", "entropy", "cluster_shade",
        "cluster_prominence")
GLCM_DISTANCES = (1, 3)
GLCM_LEVELS = 16
LBP_BINS = 10
GRADIENT = ("sobel_mean", "sobel_sd", "edge_density", "laplacian_var", "laplacian_absmean")
SPECTRUM_BANDS = 4
LOCAL = ("local_sd_3", "local_cv_3", "local_sd_7", "local_cv_7")


def radiomics_names(channels: int = 1) -> list[str]:
    names = [f"fo_{n}" for n in FIRST_ORDER]
    names += [f"glcm_d{d}_{n}" for d in GLCM_DISTANCES for n in GLCM]
    names += [f"lbp_{k}" for k in range(LBP_BINS)]
    names += [f"grad_{n}" for n in GRADIENT]
    names += [f"spec_band{k}" for k in range(SPECTRUM_BANDS)]
    names += list(LOCAL)
    if channels > 1:
        names += [f"ch{c}_{s}" for c in range(channels) for s in ("mean", "sd")]
    return names


def _hist_percentiles(x: np.ndarray, qs: tuple[float, ...], bins: int = 1024) -> np.ndarray:
    """Percentiles (len(qs), N) of rows of x (N, P) in [0, 1] from a ``bins``-bin histogram (exact to 1/bins;
    images come from the uint8 grid, so this is the sort-free equivalent of np.percentile)."""
    n, p = x.shape
    idx = np.minimum((x * bins).astype(np.int64), bins - 1) + (np.arange(n) * bins)[:, None]
    cdf = np.cumsum(np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins), axis=1)
    out = np.stack([(cdf < q / 100.0 * p).sum(1) for q in qs])
    return (np.minimum(out, bins - 1) + 0.5) / bins


def _first_order(g: np.ndarray) -> np.ndarray:
    n = g.shape[0]
    x = g.reshape(n, -1)
    mu = x.mean(1, dtype=np.float64)[:, None]
    d = (x - mu).astype(np.float32)
    d2 = d * d
    var = d2.mean(1, dtype=np.float64)
    sd = np.sqrt(var)
    safe = np.maximum(sd, 1e-12)
    skew = (d2 * d).mean(1, dtype=np.float64) / safe ** 3
    kurt = (d2 * d2).mean(1, dtype=np.float64) / safe ** 4
    p = _hist_percentiles(x, (1, 5, 25, 50, 75, 95, 99))
    mad = np.abs(d).mean(1, dtype=np.float64)
    bins = np.clip((x * 32).astype(np.int64), 0, 31) + 32 * np.arange(n)[:, None]
    hist = np.bincount(bins.ravel(), minlength=32 * n).reshape(n, 32) / x.shape[1]
    ent = -(hist * np.log2(np.where(hist > 0, hist, 1.0))).sum(1)
    unif = (hist ** 2).sum(1)
    return np.stack([mu[:, 0], sd, skew, kurt, p[1], p[2], p[3], p[4], p[5], p[4] - p[2], p[6] - p[0], mad, ent,
                     unif], axis=1)


def _glcm(q: np.ndarray, distance: int) -> np.ndarray:
    """q: int (N, H, W) in 0..L-1 → 8 GLCM features (N, 8), symmetric, averaged over 4 directions."""
    n, h, w = q.shape
    L = GLCM_LEVELS
    base = (np.arange(n) * L * L)[:, None]
    P = np.zeros((n, L * L), dtype=np.float64)
    for dy, dx in ((0, distance), (distance, 0), (distance, distance), (distance, -distance)):
        if dx >= 0:
            a, b = q[:, : h - dy, : w - dx], q[:, dy:, dx:]
        else:
            a, b = q[:, : h - dy, -dx:], q[:, dy:, : w + dx]
        idx = (a * L + b).reshape(n, -1)
        cnt = np.bincount((idx + base).ravel(), minlength=n * L * L).reshape(n, L * L).astype(np.float64)
        cnt_t = cnt.reshape(n, L, L).transpose(0, 2, 1).reshape(n, L * L)
        sym = cnt + cnt_t
        P += sym / np.maximum(sym.sum(1, keepdims=True), 1.0)
    P = (P / 4.0).reshape(n, L, L)
    i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    mu_i = (P * i).sum((1, 2))
    mu_j = (P * j).sum((1, 2))
    sd_i = np.sqrt((P * (i - mu_i[:, None, None]) ** 2).sum((1, 2)))
    sd_j = np.sqrt((P * (j - mu_j[:, None, None]) ** 2).sum((1, 2)))
    contrast = (P * (i - j) ** 2).sum((1, 2))
    dissim = (P * np.abs(i - j)).sum((1, 2))
    homog = (P / (1.0 + (i - j) ** 2)).sum((1, 2))
    asm = (P ** 2).sum((1, 2))
    cov = (P * (i - mu_i[:, None, None]) * (j - mu_j[:, None, None])).sum((1, 2))
    corr = np.where(sd_i * sd_j > 1e-12, cov / np.maximum(sd_i * sd_j, 1e-12), 1.0)
    ent = -(P * np.log2(np.where(P > 0, P, 1.0))).sum((1, 2))
    s = i + j - mu_i[:, None, None] - mu_j[:, None, None]
    shade = (P * s ** 3).sum((1, 2))
    prom = (P * s ** 4).sum((1, 2))
    return np.stack([contrast, dissim, homog, asm, corr, ent, shade, prom], axis=1)


def _lbp_hist(g: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform LBP (P=8, R=1) histogram (N, 10), edge-replicated border."""
    n, h, w = g.shape
    p = np.pad(g, ((0, 0), (1, 1), (1, 1)), mode="edge")
    c = g
    offs = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # circular order
    bits = np.stack([p[:, 1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] >= c for dy, dx in offs], axis=0)
    ones = bits.sum(0)
    transitions = (bits != np.roll(bits, 1, axis=0)).sum(0)
    code = np.where(transitions <= 2, ones, 9)
    idx = code.reshape(n, -1) + (np.arange(n) * LBP_BINS)[:, None]
    return np.bincount(idx.ravel(), minlength=n * LBP_BINS).reshape(n, LBP_BINS) / (h * w)


def _gradient(t: torch.Tensor) -> np.ndarray:
    """Sobel magnitude (mean, sd, edge density = share of pixels with magnitude > 0.25) and the Laplacian
    (variance, mean |·|) on the interior pixels, by array slicing (no convolution)."""
    c = t[:, 1:-1, 1:-1]
    up, dn, lf, rt = t[:, :-2, 1:-1], t[:, 2:, 1:-1], t[:, 1:-1, :-2], t[:, 1:-1, 2:]
    gx = (t[:, :-2, 2:] + 2 * rt + t[:, 2:, 2:]) - (t[:, :-2, :-2] + 2 * lf + t[:, 2:, :-2])
    gy = (t[:, 2:, :-2] + 2 * dn + t[:, 2:, 2:]) - (t[:, :-2, :-2] + 2 * up + t[:, :-2, 2:])
    mag = torch.sqrt(gx * gx + gy * gy).flatten(1)
    lp = (up + dn + lf + rt - 4 * c).flatten(1)
    return torch.stack([mag.mean(1), mag.std(1), (mag > 0.25).float().mean(1), lp.var(1), lp.abs().mean(1)],
                       1).double().numpy()


def _spectrum(t: torch.Tensor) -> np.ndarray:
    n, h, w = t.shape
    x = t - t.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.rfft2(x).abs() ** 2
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    r = torch.sqrt(fy ** 2 + fx ** 2) / 0.5  # 1.0 at Nyquist
    edges = [0.0] + [0.5 ** (SPECTRUM_BANDS - 1 - k) for k in range(SPECTRUM_BANDS)]
    edges[-1] = float("inf")
    total = power.sum(dim=(1, 2)).clamp_min(1e-12)
    bands = [(power * ((r > lo) & (r <= hi))).sum(dim=(1, 2)) / total for lo, hi in zip(edges[:-1], edges[1:])]
    return torch.stack(bands, 1).double().numpy()


def _local(t: torch.Tensor) -> np.ndarray:
    """Local sd and coefficient of variation in k×k windows (valid positions; box filters as banded matmuls)."""
    from .image import _band

    feats = []
    h, w = t.shape[-2:]
    for k in (3, 7):
        box = torch.full((k,), 1.0 / k, dtype=t.dtype)
        bh, bw = _band(h, box).T, _band(w, box)
        m = bh @ (t @ bw)
        m2 = bh @ ((t * t) @ bw)
        sd = (m2 - m * m).clamp_min(0).sqrt()
        feats += [sd.mean(dim=(1, 2)), (sd / (m + 0.05)).mean(dim=(1, 2))]
    return torch.stack(feats, 1).double().numpy()


class RadiomicsExtractor:
    """The offline default extractor (see the module docstring): images (N, C, H, W) in [-1, 1] → (N, D)."""

    name = "radiomics"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"radiomics: expected images (N, C, H, W), got shape {images.shape}")
        if min(images.shape[-2:]) < 8:
            raise ValueError(f"radiomics: images must be at least 8×8 pixels, got {images.shape[-2:]}")
        unit = np.clip((images + 1.0) * 0.5, 0.0, 1.0)
        g = unit.mean(axis=1)
        t = torch.from_numpy(np.ascontiguousarray(g))
        q = np.clip((g * GLCM_LEVELS).astype(np.int64), 0, GLCM_LEVELS - 1)
        parts = [_first_order(g)] + [_glcm(q, d) for d in GLCM_DISTANCES]
        parts += [_lbp_hist(g), _gradient(t), _spectrum(t), _local(t)]
        if images.shape[1] > 1:
            ch = unit.reshape(unit.shape[0], unit.shape[1], -1)
            parts.append(np.stack([ch.mean(2), ch.std(2)], axis=2).reshape(unit.shape[0], -1))
        return np.concatenate(parts, axis=1).astype(np.float64)


# ------------------------------------------------------------------ Inception-v3 (torchvision layout)

class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw: Any):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg(x: torch.Tensor, fid: bool) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, fid: bool = False):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x, self.fid))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, fid: bool = False):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x, self.fid))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x
        for m in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = m(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool  # "avg" (torchvision), "avg_fid" (exclude padding), "max" (TF-FID's last block)
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            p = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            p = _avg(x, self.pool == "avg_fid")
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(p)], 1)


class InceptionV3(nn.Module):
    """Inception-v3 feature trunk with torchvision's parameter names; ``forward`` → pool features (N, 2048).

    Input: (N, 3, 299, 299) already normalised to about [-1, 1]. ``layers(x)`` returns the intermediate maps
    used by the LPIPS-style distance (Conv2d_2b_3x3, Conv2d_4a_3x3, Mixed_5d, Mixed_6e, Mixed_7c).
    """

    LPIPS_LAYERS = ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c")

    def __init__(self, variant: str = "torchvision"):
        super().__init__()
        if variant not in ("torchvision", "fid"):
            raise ValueError(f"variant must be 'torchvision' or 'fid', got {variant!r}")
        fid = variant == "fid"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32, fid)
        self.Mixed_5c = InceptionA(256, 64, fid)
        self.Mixed_5d = InceptionA(288, 64, fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, fid)
        self.Mixed_6c = InceptionC(768, 160, fid)
        self.Mixed_6d = InceptionC(768, 160, fid)
        self.Mixed_6e = InceptionC(768, 192, fid)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg_fid" if fid else "avg")
        self.Mixed_7c = InceptionE(2048, "max" if fid else "avg")

    ORDER = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

    def layers(self, x: torch.Tensor, until: str = "Mixed_7c") -> dict[str, torch.Tensor]:
        """Every intermediate map up to and including ``until`` (the rest is not computed)."""
        out = {}
        for name in self.ORDER[: self.ORDER.index(until) + 1]:
            x = F.max_pool2d(x, 3, stride=2) if name.startswith("maxpool") else getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)["Mixed_7c"].mean(dim=(2, 3))


def load_state_dict_file(path: Path | str, missing_hint: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``, never a pickle that runs code).

    One-line errors for a missing file (``missing_hint`` says what to pass instead; default: the Inception-v3
    advice of the feature extractors), an unreadable file, or content that is not a dict of tensors."""
    path = Path(path)
    if not path.is_file():
        hint = missing_hint or ("pass --weights with a local Inception-v3 state dict (.safetensors or .pt), or use "
                                "the default --extractor, which needs no weights")
        raise fail(f"{path}: weights file not found; {hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
    except Exception as err:  # noqa: BLE001 — any reader error is a bad file for the user
        raise fail(f"{path}: cannot read weights, unreadable file ({type(err).__name__}: {err}); pass a .safetensors or .pt "
                   f"state dict") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise fail(f"{path}: not a state dict of tensors; save model.state_dict() to .safetensors or .pt")
    return sd


def load_inception(path: Path | str, variant: str = "torchvision") -> InceptionV3:
    """Build :class:`InceptionV3` and load a local state dict (``fc.*``/``AuxLogits.*`` ignored, rest strict)."""
    sd = load_state_dict_file(path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "AuxLogits."))}
    model = InceptionV3(variant)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                  f"{len(bad)} with wrong shapes (e.g. {bad[:2]})")
        raise fail(f"{path}: not an Inception-v3 state dict ({detail}); pass torchvision/pytorch-fid "
                   f"Inception-v3 weights or use --extractor radiomics")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


def clean_resize(images: np.ndarray, size: int = 299) -> torch.Tensor:
    """clean-fid preprocessing: (N, C, H, W) in [-1, 1] → uint8 quantisation → PIL bicubic resize per channel
    on float32 → (N, 3, size, size) float32 scaled ``(x − 128) / 128``. Grey images are repeated to 3 channels."""
    from PIL import Image

    from ..io import to_uint8

    u8 = to_uint8(images)
    n, c = u8.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"inception: images must have 1 or 3 channels, got {c}")
    out = np.empty((n, c, size, size), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            im = Image.fromarray(u8[i, ch].astype(np.float32), mode="F")
            out[i, ch] = np.asarray(im.resize((size, size), resample=Image.BICUBIC), dtype=np.float32)
    out = np.clip(out, 0, 255)
    if c == 1:
        out = np.repeat(out, 3, axis=1)
    return torch.from_numpy((out - 128.0) / 128.0)


class InceptionExtractor:
    """Inception-v3 pool features (N, 2048) from a local weights file, clean-fid preprocessing."""

    name = "inception"

    def __init__(self, weights: Path | str, variant: str = "torchvision", batch_size: int = 32):
        self.model = load_inception(weights, variant)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        feats = [self.model(clean_resize(images[i:i + self.batch_size])).double().numpy()
                 for i in range(0, len(images), self.batch_size)]
        return np.concatenate(feats)


EXTRACTORS = ("radiomics", "inception")


def get_extractor(name: str = "radiomics", weights: Path | str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Extractor by name: ``radiomics`` (default, offline) or ``inception`` (needs ``weights``)."""
    if name == "radiomics":
        return RadiomicsExtractor()
    if name == "inception":
        if weights is None:
            raise fail("--extractor inception needs --weights PATH (a local Inception-v3 state dict, .safetensors "
                       "or .pt); nothing is downloaded — or use the default --extractor radiomics")
        return InceptionExtractor(weights)
    raise fail(f"--extractor {name!r}: unknown; choose one of {', '.join(EXTRACTORS)}")


__all__ = ["EXTRACTORS", "InceptionExtractor", "InceptionV3", "RadiomicsExtractor", "clean_resize", "extract",
           "get_extractor", "load_inception", "load_state_dict_file", "radiomics_names", "standardize"]
