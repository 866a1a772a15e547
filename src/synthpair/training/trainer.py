"""Train a diffusion generator on the training split of one fold and write the RUN folder.

RUN layout (docs/architecture.md): ``config.json`` (this TrainConfig), ``env.json``, ``log.txt``,
``metrics.jsonl`` (one object per logged step), ``samples/step_<n>.png`` (EMA previews),
``checkpoints/state.pt`` (everything needed for an exact resume), ``training_cases.json`` and ``export/``
(EMA weights, see :mod:`synthpair.networks.export`).

Randomness: batch indices, flips, timesteps and noise are all drawn from ONE CPU ``torch.Generator``
seeded with ``cfg.seed`` and saved in the checkpoint. Every DDP rank draws the same numbers for the whole
global batch and uses rows ``rank::world`` (a DistributedSampler-equivalent shard), so a resumed run and a
straight run see identical batches and, on CPU, give identical losses and weights. Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import save_config, to_dict
from ..data.dataset import PreparedDataset
from ..env import rebalance_threads, resolve_autocast, resolve_device, write_env
from ..diffusion.schedule import DiffusionConfig, NoiseSchedule, joint_channel_sigma_data
from ..errors import fail
from ..io import ensure_dir, save_png_atomic, translate_os_errors, write_bytes_atomic, write_json_atomic
from ..methods import DataInfo, available_methods, get_method
from ..methods.pig import PigConfig
from ..networks.conditional import CondConfig
from ..networks.finetune import FinetuneConfig
from ..networks.lora import LoRAConfig
from ..networks.prompt import PromptConfig
from ..networks.controlnet import ControlConfig
from ..networks.unet import UNetConfig
from .ema import ema_decay_at, ema_update, make_ema
from .lr import LR_SCHEDULES, LRSchedule, lr_factor

# Settings added to TrainConfig after runs were written, with the value those runs trained with (their default
# may change: a run's config.json or checkpoint without the key resumes with this value, never today's default).
TRAIN_LEGACY: dict[str, Any] = {"diffusion.loss_weighting": "uniform", "diffusion.timestep_sampling": "uniform",
                                "lr_schedule": "constant", "lr_min_ratio": 0.0, "diffusion.prediction": "v",
                                "diffusion.mask_sigma_data": None}

# The method-specific sections of TrainConfig: a run's config carries only those its method reads
# (``Method.config_sections``); the others are None and left out of config.json (:func:`method_sections_only`).
METHOD_SECTIONS: dict[str, type] = {"cond": CondConfig, "control": ControlConfig, "pig": PigConfig,
                                    "prompt": PromptConfig, "lora": LoRAConfig, "finetune": FinetuneConfig}

# Keys that may differ between a checkpoint and the config it is resumed with (they do not change the math).
RESUME_FREE_KEYS = ("steps", "log_every", "preview_every", "preview_n", "preview_steps", "checkpoint_every",
                    "device", "snapshot_every")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a generator training run (saved as RUN/config.json): the settings every method
    shares, then the sections of THIS run's method (issue 13): each method declares the sections it reads
    (``Method.config_sections``: ``cond`` for dsdm, ``control`` for controlnet, ``pig`` for pig, ``prompt`` +
    ``lora`` + ``finetune`` for prompt, none for image / joint / joint_cluster / mask2image, whose conditioning is
    fixed). A section of the method left out is filled with its defaults; a section another method reads is None,
    absent from config.json and refused in one line when set to anything but its defaults (``--set
    cond.mask_mode=...`` on a joint run was silently ignored before). Config files written before this carry all
    six sections; loading drops the ones their method does not read (:func:`method_sections_only`)."""

    _omit_when_none = tuple(METHOD_SECTIONS)  # config.to_dict leaves these keys out when None

    method: str = "joint"
    fold: int = 0
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3                # with the cosine decay below (issue 12: twice as fast as 2e-4-3e-4 constant)
    weight_decay: float = 0.0
    warmup_steps: int = 50          # linear LR warm-up, then lr_schedule
    lr_schedule: LRSchedule = "cosine"  # cosine (to lr_min_ratio·lr at `steps`) | constant (resume to more steps exact)
    lr_min_ratio: float = 0.0       # cosine: the LR of the last step as a fraction of lr
    ema_decay: float = 0.999
    ema_warmup: bool = True         # decay min(ema_decay, (1+s)/(10+s)), see training/ema.py
    grad_clip: float = 1.0          # max global grad norm; 0 disables
    amp: Literal["auto", "bf16", "off"] = "auto"
    seed: int = 0
    log_every: int = 10
    preview_every: int = 250        # 0: only at the end
    preview_n: int = 16
    preview_steps: int = 25         # steps of the preview samples (DPM-Solver++(2M), log-SNR grid)
    checkpoint_every: int = 250     # 0: only at the end (and on Ctrl-C)
    augment_flips: bool = True      # random horizontal/vertical flips of image and mask together
    net: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    cond: CondConfig | None = None          # dsdm: the mask conditioning (mask2image's is fixed: MASK2IMAGE_COND)
    control: ControlConfig | None = None    # controlnet: the edge branch over a prompt base
    pig: PigConfig | None = None            # pig: reuse/freeze a mask2image image model
    prompt: PromptConfig | None = None      # prompt: prompt encoder, CFG, augmentation phrases
    lora: LoRAConfig | None = None          # prompt: LoRA fine-tuning of a prompt run (with init_from)
    finetune: FinetuneConfig | None = None  # prompt: dreambooth | hypernetwork | embedding (init_from)
    device: str = "auto"            # auto | cpu | cuda | cuda:<i>
    items: str = ""                 # JSON file: list of item ids (a subset of the fold's training split), "" = all
    init_from: str = ""             # RUN or RUN/export: start from its weights (fine-tuning); "" = random init
    clusters: str = ""              # CL/clusters.json of 'synthpair cluster' (method joint_cluster); "" = none
    unlabelled: bool = True         # image-only methods: also learn from the unlabelled items of DATA
    snapshot_every: int = 0         # > 0: also export the EMA weights every N steps to snapshots/step_<N>/

    def __post_init__(self) -> None:
        own = get_method(self.method).config_sections  # unknown method: one line listing the methods
        foreign = []
        for name, section_type in METHOD_SECTIONS.items():
            value = getattr(self, name)
            if name in own:
                if value is None:
                    object.__setattr__(self, name, section_type())
            elif value is not None:
                if value != section_type():
                    foreign.append(name)
                object.__setattr__(self, name, None)  # at its defaults: simply not this method's
        if foreign:
            readers = [m for m in available_methods() if set(foreign) & set(get_method(m).config_sections)]
            raise fail(f"{', '.join('train.' + f for f in foreign)}: method {self.method} does not read "
                       f"{'this section' if len(foreign) == 1 else 'these sections'} (its sections: "
                       f"{', '.join(own) or 'none'}); remove {'it' if len(foreign) == 1 else 'them'}, or train a "
                       f"method that reads {'it' if len(foreign) == 1 else 'them'} ({', '.join(readers)})")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise fail(f"train.{name}={getattr(self, name)}: must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise fail(f"train.ema_decay={self.ema_decay}: must be in [0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise fail(f"train.lr_schedule={self.lr_schedule!r}: unknown; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise fail(f"train.lr_min_ratio={self.lr_min_ratio}: must be in [0, 1]")
        if self.finetune is not None and self.finetune.enabled:
            from ..methods.finetune import check_train_config

            check_train_config(self)  # needs init_from, not with lora.enabled (one line)


def resume_free_keys(lr_schedule: str) -> tuple[str, ...]:
    """The keys a checkpoint may be resumed with changed: :data:`RESUME_FREE_KEYS`, less ``steps`` for a schedule
    whose rates depend on the run's length (cosine)."""
    return RESUME_FREE_KEYS if lr_schedule == "constant" else tuple(k for k in RESUME_FREE_KEYS if k != "steps")


def config_hash(cfg: TrainConfig) -> str:
    """sha256 of the config without the keys that may change on resume (RESUME_FREE_KEYS; ``steps`` only with the
    constant LR schedule: a cosine schedule's rates depend on it)."""
    free = resume_free_keys(cfg.lr_schedule)
    d = {k: v for k, v in to_dict(cfg).items() if k not in free}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- helpers
def _dist_info() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _device(spec: str, local_rank: int, world: int) -> torch.device:
    """The training device; under torchrun on CUDA each rank takes ``cuda:<LOCAL_RANK>``."""
    dev = resolve_device(spec)
    if dev.type == "cuda":
        if world > 1 and dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM inside the block and raise KeyboardInterrupt right after it.

    The optimizer/EMA update must not be cut in half, or the Ctrl-C (or ``kill``) checkpoint could not be saved;
    outside the main thread (where signal handlers cannot be set) the block runs unprotected. A signal the process
    ignores (``SIG_IGN``, e.g. SIGINT of a job started with ``&`` by a non-interactive shell) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def _flip(images: torch.Tensor, masks: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip rows i with flips[i, 0] horizontally and with flips[i, 1] vertically (image and mask together)."""
    from ..data.transforms import flip_pairs

    images, masks = flip_pairs(images, masks, flips[:, 0], -1)  # masks None: image-only methods
    return flip_pairs(images, masks, flips[:, 1], -2)


def read_item_subset(path: Path | str, train_ids: list[str], fold: int) -> list[str]:
    """Item ids listed in JSON file ``path`` (a list, or ``{"items": [...]}``), kept in training-split order.

    One-line errors: unreadable file, an empty list, or an id outside ``train_ids`` (fold ``fold``'s training
    split — labelled items for mask-using methods, labelled + unlabelled for image-only ones; a test item must
    never reach a generator).
    """
    from ..io import read_json

    data = read_json(path, "train.items file")
    ids = data.get("items") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise fail(f"{path}: train.items must be a non-empty JSON list of item ids (or {{\"items\": [...]}})")
    allowed = set(train_ids)
    bad = [i for i in ids if i not in allowed]
    if bad:
        raise fail(f"{path}: {len(bad)} item(s) are not in the training split of fold {fold} (e.g. {bad[0]!r}); "
                   f"list only training items of that fold")
    wanted = set(ids)
    return [i for i in train_ids if i in wanted]


def _load_init_weights(model: nn.Module, spec: str, *, method: str, info: DataInfo) -> dict[str, Any]:
    """Copy the weights of the export ``spec`` into ``model``; returns provenance (export, method, sha256, the
    init run's cases and its label accounting, and how the weights were mapped).

    Same method: a strict load (same architecture). Another method (e.g. an image-only run as the start of a
    joint / mask2image / dsdm run): :func:`synthpair.networks.transfer.transfer_weights` loads the shared U-Net
    weights and initialises the new mask inputs/outputs/SPADE norms. A run of another image size, channel
    count or (between mask-aware methods) label set is refused with one line."""
    from ..methods.export import load_export
    from ..networks.export import export_source, sha256_file
    from ..networks.transfer import transfer_weights

    export_dir, run_dir = export_source(spec)
    src, src_cfg = load_export(export_dir)
    src_info = DataInfo.from_dict(src_cfg["data"])
    if src_info.channels != info.channels or tuple(src_info.size) != tuple(info.size):
        raise fail(f"{export_dir}: train.init_from run has {src_info.channels}-channel {src_info.size[0]}×"
                   f"{src_info.size[1]} images but this data has {info.channels}-channel {info.size[0]}×"
                   f"{info.size[1]}; pre-train on the same channels and size (prepare --size) or drop init_from")
    src_method = src_cfg.get("method")
    src_masks = get_method(src_method).uses_masks
    if src_masks and src_info.num_classes != info.num_classes:
        raise fail(f"{export_dir}: train.init_from run was trained on {src_info.num_classes} labels but this data "
                   f"has {info.num_classes}; start from a run of the same label set or an image-only run")
    mapping: dict[str, Any] = {"mode": "strict"}
    if src_method == method:
        try:
            model.load_state_dict(src.state_dict(), strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else "mismatch"
            raise fail(f"{export_dir}: train.init_from weights do not fit this network ({first}); use the same "
                       f"method/net settings as that run") from None
    else:
        try:
            mapping = {"mode": "transfer", **transfer_weights(model, src.state_dict())}
        except ValueError as err:
            raise fail(f"{export_dir}: train.init_from: {err}; use the same net settings as that run") from None
    cases: list[str] = []
    accounting: dict[str, Any] = {}
    if run_dir is not None:
        from ..io import read_json

        tc = read_json(run_dir / "training_cases.json", "training_cases.json")
        cases = list(tc.get("cases", []))
        accounting = run_label_accounting(tc, src_method)
    return {"export": str(export_dir.resolve()), "method": src_method,
            "weights_sha256": sha256_file(export_dir / "model.safetensors"), "cases": cases,
            "accounting": accounting, "mapping": mapping}


def run_label_accounting(training_cases: dict[str, Any], method: str | None) -> dict[str, Any]:
    """``{"mask_items", "image_items", "data"}`` a finished run learnt from, read from its training_cases.json.

    Runs written before the accounting existed have ``items`` (the training items): for a mask-using method
    those are both its mask and image items. Without ``items`` the run's cases are all that is known
    (``mask_cases``): a consumer then treats every labelled item of those cases as seen (conservative)."""
    if "mask_items" in training_cases:
        out = {"mask_items": list(training_cases["mask_items"]), "image_items": list(training_cases["image_items"])}
        if training_cases.get("mask_cases_unresolved"):
            out["mask_cases_unresolved"] = list(training_cases["mask_cases_unresolved"])
        return {**out, "data": training_cases.get("data")}
    uses_masks = get_method(method).uses_masks if method else True
    items = list(training_cases.get("items", []))
    if items:
        return {"mask_items": items if uses_masks else [], "image_items": items, "data": training_cases.get("data")}
    cases = list(training_cases.get("cases", []))
    return {"mask_items": [], "image_items": [], "mask_cases_unresolved": cases if uses_masks else [],
            "data": training_cases.get("data")}


def draw_batch(n: int, batch_size: int, generator: torch.Generator, flips: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices of one global batch (without replacement when it fits) and per-row flip flags (B, 2)."""
    if batch_size <= n:
        idx = torch.randperm(n, generator=generator)[:batch_size]
    else:
        idx = torch.randint(0, n, (batch_size,), generator=generator)
    flip = torch.rand((batch_size, 2), generator=generator) < 0.5 if flips else None
    return idx, flip


class _RunLog:
    """log.txt + metrics.jsonl (rank 0 only; other ranks get a no-op instance)."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.tensorboard: Any = None  # a TensorBoardLog when --tensorboard (rank 0)

    def line(self, text: str) -> None:
        if self.out is None:
            return
        with translate_os_errors(self.out / "log.txt"), open(self.out / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def metrics(self, record: dict[str, Any]) -> None:
        if self.out is None:
            return
        with translate_os_errors(self.out / "metrics.jsonl"), \
                open(self.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.scalars(record, int(record["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics logged after ``step`` (a resumed run logs them again)."""
        path = None if self.out is None else self.out / "metrics.jsonl"
        if path is None or not path.is_file():
            return
        keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


# ------------------------------------------------------------------------------------------- checkpoint
def _save_checkpoint(path: Path, *, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                     sched: Any, gen_state: torch.Tensor, step: int, cfg: TrainConfig, cpu_seconds: float = 0.0) -> None:
    state = {"step": step, "config_hash": config_hash(cfg), "config": to_dict(cfg), "cpu_seconds": float(cpu_seconds),
             "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "generator": gen_state, "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())


def _load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise fail(f"{path}: no checkpoint to resume from (the run stopped before its first checkpoint); "
                   f"delete {path.parent.parent} or choose a new --out and start again without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (corrupt/truncated file → one line)
        raise fail(f"{path}: unreadable checkpoint ({type(err).__name__}); delete it and train from scratch") from None
    if state.get("config_hash") != config_hash(cfg):
        from ..config import config_changes, describe_changes

        old, new = state.get("config", {}), to_dict(cfg)
        # a setting added to TrainConfig after the checkpoint was written, left at its default, cannot have
        # changed that run's math (defaults=)
        from ..config import with_legacy

        defaults = to_dict(TrainConfig(method=cfg.method))
        for key, value in TRAIN_LEGACY.items():  # a key the checkpoint predates had its value of that time
            section, _, leaf = key.rpartition(".")
            (defaults[section] if section else defaults)[leaf] = value
        old = method_sections_only(with_legacy(old, TRAIN_LEGACY))
        diff = config_changes(old, new, ignore=resume_free_keys(cfg.lr_schedule), defaults=defaults)
        if not diff:
            return state
        shown = describe_changes(diff, old, new) or "unknown keys"
        if cfg.lr_schedule != "constant" and "steps" in diff:
            raise fail(f"{path}: checkpoint was written with a different config: {shown}; a {cfg.lr_schedule} "
                       f"learning-rate schedule depends on the run's steps, so the run resumes only to its own steps: "
                       f"start a new --out (train runs you will extend with --set lr_schedule=constant)")
        raise fail(f"{path}: checkpoint was written with a different config: {shown}; "
                   "resume with the run's own config.json or start a new --out")
    return state


# ------------------------------------------------------------------------------------------------ train
def train_generator(data_dir: Path | str, out_dir: Path | str, cfg: TrainConfig = TrainConfig(),
                    resume: bool = False, progress: bool = True, tensorboard: bool = False) -> Path:
    """Train ``cfg.method`` on the training split of fold ``cfg.fold`` of DATA; write the RUN folder; return it.

    ``resume=True`` continues from ``out_dir/checkpoints/state.pt`` exactly (same losses and weights as an
    uninterrupted run on CPU); ``cfg.steps`` may be larger than the checkpoint's. Works under
    ``torchrun --nproc_per_node=N`` (each rank computes rows ``rank::N`` of every global batch of
    ``cfg.batch_size``). Ctrl-C saves a checkpoint before exiting. ``tensorboard``: also write the logged
    scalars and the preview grids as TensorBoard events to ``RUN/tensorboard`` (:mod:`.tensorboard`; rank 0).
    """
    data_dir, out = Path(data_dir), Path(out_dir)
    if tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()  # before anything is written
    rank, world, local_rank = _dist_info()
    is_main = rank == 0
    if cfg.batch_size % world:
        raise fail(f"train.batch_size={cfg.batch_size}: must be divisible by the {world} DDP processes")
    # Every rank checks before rank 0 writes anything (no rank sees another's files).
    ckpt_path = out / "checkpoints" / "state.pt"
    non_empty = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if non_empty and not resume:
        raise fail(f"{out}: output folder already exists and is not empty; choose a new --out or pass --resume")
    ds = PreparedDataset.open(data_dir)
    method = get_method(cfg.method)
    # the diffusion the network is trained and exported with: for a joint state under edm, sigma_d per channel —
    # images sigma_data, one-hot masks mask_sigma_data (config.json keeps the user's settings, the export the values)
    diffusion = (joint_channel_sigma_data(cfg.diffusion, ds.channels, ds.num_classes - 1) if method.joint_state
                 else cfg.diffusion)
    state = _load_checkpoint(ckpt_path, cfg) if resume else None
    if world > 1:
        dist.barrier()

    if cfg.finetune is not None and cfg.finetune.enabled and cfg.finetune.mode not in method.finetune_modes:
        raise fail(f"finetune.mode={cfg.finetune.mode}: method {cfg.method} does not implement it; use --method "
                   f"prompt or --set finetune.mode=off")
    uses_masks = method.uses_masks
    # mask-using methods see labelled training items only; image-only methods may add the unlabelled ones
    train_ids = ds.split(cfg.fold)[0] if uses_masks else ds.image_train_ids(cfg.fold, unlabelled=cfg.unlabelled)
    if not train_ids:
        raise fail(f"{data_dir}: fold {cfg.fold} has no training items; check splits.json")
    if cfg.items:
        train_ids = read_item_subset(cfg.items, train_ids, cfg.fold)
    train_cases = sorted({ds.case_of(i) for i in train_ids})
    info = DataInfo(ds.channels, ds.num_classes, ds.size)
    device = _device(cfg.device, local_rank, world)
    autocast = resolve_autocast(cfg.amp, device)
    if uses_masks:
        images_np, masks_np = ds.load(train_ids)
        masks: torch.Tensor | None = torch.from_numpy(masks_np).to(device)
    else:
        images_np, masks = ds.load_images(train_ids), None
    images = torch.from_numpy(images_np).to(device)

    # Per-item tensors of the method (cluster labels, prompt tokens, ...), indexed like train_ids (or None).
    extras = method.item_extras(ds, train_ids, cfg)
    extras = None if extras is None else {k: v.to(device) for k, v in extras.items()}

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = method.build_for_training(info, cfg, ds, train_ids).to(device)
    init = _load_init_weights(model, cfg.init_from, method=cfg.method, info=info) if cfg.init_from else None
    # label accounting: whose masks and whose images this run learnt from (its init_from chain included)
    mask_items = set(train_ids) if uses_masks else set()
    image_items = set(train_ids)
    unresolved: set[str] = set()
    if init is not None:
        train_cases = sorted(set(train_cases) | set(init["cases"]))  # the generator has seen both
        acc = init.get("accounting") or {}
        mask_items |= set(acc.get("mask_items", []))
        image_items |= set(acc.get("image_items", []))
        unresolved |= set(acc.get("mask_cases_unresolved", []))
    # e.g. DSDM: contrastive pre-training of the frozen reference encoder; LoRA adapters; a frozen ControlNet base
    method.setup(model, images, masks, data=info, seed=cfg.seed, fresh=state is None,
                 log=((lambda msg: (ensure_dir(out), _RunLog(out).line(msg))) if is_main else None), cfg=cfg,
                 run_dir=out if is_main else None)
    model = model.to(device)  # setup may add modules (adapters, control branches)
    ema = make_ema(model)
    schedule = NoiseSchedule(diffusion, device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen bases (LoRA, ControlNet) excluded
    if not trainable:
        raise fail(f"method {cfg.method}: no trainable parameters after setup; check the method's settings")
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, warmup_steps=cfg.warmup_steps, steps=cfg.steps, schedule=cfg.lr_schedule, min_ratio=cfg.lr_min_ratio))
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    cpu_before = 0.0  # CPU seconds of this run's training loop before this process (resumed runs)
    if state is not None:
        cpu_before = float(state.get("cpu_seconds", 0.0))
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step = int(state["step"])
        del state
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    log = _RunLog(out if is_main else None)
    if is_main and tensorboard:
        from .tensorboard import TensorBoardLog

        # events of steps after the checkpoint (an interrupted attempt logged them) are purged on resume
        log.tensorboard = TensorBoardLog(out / "tensorboard", purge_step=step + 1 if step else None)
    if is_main:
        ensure_dir(out / "samples")
        ensure_dir(out / "checkpoints")
        save_config(cfg, out / "config.json")
        write_env(out / "env.json", device=str(device), autocast=str(autocast) if autocast else None,
                  world_size=world, threads=torch.get_num_threads())
        write_json_atomic(out / "training_cases.json", {
            "fold": cfg.fold, "data": str(data_dir.resolve()), "cases": sorted(train_cases),
            "items": list(train_ids), "num_items": len(train_ids),
            "mask_items": sorted(mask_items), "image_items": sorted(image_items),
            **({"mask_cases_unresolved": sorted(unresolved)} if unresolved else {}),
            "num_mask_items": len(mask_items), "num_image_items": len(image_items),
            "init_from": None if init is None else {k: v for k, v in init.items() if k not in ("cases", "accounting")}})
        if resume:
            log.truncate_metrics(step)
            log.line(f"resume from step {step} -> {cfg.steps}")
        else:
            n_params = sum(p.numel() for p in model.parameters())
            n_train = sum(p.numel() for p in trainable)
            log.line(f"start: method={cfg.method} fold={cfg.fold} items={len(train_ids)} params={n_params} "
                     f"trainable={n_train} init_from={cfg.init_from or '-'} "
                     f"device={device} autocast={autocast} world={world} threads={torch.get_num_threads()}")
            if init is not None and init["mapping"]["mode"] == "transfer":
                mp = init["mapping"]
                log.line(f"init_from {init['method']} -> {cfg.method}: {mp['copied']} tensors copied, "
                         f"{mp['adapted']} adapted (new input/output channels, SPADE norms), {mp['new']} new, "
                         f"{mp['unused']} unused")

    cpu_t0 = time.process_time()

    def cpu_seconds() -> float:
        """CPU time (all threads of this process) spent in training so far, resumed segments included."""
        return cpu_before + time.process_time() - cpu_t0

    def checkpoint(at_step: int, gen_state: torch.Tensor) -> None:
        if is_main:
            _save_checkpoint(ckpt_path, model=model, ema=ema, opt=opt, sched=sched, gen_state=gen_state,
                             step=at_step, cfg=cfg, cpu_seconds=cpu_seconds())

    def write_export(folder: Path, at_step: int) -> None:
        from ..networks.export import save_export

        cond_section = method.cond_config(cfg.cond)
        extra = {"cond": to_dict(cond_section)} if cond_section is not None else {}
        extra.update(method.export_extra(ema, cfg))  # method-specific sections (vocabulary, base run, clusters, ...)
        save_export(folder, ema, export_config={  # the weights: the network's saved_state (partial ones too)
            **extra, "method": cfg.method, "init_from": None if init is None else init["export"],
            "net": to_dict(cfg.net), "diffusion": to_dict(diffusion), "data": info.to_dict(), "labels": ds.labels,
            "fold": cfg.fold, "step": at_step, "cpu_seconds": round(cpu_seconds(), 1),
            "train_config_hash": config_hash(cfg)})

    def preview(at_step: int) -> None:
        if not is_main or cfg.preview_n < 1:
            return
        from ..report.grid import pair_grid

        # the sampler of synthpair generate's default (DPM-Solver++(2M) on the log-SNR grid; issue 12)
        imgs, msks = method.sample(ema, schedule, list(range(cfg.preview_n)), data=info, sampler="dpm++2m",
                                   spacing="logsnr", steps=min(cfg.preview_steps, cfg.diffusion.num_timesteps),
                                   device=device, autocast_dtype=autocast)
        msks_np = np.zeros((imgs.shape[0], *imgs.shape[2:]), np.int64) if msks is None else msks.numpy()
        grid = pair_grid(imgs.numpy(), msks_np, ncols=8, num_classes=info.num_classes)
        save_png_atomic(out / "samples" / f"step_{at_step}.png", grid)
        if log.tensorboard is not None:
            log.tensorboard.image("preview", grid, at_step)

    bar = None
    if is_main and progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)
    loss_sum, n_loss, t_last = 0.0, 0, time.perf_counter()
    gen_state = gen.get_state()  # the state at `step`; a Ctrl-C checkpoint stores this pair
    updating = False
    model.train()
    try:
        while step < cfg.steps:
            idx, flips = draw_batch(len(train_ids), cfg.batch_size, gen, cfg.augment_flips)
            idx_d = idx.to(device)
            x, m = images[idx_d], (None if masks is None else masks[idx_d])
            if flips is not None:
                x, m = _flip(x, m, flips)
            kw = {} if extras is None else {"extra": {k: v[idx_d] for k, v in extras.items()}}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = method.training_loss(net, schedule, x, m, gen, data=info, shard=(rank, world), **kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (nn.utils.clip_grad_norm_(trainable, cfg.grad_clip) if cfg.grad_clip > 0
                         else torch.tensor(0.0))
            with _sigint_deferred():  # a Ctrl-C here waits until weights, EMA, step and log agree
                updating = True
                opt.step()
                sched.step()
                ema_update(ema, model, ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup))
                step += 1
                gen_state = gen.get_state()  # always the generator state that belongs to `step` (for Ctrl-C)
                updating = False
                loss_sum += float(loss.detach())
                n_loss += 1
                if step % max(cfg.log_every, 1) == 0 or step == cfg.steps:
                    mean_loss = loss_sum / n_loss
                    if world > 1:
                        t = torch.tensor([mean_loss], dtype=torch.float64, device=device)
                        dist.all_reduce(t)
                        mean_loss = float(t) / world
                    now = time.perf_counter()
                    ips = n_loss * cfg.batch_size / max(now - t_last, 1e-9)
                    rec = {"step": step, "loss": mean_loss, "lr": sched.get_last_lr()[0],
                           "grad_norm": float(grad_norm), "img_per_s": ips, "cpu_s": round(cpu_seconds(), 2)}
                    log.metrics(rec)
                    log.line(f"step {step} loss {mean_loss:.5f} lr {rec['lr']:.2e} img/s {ips:.1f}")
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.1f}")
                    loss_sum, n_loss, t_last = 0.0, 0, now
            if bar is not None:
                bar.update(1)
            changed = rebalance_threads()  # only under --threads auto (the default), every REBALANCE_SECONDS
            if changed and is_main:
                log.line(f"step {step}: CPU threads {changed[0]} -> {changed[1]} (cores other processes leave free)")
            if cfg.preview_every and step % cfg.preview_every == 0 and step != cfg.steps:
                preview(step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                checkpoint(step, gen_state)
            if is_main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                write_export(out / "snapshots" / f"step_{step}", step)
    except KeyboardInterrupt:
        if not updating:
            checkpoint(step, gen_state)
            log.line(f"interrupted at step {step}; checkpoint saved, continue with --resume")
        else:
            log.line(f"interrupted during an update at step {step}; last periodic checkpoint kept")
        log.close()
        raise
    finally:
        if bar is not None:
            bar.close()

    checkpoint(step, gen.get_state())
    preview(step)
    log.close()
    if is_main:
        write_export(out / "export", step)
        log.line(f"done: {step} steps ({cpu_seconds() / 60:.1f} CPU-min); export written to {out / 'export'}")
    if world > 1:
        dist.barrier()
    return out


def train_or_resume(data_dir: Path | str, out_dir: Path | str, cfg: TrainConfig, *, progress: bool = True) -> Path:
    """One generator stage of a pipeline or study: skip a finished run (its export complete), resume it from
    its checkpoint (``cfg`` must match, see :func:`_load_checkpoint`), or start it — after removing ``out_dir``
    when it holds a run stopped before its first checkpoint (the stage's own folder: nothing to resume).
    Returns ``out_dir``."""
    import shutil

    from ..networks.export import export_complete

    out = Path(out_dir)
    if export_complete(out):
        return out
    resume = (out / "checkpoints" / "state.pt").is_file()
    if out.exists() and not resume:
        shutil.rmtree(out)
    return train_generator(data_dir, out, cfg, resume=resume, progress=progress)


def method_sections_only(data: dict[str, Any]) -> dict[str, Any]:
    """A saved TrainConfig dict with the sections its method does not read removed (a copy) — the migration of
    config files and checkpoints written when every run carried all six sections (before issue 13). Those sections
    were never read by the run, whatever they held, so dropping them changes nothing the run did."""
    method = data.get("method", TrainConfig.method)
    try:
        own = get_method(method).config_sections
    except ValueError:
        return dict(data)  # an unknown method: from_dict / TrainConfig reports it in one line
    return {k: v for k, v in data.items() if k not in METHOD_SECTIONS or k in own}


def load_train_config(path: Path | str) -> TrainConfig:
    """TrainConfig from a JSON file (RUN/config.json or a user file); unknown keys are errors; keys the file
    predates take their value of that time (:data:`TRAIN_LEGACY`); sections its method does not read (all six
    were written before issue 13) are dropped (:func:`method_sections_only`)."""
    from ..config import from_dict, with_legacy
    from ..io import read_json

    data = dict(read_json(path, "config.json"))
    data.pop("_type", None)
    return from_dict(TrainConfig, method_sections_only(with_legacy(data, TRAIN_LEGACY)), where=str(path))


__all__ = ["TrainConfig", "train_generator", "train_or_resume", "config_hash", "load_train_config", "draw_batch",
           "method_sections_only", "METHOD_SECTIONS"]
