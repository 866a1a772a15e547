"""Method ``prompt``: the prompt-conditioned image generator of EMIT-Diff (Zhang et al., sec. 4.1-4.4).

``eps_theta(x_t, c_t, t)`` generates an IMAGE (the dataset's C channels) for a text prompt ``c_t`` (modality,
organ, finding; sec. 4.2) with classifier-free guidance. It is the base model of the EMIT-Diff pipeline:
pre-train on a pool of datasets (``synthpair pool``; the paper pre-trains on RadImageNet), fine-tune on the
target dataset's training split (full: ``--set init_from=BASE_RUN``; LoRA: ``--set lora.enabled=true``, only
low-rank adapters train, see :mod:`synthpair.networks.lora`), and add the edge ControlNet branch
(``networks/controlnet.py``) that makes the image follow a real pair's mask. On its own the model does not
produce masks: ``sample`` returns ``cond.mask`` when given, else all-background masks.

Training (``training_loss``): DDPM ``L_simple`` (eq. 11; target = ``diffusion.prediction``, eps in the paper, v by
default here) on the image with the item's prompt tokens
(``item_extras`` → ``extra["tokens"]`` (B, L)); classifier-free prompt dropout with ``prompt.drop_prob``; with
probability ``prompt.aug_prob`` an item gets an augmentation phrase (sec. 4.4; :mod:`synthpair.data.aug_prompts`):
its image is transformed and the phrase appended to its prompt. All draws come from the trainer's generator
(t, noise, drop flags, augmentation flags/choices/noise, in that order, for the whole global batch).

Item prompts: see :class:`synthpair.networks.prompt.PromptConfig` (dataset.json ``"prompt"`` of the item,
else ``prompt.default_prompt``, else ``prompt.template`` with ``{finding}`` from the item id's prefix). The
vocabulary is every word of the training prompts, of all augmentation phrases and of ``prompt.vocabulary``;
a fine-tuning run (``init_from``) keeps the base run's word order and appends new words.

Export (``export/config.json``): ``"prompt"`` (the PromptConfig), ``"vocabulary"`` (word list),
``"training_prompts"`` (the distinct training prompts) and, for LoRA runs, ``"lora"`` = {``config``,
``base_export`` (absolute path), ``base_weights_sha256``}: ``model.safetensors`` then holds only the adapters
(+ the token embedding with ``lora.train_embeddings``); loading rebuilds the base export (its sha256 must
match, else "LoRA checkpoint for another base model"), adds the adapters and merges them into the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import from_dict, to_dict
from ..data.aug_prompts import AUG_PHRASES, augment_batch, check_phrases
from ..data.prompts import finding_of
from ..diffusion.cond import Cond
from ..diffusion.guidance import classifier_free
from ..diffusion.losses import diffusion_loss
from ..diffusion.sampling import sample as run_sampler
from ..errors import fail
from ..networks.lora import LoRAConfig, inject_lora
from ..networks.pretrained import base_record
from ..networks.prompt import PromptConfig, PromptUNet, Vocabulary, tokenize
from ..networks.unet import UNetConfig
from . import finetune as ft
from .base import DataInfo, Draws, Method, Shard, register_method, unwrap
from .joint import seed_generators




def item_prompts(ds: Any, ids: Sequence[str], cfg: PromptConfig) -> list[str]:
    """The prompt of every item (rules in :class:`PromptConfig`)."""
    by_id = {it["id"]: it for it in ds.items}
    out = []
    for i in ids:
        item = by_id[i]
        if item.get("prompt"):
            out.append(str(item["prompt"]))
        elif cfg.default_prompt:
            out.append(cfg.default_prompt)
        else:
            try:
                out.append(cfg.template.format(finding=finding_of(i, ds.labels), modality=ds.modality,
                                               name=ds.info.get("name", "data"),
                                               label=finding_of("", ds.labels)))
            except (KeyError, IndexError, ValueError) as err:
                raise fail(f"prompt.template={cfg.template!r}: bad placeholder ({err}); use {{finding}}, "
                           f"{{modality}}, {{name}}, {{label}}") from None
    return out


def _init_export(spec: str) -> Path:
    from ..networks.export import export_source

    return export_source(spec)[0]


def _base_vocabulary(cfg: Any) -> Vocabulary | None:
    """The vocabulary of the ``init_from`` export (None without init_from, or when it is an image-only run)."""
    if not getattr(cfg, "init_from", ""):
        return None
    from ..networks.export import read_export_config

    export_dir = _init_export(cfg.init_from)
    base = read_export_config(export_dir)
    lora = getattr(cfg, "lora", None)
    if base.get("method") == "image" and not (lora is not None and lora.enabled) and ft.finetune_of(cfg) is None:
        return None  # image-only pre-training: the shared U-Net weights transfer (trainer), a fresh vocabulary
    if base.get("method") != "prompt" or "vocabulary" not in base:
        raise fail(f"{export_dir}: train.init_from is a {base.get('method')!r} run; method prompt fine-tunes "
                   f"only a 'prompt' run (or starts from an 'image' run without LoRA / finetune.mode)")
    return Vocabulary(base["vocabulary"])


class PromptMethod(Method):
    """Prompt-conditioned image generator (see module docstring)."""

    name = "prompt"
    config_sections = ("prompt", "lora", "finetune")
    # learns and generates images only (masks come from the caller, EMIT-Diff: the real pair's mask): the trainer
    # loads no mask for it, may add unlabelled images, and its runs account no mask items
    uses_masks = False
    makes_masks = False
    condition = "prompts"  # sample(..., prompts=[...] | cond=Cond(tokens=...)); synthesis.generate.PromptSource
    conditional = True     # sample takes cond= (tokens) and guidance=
    finetune_modes = ("dreambooth", "hypernetwork", "embedding")  # TrainConfig.finetune (methods/finetune.py)

    def __init__(self) -> None:
        self._prompts: list[str] | None = None
        self._vocab: Vocabulary | None = None
        self._preview: list[str] | None = None
        self._base_vocab: Vocabulary | None = None   # finetune modes: the init_from run's vocabulary
        self._class_prompts: list[str] = []          # dreambooth: prompts of the prior class images
        self._ft_info: dict[str, Any] = {}           # finetune modes: what setup did (export section)
        self._prior: tuple[torch.Tensor, torch.Tensor] | None = None  # dreambooth: (images, tokens)
        self._prior_rows = 0
        self._prior_weight = 0.0

    # ------------------------------------------------------------------ vocabulary / prompts
    def training_vocabulary(self, ds: Any, train_ids: Sequence[str], cfg: Any) -> tuple[Vocabulary, list[str]]:
        """(vocabulary, prompt of every training item) of a training run (deterministic)."""
        pc: PromptConfig = cfg.prompt
        prompts = item_prompts(ds, train_ids, pc)
        extra = list(pc.vocabulary) + list(AUG_PHRASES) + ([pc.default_prompt] if pc.default_prompt else [])
        base = _base_vocabulary(cfg)
        fc = ft.finetune_of(cfg)
        if fc is not None:  # identifier in the instance prompts; the class prompts of the prior images
            ft.check_train_config(cfg)
            prompts, self._class_prompts = ft.finetune_prompts(fc, base, prompts)
        vocab = Vocabulary.from_prompts(prompts, extra, base=base)
        if fc is not None:
            ft.check_vocabulary(fc, base, vocab)
            self._base_vocab = base
        if len(vocab) > pc.vocab_capacity:
            raise fail(f"prompt.vocab_capacity={pc.vocab_capacity}: the vocabulary has {len(vocab)} entries; "
                       f"raise it (e.g. --set prompt.vocab_capacity={2 * len(vocab)}) in the base run")
        longest = max(len(tokenize(p)) for p in prompts)
        room = max(len(tokenize(p)) for p in check_phrases(pc.aug_phrases)) if pc.aug_prob > 0 else 0
        if longest + room > pc.max_len:
            raise fail(f"prompt.max_len={pc.max_len}: the longest training prompt has {longest} words"
                       + (f" + {room} for an augmentation phrase" if room else "")
                       + f"; raise prompt.max_len to {longest + room}")
        self._vocab, self._prompts = vocab, prompts
        return vocab, prompts

    def item_extras(self, ds: Any, train_ids: Sequence[str], cfg: Any) -> dict[str, torch.Tensor]:
        """``{"tokens": int64 (N, L)}``: the prompt tokens of every training item (aligned with train_ids)."""
        vocab, prompts = self.training_vocabulary(ds, train_ids, cfg)
        self._preview = prompts[: max(int(getattr(cfg, "preview_n", 16)), 1)]
        return {"tokens": vocab.encode_batch(prompts, cfg.prompt.max_len)}

    def encode_prompts(self, model_or_export_cfg: Any, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts → int64 (B, L) with the vocabulary of a model (``PromptUNet``) or an export config dict."""
        if isinstance(model_or_export_cfg, dict):
            vocab = Vocabulary(model_or_export_cfg["vocabulary"])
            pc = from_dict(PromptConfig, model_or_export_cfg["prompt"], where="export config.json:prompt")
        else:
            net = unwrap(model_or_export_cfg)
            vocab, pc = net.vocabulary, net.prompt_cfg
        return vocab.encode_batch(list(prompts), pc.max_len)

    # ------------------------------------------------------------------ networks
    def _build(self, data: DataInfo, net_cfg: UNetConfig, pc: PromptConfig, vocab: Vocabulary) -> PromptUNet:
        if len(vocab) > pc.vocab_capacity:
            raise fail(f"vocabulary of {len(vocab)} words exceeds prompt.vocab_capacity={pc.vocab_capacity}")
        net = PromptUNet(net_cfg, data.channels, data.channels, pc.vocab_capacity, pc)
        net.vocabulary = vocab
        return net

    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None) -> nn.Module:
        raise fail("method prompt builds its network with the training prompts' vocabulary; train it with "
                   "'synthpair train --method prompt' and load it with load_export")

    def build_for_training(self, data: DataInfo, cfg: Any, ds: Any, train_ids: Sequence[str]) -> PromptUNet:
        vocab = self._vocab if self._vocab is not None else self.training_vocabulary(ds, train_ids, cfg)[0]
        net = self._build(data, cfg.net, cfg.prompt, vocab)
        if cfg.prompt.encoder_weights:
            net.text.load_weights(cfg.prompt.encoder_weights)
        return net

    def build_from_export(self, data: DataInfo, export_cfg: dict[str, Any], export_dir: Path) -> PromptUNet:
        where = f"{Path(export_dir) / 'config.json'}"
        pc = from_dict(PromptConfig, export_cfg["prompt"], where=f"{where}:prompt")
        net_cfg = from_dict(UNetConfig, export_cfg["net"], where=f"{where}:net")
        return self._build(data, net_cfg, pc, Vocabulary(export_cfg["vocabulary"]))

    # ------------------------------------------------------------------ fine-tuning (LoRA)
    def setup(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, data: DataInfo, seed: int,
              fresh: bool, log: Callable[[str], None] | None = None, cfg: Any = None,
              run_dir: Path | None = None) -> None:
        """With ``lora.enabled`` (after the ``init_from`` weights are loaded): wrap the targeted layers in
        zero-initialised adapters and freeze everything else (the token embedding stays trainable with
        ``lora.train_embeddings``). With ``finetune.mode``: :func:`synthpair.methods.finetune.setup_finetune`
        (new word rows, hypernetwork, freezing; dreambooth's prior images, recorded in ``run_dir/prior``)."""
        fc = ft.finetune_of(cfg)
        if fc is not None:
            ft.check_train_config(cfg)
            if self._base_vocab is None:
                self._base_vocab = _base_vocabulary(cfg)
            self._ft_info = ft.setup_finetune(self, model, cfg, data=data, base_vocab=self._base_vocab,
                                              class_prompts=self._class_prompts, run_dir=run_dir, log=log)
            self._prior = self._ft_info.pop("prior", None)
            self._prior_rows = fc.prior_batch or cfg.batch_size
            self._prior_weight = fc.prior_weight
            net = unwrap(model)
            net.finetune_cfg = fc
            if fc.mode in ("hypernetwork", "embedding"):  # the export holds only what they train (networks.prompt)
                net.partial = {"kind": "finetune", "finetune": to_dict(fc), **base_record(_init_export(cfg.init_from))}
            return
        lc: LoRAConfig | None = getattr(cfg, "lora", None)
        if lc is None or not lc.enabled:
            return
        if not cfg.init_from:
            raise fail("lora.enabled=true needs a base run: add --set init_from=BASE_RUN (a 'prompt' run)")
        net = unwrap(model)
        wrapped = inject_lora(net, lc)
        if lc.train_embeddings:
            net.text.token.weight.requires_grad_(True)
        net.lora_cfg = lc
        net.partial = {"kind": "lora", "lora": to_dict(lc), **base_record(_init_export(cfg.init_from))}
        if log is not None:
            n = sum(p.numel() for p in net.parameters() if p.requires_grad)
            log(f"lora: {len(wrapped)} layers wrapped (rank {lc.rank}, alpha {lc.alpha}, targets "
                f"{','.join(lc.targets)}); {n} trainable parameters")

    def export_extra(self, ema: nn.Module, cfg: Any) -> dict[str, Any]:
        net = unwrap(ema)
        out: dict[str, Any] = {"prompt": to_dict(cfg.prompt), "vocabulary": net.vocabulary.to_list(),
                               "training_prompts": sorted(set(self._prompts or []))}
        if ft.finetune_of(cfg) is not None:
            out["finetune"] = ft.export_section(cfg, self._ft_info, self._class_prompts)
        if getattr(cfg, "lora", None) is not None and cfg.lora.enabled:
            from ..networks.export import sha256_file

            base = _init_export(cfg.init_from).resolve()
            out["lora"] = {"config": to_dict(cfg.lora), "base_export": str(base),
                           "base_weights_sha256": sha256_file(base / "model.safetensors")}
        return out

    def load_weights(self, model: nn.Module, state: dict[str, torch.Tensor], export_cfg: dict[str, Any],
                     export_dir: Path) -> None:
        """An export written before ``network.json``: full exports load strictly; a LoRA / hypernetwork / embedding
        export's ``config.json`` section says what it holds over which base, which becomes the network's
        :attr:`~synthpair.networks.prompt.PromptUNet.partial` record, and the network loads it (base sha256 checked,
        adapters / new rows overlaid and merged)."""
        lora, section = export_cfg.get("lora"), export_cfg.get("finetune")
        if section and section.get("partial"):
            model.partial = {"kind": "finetune", "finetune": section["config"], "base_export": section["base_export"],
                             "base_weights_sha256": section["base_weights_sha256"]}
        elif lora:
            model.partial = {"kind": "lora", "lora": lora["config"], "base_export": lora["base_export"],
                             "base_weights_sha256": lora["base_weights_sha256"]}
        model.load_saved_state(state, export_dir)

    # ------------------------------------------------------------------ loss / sampling
    def training_loss(self, model: Callable[..., torch.Tensor], schedule: Any, images: torch.Tensor,
                      masks: torch.Tensor | None, generator: torch.Generator, *, data: DataInfo,
                      shard: tuple[int, int] = (0, 1), extra: dict[str, torch.Tensor] | None = None
                      ) -> torch.Tensor:
        if extra is None or "tokens" not in extra:  # before any draw: a one-line error
            raise fail("method prompt: training batches need prompt tokens (extra['tokens']); train with "
                       "'synthpair train --method prompt'")
        return super().training_loss(model, schedule, images, masks, generator, data=data, shard=shard, extra=extra)

    def drop_prob(self, net: nn.Module) -> float | None:
        """``prompt.drop_prob`` when CFG is trained (> 0), else no draw."""
        return net.prompt_cfg.drop_prob if net.prompt_cfg.drop_prob > 0 else None

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor | None, draws: Draws, shard: Shard, generator: torch.Generator, *,
             data: DataInfo, extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``L_simple`` on the image given its prompt tokens (``extra["tokens"]`` int64 (B, L)); after the
        :class:`Draws`, with ``prompt.aug_prob`` > 0: phrase flags, phrase index and phrase noise (whole batch)."""
        pc: PromptConfig = net.prompt_cfg
        b, c, h, w = images.shape
        tokens = extra["tokens"]
        if pc.aug_prob > 0:
            phrases = check_phrases(pc.aug_phrases)
            use = torch.rand((b,), generator=generator) < pc.aug_prob
            which = torch.randint(0, len(phrases), (b,), generator=generator)
            aug_noise = torch.randn((b, c, h, w), generator=generator)
            choice = torch.where(use, which, torch.full_like(which, -1))
            images = augment_batch(images, choice, phrases, aug_noise)
            tokens = append_phrases(tokens, choice, phrases, net.vocabulary)
        dev = images.device
        cond = Cond(tokens=shard.take(tokens, dev), drop=None if draws.drop is None else shard.take(draws.drop, dev))
        loss = diffusion_loss(model, schedule, shard.take(images), shard.take(draws.t, dev),
                              shard.take(draws.noise, dev), cond)
        if self._prior is not None:  # DreamBooth: L_instance + lambda * L_prior (methods/finetune.py)
            loss = loss + self._prior_weight * ft.prior_loss(model, net, schedule, self._prior, self._prior_rows,
                                                             shard, generator, dev)
        return loss

    def default_guidance(self, model: nn.Module) -> float:
        return 2.0 if unwrap(model).prompt_cfg.drop_prob > 0 else 1.0

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False, cond: Cond | None = None,
               guidance: float | None = None, prompts: Sequence[str] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images for prompts → (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W)) on CPU.

        The prompts are ``cond.tokens`` (B, L), else ``prompts`` (strings), else the first training prompts
        (previews, cycled). Masks: ``cond.mask`` when given, else zeros (this model makes images only).
        ``guidance``: classifier-free scale s (None: 2 for a CFG-trained model, else 1). Pair i depends only on
        ``seeds[i]`` and its prompt (x_T and sampler noise from ``Generator().manual_seed(seed)``).
        """
        net = unwrap(model)
        n = len(seeds)
        tokens = None if cond is None else cond.tokens
        if tokens is None:
            if prompts is None:
                if not self._preview:
                    raise fail("method prompt: sampling needs prompts (prompts=[...] or cond=Cond(tokens=...))")
                prompts = [self._preview[i % len(self._preview)] for i in range(n)]
            tokens = self.encode_prompts(net, prompts)
        if tokens.shape[0] != n:
            raise fail(f"prompt tokens: need one prompt per seed ({n}), got {tokens.shape[0]}")
        if guidance is None:
            guidance = self.default_guidance(net)
        if float(guidance) != 1.0 and net.prompt_cfg.drop_prob <= 0:
            raise fail(f"guidance={guidance}: this prompt generator was trained without classifier-free guidance "
                       f"(prompt.drop_prob=0); use guidance 1")
        dev = torch.device(device)
        masks = (cond.mask.long() if cond is not None and cond.mask is not None
                 else torch.zeros((n, *data.size), dtype=torch.long))
        gens = seed_generators(seeds)
        x_T = torch.stack([torch.randn((data.channels, *data.size), generator=g) for g in gens]).to(dev)
        guided = classifier_free(model, guidance)  # the combiner doubles every Cond field, tokens included
        x0 = run_sampler(guided, schedule, x_T, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                         cond=Cond(tokens=tokens.to(dev)), generators=gens, progress=progress,
                         autocast_dtype=autocast_dtype)
        return x0[:, :data.channels].float().clamp(-1, 1).cpu(), masks.cpu()


def append_phrases(tokens: torch.Tensor, choice: torch.Tensor, phrases: Sequence[str], vocab: Vocabulary
                   ) -> torch.Tensor:
    """Append ``phrases[choice[i]]``'s tokens after row i's last real token (``choice[i] = -1``: unchanged).

    tokens int64 (B, L) right-padded with 0; the caller guarantees room (checked when the run starts)."""
    out = tokens.clone()
    lengths = (tokens != 0).sum(dim=1).tolist()
    for i, k in enumerate(choice.tolist()):
        if k < 0:
            continue
        ids = [vocab.index[w] for w in tokenize(phrases[k])]
        if lengths[i] + len(ids) > tokens.shape[1]:
            raise fail(f"prompt.max_len={tokens.shape[1]}: no room to append {phrases[k]!r}; raise prompt.max_len")
        out[i, lengths[i]: lengths[i] + len(ids)] = torch.tensor(ids, dtype=tokens.dtype)
    return out


def with_phrase(prompt: str, phrase: str) -> str:
    """``c_t + c_aug``: the prompt with an augmentation phrase appended (``"US, breast, benign, smooth"``)."""
    check_phrases([phrase])
    return f"{prompt}, {phrase}"


register_method("prompt", PromptMethod)
