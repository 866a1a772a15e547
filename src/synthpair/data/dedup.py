"""Near-duplicate detection on small thumbnails (vectorised; fine for thousands of images).

Two images are near-duplicates when both hold:

* their 64-bit difference hashes (dHash on a 9×8 thumbnail) differ in at most ``max_hamming`` bits, and
* the Pearson correlation of their 32×32 grayscale thumbnails is at least ``threshold`` (unit: correlation
  coefficient, -1..1; default 0.9 in PrepareConfig).

Both are computed on thumbnails *minus the dataset-mean thumbnail* (when there are ≥ 3 images), so content
shared by every image (the black octagonal frame and overlay box of endoscopy images, the constant depth
profile of ultrasound) does not make distinct images look alike. Tuned by eye on BUSI (same-patient copies
and adjacent frames score 0.85–1.0) and Kvasir-SEG (distinct polyps mostly < 0.9).

* With the mean subtracted, the correlation of the *raw* thumbnails must reach ``RAW_FLOOR`` (0.5) too.
  Subtracting the mean turns every near-blank image (an empty MR slice, a black frame) into ≈ −mean, so
  near-blank images correlate ≈ 1 after it; their raw thumbnails, whose little content differs, do not. The
  floor is loose on purpose: adjacent BUSI frames of one lesion (malignant_085/086) score 0.95 centred but
  only ≈ 0.9 raw.

Slices of a volume are compared one by one, and slices of *different* patients at the same level look alike
(LGG: 75 slices of many patients chained into one group). :func:`case_level_pairs` therefore keeps a pair across
two cases only when the cases match as a whole: at least half of one case's items have a twin in the other. A
case of one image (BUSI, Kvasir) passes with its single match, so 2-D datasets are unaffected.

Distances are computed as dense matrices in row blocks (O(n²) numpy, no Python pair loops). Pairs are
united into groups with union–find; pairs inside one case can be skipped (slices of a volume).
Constant (blank) thumbnails have zero correlation with everything and are never flagged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.transform import resize

THUMB = 32
RAW_FLOOR = 0.5  # minimum correlation of the raw (not mean-subtracted) thumbnails of a pair


def thumbnail(image: np.ndarray, size: int = THUMB) -> np.ndarray:
    """float image (C, H, W) or (H, W) → float32 grayscale (size, size) (channel mean, anti-aliased)."""
    gray = image.mean(axis=0) if image.ndim == 3 else image
    if gray.shape == (size, size):
        return gray.astype(np.float32)
    return resize(gray.astype(np.float32), (size, size), order=1, anti_aliasing=True,
                  preserve_range=True).astype(np.float32)


def dhash_bits(thumbs: np.ndarray) -> np.ndarray:
    """(N, h, w) thumbnails → (N, 64) bool difference hash (horizontal gradient signs on 8×9)."""
    small = np.stack([resize(t, (8, 9), order=1, anti_aliasing=True, preserve_range=True) for t in thumbs]) \
        if len(thumbs) else np.zeros((0, 8, 9), np.float32)
    return (small[:, :, 1:] > small[:, :, :-1]).reshape(len(thumbs), 64)


def _unit_rows(thumbs: np.ndarray) -> np.ndarray:
    """(N, h, w) → float32 (N, h·w) rows centred and scaled to unit norm (so a dot product is the Pearson
    correlation); a constant row stays all zeros (correlation 0 with everything)."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.where(norm > 1e-6, flat / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def find_duplicate_pairs(thumbs: np.ndarray, threshold: float = 0.95, max_hamming: int = 10,
                         groups: Sequence[str] | None = None, block: int = 1024) -> list[tuple[int, int, float]]:
    """Near-duplicate pairs ``(i, j, correlation)`` with ``i < j`` among ``thumbs`` (N, h, w).

    ``groups`` (e.g. case ids): pairs whose members share a group are not reported. With ≥ 3 thumbnails
    the mean thumbnail is subtracted first (see module doc).
    """
    n = len(thumbs)
    if n < 2:
        return []
    z_raw = _unit_rows(thumbs) if n >= 3 else None  # raw-content check (see module doc)
    if n >= 3:
        thumbs = thumbs - thumbs.mean(axis=0, keepdims=True)
    z = _unit_rows(thumbs)
    bits = dhash_bits(thumbs).astype(np.float32)
    grp = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        corr = z[start:stop] @ z.T  # (b, n)
        ham = bits[start:stop] @ (1 - bits).T + (1 - bits[start:stop]) @ bits.T
        ok = (corr >= threshold) & (ham <= max_hamming)
        if z_raw is not None:
            ok &= (z_raw[start:stop] @ z_raw.T) >= min(threshold, RAW_FLOOR)
        rows = np.arange(start, stop)[:, None]
        ok &= np.arange(n)[None, :] > rows  # upper triangle only
        if grp is not None:
            ok &= grp[start:stop, None] != grp[None, :]
        for bi, j in zip(*np.nonzero(ok)):
            pairs.append((int(start + bi), int(j), float(corr[bi, j])))
    return pairs


def case_level_pairs(pairs: Sequence[tuple[int, int, float]], cases: Sequence[str], min_share: float = 0.5
                     ) -> list[tuple[int, int, float]]:
    """Keep the pairs between two different cases only when the cases are near-duplicates as a whole: for one of
    them, at least ``min_share`` of its items (``cases[i]`` is item i's case) have a twin in the other. Pairs within
    one case are kept. A one-image case passes with one match, so for 2-D datasets nothing changes."""
    size: dict[str, int] = {}
    for c in cases:
        size[c] = size.get(c, 0) + 1
    matched: dict[tuple[str, str], tuple[set[int], set[int]]] = {}
    for i, j, _ in pairs:
        a, b = cases[i], cases[j]
        if a == b:
            continue
        key, (x, y) = ((a, b), (i, j)) if a < b else ((b, a), (j, i))
        left, right = matched.setdefault(key, (set(), set()))
        left.add(x)
        right.add(y)
    accepted = {key for key, (left, right) in matched.items()
                if max(len(left) / size[key[0]], len(right) / size[key[1]]) >= min_share}
    return [p for p in pairs if cases[p[0]] == cases[p[1]]
            or (min(cases[p[0]], cases[p[1]]), max(cases[p[0]], cases[p[1]])) in accepted]


def union_groups(n: int, pairs: Sequence[tuple[int, int]] | Sequence[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (size ≥ 2) of the pair graph over ``0..n-1``, each sorted, ordered by first member."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for p in pairs:
        ra, rb = find(p[0]), find(p[1])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: c[0])
