"""``synthpair generate``: sample image+mask pairs from a trained generator, with provenance.

* One seed per pair: pair ``i`` of a run with ``--seed s`` uses seed ``s + i`` (counted over *attempts*,
  so pairs dropped by the mask filter keep their seed numbers). Seeds are drawn in fixed blocks of
  ``batch_size`` and every manifest line records its ``batch_seeds``, so :func:`regenerate_pair` replays
  exactly the batch that produced a pair and reproduces it bit for bit on CPU.
* Masks are decoded by the method (threshold / argmax), cleaned (connected components smaller than
  ``min_component`` pixels removed), and pairs whose mask is empty or below ``min_area`` pixels are dropped
  unless ``keep_empty``.
* Resumable and never half-written: every file is written atomically; after each batch the manifest lines
  are appended and ``progress.json`` (next seed, pairs kept) is replaced atomically. An interrupted run
  restarted with the same command continues at the next block of seeds; lines or files beyond the last
  committed batch are discarded. ``dataset.json`` is written last, so an unfinished folder is never mistaken
  for a complete one.
* Sharded (``torchrun --nproc_per_node=K -m -- synthpair generate …``, :mod:`.shards`): rank r samples every
  K-th seed block, rank 0 commits the blocks in block order exactly as one process does; same folder byte for
  byte on CPU, resumable with any number of processes (:func:`generate`).
* Per-real generation (``--per-real n``, method ``controlnet``, EMIT-Diff Algorithm 1 line 1): for each real
  training pair of the generator's fold (training-split order, the generator's ``training_cases.json``
  items), ``n`` images from its edge map and its prompt ``c_t`` + one augmentation phrase ``c_aug`` drawn per
  sample from ``numpy.random.default_rng([seed, 3])`` (``--aug-prompts none``: the plain prompt). Attempt
  ``j = seed - first_seed`` is version ``j mod n`` of item ``j div n``; the real mask is the label, so no mask
  filter applies. Manifest extras: ``source_item``/``source_id``, ``source_case``, ``version``, ``prompt``,
  ``aug_phrase``, ``edges`` (settings), ``guidance``, ``base_model_sha256``, ``per_real``,
  ``per_real_first_seed``; ``train_cases`` adds the frozen base run's cases (its pre-training included).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import save_config, to_dict
from ..data.dataset import dataset_info
from ..env import resolve_device
from ..errors import fail
from ..networks.export import sha256_file
from .accounting import ACCOUNTING, write_accounting
from .manifest import MANIFEST, PairRecord, SyntheticWriter, dataset_items, read_manifest  # noqa: F401 (re-export)
from ..io import check_writable_dir, read_json, write_json_atomic


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of one generation job (saved as ``SYN/generate_config.json``)."""

    n: int = 64                       # pairs to keep
    # the default (issue 12, bench/results/sampler_fast_busi64_image_step6000_spacing.md): DPM-Solver++(2M) on 20
    # log-SNR-spaced timesteps — FD 13.7 on BUSI 64 against 50.2 for the former default DDIM-25 on the uniform grid
    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "dpm++2m"  # dpm++2m: DPM-Solver++(2M), ~10-25 steps
    steps: int = 20                   # respaced sampling steps
    spacing: Literal["uniform", "logsnr", "karras"] = "logsnr"  # which timesteps (diffusion.sampling.timestep_grid)
    eta: float = 0.0                  # DDIM eta (0 = deterministic given x_T)
    seed: int = 0                     # seed of the first attempt; attempt i uses seed + i
    batch_size: int = 16
    min_area: int = 4                 # minimum foreground pixels of a kept mask
    min_component: int = 3            # connected components smaller than this are removed
    keep_empty: bool = False          # keep pairs whose mask is empty / below min_area
    max_attempts_factor: float = 4.0  # give up after n * factor attempts
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    # mask-conditioned generators (mask2image, dsdm), see synthesis/conditions.py
    masks: str = "real"               # real | augmented | joint:RUN
    reference: Literal["random", "own"] = "random"
    guidance: float | None = None     # classifier-free guidance scale (None: 3 for CFG-trained dsdm, else 1)
    # mask faithfulness (synthesis/faithfulness.py): auto = RUN/reference_segmenter (trained on first use by
    # 'synthpair generate' / segmentation.reference.generate_scored, never by generate itself) for
    # mask-conditioned methods or when min_faithfulness is set; off; or a real-only SEG folder
    segmenter: str = "auto"
    segmenter_steps: int = 300
    min_faithfulness: float | None = None  # drop pairs whose faithfulness is lower
    # per-real generation (method controlnet; EMIT-Diff): n versions of every real training pair
    per_real: int = 0                 # 0 = off (generate n pairs); > 0: this many per real training pair
    aug_prompts: Literal["random", "none"] = "random"  # append a random augmentation phrase per sample, or not
    # text-guided generation (method prompt; EMIT-Diff sec. 3.3): the prompts, cycled over the seeds in order
    # (empty: the run's distinct training prompts, sorted), and one augmentation phrase appended to each (or none)
    prompts: tuple[str, ...] = ()
    aug_prompt: str | None = None
    # sample from RUN/snapshots/step_<N> (train.snapshot_every) instead of RUN/export; None = the final export
    snapshot: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.min_faithfulness is not None and not 0.0 <= self.min_faithfulness <= 1.0:
            raise fail(f"min_faithfulness={self.min_faithfulness}: a Dice between 0 and 1, e.g. 0.5")
        if self.min_faithfulness is not None and self.segmenter == "off":
            raise fail("min_faithfulness needs faithfulness scores; drop segmenter=off")
        if self.guidance is not None and self.guidance < 0:
            raise fail(f"guidance={self.guidance}: must be >= 0 (1 = conditional prediction, 3 = default)")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.per_real < 0:
            raise fail(f"per_real={self.per_real}: must be >= 0 (versions per real training pair; 0 = off)")
        if self.aug_prompts not in ("random", "none"):
            raise fail(f"aug_prompts={self.aug_prompts!r}: choose random or none")
        object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))
        if any(not p.strip() for p in self.prompts):
            raise fail("--prompt: an empty prompt; give words, e.g. --prompt 'US, breast, malignant'")
        if self.snapshot is not None and self.snapshot < 1:
            raise fail(f"snapshot={self.snapshot}: a training step >= 1 (a RUN/snapshots/step_<N> folder)")
        if self.aug_prompt is not None and not self.aug_prompt.strip():
            raise fail("--aug-prompt: empty; give a phrase, e.g. --aug-prompt 'low brightness', or drop it")


PROGRESS = "progress.json"


def clean_mask(mask: np.ndarray, min_component: int) -> np.ndarray:
    """Remove connected components (per label, 4-connectivity) smaller than ``min_component`` pixels.

    mask: int (H, W) labels 0..K → same shape/dtype.
    """
    from scipy import ndimage

    if min_component <= 1:
        return mask
    out = mask.copy()
    for label in np.unique(mask):
        if label == 0:
            continue
        comp, n = ndimage.label(mask == label)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        small = np.flatnonzero(sizes < min_component)
        small = small[small != 0]
        if small.size:
            out[np.isin(comp, small)] = 0
    return out


def export_name(snapshot: int | None) -> str:
    """The export folder of a run that generation samples from: ``export`` (the final EMA weights) or
    ``snapshots/step_<N>`` (``train.snapshot_every``)."""
    return "export" if snapshot is None else f"snapshots/step_{int(snapshot)}"


def generator_provenance(run: Path, export_rel: str = "export") -> dict[str, Any]:
    """What a synthetic pair must know about its generator: run, fold, training cases, weights hash (of the
    export ``export_rel`` of the run: ``export`` or a snapshot, recorded as ``generator_export`` when not the
    final one)."""
    export = run / export_rel
    weights = export / "model.safetensors"
    if not weights.is_file():
        if export_rel != "export":
            have = sorted((run / "snapshots").glob("step_*"), key=lambda p: int(p.name.split("_")[1])) \
                if (run / "snapshots").is_dir() else []
            steps = ", ".join(p.name.split("_")[1] for p in have) or "none (train with --set snapshot_every=N)"
            raise fail(f"{run}: no {export_rel}/model.safetensors; snapshots of this run: {steps}")
        raise fail(f"{run}: no export/model.safetensors; train the generator first ('synthpair train … --out {run}')")
    cases_file = run / "training_cases.json"
    cases = read_json(cases_file, "training_cases.json")
    export_cfg = read_json(export / "config.json", "export config.json")
    return {
        "generator_run": str(run.resolve()),
        "model_sha256": sha256_file(weights),
        "fold": cases.get("fold"),
        "train_cases": sorted(cases.get("train_cases", cases.get("cases", []))),
        "data": cases.get("data"),
        "method": export_cfg.get("method", "joint"),
        "export_config": export_cfg,
        **({"generator_export": export_rel} if export_rel != "export" else {}),
    }


def label_names(data_info: dict[str, Any]) -> dict[str, int]:
    """Label names of the generator's data (export config), or generic names from ``num_classes``."""
    if data_info.get("labels"):
        return {str(k): int(v) for k, v in data_info["labels"].items()}
    k = int(data_info.get("num_classes", 2))
    return {"background": 0, **({"lesion": 1} if k == 2 else {f"class{i}": i for i in range(1, k)})}


def _load_progress(out: Path) -> dict[str, Any] | None:
    if not (out / PROGRESS).is_file():
        return None
    return read_json(out / PROGRESS, PROGRESS)


def _committed_lines(out: Path, next_seed: int) -> list[PairRecord]:
    """Manifest lines of committed batches (seed < next_seed); drops a torn last line and later ones."""
    path = out / MANIFEST
    if not path.is_file():
        return []
    lines = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            break
        try:
            rec = PairRecord.from_json(data)
        except (KeyError, TypeError, ValueError) as err:
            raise fail(f"{path}:{n}: not a manifest record ({err}); choose a new --out") from None
        if rec.seed < next_seed:
            lines.append(rec)
    return lines


def _remove_stray_files(out: Path, keep_ids: set[str]) -> None:
    for sub in ("images", "masks"):
        folder = out / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.suffix == ".png" and f.stem not in keep_ids:
                f.unlink()
            elif f.name.endswith(".tmp"):
                f.unlink()


# settings added to GenerateConfig after folders were written, with the value those folders were made with
GENERATE_LEGACY: dict[str, Any] = {"spacing": "uniform"}


def load_generate_config(path: Path | str) -> GenerateConfig:
    """A saved ``generate_config.json``; keys it predates take their value of that time (:data:`GENERATE_LEGACY`),
    not today's default."""
    from ..config import from_dict

    data = {**GENERATE_LEGACY, **read_json(path, "generate_config.json")}
    data.pop("_type", None)
    return from_dict(GenerateConfig, data, where=str(path))


def pair_id(seed: int) -> str:
    """File stem of the pair made from ``seed`` (files are named by seed)."""
    return f"seed{seed:07d}"


def sample_record(pid: str, seed: int, batch_seeds: list[int], prov: dict[str, Any], *, sampler: str, steps: int,
                  eta: float, spacing: str, device: str, amp: str, min_component: int, train_cases: list[str],
                  mask_area: int | None, faithfulness: float | None, **fields: Any) -> PairRecord:
    """The manifest record of a SAMPLED pair (recipe ``sample``, :mod:`.manifest`): the generator's provenance
    ``prov`` (:func:`generator_provenance`), the batch and sampler settings that replay it, and the writer's
    ``fields`` (condition records; a ``source_case`` among them sets the typed key)."""
    import torch

    return PairRecord(
        id=pid, seed=int(seed), method=prov["method"], generator_run=prov["generator_run"],
        model_sha256=prov["model_sha256"], fold=prov["fold"], train_cases=train_cases,
        source_case=fields.pop("source_case", None), mask_area=mask_area, faithfulness=faithfulness,
        fields={"batch_seeds": list(batch_seeds), "sampler": sampler, "steps": steps, "eta": eta, "spacing": spacing,
                "device": device, "cpu_threads": torch.get_num_threads(),  # replay uses the same (float reductions)
                "amp": amp, "min_component": min_component,
                **({"generator_export": prov["generator_export"]} if prov.get("generator_export") else {}),
                **fields})


def _sample(model_bundle: Any, seeds: list[int], cfg: GenerateConfig, device: str, amp: str,
            source: Any = None, labels: list[int] | None = None
            ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], list[str]]:
    """→ (images float32 (B, C, H, W), masks int64 (B, H, W), per-pair condition records, extra train cases)."""
    return sample_batch(model_bundle, seeds, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta, spacing=cfg.spacing,
                        device=device, amp=amp, source=source, guidance=cfg.guidance, labels=labels)


def sample_batch(model_bundle: Any, seeds: list[int], *, sampler: str, steps: int, eta: float, device: str,
                 amp: str, spacing: str = "uniform", source: Any = None, guidance: float | None = None, labels: list[int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]], list[str]]:
    """One batch of the ``sample`` recipe (every sampled synthetic pair is made here, and replayed here).

    ``source``: the condition source of a mask-conditioned / per-real generator (None for methods that make
    their own masks); ``labels``: explicit class/cluster labels (one per seed) for label-conditioned methods.
    → (images float32 (B, C, H, W), masks int64 (B, H, W) or None for an image-only generator, per-pair condition
    records, extra train cases)."""
    from ..methods import synthesize_batch

    if source is None:
        images, masks = synthesize_batch(model_bundle, seeds, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                         device=device, amp=amp, labels=labels)
        return (np.asarray(images, dtype=np.float32),
                None if masks is None else np.asarray(masks, dtype=np.int64),  # None: an image-only generator
                [{} for _ in seeds], [])
    import torch

    from ..diffusion.cond import Cond

    conds = source.batch(seeds, steps=steps, device=device, amp=amp)
    cond = getattr(conds, "cond", None) or Cond(
        mask=torch.from_numpy(conds.masks),
        reference=None if conds.references is None else torch.from_numpy(conds.references))
    images, masks = synthesize_batch(model_bundle, seeds, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                     device=device, amp=amp, cond=cond, guidance=guidance)
    if isinstance(conds, PromptConditions):  # images only: the prompt model's zero masks are not pairs
        masks = None
    return (np.asarray(images, dtype=np.float32), None if masks is None else np.asarray(masks, dtype=np.int64),
            conds.records, conds.extra_train_cases)


def methods_with(**attrs: Any) -> str:
    """The registered methods whose attributes have the given values, for error messages (``mask2image/dsdm``)."""
    from ..methods import methods_where

    return "/".join(methods_where(lambda m: all(getattr(m, k) == v for k, v in attrs.items()))) or "none"


def _condition_source(bundle: Any, prov: dict[str, Any], cfg: GenerateConfig, first_seed: int) -> Any:
    """The condition source the generator's pipeline requires (``Method.condition``, never its name): None for
    methods that make their own pairs from seeds, a :class:`~.conditions.ConditionSource` of masks (+ references)
    for ``masks``, a :class:`PerRealSource` for ``real_pairs``; a one-line error for settings the method does not
    read and for requirements synthesis cannot supply."""
    from ..methods import get_method

    method = get_method(prov["method"])
    if method.condition != "prompts" and (cfg.prompts or cfg.aug_prompt is not None):
        raise fail(f"{prov['generator_run']}: --prompt/--aug-prompt apply to {methods_with(condition='prompts')!r} "
                   f"generators; this one is {prov['method']!r}")
    if method.condition == "prompts":
        if cfg.masks != "real" or cfg.reference != "random" or cfg.per_real:
            raise fail(f"{prov['generator_run']}: a {prov['method']!r} generator samples images for prompts; "
                       f"--masks/--reference/--per-real do not apply (give --prompt TEXT)")
        return PromptSource(bundle, prov, cfg, first_seed)
    if method.condition == "real_pairs" or cfg.per_real:
        if method.condition != "real_pairs" or not cfg.per_real:
            raise fail(f"{prov['generator_run']}: --per-real N applies to (and is needed by) "
                       f"{methods_with(condition='real_pairs')!r} generators; this one is {prov['method']!r}"
                       + (" — pass --per-real N" if not cfg.per_real else ""))
        if cfg.masks != "real" or cfg.reference != "random":
            raise fail(f"--masks/--reference do not apply to a {prov['method']} generator (each real training pair "
                       f"gives its own edge map and mask)")
        return PerRealSource(bundle, prov, cfg, first_seed)
    if method.condition == "none":
        if cfg.masks != "real" or cfg.reference != "random" or cfg.guidance is not None:
            raise fail(f"{prov['generator_run']}: a {prov['method']!r} generator makes its own masks; --masks, "
                       f"--reference and --guidance apply to {methods_with(condition='masks')} generators only")
        return None
    if method.condition != "masks":
        raise fail(f"{prov['generator_run']}: a {prov['method']!r} generator samples for {method.condition}, which "
                   f"'synthpair generate' does not supply; sample it with the library (method.sample)")
    from .conditions import ConditionSource

    net = bundle[0]
    guidance = method.default_guidance(net) if cfg.guidance is None else cfg.guidance
    if guidance != 1.0 and net.cond_cfg.drop_prob <= 0:
        raise fail(f"--guidance {guidance}: {prov['generator_run']} was trained without classifier-free guidance "
                   f"(cond.drop_prob=0); use --guidance 1 or retrain with --set cond.drop_prob=0.1")
    data = prov["export_config"]["data"]
    return ConditionSource(cfg.masks, cfg.reference, data=prov["data"], fold=prov["fold"], first_seed=first_seed,
                           num_classes=int(data["num_classes"]), channels=int(data["channels"]), size=data["size"],
                           needs_reference=bool(net.use_reference), min_component=cfg.min_component)


@dataclass
class PerRealConditions:
    """Conditions of one per-real batch: the real masks int64 (B, H, W) (the labels), the network's ``cond``
    (tokens, edge maps, masks) and per-pair provenance records."""

    masks: np.ndarray
    cond: Any
    records: list[dict[str, Any]]
    extra_train_cases: list[str]
    references: None = None


class PerRealSource:
    """Edge maps, prompts and masks of the generator's real training pairs for per-real generation (module
    docstring). ``bundle``: (ControlledUNet, export config) of a ``controlnet`` run; ``prov``: its
    :func:`generator_provenance`; ``first_seed``: seed of attempt 0."""

    def __init__(self, bundle: Any, prov: dict[str, Any], cfg: GenerateConfig, first_seed: int) -> None:
        import torch

        from ..data.dataset import PreparedDataset
        from ..data.edges import edge_maps
        from ..methods.controlnet import base_phrases, encode_item_tokens

        net, export_cfg = bundle
        data = prov.get("data")
        if not data or not Path(data).is_dir():
            raise fail(f"{data}: the generator's dataset folder (training_cases.json 'data') is missing; per-real "
                       f"generation reads its real training pairs")
        run = Path(prov["generator_run"])
        cases = read_json(run / "training_cases.json", "training_cases.json")
        ds = PreparedDataset.open(data)
        train_ids, _ = ds.split(int(prov["fold"]))
        allowed = set(train_ids)
        ids = [i for i in cases.get("items", train_ids) if i in allowed]
        if not ids:
            raise fail(f"{run}/training_cases.json: no training items of fold {prov['fold']} in {data}; use the "
                       f"generator's own dataset")
        images, masks = ds.load(ids)
        if images.shape[1] != int(export_cfg["data"]["channels"]) or list(images.shape[2:]) != list(export_cfg["data"]["size"]):
            raise fail(f"{data}: images {tuple(images.shape[1:])} do not fit the generator's data {export_cfg['data']}")
        self.ds, self.ids, self.masks = ds, ids, masks
        self.edge_cfg = net.cfg.edges
        self.edges = torch.from_numpy(edge_maps(images, masks, self.edge_cfg))
        self.tokens, self.prompts = encode_item_tokens(ds, ids, export_cfg)
        self.phrases = base_phrases(export_cfg)
        self.per_real, self.aug = int(cfg.per_real), cfg.aug_prompts
        self.first_seed = int(first_seed)
        self.total = self.per_real * len(ids)
        base = export_cfg.get("base") or {}
        self.base_sha = base.get("weights_sha256")
        self.extra_train_cases: list[str] = []
        if base.get("run") and (Path(base["run"]) / "training_cases.json").is_file():
            bc = read_json(Path(base["run"]) / "training_cases.json", "base training_cases.json")
            self.extra_train_cases = sorted(bc.get("train_cases", bc.get("cases", [])))

    def item_for(self, seed: int) -> tuple[int, int]:
        """(item index, version) of attempt ``seed``."""
        j = int(seed) - self.first_seed
        return (j // self.per_real) % len(self.ids), j % self.per_real

    def phrase_for(self, seed: int) -> int:
        """Index of the augmentation phrase of sample ``seed`` (-1: none)."""
        if self.aug == "none" or not self.phrases:
            return -1
        return int(np.random.default_rng([int(seed), 3]).integers(len(self.phrases)))

    def batch(self, seeds: list[int], **_: Any) -> PerRealConditions:
        import torch

        from ..diffusion.cond import Cond

        rows, toks, recs = [], [], []
        for seed in seeds:
            i, version = self.item_for(seed)
            k = self.phrase_for(seed)
            rows.append(i)
            toks.append(self.tokens[i, k + 1])
            item = self.ids[i]
            phrase = None if k < 0 else self.phrases[k]
            recs.append({"source_item": item, "source_id": item, "source_case": self.ds.case_of(item),
                         "version": version, "prompt": self.prompts[i] + ("" if phrase is None else f", {phrase}"),
                         "aug_phrase": phrase, "aug_prompts": self.aug, "edges": self.edge_cfg.to_record(),
                         "per_real": self.per_real, "per_real_first_seed": self.first_seed,
                         "base_model_sha256": self.base_sha, "mask_source": None})
        idx = torch.tensor(rows, dtype=torch.long)
        masks = self.masks[rows].astype(np.int64)
        cond = Cond(tokens=torch.stack(toks), control=self.edges[idx], mask=torch.from_numpy(masks))
        return PerRealConditions(masks, cond, recs, self.extra_train_cases)


@dataclass
class PromptConditions:
    """Conditions of one prompt batch: the network's ``cond`` (tokens) and per-pair records; no masks (a prompt
    generator makes images only)."""

    cond: Any
    records: list[dict[str, Any]]
    extra_train_cases: list[str]
    masks: None = None
    references: None = None


class PromptSource:
    """Prompts of a ``prompt`` generator (EMIT-Diff's text-guided synthesis): ``cfg.prompts`` cycled over the
    attempts in seed order (attempt ``seed`` gets ``prompts[(seed - first_seed) mod len]``), or — when none are
    given — the run's distinct training prompts (export ``training_prompts``, sorted); ``cfg.aug_prompt``, when
    set, is appended to every prompt as its augmentation phrase (``"US, breast, malignant, low brightness"``).
    Every prompt is encoded with the run's vocabulary up front, so an unknown word is refused before sampling.
    Records: ``prompt`` (as sampled), ``prompt_base``, ``aug_phrase``, ``prompt_list`` and ``prompt_first_seed``
    (what a replay needs to rebuild the batch)."""

    def __init__(self, bundle: Any, prov: dict[str, Any], cfg: GenerateConfig, first_seed: int) -> None:
        from ..methods import get_method

        net, export_cfg = bundle
        given = list(cfg.prompts)
        self.prompts = given or sorted(export_cfg.get("training_prompts") or [])
        if not self.prompts:
            raise fail(f"{prov['generator_run']}: no --prompt given and the export records no training prompts; "
                       f"pass --prompt TEXT (e.g. --prompt 'US, breast, malignant')")
        self.aug = cfg.aug_prompt
        self.first_seed = int(first_seed)
        full = [self._full(p) for p in self.prompts]
        self.tokens = get_method(prov["method"]).encode_prompts(net, full)  # refuses unknown words (one line)

    def _full(self, prompt: str) -> str:
        return prompt if self.aug is None else f"{prompt}, {self.aug}"

    def index_for(self, seed: int) -> int:
        return (int(seed) - self.first_seed) % len(self.prompts)

    def batch(self, seeds: list[int], **_: Any) -> PromptConditions:
        from ..diffusion.cond import Cond

        rows = [self.index_for(s) for s in seeds]
        recs = [{"prompt": self._full(self.prompts[k]), "prompt_base": self.prompts[k], "aug_phrase": self.aug,
                 "prompt_list": list(self.prompts), "prompt_first_seed": self.first_seed, "mask_source": None}
                for k in rows]
        return PromptConditions(Cond(tokens=self.tokens[rows]), recs, [])


def _scorer_plan(run: Path, prov: dict[str, Any], cfg: GenerateConfig, conditional: bool) -> tuple[Path | None, bool]:
    """Which faithfulness segmenter scores the pairs (see GenerateConfig.segmenter) → (SEG folder or None, whether
    it must be trained first). Only checks; writes nothing. ``auto`` is off for per-real generation unless
    ``min_faithfulness`` is set: its labels are the real masks."""
    if cfg.per_real and cfg.segmenter == "auto" and cfg.min_faithfulness is None:
        return None, False
    if cfg.segmenter == "off" or (cfg.segmenter == "auto" and not conditional and cfg.min_faithfulness is None):
        return None, False
    seg = Path(cfg.segmenter) if cfg.segmenter != "auto" else run / "reference_segmenter"
    if (seg / "results.json").is_file():
        return seg, False
    if cfg.segmenter != "auto":
        raise fail(f"--segmenter {seg}: not a 'synthpair segment' output folder (no results.json)")
    if not prov.get("data") or not Path(prov["data"]).is_dir():
        raise fail(f"{run}: cannot train the reference segmenter, the dataset {prov.get('data')} is missing; "
                   f"pass --segmenter SEG or --segmenter off")
    return seg, True


def _open_scorer(seg: Path | None, prov: dict[str, Any], device: str) -> Any:
    """The :class:`~.faithfulness.FaithfulnessScorer` of SEG folder ``seg``, or None."""
    from .faithfulness import FaithfulnessScorer

    return None if seg is None else FaithfulnessScorer(seg, fold=prov["fold"], data=prov.get("data"), device=device)


def source_guidance(bundle: Any, prov: dict[str, Any], cfg: GenerateConfig) -> float:
    """The guidance scale actually used (the method default when ``cfg.guidance`` is None)."""
    from ..methods import get_method

    return float(cfg.guidance if cfg.guidance is not None else get_method(prov["method"]).default_guidance(bundle[0]))


def chain_accounting(run: Path, prov: dict[str, Any], source: Any, scorer: Any) -> dict[str, Any]:
    """The label accounting of a generation (:mod:`.accounting`): the generator (its init chain included), a
    ControlNet's frozen base run, the mask/reference source and the faithfulness segmenter that filters pairs."""
    from .accounting import run_accounting, segmenter_accounting, union

    sources = [("generator", prov["generator_run"], run_accounting(run))]
    base = prov["export_config"].get("base") or {}
    if base.get("run") and (Path(base["run"]) / "training_cases.json").is_file():
        sources.append(("base generator", str(base["run"]), run_accounting(base["run"])))
    if isinstance(source, PerRealSource):
        sources.append(("per-real pairs", str(source.ds.root), {"mask_items": source.ids, "image_items": source.ids}))
    elif isinstance(source, PromptSource):
        pass  # prompts are text: no item's mask or image enters the generation beyond the run's own
    elif source is not None:
        refs = list(source.ids) if source.needs_reference else []
        if source.joint is not None:
            sources.append(("mask source", source.joint_run, run_accounting(source.joint_run)))
            if refs and source.reference == "random":
                sources.append(("reference images", str(source.ds.root), {"mask_items": [], "image_items": refs}))
        else:
            sources.append(("mask source", str(source.ds.root), {"mask_items": list(source.ids), "image_items": refs}))
    if scorer is not None:
        sources.append(("faithfulness segmenter", str(scorer.seg_dir),
                        segmenter_accounting(scorer.seg_dir, int(prov["fold"]))))
    return union(sources)


def devices(cfg: GenerateConfig, shards: Any) -> tuple[str, str]:
    """(device recorded in the manifest — the spec, not a rank's CUDA index —, device this rank computes on)."""
    device = str(resolve_device(cfg.device))
    if shards.world > 1 and device == "cuda":
        return device, f"cuda:{shards.local_rank}"
    return device, device


def check_sampler(sampler: str, steps: int, export_cfg: dict[str, Any], where: str, spacing: str = "uniform") -> None:
    """The sampler name, the spacing and the step count against the generator's training timesteps — checked with
    the rest, before any output exists (the sampling loop would refuse them only after the folder was started)."""
    from ..diffusion.sampling import SAMPLERS, SPACINGS, respaced_timesteps

    if sampler not in SAMPLERS:
        raise fail(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if spacing not in SPACINGS:
        raise fail(f"--spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    T = int(export_cfg["diffusion"]["num_timesteps"])
    if not 1 <= int(steps) <= T:
        raise fail(f"{where}: --steps {steps}: must be between 1 and the generator's {T} training timesteps; "
                   f"e.g. --steps {min(25, T)}")
    respaced_timesteps(T, int(steps))


def check_generation(run: Path, out: Path, cfg: GenerateConfig, *, compute_device: str, main: bool = True,
                     untrained_ok: bool = False) -> dict[str, Any]:
    """Every check :func:`generate` makes before writing (each rank makes them): the generator, its condition
    source, the faithfulness segmenter and the output folder's state. → {"prov", "bundle", "source", "seg",
    "must_train", "scorer", "state"}. ``must_train``: ``--segmenter auto`` names ``RUN/reference_segmenter``,
    which is not trained yet — generate refuses that (one line) unless the folder is already complete;
    :func:`synthpair.segmentation.reference.prepare_reference_segmenter` (``untrained_ok``) trains it first."""
    from ..methods import get_method
    from ..methods.export import load_export

    if not run.is_dir():
        raise fail(f"{run}: generator run folder not found; pass the --out folder of 'synthpair train'")
    prov = generator_provenance(run, export_name(cfg.snapshot))
    bundle = load_export(run / export_name(cfg.snapshot))
    check_sampler(cfg.sampler, cfg.steps, prov["export_config"], where=str(run), spacing=cfg.spacing)
    source = _condition_source(bundle, prov, cfg, cfg.seed)
    if not get_method(prov["method"]).uses_masks and (
            cfg.min_faithfulness is not None or cfg.segmenter not in ("auto", "off")):
        raise fail(f"{run}: this {prov['method']!r} generator makes images without masks, so there is no mask "
                   f"faithfulness to score; drop --min-faithfulness / --segmenter")
    seg, must_train = _scorer_plan(run, prov, cfg, source is not None and get_method(prov["method"]).uses_masks)
    scorer = None if must_train else _open_scorer(seg, prov, compute_device)
    state = _load_progress(out)
    if state is None:
        if out.is_dir() and any(p.name not in (".synthpair-write-test",) for p in out.iterdir()):
            raise fail(f"{out}: folder is not empty and holds no unfinished generation; choose a new --out")
    else:
        from ..config import config_changes, describe_changes

        old = {**GENERATE_LEGACY, **read_json(out / "generate_config.json", "generate_config.json")}
        old.pop("_type", None)
        new = to_dict(cfg)
        changed = config_changes(old, new)
        if changed or state.get("model_sha256") != prov["model_sha256"]:
            what = f"other settings ({describe_changes(changed, old, new)})" if changed else "another model"
            raise fail(f"{out}: holds a generation with {what}; rerun with the same command to resume, or choose "
                       f"a new --out")
    if must_train and not untrained_ok and not (state or {}).get("complete"):
        raise fail(f"{seg}: the --segmenter auto reference segmenter is not trained yet; 'synthpair generate' trains "
                   f"it first (library: synthpair.segmentation.reference.generate_scored or "
                   f"prepare_reference_segmenter), or pass --segmenter SEG / off")
    if main:
        check_writable_dir(out)
    return {"prov": prov, "bundle": bundle, "source": source, "seg": seg, "must_train": must_train,
            "scorer": scorer, "state": state}


def generate(run_dir: Path | str, out_dir: Path | str, cfg: GenerateConfig = GenerateConfig(),
             progress: bool = True) -> Path:
    """Sample ``cfg.n`` pairs from the generator in ``run_dir`` into ``out_dir`` (resumes if interrupted).

    Writes ``images/<id>.png`` (uint8, value v ↔ v/127.5 − 1), ``masks/<id>.png`` (labels 0..K),
    ``manifest.jsonl`` (one line per pair), ``generate_config.json`` and finally ``dataset.json``.
    Returns ``out_dir``.

    Under ``torchrun --nproc_per_node=K`` the seed blocks are sharded: every round, rank ``r`` samples block
    ``b + r`` (block ``b`` = seeds ``seed + b·batch_size …``); rank 0 gathers the round and commits its blocks in
    block order exactly as one process would, stopping at the same block and pair (later blocks of the round
    are dropped unwritten). The folder is therefore byte-identical to a single-process run on CPU (same
    threads per process), and an interrupted run resumes with any number of processes. Every rank checks the
    inputs before rank 0 writes anything (:func:`check_generation`); only rank 0 writes. Faithfulness scores
    come from a TRAINED reference segmenter (``--segmenter SEG``, or ``auto`` = ``RUN/reference_segmenter``);
    generate never trains one: ``synthpair generate`` (and :func:`synthpair.segmentation.reference.
    generate_scored`) trains the ``auto`` one first.
    """
    from .shards import Shards, raise_errors

    run = Path(run_dir)
    out = Path(out_dir)
    shards = Shards.start()
    main = shards.is_main
    device, compute_device = devices(cfg, shards)
    chk = shards.check(lambda: check_generation(run, out, cfg, compute_device=compute_device, main=main))
    prov, model_bundle, source, scorer, state = (chk["prov"], chk["bundle"], chk["source"], chk["scorer"],
                                                 chk["state"])
    if state is not None and state.get("complete"):
        if main:
            print(f"{out}: already complete ({state['kept']} pairs)", file=sys.stderr)
        return out
    export_cfg = prov["export_config"]
    data_info = {**export_cfg.get("data", {}), **{k: export_cfg[k] for k in ("labels", "modality") if k in export_cfg}}

    writer = SyntheticWriter(out)

    def open_folder() -> dict[str, Any]:
        """Rank 0: start (or clean up for resuming) the folder."""
        st = state
        if st is None:
            save_config(cfg, out / "generate_config.json")
            st = {"next_seed": cfg.seed, "kept": 0, "attempted": 0, "model_sha256": prov["model_sha256"],
                  "complete": False}
            write_json_atomic(out / PROGRESS, st)
        lines = _committed_lines(out, st["next_seed"])
        writer.rewrite(lines)
        _remove_stray_files(out, {r.id for r in lines})
        return st

    state = shards.on_main(open_folder)
    accounting = chain_accounting(run, prov, source, scorer) if main else None
    per_real = isinstance(source, PerRealSource)
    n_target = source.total if per_real else cfg.n  # per-real: every version of every training pair, no filter
    max_attempts = n_target if per_real else int(np.ceil(cfg.n * cfg.max_attempts_factor))
    amp = cfg.amp
    guidance = source_guidance(model_bundle, prov, cfg) if source is not None else None

    def more(st: dict[str, Any]) -> bool:
        return st["kept"] < n_target and st["attempted"] < max_attempts

    def block_seeds(st: dict[str, Any], j: int) -> list[int]:
        """Seeds of the j-th block after the committed ones ([] when no single-process run would sample it)."""
        if st["attempted"] + j * cfg.batch_size >= max_attempts:
            return []
        start = st["next_seed"] + j * cfg.batch_size
        stop = min(start + cfg.batch_size, cfg.seed + n_target) if per_real else start + cfg.batch_size
        return list(range(start, stop))

    def sample_block(seeds: list[int]) -> dict[str, Any] | None:
        """Images, cleaned masks, condition records and faithfulness of one block (they depend on the seeds only)."""
        if not seeds:
            return None
        images, masks, cond_recs, extra_cases = _sample(model_bundle, seeds, cfg, compute_device, amp, source)
        if masks is None:  # image-only generator: images without masks (no mask filter, no faithfulness)
            masks = [None] * len(seeds)
        elif source is None:
            masks = np.stack([clean_mask(m, cfg.min_component) for m in masks])
        faith = scorer.score(images, masks) if scorer is not None else [None] * len(seeds)
        return {"seeds": seeds, "images": images, "masks": masks, "cond_recs": cond_recs,
                "extra_cases": extra_cases, "faith": faith}

    def commit(st: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: filter one block, write its pairs, append its manifest lines, then replace progress.json."""
        seeds = block["seeds"]
        train_cases = sorted(set(prov["train_cases"]) | set(block["extra_cases"]))
        new_lines = []
        for seed, image, mask, crec, f in zip(seeds, block["images"], block["masks"], block["cond_recs"],
                                              block["faith"]):
            if st["kept"] + len(new_lines) >= n_target:
                break
            area = None if mask is None else int((mask > 0).sum())
            if area is not None and area < max(cfg.min_area, 1) and not cfg.keep_empty and not per_real:
                continue
            if cfg.min_faithfulness is not None and f < cfg.min_faithfulness:
                continue
            rec = sample_record(
                pair_id(seed), seed, seeds, prov, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
                spacing=cfg.spacing, device=device,
                amp=amp, min_component=cfg.min_component, train_cases=train_cases, mask_area=area,
                faithfulness=None if f is None else round(float(f), 6),
                label_accounting=ACCOUNTING, num_mask_items_seen=accounting["num_mask_items"],
                **({"guidance": guidance} if source is not None else {}), **crec)
            writer.pair(rec, image, mask)
            new_lines.append(rec)
        writer.append(new_lines)
        st = {**st, "next_seed": seeds[-1] + 1, "kept": st["kept"] + len(new_lines),
              "attempted": st["attempted"] + len(seeds)}
        write_json_atomic(out / PROGRESS, st)
        return st

    from tqdm import tqdm

    bar = tqdm(total=n_target, initial=state["kept"], desc="generate", unit="pair", disable=not (progress and main),
               file=sys.stderr, dynamic_ncols=True)
    t0 = time.time()
    while more(state):
        # one round: rank r samples block r after the committed ones; rank 0 commits them in block order
        blocks = shards.gather(lambda: sample_block(block_seeds(state, shards.rank)))

        def commit_round() -> dict[str, Any]:
            raise_errors(blocks)
            st = state
            for block in blocks:
                if block is None or not more(st):
                    break
                kept = st["kept"]
                st = commit(st, block)
                bar.update(st["kept"] - kept)
                bar.set_postfix(kept=f"{st['kept']}/{st['attempted']}",
                                pair_s=f"{st['kept'] / max(time.time() - t0, 1e-9):.2f}")
            return st

        state = shards.on_main(commit_round)
    bar.close()

    def finish() -> None:
        """Rank 0: dataset.json (last), label accounting and the final progress state."""
        if state["kept"] < n_target:
            print(f"synthpair: warning: only {state['kept']} of {n_target} pairs passed the mask filter after "
                  f"{state['attempted']} attempts (lower --min-area or pass --keep-empty)", file=sys.stderr)
        lines = _committed_lines(out, state["next_seed"])
        items = dataset_items(lines, data_info.get("size", [1, 1]))
        info = dataset_info(
            name=f"synthetic-{Path(prov['generator_run']).name}", modality=data_info.get("modality", "unknown"),
            channels=data_info.get("channels", 1), labels=label_names(data_info),
            size=data_info.get("size", [0, 0]), normalisation={"method": "synthetic"}, items=items,
            synthetic=True, generator_run=prov["generator_run"], model_sha256=prov["model_sha256"],
            fold=prov["fold"], train_cases=sorted(set(prov["train_cases"]).union(*[r.train_cases for r in lines])),
            faithfulness=_faithfulness_summary(lines),
            label_accounting={k: accounting[k] for k in ("num_mask_items", "num_image_items", "sources")})
        write_accounting(out, accounting)
        writer.finish(info)
        write_json_atomic(out / PROGRESS, {**state, "complete": True})
        if progress:
            print(f"generated {state['kept']} pairs from {state['attempted']} seeds in {time.time() - t0:.1f}s"
                  + (f" on {shards.world} processes" if shards.world > 1 else ""), file=sys.stderr)

    shards.on_main(finish)
    return out


def _faithfulness_summary(lines: list[PairRecord]) -> dict[str, Any] | None:
    from ..metrics.faithfulness import summarize_faithfulness

    vals = [r.faithfulness for r in lines if r.faithfulness is not None]
    return summarize_faithfulness(vals) if vals else None


def regenerate_pair(syn_dir: Path | str, pair: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-create one pair of any synthetic folder from its manifest line (:func:`synthpair.synthesis.replay.
    regenerate_pair`)."""
    from .replay import regenerate_pair as replay

    return replay(syn_dir, pair)


def verify_pair(syn_dir: Path | str, pair: str) -> bool:
    """True when the replay reproduces the stored PNGs exactly (:func:`synthpair.synthesis.replay.verify_pair`)."""
    from .replay import verify_pair as verify

    return verify(syn_dir, pair)


def replay_sampled(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Recipe ``sample``: replay the recorded batch (``batch_seeds``, with ``batch_labels`` when the writer gave
    explicit labels) with the recorded sampler, steps, eta, spacing, device, amp and condition source on the generator
    run the line names → (image float32 (C, H, W), mask int64 (H, W) cleaned as written, or None for an
    image-only generator). Refuses a run whose weights changed (sha256)."""
    from ..methods.export import load_export

    run = Path(rec["generator_run"])
    export_rel = rec.get("generator_export", "export")
    if sha256_file(run / export_rel / "model.safetensors") != rec["model_sha256"]:
        raise fail(f"{run}: weights changed since {rec['id']} was generated (sha256 differs); cannot replay it")
    if "batch_seeds" not in rec:
        raise fail(f"pair {rec['id']}: its manifest line has no batch_seeds (written before replay was recorded); "
                   f"regenerate the folder to make it replayable")
    bundle = load_export(run / export_rel)
    cond_kw: dict[str, Any] = {}
    if rec.get("per_real"):
        cond_kw = {"per_real": int(rec["per_real"]), "aug_prompts": rec.get("aug_prompts", "random"),
                   "guidance": rec.get("guidance")}
    elif rec.get("prompt_list") is not None:
        cond_kw = {"prompts": tuple(rec["prompt_list"]), "aug_prompt": rec.get("aug_phrase"),
                   "guidance": rec.get("guidance")}
    elif rec.get("mask_source") is not None:
        ref = rec.get("reference") or "random"
        cond_kw = {"masks": rec["mask_source"], "reference": ref, "guidance": rec.get("guidance")}
    cfg = GenerateConfig(sampler=rec["sampler"], steps=rec["steps"], eta=rec["eta"], amp=rec["amp"],
                         spacing=rec.get("spacing", "uniform"),  # lines written before spacing existed: uniform
                         batch_size=len(rec["batch_seeds"]), min_component=rec.get("min_component", 1), **cond_kw)
    source = None
    if cond_kw:
        prov = generator_provenance(run, export_rel)
        first = (rec["per_real_first_seed"] if rec.get("per_real") else rec["prompt_first_seed"]
                 if rec.get("prompt_list") is not None else rec["mask_order_seed"])
        source = _condition_source(bundle, prov, cfg, int(first))
    labels = rec.get("batch_labels")
    images, masks, _, _ = _sample(bundle, list(rec["batch_seeds"]), cfg, rec["device"], rec["amp"], source,
                                  labels=None if labels is None else [int(v) for v in labels])
    i = rec["batch_seeds"].index(rec["seed"])
    if masks is None:  # image-only generator
        return images[i], None
    return images[i], (masks[i] if source is not None else clean_mask(masks[i], rec.get("min_component", 1)))
