"""Method ``controlnet``: the EMIT-Diff generator (sec. 4.1-4.4) = a frozen prompt-conditioned base (method
``prompt``, :mod:`synthpair.networks.prompt`) + a trainable ControlNet edge branch
(:mod:`synthpair.networks.controlnet`).

Training (``synthpair train DATA --method controlnet --set control.base_run=BASE_RUN``): the base run's
export is loaded and frozen (its sha256 is recorded); the branch is initialised from the base encoder and
trained with ``L_simple`` on the fold's training pairs conditioned on (prompt of the item, edge map of the
item). Edge maps (:mod:`synthpair.data.edges`) are computed per batch from the (flipped) image and mask, so
they always match the trainer's flips. With probability ``control.aug_prob`` a row's image is transformed by a
random augmentation phrase of the base (:mod:`synthpair.data.aug_prompts`) and the phrase appended to its
prompt, while its edge map stays the one of the untransformed pair (the phrase changes intensities, not
structure); with probability ``control.drop_prob`` the prompt is replaced by the base's null context (CFG).
All random draws (t, noise, drop, phrase choice, phrase noise) come from the trainer's generator.

Sampling (Algorithm 1, line 1): ``x_i = D(eps_i, c_t + c_aug_i, c_e)`` for a given edge map and prompt;
``sample(..., cond=Cond(tokens (B, L), control (B, 1, H, W), mask (B, H, W)), guidance=s)`` returns the given
masks with the generated images (the real pair's mask is the label). The export stores only the branch
weights plus the base export's path and sha256; loading rebuilds the base from that path and refuses another
base (one-line error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..diffusion.cond import Cond
from ..diffusion.guidance import classifier_free
from ..diffusion.losses import diffusion_loss
from ..diffusion.sampling import sample as run_sampler
from ..errors import fail
from .base import DataInfo, Draws, Method, Shard, register_method, unwrap
from .joint import seed_generators



def base_source(spec: str | Path) -> tuple[Path, Path | None]:
    """``RUN`` or ``RUN/export`` of the base → (export folder, run folder or None); one-line error if absent."""
    p = Path(spec)
    if (p / "export" / "config.json").is_file():
        return p / "export", p
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p, (p.parent if (p.parent / "training_cases.json").is_file() else None)
    raise fail(f"control.base_run={spec}: not a finished generator run (no export/config.json); train the base "
               f"first with 'synthpair train DATA --method prompt --out {spec}'")


def read_base_config(spec: str | Path) -> dict[str, Any]:
    """The base export's config.json (checked to be a ``prompt`` generator)."""
    from ..networks.export import read_export_config

    export_dir, _ = base_source(spec)
    cfg = read_export_config(export_dir)
    if cfg.get("method") != "prompt":
        raise fail(f"control.base_run={spec}: a {cfg.get('method')!r} generator; the ControlNet branch needs a "
                   f"'prompt' base run (synthpair train DATA --method prompt)")
    return cfg


def base_phrases(base_cfg: dict[str, Any]) -> tuple[str, ...]:
    """The augmentation phrases the base knows (its ``prompt.aug_phrases``; empty = all)."""
    from ..data.aug_prompts import check_phrases

    return check_phrases(tuple(base_cfg.get("prompt", {}).get("aug_phrases", ()) or ()))


def item_prompts(ds: Any, ids: Sequence[str], base_cfg: dict[str, Any]) -> list[str]:
    """The base's prompt ``c_t`` of each item (the base method's own rule, :mod:`synthpair.methods.prompt`)."""
    from ..config import from_dict
    from ..networks.prompt import PromptConfig
    from .prompt import item_prompts as prompt_rule

    pcfg = from_dict(PromptConfig, base_cfg.get("prompt", {}), where="base export config.json:prompt")
    return list(prompt_rule(ds, list(ids), pcfg))


def encode_item_tokens(ds: Any, ids: Sequence[str], base_cfg: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """Tokens of every item without and with each augmentation phrase → (int64 (N, 1 + P, L), prompts).

    Row ``[i, 0]`` is ``c_t`` of item i, row ``[i, 1 + k]`` is ``c_t + ", " + phrases[k]`` (Algorithm 1,
    ``c_t + c_aug``). Words outside the base's closed vocabulary are a one-line error."""
    from ..networks.prompt import Vocabulary
    from .prompt import with_phrase

    vocab = Vocabulary(base_cfg["vocabulary"])
    max_len = int(base_cfg["prompt"]["max_len"])
    prompts = item_prompts(ds, ids, base_cfg)
    phrases = base_phrases(base_cfg)
    rows = [torch.stack([vocab.encode(p, max_len)] + [vocab.encode(with_phrase(p, ph), max_len) for ph in phrases])
            for p in prompts]
    return (torch.stack(rows) if rows else torch.zeros((0, 1 + len(phrases), max_len), dtype=torch.long)), prompts


class ControlNetMethod(Method):
    """EMIT-Diff's edge + prompt conditioned generator (module docstring)."""

    name = "controlnet"
    config_sections = ("control",)
    condition = "real_pairs"  # edge maps, prompts and masks of the real training pairs (per-real generation)
    conditional = True
    makes_masks = False       # returns the given (real) masks

    # ------------------------------------------------------------------ building
    def item_extras(self, dataset: Any, train_ids: list[str], train_cfg: Any) -> dict[str, torch.Tensor]:
        """Per-item prompt tokens with/without each augmentation phrase: ``tokens`` int64 (N, 1 + P, L)."""
        base_cfg = read_base_config(self._base_spec(train_cfg))
        tokens, _ = encode_item_tokens(dataset, train_ids, base_cfg)
        self._item_tokens = tokens
        return {"tokens": tokens}

    @staticmethod
    def _base_spec(train_cfg: Any) -> str:
        spec = train_cfg.control.base_run
        if not spec:
            raise fail("control.base_run: empty; the ControlNet branch trains over a finished 'prompt' run: "
                       "--set control.base_run=BASE_RUN")
        return spec

    def build_for_training(self, data: DataInfo, train_cfg: Any, dataset: Any, train_ids: list[str]) -> nn.Module:
        """Load the base export (frozen later in :meth:`setup`), check it fits the data and the diffusion
        schedule, and build the branch initialised from its encoder."""
        from ..diffusion.schedule import diffusion_differences
        from ..networks.controlnet import ControlledUNet
        from ..networks.export import sha256_file
        from ..networks.pretrained import base_record
        from .export import load_export

        spec = self._base_spec(train_cfg)
        export_dir, run_dir = base_source(spec)
        base_cfg = read_base_config(spec)
        if DataInfo.from_dict(base_cfg["data"]) != data:
            raise fail(f"control.base_run={spec}: trained on data {base_cfg['data']}, this dataset is "
                       f"{data.to_dict()}; train the base on the same channels/size/classes")
        if diffusion_differences(base_cfg["diffusion"], train_cfg.diffusion):
            raise fail(f"control.base_run={spec}: its diffusion schedule {base_cfg['diffusion']} differs from "
                       f"train.diffusion; use the base's settings (--config {spec}/config.json or --set diffusion.*)")
        base, _ = load_export(export_dir)
        net = ControlledUNet(base, train_cfg.control)
        net.phrases = base_phrases(base_cfg)
        net.base_source = base_record(export_dir)  # network.json names the base; the export holds the branch
        self._base_record = {"export": str(export_dir.resolve()), "run": None if run_dir is None else str(run_dir.resolve()),
                             "weights_sha256": sha256_file(export_dir / "model.safetensors"), "method": "prompt"}
        self._base_cfg = base_cfg
        return net

    def build_from_export(self, data: DataInfo, export_cfg: dict[str, Any], export_dir: Path) -> nn.Module:
        """Rebuild base + branch: the base export recorded in ``export_cfg["base"]`` must still have the
        recorded sha256 (else a one-line error)."""
        from ..config import from_dict
        from ..networks.controlnet import ControlConfig, ControlledUNet
        from .export import load_export
        from ..networks.export import sha256_file

        rec = export_cfg.get("base") or {}
        base_export = Path(rec.get("export", ""))
        weights = base_export / "model.safetensors"
        if not weights.is_file():
            raise fail(f"{export_dir}: its base export {base_export} is missing; the ControlNet branch needs the "
                       f"frozen 'prompt' base it was trained on")
        if sha256_file(weights) != rec.get("weights_sha256"):
            raise fail(f"{weights}: sha256 differs from the base this ControlNet was trained on "
                       f"({str(rec.get('weights_sha256'))[:12]}…, recorded in {export_dir / 'config.json'}); restore that "
                       f"base run or retrain the branch")
        base, base_cfg = load_export(base_export)
        net = ControlledUNet(base, from_dict(ControlConfig, export_cfg["control"], where=f"{export_dir}/config.json:control"),
                             init_from_base=False)
        net.phrases = base_phrases(base_cfg)
        net.base_source = {"base_export": str(base_export), "base_weights_sha256": str(rec.get("weights_sha256"))}
        return net

    def load_weights(self, model: nn.Module, state: dict[str, torch.Tensor], export_cfg: dict[str, Any],
                     export_dir: Path) -> None:
        """The export holds the branch only (``control.*``); the base came from its own export."""
        unwrap(model).load_branch_state(state)

    def setup(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, data: DataInfo, seed: int,
              fresh: bool, log: Callable[[str], None] | None = None, cfg: Any = None,
              run_dir: Any = None) -> None:
        """Freeze the base; keep the first 16 training pairs' edge maps, prompts and masks for previews."""
        from ..data.edges import edge_maps

        net = unwrap(model)
        net.freeze_base()
        k = min(16, images.shape[0])
        edges = edge_maps(images[:k].cpu().numpy(), masks[:k].cpu().numpy(), net.cfg.edges)
        tokens = self._item_tokens[:k, 0] if getattr(self, "_item_tokens", None) is not None else None
        self._preview = (torch.from_numpy(edges), tokens, masks[:k].detach().cpu())
        if log is not None:
            n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
            log(f"controlnet: base frozen ({sum(p.numel() for p in net.base.parameters())} params), branch "
                f"{n_train} trainable params")

    def export_extra(self, ema: nn.Module, train_cfg: Any) -> dict[str, Any]:
        from ..config import to_dict

        return {"control": to_dict(train_cfg.control), "base": dict(self._base_record),
                "prompt": self._base_cfg.get("prompt"), "vocabulary": self._base_cfg.get("vocabulary"),
                "base_net": self._base_cfg.get("net")}

    def cond_config(self, cfg: Any) -> Any:
        """Not a CondConfig method: the trainer's generic ``cond`` export section is left at its defaults."""
        from ..networks.conditional import CondConfig

        return CondConfig()

    # ------------------------------------------------------------------ training
    def training_loss(self, model: Callable[..., torch.Tensor], schedule: Any, images: torch.Tensor,
                      masks: torch.Tensor, generator: torch.Generator, *, data: DataInfo,
                      shard: tuple[int, int] = (0, 1), extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if extra is None or "tokens" not in extra:  # before any draw: a one-line error
            raise fail("method controlnet: training needs the per-item prompt tokens (item_extras); use the trainer")
        return super().training_loss(model, schedule, images, masks, generator, data=data, shard=shard, extra=extra)

    def drop_prob(self, net: nn.Module) -> float | None:
        """``control.drop_prob`` (the flags are drawn even at 0, as every run since issue 5 did)."""
        return net.cfg.drop_prob

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor, draws: Draws, shard: Shard, generator: torch.Generator, *, data: DataInfo,
             extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``L_simple`` of the controlled network (module docstring). images (B, C, H, W) in [-1, 1], masks
        (B, H, W); ``extra["tokens"]`` int64 (B, 1 + P, L). Draws after :class:`Draws` (whole batch, fixed count):
        phrase flags, phrase index, phrase noise."""
        from ..data.aug_prompts import augment_batch
        from ..data.edges import edge_maps

        cc = net.cfg
        b = images.shape[0]
        dev = images.device
        use = torch.rand((b,), generator=generator) < getattr(cc, "aug_prob", 0.0)
        pick = torch.randint(0, max(len(net.phrases), 1), (b,), generator=generator)
        aug_noise = torch.randn(images.shape, generator=generator)
        choice = torch.where(use & (len(net.phrases) > 0), pick, torch.full_like(pick, -1))
        edges = torch.from_numpy(edge_maps(images.detach().float().cpu().numpy(), masks.cpu().numpy(), cc.edges)).to(dev)
        x0 = augment_batch(images, choice, net.phrases, aug_noise) if bool((choice >= 0).any()) else images
        tokens = extra["tokens"][torch.arange(b, device=extra["tokens"].device), (choice + 1).to(extra["tokens"].device)]
        cond = Cond(tokens=shard.take(tokens, dev), control=shard.take(edges), drop=shard.take(draws.drop, dev))
        return diffusion_loss(model, schedule, shard.take(x0), shard.take(draws.t, dev), shard.take(draws.noise, dev),
                              cond)

    # ------------------------------------------------------------------ sampling
    def default_guidance(self, model: nn.Module) -> float:
        return 1.0

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False, cond: Cond | None = None,
               guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images for the edge maps and prompts of ``cond`` → (images float32 (B, C, H, W) in [-1, 1], the given
        masks int64 (B, H, W)) on CPU. ``cond.tokens`` int64 (B, L), ``cond.control`` float (B, 1, H, W) in
        [0, 1], ``cond.mask`` int64 (B, H, W) (the label; zeros when absent). ``guidance`` s (None: 1);
        s != 1 needs a branch trained with ``control.drop_prob > 0``. Sample i depends only on ``seeds[i]``
        and its conditions."""
        from ..data.edges import check_edge_maps

        net = unwrap(model)
        if cond is None:
            if getattr(self, "_preview", None) is None or self._preview[1] is None:
                raise fail("method controlnet: sampling needs edge maps and prompts (cond=Cond(tokens=..., "
                           "control=...)); use 'synthpair generate RUN --per-real N'")
            pe, pt, pm = self._preview
            idx = torch.arange(len(seeds)) % pe.shape[0]
            cond = Cond(tokens=pt[idx], control=pe[idx], mask=pm[idx])
        if cond.tokens is None or cond.tokens.shape[0] != len(seeds):
            raise fail(f"cond.tokens: need one prompt per seed ({len(seeds)}); encode the prompts with the base's "
                       f"vocabulary")
        check_edge_maps(cond.control, data.size, batch=len(seeds), where="cond.control")
        # prompt guidance (diffusion.guidance): every Cond field doubled, only the prompt nulled via ``drop`` — the
        # edge map conditions both halves, as in ControlNet
        s = self.default_guidance(net) if guidance is None else float(guidance)
        if s != 1.0 and net.cfg.drop_prob <= 0:
            raise fail(f"guidance={s}: this ControlNet was trained without prompt dropout (control.drop_prob=0); "
                       f"use --guidance 1")
        masks = cond.mask.long() if cond.mask is not None else torch.zeros((len(seeds), *data.size), dtype=torch.long)
        dev = torch.device(device)
        run_cond = Cond(tokens=cond.tokens.to(dev), control=cond.control.float().to(dev))
        gens = seed_generators(seeds)
        x_T = torch.stack([torch.randn((data.channels, *data.size), generator=g) for g in gens]).to(dev)
        x0 = run_sampler(classifier_free(model, s), schedule, x_T, sampler=sampler, steps=steps, eta=eta, cond=run_cond,
                         spacing=spacing, generators=gens, progress=progress, autocast_dtype=autocast_dtype)
        return x0[:, :data.channels].float().clamp(-1, 1).cpu(), masks.cpu()


register_method("controlnet", ControlNetMethod)

__all__ = ["ControlNetMethod", "encode_item_tokens", "item_prompts", "read_base_config", "base_source"]
