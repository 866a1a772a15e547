"""Embedded default dataset: procedural, seeded ultrasound-like phantoms with exact lesion masks.

Each phantom is a grayscale B-mode-like image: a smooth tissue echogenicity map (layered skin / fat /
glandular / muscle bands with wavy boundaries and slow texture), depth attenuation, multiplicative
speckle (magnitude of spatially correlated complex Gaussian noise, i.e. Rayleigh-distributed, then log
compressed), 1–2 lesions and 0–2 distractor dark structures that are *not* in the mask.

Lesions vary in shape (ellipse, irregular blob from radial harmonics, lobulated), size, echogenicity
(hypo-, iso- or hyperechoic relative to their surroundings), boundary blur and posterior acoustic
shadowing / enhancement, so that a segmenter trained on a few dozen phantoms is clearly imperfect
(iso-echoic, blurred lesions are hard; dark distractors cause false positives).

Everything is deterministic per ``(seed, index)`` (``numpy.random.default_rng([seed, index])``) and does
not depend on how many phantoms are generated or in which order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import fail
from ..io import atomic_output_dir, save_png_atomic

__all__ = ["SEQUENCES", "TISSUES", "mr_signal", "phantom_contrasts", "phantom_labels", "phantom_pair", "write_phantom_nnunet",
           "write_phantom_source"]


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise (size, size)."""
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="reflect")
    return (n - n.mean()) / (n.std() + 1e-8)


def _tissue_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """Echogenicity map float (size, size) around 0.3–1.0: wavy horizontal layers + slow texture."""
    yy = np.arange(size)[:, None] / size
    xx = np.arange(size)[None, :] / size
    # layer boundaries as depth fractions, each with a gentle wave
    b_skin = rng.uniform(0.04, 0.08)
    b_fat = b_skin + rng.uniform(0.12, 0.25)
    b_gland = b_fat + rng.uniform(0.3, 0.45)
    levels = [rng.uniform(0.85, 1.0),   # skin (bright)
              rng.uniform(0.35, 0.5),   # subcutaneous fat (dark)
              rng.uniform(0.6, 0.8),    # glandular tissue
              rng.uniform(0.45, 0.6)]   # muscle / chest wall
    tissue = np.full((size, size), levels[-1])
    for b, lev in zip([b_gland, b_fat, b_skin], levels[2::-1]):
        amp, freq, ph = rng.uniform(0.005, 0.04), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)
        edge = b + amp * np.sin(2 * np.pi * freq * xx + ph)
        w = 1.0 / (1.0 + np.exp(-(edge - yy) * size / 1.5))  # soft layer boundary
        tissue = w * lev + (1 - w) * tissue
    # fat lobules / gland texture, coarser than speckle
    tissue *= 1.0 + 0.12 * _smooth_noise(rng, size, size / 24) + 0.06 * _smooth_noise(rng, size, size / 64)
    # oblique bright fibres (Cooper's ligaments) in the glandular layer
    for _ in range(rng.integers(1, 4)):
        ang, off = rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.8)
        d = np.abs((yy - off) * np.cos(ang) - (xx - 0.5) * np.sin(ang))
        tissue += rng.uniform(0.1, 0.25) * np.exp(-(d * size / 1.2) ** 2) * ((yy > b_fat) & (yy < b_gland))
    return np.clip(tissue, 0.05, None)


def _shape_mask(rng: np.random.Generator, size: int, cy: float, cx: float, radius: float, kind: str) -> np.ndarray:
    """Boolean (size, size) region: 'ellipse', 'blob' (irregular radial harmonics) or 'lobulated'."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    aspect = rng.uniform(0.55, 1.0)
    rot = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    rad = np.ones_like(theta)
    if kind == "blob":
        for k in range(2, 7):
            rad += rng.uniform(0, 0.22 / k ** 0.6) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    elif kind == "lobulated":
        k = int(rng.integers(3, 6))
        rad += rng.uniform(0.12, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        rad += rng.uniform(0, 0.06) * np.cos((2 * k + 1) * theta + rng.uniform(0, 2 * np.pi))
    return r <= radius * rad


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rayleigh speckle (size, size), mean ≈ 1: |complex Gaussian| after an anisotropic PSF blur."""
    s = max(size / 128.0, 0.35)
    sig = (0.7 * s, 1.4 * s)  # axial (rows) finer than lateral (cols)
    re = ndimage.gaussian_filter(rng.standard_normal((size, size)), sig)
    im = ndimage.gaussian_filter(rng.standard_normal((size, size)), sig)
    mag = np.hypot(re, im)
    return mag / (mag.mean() + 1e-8)


def phantom_labels(index: int, size: int = 128, seed: int = 0, num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One phantom → (image uint8 (size, size) in 0..255, label map uint8 (size, size) in 0..num_classes-1).

    With ``num_classes == 2`` every lesion is label 1 (any echogenicity). With ``num_classes > 2`` lesion
    class ``c`` (1..K) has a class-specific appearance: odd classes are hypoechoic (often shadowing),
    even classes hyperechoic, so the classes are learnable but overlap in the iso-echoic cases.
    """
    if size < 16:
        raise fail(f"phantom size {size}: too small; use size >= 16")
    if num_classes < 2:
        raise fail(f"num_classes={num_classes}: phantoms need at least 2 (background + lesion)")
    rng = np.random.default_rng([int(seed), int(index)])
    tissue = _tissue_map(rng, size)
    labels = np.zeros((size, size), np.uint8)
    yy = np.arange(size)[:, None].astype(np.float64)

    n_lesions = int(rng.integers(1, 3))
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_lesions):
        radius = size * rng.uniform(0.06, 0.2)
        for _try in range(10):
            cy = rng.uniform(0.3, 0.78) * size
            cx = rng.uniform(0.2, 0.8) * size
            if all(np.hypot(cy - y, cx - x) > 1.1 * (radius + r) for y, x, r in centres):
                break
        centres.append((cy, cx, radius))
        kind = str(rng.choice(["ellipse", "blob", "lobulated"], p=[0.3, 0.45, 0.25]))
        region = _shape_mask(rng, size, cy, cx, radius, kind)
        if not region.any():
            region[int(cy), int(cx)] = True
        cls = 1 if num_classes == 2 else int(rng.integers(1, num_classes))
        if num_classes == 2:
            echo = str(rng.choice(["hypo", "iso", "hyper"], p=[0.55, 0.3, 0.15]))
        else:
            echo = str(rng.choice(["hypo", "iso"] if cls % 2 else ["hyper", "iso"], p=[0.75, 0.25]))
        factor = {"hypo": rng.uniform(0.12, 0.5), "iso": rng.uniform(0.8, 1.15),
                  "hyper": rng.uniform(1.35, 1.9)}[echo]
        blur = size / 128.0 * (rng.uniform(2.0, 4.5) if echo == "iso" else rng.uniform(0.3, 2.5))
        w = ndimage.gaussian_filter(region.astype(np.float64), blur)
        interior = factor * (1.0 + 0.15 * _smooth_noise(rng, size, size / 40))  # internal texture
        if echo == "iso":  # iso-echoic: only a faint texture change and maybe a thin rim
            interior = factor * (1.0 + 0.3 * _smooth_noise(rng, size, size / 80))
        tissue = tissue * (1 - w) + tissue * interior * w
        # posterior acoustic shadowing (hypo) or enhancement (cyst-like), fading with depth
        post = rng.random()
        if post < 0.45 and echo != "hyper":
            cols = region.any(axis=0).astype(np.float64)
            cols = ndimage.gaussian_filter1d(cols, size / 64 + 0.5)
            bottom = np.where(region.any(axis=1))[0].max()
            below = np.clip((yy - bottom) / (size * 0.05), 0, 1) * np.exp(-np.clip(yy - bottom, 0, None) / (size * 0.6))
            strength = rng.uniform(0.3, 0.7) if post < 0.3 else -rng.uniform(0.2, 0.5)
            tissue = tissue * (1 - strength * below * cols[None, :])
        labels[region] = cls

    # distractors: dark tubular/elliptic structures (ducts, vessels, fat lobules) without a mask
    for _ in range(int(rng.integers(0, 3))):
        dcy, dcx = rng.uniform(0.15, 0.9) * size, rng.uniform(0.05, 0.95) * size
        region = _shape_mask(rng, size, dcy, dcx, size * rng.uniform(0.03, 0.08), "ellipse")
        region &= labels == 0
        w = ndimage.gaussian_filter(region.astype(np.float64), size / 128 * rng.uniform(0.5, 2.0))
        tissue = tissue * (1 - w * rng.uniform(0.5, 0.85))

    # depth attenuation with imperfect time-gain compensation
    att = np.exp(-rng.uniform(0.6, 1.6) * yy / size) * (1 + 0.25 * yy / size)
    # the smooth interior texture can dip below zero in rare pixels; log1p of a negative intensity was NaN and
    # blanked the whole image (1 of 400 at size 128, seed 0)
    intensity = np.clip(tissue, 0, None) * att * _speckle(rng, size)
    img = np.log1p(rng.uniform(8, 20) * intensity)
    img = img / np.percentile(img, 99.7)
    img = np.clip(img * rng.uniform(0.85, 1.0) + rng.normal(0, 0.01, img.shape), 0, 1)
    return np.rint(img * 255).astype(np.uint8), labels


def phantom_pair(index: int, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One binary phantom → (image uint8 (size, size) 0..255, mask uint8 (size, size) in {0, 1}).

    Deterministic per ``(seed, index)``; the mask is never empty (1–2 lesions).
    """
    img, lab = phantom_labels(index, size, seed, num_classes=2)
    return img, (lab > 0).astype(np.uint8)


def write_phantom_source(out: Path | str, n: int, size: int = 128, seed: int = 0, num_classes: int = 2,
                         *, overwrite: bool = False) -> Path:
    """Write a source folder ``out/images/phantom_XXXX.png`` + ``out/masks/phantom_XXXX.png`` (what
    ``prepare`` reads). Masks are {0, 255} for ``num_classes == 2`` and integer labels 0..K otherwise.
    The folder is built atomically. Returns ``out``.
    """
    if n < 1:
        raise fail(f"n={n}: number of phantoms must be >= 1")
    out = Path(out)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for i in range(n):
            img, lab = phantom_labels(i, size, seed, num_classes)
            mask = lab * 255 if num_classes == 2 else lab
            save_png_atomic(tmp / "images" / f"phantom_{i:04d}.png", img)
            save_png_atomic(tmp / "masks" / f"phantom_{i:04d}.png", mask.astype(np.uint8))
    return out


# ----------------------------------------------------------------------------------------------------------
# Multi-contrast MR-like phantoms: physically different contrasts rendered from ONE tissue map (issue 14)
# ----------------------------------------------------------------------------------------------------------
# Tissue parameters (proton density relative to CSF, T1 and T2 in ms; approximate 1.5 T values from the MR
# physics literature, e.g. Bernstein et al., "Handbook of MRI Pulse Sequences", and Stanisz et al. 2005).
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (0.0, 1000.0, 1.0),
    "scalp": (0.90, 260.0, 80.0),       # fat: short T1
    "csf": (1.00, 4000.0, 2000.0),      # long T1 and T2
    "grey": (0.85, 1100.0, 100.0),
    "white": (0.70, 650.0, 80.0),
    "lesion": (0.90, 1400.0, 180.0),    # oedema / tumour: longer T1 and T2 than white matter
}
# Pulse sequences: spin echo (TR, TE) or inversion recovery (TR, TE, TI), in ms.
SEQUENCES: dict[str, dict[str, float]] = {
    "T1w": {"TR": 500.0, "TE": 15.0},
    "T2w": {"TR": 4000.0, "TE": 100.0},
    "PDw": {"TR": 3000.0, "TE": 15.0},
    "FLAIR": {"TR": 9000.0, "TE": 120.0, "TI": 2370.0},   # TI = T1_csf ln(2 / (1 + e^{-TR/T1_csf})): CSF nulled
}


def mr_signal(tissue: str, sequence: str) -> float:
    """Steady-state magnitude signal of ``tissue`` under ``sequence``: spin echo ``PD (1 - e^{-TR/T1})
    e^{-TE/T2}``, inversion recovery ``PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}`` (Bloch equations with
    TE << TR)."""
    if sequence not in SEQUENCES:
        raise fail(f"contrast {sequence!r}: choose one of {', '.join(SEQUENCES)}")
    pd, t1, t2 = TISSUES[tissue]
    s = SEQUENCES[sequence]
    decay = np.exp(-s["TE"] / t2)
    if "TI" in s:
        return float(pd * abs(1.0 - 2.0 * np.exp(-s["TI"] / t1) + np.exp(-s["TR"] / t1)) * decay)
    return float(pd * (1.0 - np.exp(-s["TR"] / t1)) * decay)


def _tissue_fractions(rng: np.random.Generator, patient_rng: np.random.Generator, size: int, lesion: bool
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Partial-volume fractions per tissue (each (size, size) in [0, 1], summing to 1) of an axial head slice
    and the lesion label map (uint8 {0, 1}). ``patient_rng`` fixes the head (shared by a patient's slices);
    ``rng`` the slice (ventricle size, cortex wobble, lesion)."""
    yy, xx = (np.mgrid[:size, :size].astype(np.float64) + 0.5) / size - 0.5
    ay, ax = patient_rng.uniform(0.40, 0.46), patient_rng.uniform(0.33, 0.39)
    rot = patient_rng.uniform(-0.2, 0.2)
    u = xx * np.cos(rot) + yy * np.sin(rot)
    v = -xx * np.sin(rot) + yy * np.cos(rot)
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)          # 1 at the head outline
    wob = 0.03 * _smooth_noise(rng, size, size / 10)
    soft = max(size / 128.0, 0.5)

    def inside(edge: np.ndarray | float) -> np.ndarray:  # soft indicator of r < edge (partial volume)
        return 1.0 / (1.0 + np.exp((r - edge) * size / (2.0 * soft)))

    head = inside(1.0)
    brain = inside(0.86 + 0.5 * wob)
    cortex_in = inside(0.74 + wob)
    vs = rng.uniform(0.08, 0.16)                         # ventricles: two ellipses near the centre
    vent = np.zeros_like(r)
    for sx in (-1.0, 1.0):
        d = np.sqrt(((u - sx * 0.06) / (vs * 0.7)) ** 2 + ((v + 0.03) / (vs * 1.6)) ** 2)
        vent = np.maximum(vent, 1.0 / (1.0 + np.exp((d - 1.0) * size / (8.0 * soft))))
    sulci = np.clip(0.5 + 0.9 * _smooth_noise(rng, size, size / 40), 0, 1) * (brain - cortex_in).clip(0, 1)
    f = {"air": 1.0 - head, "scalp": (head - brain).clip(0, 1)}
    f["csf"] = sulci * 0.6 + vent * cortex_in
    f["grey"] = (brain - cortex_in).clip(0, 1) - sulci * 0.6
    f["white"] = (cortex_in * (1.0 - vent)).clip(0, 1)
    labels = np.zeros((size, size), np.uint8)
    f["lesion"] = np.zeros_like(r)
    if lesion:
        for _try in range(20):
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            rad = size * rng.uniform(0.06, 0.13)
            region = _shape_mask(rng, size, cy, cx, rad, str(rng.choice(["ellipse", "blob", "lobulated"])))
            if (f["white"][region] > 0.5).mean() > 0.8:
                break
        w = ndimage.gaussian_filter(region.astype(np.float64), soft) * f["white"]
        f["lesion"] = w
        f["white"] = f["white"] - w
        labels[region & (f["white"] + w > 0.5)] = 1
    total = sum(f.values())
    return {k: v / np.maximum(total, 1e-8) for k, v in f.items()}, labels


def phantom_contrasts(index: int, size: int = 64, seed: int = 0, contrasts: tuple[str, ...] = ("T1w", "T2w"),
                      lesion: bool | None = None, per_patient: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One MR-like slice in several contrasts → (images uint8 (len(contrasts), size, size), labels uint8 (size,
    size) {0, 1} = the lesion).

    Every contrast is rendered from the SAME partial-volume tissue map (air, scalp, CSF, grey and white matter,
    an optional lesion) by the signal equation of its pulse sequence (:func:`mr_signal`, :data:`SEQUENCES`),
    times one smooth coil bias field shared by the contrasts, with Rician noise (the magnitude of complex
    Gaussian noise) of its own, then scaled to uint8 by the 99.5th percentile. So T1w and T2w differ
    physically (CSF dark vs bright, white matter brighter than grey vs darker) while the anatomy is identical.
    ``lesion``: True/False, or None = drawn with probability 1/2. Slices ``index`` with the same ``index //
    per_patient`` share the patient's head shape (the patient's rng); deterministic per (seed, index)."""
    if size < 16:
        raise fail(f"phantom size {size}: too small; use size >= 16")
    if not contrasts:
        raise fail("contrasts: name at least one of " + ", ".join(SEQUENCES))
    rng = np.random.default_rng([int(seed), int(index), 7])
    patient_rng = np.random.default_rng([int(seed), int(index) // max(int(per_patient), 1), 11])
    has_lesion = bool(rng.random() < 0.5) if lesion is None else bool(lesion)
    frac, labels = _tissue_fractions(rng, patient_rng, size, has_lesion)
    bias = np.exp(0.15 * _smooth_noise(patient_rng, size, size / 4))
    out = np.empty((len(contrasts), size, size), np.uint8)
    for k, name in enumerate(contrasts):
        sig = sum(frac[t] * mr_signal(t, name) for t in TISSUES) * bias
        sig = sig * (1.0 + 0.05 * _smooth_noise(rng, size, size / 20))     # tissue texture
        sd = 0.02 * float(np.percentile(sig, 99.5) or 1.0)
        mag = np.hypot(sig + rng.normal(0, sd, sig.shape), rng.normal(0, sd, sig.shape))
        out[k] = np.clip(np.rint(mag / (np.percentile(mag, 99.5) + 1e-8) * 255), 0, 255).astype(np.uint8)
    return out, labels


def write_phantom_nnunet(out: Path | str, n: int, size: int = 64, seed: int = 0,
                         contrasts: tuple[str, ...] = ("T1w", "T2w"), per_patient: int = 2,
                         lesion_fraction: float = 0.5, *, overwrite: bool = False) -> Path:
    """An nnU-Net raw folder of ``n`` multi-contrast phantom slices (what ``prepare`` reads):
    ``imagesTr/<case>_<XXXX>.png`` (one grayscale PNG per contrast), ``labelsTr/<case>.png`` {0, 1},
    ``dataset.json`` (``channel_names`` = the contrasts, ``labels``, ``file_ending`` .png) and ``metadata.csv``
    (``case,patient``: ``per_patient`` consecutive slices per patient, which ``prepare`` keeps together).
    Slice i has a lesion when ``i`` falls in the first ``lesion_fraction`` of a patient-interleaved order
    (deterministic). Built atomically; returns ``out``."""
    import json

    if n < 1:
        raise fail(f"n={n}: number of phantoms must be >= 1")
    out = Path(out)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        rows = ["case,patient,slice,has_tumor"]
        for i in range(n):
            lesion = (i * 0.6180339887) % 1.0 < lesion_fraction
            imgs, lab = phantom_contrasts(i, size, seed, contrasts, lesion=lesion, per_patient=per_patient)
            case = f"ph{i // per_patient:03d}_{i % per_patient:03d}"
            for k in range(len(contrasts)):
                save_png_atomic(tmp / "imagesTr" / f"{case}_{k:04d}.png", imgs[k])
            save_png_atomic(tmp / "labelsTr" / f"{case}.png", lab)
            rows.append(f"{case},ph{i // per_patient:03d},{i % per_patient},{int(lab.any())}")
        (tmp / "dataset.json").write_text(json.dumps({
            "channel_names": {str(k): c for k, c in enumerate(contrasts)},
            "labels": {"background": 0, "lesion": 1}, "numTraining": n, "file_ending": ".png"}, indent=1))
        (tmp / "metadata.csv").write_text("\n".join(rows) + "\n")
    return out
