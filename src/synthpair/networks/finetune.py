"""Fine-tuning modes of the diffusion survey (paper 003, sec. 4.1, Fig. 5, Table 6) for a prompt run, beside full
fine-tuning (``init_from``) and LoRA (:mod:`synthpair.networks.lora`): DreamBooth, HyperNetwork and Embedding
(textual inversion). ``TrainConfig.finetune`` (:class:`FinetuneConfig`) selects one; every mode starts from a
``prompt`` base run (``train.init_from``) and is exclusive with ``lora.enabled``.

The modules here are the network side (the loss, the prior images and the exports are in
:mod:`synthpair.methods.finetune`):

- :class:`HyperLinear` wraps the ``to_k`` / ``to_v`` projection ``W`` (``nn.Linear`` D -> inner, no bias in MONAI)
  of every CROSS-attention block (MONAI ``CrossAttentionBlock`` named ``attn2`` in ``BasicTransformerBlock``)::

      k = W_k (c + f_k(c)),   v = W_v (c + f_v(c))        c: the prompt context (B, L, D)

  ``f`` is a small MLP D -> h_1 -> ... -> D (hidden widths ``round(m * D)`` for ``finetune.hyper_hidden``,
  activation ``finetune.hyper_activation`` between layers) whose LAST layer is zero-initialised, so at step 0
  ``f(c) = 0`` and the network computes exactly the base's outputs. This is the "hypernetwork" of NovelAI /
  Stable Diffusion web UIs the survey fine-tunes ("a small auxiliary network in front of the cross-attention
  layer"), with one MLP pair per cross-attention block (NovelAI shares one pair per context width; ours are
  per block so that every state-dict key has one owner). A query is not modified (the self-attention
  ``attn1`` neither). :func:`inject_hypernetwork` wraps them and freezes every other parameter.
- :class:`NewRowsEmbedding` wraps the prompt encoder's token table ``E`` (``nn.Embedding`` (V, D)) so that only
  the rows ``rows`` (the words the base run never had: the identifier and new finding words) are parameters::

      E'[i] = new[j]  if i = rows[j]  else  E[i]      (E frozen, new: (k, D) trainable)

  (Gal et al. 2023, textual inversion: only the new words' embeddings are learnt; ``new`` starts as copies of
  the ``finetune.init_word`` row, so a prompt with a new word gives exactly the base's output for the prompt
  with the init word in its place). :func:`merge_new_rows` writes ``new`` into ``E`` and puts the plain
  ``nn.Embedding`` back (bit-identical outputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import fail

MODES = ("off", "dreambooth", "hypernetwork", "embedding")
ACTIVATIONS = ("relu", "gelu", "linear")
HYPER_NAMES = ("to_k", "to_v")


@dataclass(frozen=True)
class FinetuneConfig:
    """``TrainConfig.finetune`` (``--set finetune.<key>=...``); ``mode`` ``off`` (the default) changes nothing.

    - ``mode``: ``dreambooth`` | ``hypernetwork`` | ``embedding`` (needs ``init_from`` = a ``prompt`` run; not with
      ``lora.enabled``).
    - ``identifier``: the rare word added to the vocabulary (a spare row of ``prompt.vocab_capacity``) and put
      into every instance prompt by ``template`` (``{identifier}``, ``{prompt}`` = the item prompt):
      ``"sks US, breast, benign"``. Used by ``dreambooth`` and ``embedding``; ``hypernetwork`` keeps the prompts.
    - ``init_word``: ``embedding`` (required) and optionally ``dreambooth``: the new words' embedding rows start
      as copies of this base word's row (Gal et al.: a coarse descriptor, e.g. ``lesion``).
    - ``train_new_words``: ``hypernetwork`` only — words the base never saw (e.g. ``breast`` when the base was
      pre-trained without them) would otherwise keep their random rows; true trains those rows (only those,
      like ``embedding``) beside the hypernetwork. Without new words the hypernetwork alone trains.
    - ``hyper_hidden`` (multiples of D) / ``hyper_activation``: the MLP ``f`` of :class:`HyperLinear`.
    - DreamBooth prior preservation: ``prior_n`` class images made by the frozen base before training from
      ``class_prompts`` (empty = the distinct item prompts without the identifier; cycled over the images),
      with seeds ``prior_seed .. prior_seed + prior_n - 1``, sampler ``prior_sampler`` / ``prior_spacing`` /
      ``prior_steps`` and guidance ``prior_guidance`` (0 = the base's default); ``prior_weight`` = lambda of
      ``L = L_instance + lambda * L_prior``; ``prior_batch`` prior rows per step (0 = ``batch_size``).
    """

    mode: str = "off"
    identifier: str = "sks"
    template: str = "{identifier} {prompt}"
    init_word: str = ""
    train_new_words: bool = True
    hyper_hidden: tuple[float, ...] = (2.0,)
    hyper_activation: str = "relu"
    prior_n: int = 64
    prior_weight: float = 1.0
    prior_batch: int = 0
    class_prompts: tuple[str, ...] = ()
    prior_seed: int = 0
    prior_sampler: str = "dpm++2m"
    prior_spacing: str = "logsnr"
    prior_steps: int = 20
    prior_guidance: float = 0.0

    def __post_init__(self) -> None:
        from .prompt import _WORD

        if self.mode not in MODES:
            raise fail(f"finetune.mode={self.mode!r}: choose one of {', '.join(MODES)}")
        if not _WORD.match(self.identifier):
            raise fail(f"finetune.identifier={self.identifier!r}: one lower-case word (letters/digits), e.g. sks")
        if "{identifier}" not in self.template or "{prompt}" not in self.template:
            raise fail(f"finetune.template={self.template!r}: must contain {{identifier}} and {{prompt}}, "
                       f"e.g. '{{identifier}} {{prompt}}'")
        if self.init_word and not _WORD.match(self.init_word):
            raise fail(f"finetune.init_word={self.init_word!r}: one lower-case word of the base vocabulary")
        if not self.hyper_hidden or any(m <= 0 for m in self.hyper_hidden):
            raise fail(f"finetune.hyper_hidden={list(self.hyper_hidden)}: one or more positive width multipliers, "
                       f"e.g. [2]")
        if self.hyper_activation not in ACTIVATIONS:
            raise fail(f"finetune.hyper_activation={self.hyper_activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        for name in ("prior_n", "prior_steps"):
            if getattr(self, name) < 1:
                raise fail(f"finetune.{name}={getattr(self, name)}: must be >= 1")
        if self.prior_batch < 0 or self.prior_weight < 0 or self.prior_guidance < 0:
            raise fail("finetune.prior_batch / prior_weight / prior_guidance: must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def uses_identifier(self) -> bool:
        return self.mode in ("dreambooth", "embedding")

    def instance_prompt(self, prompt: str) -> str:
        """The item prompt as trained: ``template`` with the identifier for dreambooth/embedding, else as is."""
        return self.template.format(identifier=self.identifier, prompt=prompt) if self.uses_identifier else prompt


# --------------------------------------------------------------------------------------------- hypernetwork
class HyperMLP(nn.Module):
    """``f: (..., D) -> (..., D)``, Linear layers of widths ``D, round(m_1 D), ..., D`` with the activation
    between them; the last Linear (weight and bias) is zero, so ``f = 0`` until it trains."""

    def __init__(self, dim: int, hidden: tuple[float, ...], activation: str) -> None:
        super().__init__()
        widths = [dim, *[max(1, round(m * dim)) for m in hidden], dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2 and activation != "linear":
                layers.append(nn.ReLU() if activation == "relu" else nn.GELU())
        self.net = nn.Sequential(*layers)
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c)


class HyperLinear(nn.Module):
    """``base(c + hyper(c))`` for the key/value projection ``base: nn.Linear`` of a cross-attention block
    (c: context (B, L, D) -> (B, L, inner))."""

    def __init__(self, base: nn.Linear, hidden: tuple[float, ...], activation: str) -> None:
        super().__init__()
        self.base = base
        self.hyper = HyperMLP(base.in_features, hidden, activation).to(base.weight.device, base.weight.dtype)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.base(c + self.hyper(c))


def _unet_root(model: nn.Module) -> nn.Module:
    from . import unwrap

    net = unwrap(model)
    return getattr(net, "diffusion_unet", net)


def inject_hypernetwork(model: nn.Module, cfg: FinetuneConfig) -> list[str]:
    """Wrap ``to_k`` and ``to_v`` of every cross-attention block of ``model.diffusion_unet`` in a
    :class:`HyperLinear` (in place) and freeze every other parameter. Returns the wrapped module names
    (relative to the U-Net). A network without cross-attention, or one already wrapped, is an error."""
    from monai.networks.blocks.crossattention import CrossAttentionBlock

    root = _unet_root(model)
    if any(isinstance(m, HyperLinear) for m in model.modules()):
        raise ValueError("model already has a hypernetwork")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: list[str] = []
    for name, module in list(root.named_modules()):
        if not isinstance(module, CrossAttentionBlock) or not name.endswith("attn2"):
            continue  # attn1 of a transformer block is self-attention (its keys come from the image)
        for child_name in HYPER_NAMES:
            child = getattr(module, child_name, None)
            if isinstance(child, nn.Linear):
                setattr(module, child_name, HyperLinear(child, cfg.hyper_hidden, cfg.hyper_activation))
                wrapped.append(f"{name}.{child_name}")
    if not wrapped:
        raise fail("finetune.mode=hypernetwork: this network has no cross-attention blocks (a prompt run with "
                   "net.attention_levels containing true is needed)")
    return wrapped


def hyper_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The hypernetwork tensors only: ``{"<path>.to_k.hyper.net.<i>.weight": ..., ...}``."""
    return {k: v for k, v in model.state_dict().items() if ".hyper.net." in k}


# ---------------------------------------------------------------------------------------- new word rows
class NewRowsEmbedding(nn.Module):
    """Token table whose rows ``rows`` (int64 (k,), a buffer) are the trainable ``new`` (k, D); the other rows
    are the frozen ``base.weight`` (V, D). ``forward(tokens int64 (B, L)) -> (B, L, D)`` like ``nn.Embedding``
    (same ``padding_idx``)."""

    def __init__(self, base: nn.Embedding, rows: list[int], init: torch.Tensor) -> None:
        super().__init__()
        if not rows or init.shape != (len(rows), base.embedding_dim):
            raise ValueError("NewRowsEmbedding: one init row (k, D) per new row")
        self.base = base
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long, device=base.weight.device))
        self.new = nn.Parameter(init.detach().clone().to(base.weight.device, base.weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The effective table (V, D): base rows with the new rows written in."""
        return self.base.weight.index_put((self.rows,), self.new)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight, self.base.padding_idx)


def inject_new_rows(model: nn.Module, rows: list[int], init_row: int | None) -> NewRowsEmbedding:
    """Replace ``model.text.token`` by a :class:`NewRowsEmbedding` for ``rows``; the new rows start as copies
    of row ``init_row`` (None: the rows as they are). Does not change ``requires_grad`` of anything else."""
    from . import unwrap

    text = unwrap(model).text
    if isinstance(text.token, NewRowsEmbedding):
        raise ValueError("model already has trainable new word rows")
    base: nn.Embedding = text.token
    with torch.no_grad():
        idx = torch.tensor(rows, dtype=torch.long, device=base.weight.device)
        init = (base.weight[init_row].unsqueeze(0).expand(len(rows), -1) if init_row is not None
                else base.weight[idx])
    base.weight.requires_grad_(False)
    text.token = NewRowsEmbedding(base, rows, init)
    return text.token


def new_rows_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"text.token.new": (k, D), "text.token.rows": int64 (k,)}`` (empty without new rows)."""
    return {k: v for k, v in model.state_dict().items() if k in ("text.token.new", "text.token.rows")}


@torch.no_grad()
def merge_new_rows(model: nn.Module) -> nn.Module:
    """Write the new rows into the base table and put the plain ``nn.Embedding`` back (outputs bit-identical)."""
    from . import unwrap

    text = unwrap(model).text
    if isinstance(text.token, NewRowsEmbedding):
        wrapper = text.token
        wrapper.base.weight[wrapper.rows] = wrapper.new.to(wrapper.base.weight.dtype)
        text.token = wrapper.base
    return model


__all__ = ["FinetuneConfig", "MODES", "HyperMLP", "HyperLinear", "inject_hypernetwork", "hyper_state_dict",
           "NewRowsEmbedding", "inject_new_rows", "new_rows_state_dict", "merge_new_rows"]
