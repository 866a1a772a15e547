"""Mixing strategies: how each training batch is drawn from real and synthetic pairs.

A strategy answers ``batch(step, generator) -> Batch`` (:class:`Batch`: images float32 ``(B, C, H, W)`` in
[-1, 1], masks int64 ``(B, H, W)``, and for loss mixing the synthetic images and the per-pixel real/synthetic
choice) and is the only thing that differs between the settings compared, so every setting runs the same
number of optimizer steps with the same batch size (compute-matched comparisons in steps and batch slots;
``patch_loss`` is the one strategy that runs two forward/backward passes per slot, see
:class:`PatchMixing`). :func:`batch_loss` turns a batch into the training loss.

Strategies (:func:`make_mixing`, names in :data:`MIXINGS`):

* ``ratio`` — :class:`RatioMixing`, each slot synthetic with probability R/(1+R); ``R = 0`` is real-only.
* ``synthetic_only`` — :class:`SyntheticOnly`.
* ``patch`` / ``patch_loss`` — :class:`PatchMixing`, EMIT-Diff Algorithm 1 (input mixing) and the
  loss-mixing variant of the authors' code.
* ``replace`` — :class:`ReplaceMixing`, paper 002 §2.6.2 (each real image replaced with probability p by
  one of its synthetic versions).
* ``pretrain`` — :class:`PretrainMixing`, synthetic pre-training then real fine-tuning inside the same
  budget: the first ``fraction`` of the steps draw synthetic batches, the rest real ones.

``patch*`` and ``replace`` need *synthetic versions of real items*: the synthetic pairs whose manifest
``source_item`` is a real training item (:func:`group_by_source`).

Sampling within a pool is epoch-style: indices come from successive seeded permutations of the pool, so
every pair of a pool is seen equally often (± 1) whatever the batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch


@dataclass(frozen=True)
class Batch:
    """One training batch.

    images: float ``(B, C, H, W)`` in [-1, 1] — the network input (for loss mixing: the real images).
    masks: int64 ``(B, H, W)`` labels.
    syn_images: loss mixing only — float ``(B, C, H, W)``, the synthetic version of each slot.
    real_weight: loss mixing only — bool ``(B, H, W)``, True where the real image's prediction is scored,
        False where the synthetic one's is (the patch mask ``m`` of EMIT-Diff Algorithm 1).
    """

    images: torch.Tensor
    masks: torch.Tensor
    syn_images: torch.Tensor | None = None
    real_weight: torch.Tensor | None = None


class MixingStrategy(Protocol):
    name: str

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        """Training batch number ``step`` (0-based) drawn with ``generator`` (CPU)."""
        ...

    def describe(self) -> dict:
        """JSON-able description for results.json (strategy, pool sizes, parameters, draw statistics)."""
        ...


def batch_loss(forward: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable, batch: Batch) -> torch.Tensor:
    """The training loss of ``batch``: ``loss_fn(logits (B, K, H, W) float, masks (B, 1, H, W))``.

    ``forward`` maps images to logits (the caller wraps the model in autocast). For a loss-mixing batch the
    real and the synthetic images go through the network in two separate forward passes (so BatchNorm
    statistics stay per domain, as when they are separate batches) and the logits are combined pixel by
    pixel under the patch mask: ``logits = where(m, logits_real, logits_syn)``. Because ``m`` is binary,
    ``softmax(where(m, a, b)) = m·softmax(a) + (1 − m)·softmax(b)``, so with MONAI ``DiceCELoss`` the
    cross-entropy term is exactly ``mean over pixels of m·CE(pred_real, y) + (1 − m)·CE(pred_syn, y)`` and
    the Dice term is the soft Dice of the combined prediction (each pixel's real prediction counts where
    ``m = 1``, its synthetic one where ``m = 0``) — no hand-written loss is needed.
    """
    y = batch.masks[:, None]
    if batch.syn_images is None:
        return loss_fn(forward(batch.images).float(), y)
    if batch.real_weight is None:
        raise ValueError("a loss-mixing batch needs real_weight")
    real = forward(batch.images).float()
    syn = forward(batch.syn_images).float()
    return loss_fn(torch.where(batch.real_weight[:, None], real, syn), y)


class PoolStream:
    """Endless stream of indices into a pool of ``n`` items: concatenated seeded permutations."""

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise ValueError("cannot draw from an empty pool")
        self.n = n
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def take(self, k: int, generator: torch.Generator) -> torch.Tensor:
        out = []
        while k > 0:
            if self._pos >= len(self._order):
                self._order, self._pos = torch.randperm(self.n, generator=generator), 0
            got = self._order[self._pos:self._pos + k]
            self._pos += len(got)
            k -= len(got)
            out.append(got)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class RatioMixing:
    """Real + synthetic at ratio ``R`` = synthetic : real.

    Each of the ``batch_size`` slots of a batch is synthetic with probability ``R / (1 + R)`` (independent
    Bernoulli draws), else real; so in expectation a batch — and any run of batches — holds real and
    synthetic pairs in proportion ``1 : R`` (R = 0.5 → one third synthetic, R = 1 → half), which is the same
    mix as an epoch of ``n_real`` real plus ``R · n_real`` synthetic pairs. ``R = 0`` (or no synthetic pool)
    is real-only. The batch size and the number of steps do not depend on ``R``.
    """

    name = "ratio"

    def __init__(self, real_images: torch.Tensor, real_masks: torch.Tensor, batch_size: int, ratio: float = 0.0,
                 syn_images: torch.Tensor | None = None, syn_masks: torch.Tensor | None = None) -> None:
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        if ratio > 0 and (syn_images is None or len(syn_images) == 0):
            raise ValueError("ratio > 0 needs a non-empty synthetic pool")
        self.real = (real_images, real_masks)
        self.syn = (syn_images, syn_masks) if ratio > 0 else None
        self.batch_size, self.ratio = int(batch_size), float(ratio)
        self.p_synthetic = self.ratio / (1.0 + self.ratio)
        self._real_stream = PoolStream(len(real_images))
        self._syn_stream = PoolStream(len(syn_images)) if self.syn is not None else None

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        n_syn = 0
        if self.syn is not None:
            n_syn = int((torch.rand(self.batch_size, generator=generator) < self.p_synthetic).sum())
        ri = self._real_stream.take(self.batch_size - n_syn, generator)
        images, masks = [self.real[0][ri]], [self.real[1][ri]]
        if n_syn:
            si = self._syn_stream.take(n_syn, generator)  # type: ignore[union-attr]
            images.append(self.syn[0][si])  # type: ignore[index]
            masks.append(self.syn[1][si])  # type: ignore[index]
        return Batch(torch.cat(images), torch.cat(masks))

    def describe(self) -> dict:
        return {"strategy": self.name, "ratio": self.ratio, "p_synthetic_per_slot": self.p_synthetic,
                "n_real": len(self.real[0]), "n_synthetic": 0 if self.syn is None else len(self.syn[0]),
                "forward_passes_per_slot": 1}


class SyntheticOnly:
    """Every batch from the synthetic pool only (the "train on synthetic, test on real" setting)."""

    name = "synthetic_only"

    def __init__(self, syn_images: torch.Tensor, syn_masks: torch.Tensor, batch_size: int) -> None:
        if len(syn_images) == 0:
            raise ValueError("synthetic_only needs a non-empty synthetic pool")
        self.syn = (syn_images, syn_masks)
        self.batch_size = int(batch_size)
        self._stream = PoolStream(len(syn_images))

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        idx = self._stream.take(self.batch_size, generator)
        return Batch(self.syn[0][idx], self.syn[1][idx])

    def describe(self) -> dict:
        return {"strategy": self.name, "n_real": 0, "n_synthetic": len(self.syn[0]), "forward_passes_per_slot": 1}


def group_by_source(real_ids: Sequence[str], syn_sources: Sequence[str | None]) -> list[list[int]]:
    """For each real item (in ``real_ids`` order) the indices of its synthetic versions.

    ``syn_sources[j]`` is the manifest ``source_item`` of synthetic pair ``j``; pairs whose source is not in
    ``real_ids`` (another fold's item, a subset's dropped item, or None) belong to no group.
    """
    pos = {r: i for i, r in enumerate(real_ids)}
    groups: list[list[int]] = [[] for _ in real_ids]
    for j, src in enumerate(syn_sources):
        if src is not None and src in pos:
            groups[pos[src]].append(j)
    return groups


def random_patch_mask(n: int, size: tuple[int, int], alpha: float, patch: int,
                      generator: torch.Generator) -> torch.Tensor:
    """EMIT-Diff's ``generate-random-patch(alpha, patch size)``: bool ``(n, H, W)``, True = real pixel.

    A grid of ``ceil(H / patch) × ceil(W / patch)`` draws ``u ~ U(0, 1)`` (cells with ``u < alpha`` → 1) is
    upsampled by nearest neighbour (each cell repeated ``patch × patch`` times) and cropped to ``(H, W)``,
    so ``patch`` need not divide the image size (the last row/column of cells is partial). Every pixel is
    real with probability ``alpha``; ``patch = 1`` → per pixel, ``patch >= max(H, W)`` → one draw per image.
    Draws exactly ``n · ceil(H/patch) · ceil(W/patch)`` uniforms from ``generator``.
    """
    h, w = size
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    cells = torch.rand(n, gh, gw, generator=generator) < alpha
    return cells.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w].contiguous()


class _VersionPool:
    """Real items and their synthetic versions (CSR-style index), with a uniform version draw per slot."""

    def __init__(self, real_images: torch.Tensor, real_masks: torch.Tensor, syn_images: torch.Tensor,
                 syn_masks: torch.Tensor, groups: Sequence[Sequence[int]]) -> None:
        if len(groups) != len(real_images):
            raise ValueError(f"{len(groups)} groups for {len(real_images)} real items")
        if not any(groups):
            raise ValueError("no real training item has a synthetic version (manifest source_item)")
        self.real = (real_images, real_masks)
        self.syn = (syn_images, syn_masks)
        self.counts = torch.tensor([len(g) for g in groups], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.counts.cumsum(0)[:-1]])
        self.flat = torch.tensor([j for g in groups for j in g], dtype=torch.long)
        # versions whose mask differs from their real item's mask (patch mixing trains them with the real
        # label; expected 0 for mask-conditioned generators)
        owner = torch.repeat_interleave(torch.arange(len(groups)), self.counts)
        self.n_mask_mismatch = int((syn_masks[self.flat] != real_masks[owner]).flatten(1).any(1).sum())
        self.stream = PoolStream(len(real_images))

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(real index (B,), synthetic index (B,) or -1 when the real item has no version)``.

        Draws the real items from the epoch-style stream, then ``B`` uniforms that pick a version uniformly
        among the item's ``n`` versions (``floor(u · n)``), so the generator use does not depend on content.
        """
        ri = self.stream.take(batch_size, generator)
        u = torch.rand(batch_size, generator=generator)
        n = self.counts[ri]
        pick = torch.minimum((u * n).long(), (n - 1).clamp(min=0))  # floor(u·n) in 0..n-1
        # items without versions get a dummy in-range position, then -1
        pos = (self.offsets[ri] + pick).clamp(max=len(self.flat) - 1)
        return ri, torch.where(n > 0, self.flat[pos], torch.full_like(ri, -1))

    def describe(self) -> dict:
        has = self.counts > 0
        return {"n_real": len(self.real[0]), "n_synthetic": int(len(self.flat)),
                "n_real_with_synthetic": int(has.sum()), "n_real_unmixed": int((~has).sum()),
                "versions_per_real": {"min": int(self.counts[has].min()), "max": int(self.counts.max()),
                                      "mean": float(self.counts[has].float().mean())},
                "n_synthetic_mask_mismatch": self.n_mask_mismatch}


class PatchMixing:
    """EMIT-Diff Algorithm 1: train on ``m · x0 + (1 − m) · x_i`` with the real label ``y``.

    For each batch slot a real training item ``(x0, y)`` comes from the epoch-style stream over the real
    pool, one of its ``n`` synthetic versions ``x_i`` is picked uniformly, and a patch mask ``m``
    (:func:`random_patch_mask`; ``alpha`` = expected fraction of REAL pixels, ``patch`` = cell side in pixels)
    blends them. A real item without a synthetic version is used unmixed (``m = 1``; counted as
    ``n_real_unmixed`` in :meth:`describe`). The label is always the real mask ``y`` (Algorithm 1, line 5);
    versions whose own mask differs from ``y`` are counted (``n_synthetic_mask_mismatch``).

    ``loss_mixing=True`` (``patch_loss``, the variant in the authors' released code): the network sees the
    real batch and the synthetic batch separately and the predictions are combined under the same ``m``
    (:func:`batch_loss`): ``loss = mean_pixels m·L(pred_real, y) + (1 − m)·L(pred_syn, y)`` for the
    cross-entropy term. Same steps and batch slots as every other setting, but two forward/backward passes
    per slot (about twice the compute per step).
    """

    def __init__(self, real_images: torch.Tensor, real_masks: torch.Tensor, syn_images: torch.Tensor,
                 syn_masks: torch.Tensor, groups: Sequence[Sequence[int]], batch_size: int, alpha: float = 0.5,
                 patch: int = 8, loss_mixing: bool = False) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.pool = _VersionPool(real_images, real_masks, syn_images, syn_masks, groups)
        self.batch_size, self.alpha, self.patch = int(batch_size), float(alpha), int(patch)
        self.loss_mixing = bool(loss_mixing)
        self.name = "patch_loss" if loss_mixing else "patch"
        self._real_px = 0
        self._px = 0

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        ri, si = self.pool.draw(self.batch_size, generator)
        x0, y = self.pool.real[0][ri], self.pool.real[1][ri]
        m = random_patch_mask(self.batch_size, tuple(x0.shape[-2:]), self.alpha, self.patch, generator)
        m[si < 0] = True  # no synthetic version: the real image unmixed
        xi = torch.where((si >= 0).view(-1, 1, 1, 1), self.pool.syn[0][si.clamp(min=0)], x0)
        self._real_px += int(m.sum())
        self._px += m.numel()
        if self.loss_mixing:
            return Batch(x0, y, syn_images=xi, real_weight=m)
        return Batch(torch.where(m[:, None], x0, xi), y)

    def describe(self) -> dict:
        return {"strategy": self.name, "alpha": self.alpha, "patch": self.patch, **self.pool.describe(),
                "observed_real_pixel_fraction": self._real_px / self._px if self._px else None,
                "label": "real mask", "forward_passes_per_slot": 2 if self.loss_mixing else 1}


class ReplaceMixing:
    """Paper 002 §2.6.2 (after Trabucco et al.): each real slot replaced with probability ``p`` by a version.

    For each batch slot a real training pair comes from the epoch-style stream over the real pool; with
    probability ``p`` (a Bernoulli draw per slot) it is replaced by one of its ``M`` synthetic versions,
    picked uniformly — image *and* that version's own mask (for a mask-conditioned generator the real mask).
    Real items without a version are always kept (``n_real_unmixed``). ``p = 0`` is real-only,
    ``p = 1`` trains on versions only (where they exist).
    """

    name = "replace"

    def __init__(self, real_images: torch.Tensor, real_masks: torch.Tensor, syn_images: torch.Tensor,
                 syn_masks: torch.Tensor, groups: Sequence[Sequence[int]], batch_size: int, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"replace probability must be in [0, 1], got {p}")
        self.pool = _VersionPool(real_images, real_masks, syn_images, syn_masks, groups)
        self.batch_size, self.p = int(batch_size), float(p)
        self._replaced = 0
        self._slots = 0

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        ri, si = self.pool.draw(self.batch_size, generator)
        swap = (torch.rand(self.batch_size, generator=generator) < self.p) & (si >= 0)
        s = si.clamp(min=0)
        x = torch.where(swap.view(-1, 1, 1, 1), self.pool.syn[0][s], self.pool.real[0][ri])
        y = torch.where(swap.view(-1, 1, 1), self.pool.syn[1][s], self.pool.real[1][ri])
        self._replaced += int(swap.sum())
        self._slots += self.batch_size
        return Batch(x, y)

    def describe(self) -> dict:
        return {"strategy": self.name, "p": self.p, **self.pool.describe(),
                "observed_replaced_fraction": self._replaced / self._slots if self._slots else None,
                "forward_passes_per_slot": 1}


class PretrainMixing:
    """Pre-train on synthetic pairs, then fine-tune on real ones, in one run of ``steps`` steps: batches
    ``0 .. round(fraction · steps) − 1`` come from the synthetic pool, the rest from the real pool (each pool
    epoch-style). The learning-rate schedule of the run spans both phases (the budget is unchanged)."""

    name = "pretrain"

    def __init__(self, real_images: torch.Tensor, real_masks: torch.Tensor, syn_images: torch.Tensor,
                 syn_masks: torch.Tensor, batch_size: int, steps: int, fraction: float) -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"pretrain fraction must be in (0, 1), got {fraction}")
        if len(syn_images) == 0:
            raise ValueError("pretrain needs a non-empty synthetic pool")
        self.real, self.syn = (real_images, real_masks), (syn_images, syn_masks)
        self.batch_size, self.fraction = int(batch_size), float(fraction)
        self.switch = int(round(fraction * steps))
        if not 0 < self.switch < steps:
            raise ValueError(f"pretrain fraction {fraction:g} of {steps} steps rounds to {self.switch} synthetic "
                             f"steps; it needs at least one synthetic and one real step")
        self._real, self._syn = PoolStream(len(real_images)), PoolStream(len(syn_images))

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        if step < self.switch:
            idx = self._syn.take(self.batch_size, generator)
            return Batch(self.syn[0][idx], self.syn[1][idx])
        idx = self._real.take(self.batch_size, generator)
        return Batch(self.real[0][idx], self.real[1][idx])

    def describe(self) -> dict:
        return {"strategy": self.name, "fraction": self.fraction, "synthetic_steps": self.switch,
                "n_real": len(self.real[0]), "n_synthetic": len(self.syn[0]), "forward_passes_per_slot": 1}


@dataclass(frozen=True)
class MixingSpec:
    """One mixing strategy in the registry: its ``--mix`` parameters (CLI key → (SegmentConfig field, type,
    placeholder)), whether it needs synthetic *versions* of real items (manifest ``source_item``), and a
    one-phrase description for the CLI help."""

    name: str
    params: tuple[tuple[str, str, type, str], ...]
    versions: bool
    help: str

    @property
    def fields(self) -> tuple[str, ...]:
        """The SegmentConfig fields the strategy reads."""
        return tuple(field for _, field, _, _ in self.params)

    def grammar(self, example: bool = False) -> str:
        """``name``, ``ratio=R`` or ``patch:alpha=A,patch=P`` (``example``: with the default values)."""
        vals = {"R": "0.5", "A": "0.5", "P": "8" if self.name.startswith("patch") else "0.5", "F": "0.5"}
        parts = [f"{key}={vals[ph] if example else ph}" for key, _, _, ph in self.params]
        if self.name == "ratio":
            return parts[0]
        return self.name + (":" + ",".join(parts) if parts else "")


MIXING_SPECS: dict[str, MixingSpec] = {s.name: s for s in (
    MixingSpec("ratio", (("ratio", "ratio", float, "R"),), False, "synthetic:real"),
    MixingSpec("synthetic_only", (), False, "synthetic pairs only"),
    MixingSpec("patch", (("alpha", "alpha", float, "A"), ("patch", "patch", int, "P")), True,
               "EMIT-Diff, A = fraction of real pixels, P = patch side"),
    MixingSpec("patch_loss", (("alpha", "alpha", float, "A"), ("patch", "patch", int, "P")), True, "loss mixing"),
    MixingSpec("replace", (("p", "replace_p", float, "P"),), True,
               "replace each real image with probability P by a synthetic version"),
    MixingSpec("pretrain", (("fraction", "pretrain_fraction", float, "F"),), False,
               "the first F of the steps on synthetic pairs, then real: pre-train then fine-tune"),
)}
"""THE registry of mixing strategies: :data:`MIXINGS`, ``SegmentConfig.mixing``, its parameter check, the
strategies that need versions, and the CLI ``--mix`` grammar and help (:func:`parse_mix`) all come from it."""

MIXINGS = tuple(MIXING_SPECS)
VERSION_MIXINGS = tuple(n for n, s in MIXING_SPECS.items() if s.versions)
MIX_EXAMPLE = "--mix " + " | ".join(s.grammar(example=True) for s in MIXING_SPECS.values())


def mix_help() -> str:
    """The ``--mix`` help text: every strategy's grammar and description."""
    return "mixing strategy: " + " | ".join(f"{s.grammar()} ({s.help})" for s in MIXING_SPECS.values())


def parse_mix(text: str | None) -> dict[str, Any]:
    """``--mix`` grammar → SegmentConfig fields: ``ratio=R`` | ``NAME`` | ``NAME:key=value,...`` with the keys of
    :data:`MIXING_SPECS` (parameters left out keep their config value; every mixing but ``ratio`` sets
    ``ratio=0``). One-line errors name the valid choices."""
    from ..errors import fail

    if not text:
        return {}
    raw = text.strip()
    name, sep, params = raw.partition(":")
    if not sep and "=" in name:  # the original form: ratio=R
        name, params = "ratio", raw
    name = name.strip()
    if name not in MIXING_SPECS:
        raise fail(f"--mix {text!r}: unknown mixing {name!r}; choose one of {', '.join(MIXINGS)}, e.g. {MIX_EXAMPLE}")
    out: dict[str, Any] = {"mixing": name}
    if name != "ratio":
        out["ratio"] = 0.0
    keys = {key: (field, typ) for key, field, typ, _ in MIXING_SPECS[name].params}
    for part in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in keys:
            valid = ", ".join(f"{k}=…" for k in keys) or "no parameters"
            raise fail(f"--mix {text!r}: {name} takes {valid}; e.g. {MIX_EXAMPLE}")
        field, typ = keys[key]
        try:
            out[field] = typ(value.strip())
        except ValueError:
            raise fail(f"--mix {text!r}: {key} must be {'an integer' if typ is int else 'a number'}; "
                       f"e.g. {MIX_EXAMPLE}") from None
    if name == "ratio" and "ratio" not in out:
        raise fail(f"--mix {text!r}: expected ratio=R (synthetic:real per epoch), e.g. --mix ratio=0.5")
    return out


def make_mixing(name: str, *, real_images: torch.Tensor, real_masks: torch.Tensor, batch_size: int,
                ratio: float = 0.0, syn_images: torch.Tensor | None = None,
                syn_masks: torch.Tensor | None = None, groups: Sequence[Sequence[int]] | None = None,
                alpha: float = 0.5, patch: int = 8, replace_p: float = 0.5, steps: int = 0,
                pretrain_fraction: float = 0.5) -> MixingStrategy:
    """Build mixing strategy ``name`` (one of :data:`MIXINGS`) over the given pools.

    ``groups[r]`` lists the synthetic indices that are versions of real item ``r`` (:func:`group_by_source`);
    needed by ``patch``, ``patch_loss`` and ``replace``.
    """
    if name == "ratio":
        return RatioMixing(real_images, real_masks, batch_size, ratio, syn_images, syn_masks)
    if name == "pretrain":
        if syn_images is None or syn_masks is None:
            raise ValueError("pretrain needs a synthetic pool")
        return PretrainMixing(real_images, real_masks, syn_images, syn_masks, batch_size, steps, pretrain_fraction)
    if name == "synthetic_only":
        if syn_images is None:
            raise ValueError("synthetic_only needs a synthetic pool")
        return SyntheticOnly(syn_images, syn_masks, batch_size)  # type: ignore[arg-type]
    if name in VERSION_MIXINGS:
        if syn_images is None or syn_masks is None or groups is None:
            raise ValueError(f"{name} needs a synthetic pool and its grouping by source item")
        if name == "replace":
            return ReplaceMixing(real_images, real_masks, syn_images, syn_masks, groups, batch_size, replace_p)
        return PatchMixing(real_images, real_masks, syn_images, syn_masks, groups, batch_size, alpha, patch,
                           loss_mixing=name == "patch_loss")
    raise ValueError(f"unknown mixing {name!r}; choose one of {', '.join(MIXINGS)}")
