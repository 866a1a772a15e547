"""Prompt-conditioned denoiser of EMIT-Diff (Zhang et al., sec. 4.1-4.2): ``eps_theta(x_t, c_t, t)`` where the
text condition ``c_t`` is a short prompt such as ``"US, breast, malignant"`` (modality, organ, finding; the
paper's triplet prompts of sec. 4.2) plus optional augmentation phrases (``"enhanced contrast"``, sec. 4.4).

The paper conditions Stable Diffusion on CLIP text embeddings. We have no CLIP (no downloads), so the text
encoder is small and learned from scratch with the generator: the vocabulary is *closed* (every word seen in
the training prompts, the augmentation phrases and ``prompt.vocabulary``), words are embedded, position
embeddings added and a small ``torch.nn.TransformerEncoder`` contextualises them. A pretrained encoder can be
loaded from a local safetensors file (``prompt.encoder_weights``); it is never required and nothing is
downloaded.

CONTRACT (used by the ControlNet branch in ``networks/controlnet.py`` / ``methods/emit.py``; keep stable):

- :class:`Vocabulary`: closed word list, saved as a JSON list of words (``export/config.json: "vocabulary"``).
  Index 0 = ``<pad>``, index 1 = ``<unk>`` (reserved, never produced: an unknown word is the one-line error
  ``prompt 'US, breast, malignnt': unknown word 'malignnt'; known: ...``). Tokenisation: lower-case, split on
  commas and whitespace, so the phrase ``"enhanced contrast"`` is the two tokens ``enhanced``, ``contrast``.
  ``encode(prompt, max_len) -> int64 (L,)`` right-padded with 0; ``encode_batch(prompts, max_len) -> (B, L)``.
- :class:`PromptEncoder` ``(vocab_size, dim, max_len, layers, heads)``: ``forward(tokens (B, L) int64) ->
  (context (B, L, D) float, pad_mask (B, L) bool, True = padding)``. Real tokens never attend to padding
  (key padding mask inside the transformer); MONAI's cross-attention has no key mask, so the context at padded
  positions is one learned vector ``pad_context`` (independent of the prompt, so padding carries no
  information). ``load_weights(path)`` loads a state dict strictly from a local ``.safetensors`` file.
- :class:`PromptUNet` ``(net_cfg, channels_in, channels_out, vocab_size, prompt_cfg)``:
  ``.diffusion_unet`` is MONAI's ``DiffusionModelUNet(with_conditioning=True, cross_attention_dim=D)`` (built
  by :func:`synthpair.networks.unet.build_unet`), ``.encode(tokens (B, L) int64) -> context (B, L, D)``
  (an all-padding row gets the learned null context), ``.context(cond, batch) -> (B, L, D)`` (tokens +
  classifier-free ``cond.drop`` rows replaced by the learned null context ``null_context`` (L, D)),
  ``forward(x_t (B, C_in, H, W), t int64 (B,), cond=Cond(tokens=(B, L), drop=(B,) bool | None)) ->
  (B, C_out, H, W)``. A ControlNet calls ``base.diffusion_unet(x, t, context=base.context(cond, B),
  down_block_additional_residuals=..., mid_block_additional_residual=...)``.
- :class:`PromptConfig` (``TrainConfig.prompt``): sizes, CFG drop rate, how item prompts are made, the
  augmentation-prompt rate. The token embedding has ``vocab_capacity`` rows (>= the vocabulary size) so a
  fine-tuning run may add words (new rows) and still load the base run's weights unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..data.prompts import tokenize
from ..errors import fail
from .pretrained import Pretrained, config_from, config_of
from .unet import UNetConfig, build_unet

# the token table's key in a LoRA export (saved beside the adapters with lora.train_embeddings)
EMBEDDING_KEY = "text.token.weight"

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"^[a-z0-9][a-z0-9+\-./']*$")


@dataclass(frozen=True)
class PromptConfig:
    """Options of the prompt-conditioned generator (``TrainConfig.prompt``, saved in the export).

    - ``dim``: width D of the prompt context (= MONAI ``cross_attention_dim``); ``max_len``: tokens per prompt
      L (longer prompts are an error); ``layers`` / ``heads``: the transformer text encoder; ``dropout``: its
      dropout; ``vocab_capacity``: rows of the token embedding (>= vocabulary size incl. <pad>, <unk>).
    - ``drop_prob``: probability that a training row gets the null prompt (classifier-free guidance).
    - Item prompts (first rule that applies): the item's own ``"prompt"`` in dataset.json (pool folders write
      it); else ``default_prompt`` when non-empty (one prompt for every item); else ``template`` with
      ``{finding}`` = the item id's prefix before the first ``_`` when it is purely alphabetic (BUSI:
      ``benign_001`` → ``benign``), otherwise the dataset's first foreground label name (``lesion``);
      ``{label}`` = that label name; ``{modality}`` = dataset.json ``modality``; ``{name}`` = dataset name.
      Example for BUSI: ``--set 'prompt.template="US, breast, {finding}"'`` (JSON-quoted: ``--set`` reads
      an unquoted value with commas as a list).
    - ``vocabulary``: extra words to reserve (e.g. findings only the fine-tuning data will use).
    - ``aug_prob``: probability that a training item is augmented with a random augmentation phrase of
      ``aug_phrases`` (empty = all of :data:`synthpair.data.aug_prompts.AUG_PHRASES`): its image is
      transformed and the phrase appended to its prompt (EMIT-Diff sec. 4.4 ``c_t + c_aug``).
    - ``encoder_weights``: optional local ``.safetensors`` state dict of a pretrained :class:`PromptEncoder`
      of the same sizes (loaded strictly at the start of a fresh run; "" = train it from scratch).
    """

    dim: int = 64
    max_len: int = 12
    layers: int = 1
    heads: int = 4
    dropout: float = 0.0
    vocab_capacity: int = 128
    drop_prob: float = 0.1
    template: str = "{name}, {finding}"
    default_prompt: str = ""
    vocabulary: tuple[str, ...] = ()
    aug_prob: float = 0.1
    aug_phrases: tuple[str, ...] = ()
    encoder_weights: str = ""

    def __post_init__(self) -> None:
        for name in ("dim", "max_len", "layers", "heads", "vocab_capacity"):
            if getattr(self, name) < 1:
                raise fail(f"prompt.{name}={getattr(self, name)}: must be >= 1")
        if self.dim % self.heads:
            raise fail(f"prompt.dim={self.dim}: must be divisible by prompt.heads={self.heads}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise fail(f"prompt.drop_prob={self.drop_prob}: must be in [0, 1)")
        if not 0.0 <= self.aug_prob <= 1.0:
            raise fail(f"prompt.aug_prob={self.aug_prob}: must be in [0, 1]")
        if not 0.0 <= self.dropout < 1.0:
            raise fail(f"prompt.dropout={self.dropout}: must be in [0, 1)")


class Vocabulary:
    """Closed vocabulary: ``words[0] = <pad>``, ``words[1] = <unk>`` (reserved), then the known words."""

    def __init__(self, words: Iterable[str]) -> None:
        words = [str(w) for w in words]
        if words[:2] == [PAD, UNK]:
            words = words[2:]
        seen: set[str] = set()
        clean: list[str] = []
        for w in words:
            if w in (PAD, UNK) or not _WORD.match(w):
                raise fail(f"vocabulary word {w!r}: words are lower-case letters/digits without commas or spaces")
            if w not in seen:
                seen.add(w)
                clean.append(w)
        self.words: list[str] = [PAD, UNK, *clean]
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.words == self.words

    def __contains__(self, word: str) -> bool:
        return word in self.index and self.index[word] > 1

    @classmethod
    def from_prompts(cls, prompts: Iterable[str], extra: Iterable[str] = (), base: "Vocabulary | None" = None
                     ) -> "Vocabulary":
        """``base``'s words in their order (so token ids stay valid), then the new words of ``prompts`` and
        ``extra`` sorted alphabetically (deterministic, independent of item order)."""
        old = [] if base is None else base.words[2:]
        new = {w for p in prompts for w in tokenize(p)} | {w for e in extra for w in tokenize(e)}
        return cls(old + sorted(new - set(old)))

    def encode(self, prompt: str, max_len: int) -> torch.Tensor:
        """One prompt → int64 (max_len,), token ids right-padded with 0. Unknown words / too long → one-line error."""
        toks = tokenize(prompt)
        if not toks:
            raise fail(f"prompt {prompt!r}: empty; give at least one word (e.g. 'US, breast, lesion')")
        bad = [w for w in toks if w not in self]
        if bad:
            known = ", ".join(self.words[2:])
            raise fail(f"prompt {prompt!r}: unknown word {bad[0]!r}; known: {known}")
        if len(toks) > max_len:
            raise fail(f"prompt {prompt!r}: {len(toks)} words exceed prompt.max_len={max_len}; shorten it or "
                       f"train with a larger prompt.max_len")
        out = torch.zeros(max_len, dtype=torch.long)
        out[:len(toks)] = torch.tensor([self.index[w] for w in toks], dtype=torch.long)
        return out

    def encode_batch(self, prompts: Sequence[str], max_len: int) -> torch.Tensor:
        """Prompts → int64 (B, max_len)."""
        if not len(prompts):
            return torch.zeros((0, max_len), dtype=torch.long)
        return torch.stack([self.encode(p, max_len) for p in prompts])

    def decode(self, tokens: torch.Tensor) -> str:
        """int64 (L,) → the words joined by spaces (padding dropped)."""
        return " ".join(self.words[int(i)] for i in tokens.tolist() if int(i) != 0)

    def to_list(self) -> list[str]:
        return list(self.words)

    def save(self, path: Path | str) -> None:
        from ..io import write_json_atomic

        write_json_atomic(path, self.to_list())

    @classmethod
    def load(cls, path: Path | str) -> "Vocabulary":
        from ..io import read_json

        data = read_json(path, "vocabulary")
        if not isinstance(data, list) or data[:2] != [PAD, UNK]:
            raise fail(f"{path}: not a synthpair vocabulary (a JSON list starting with {PAD!r}, {UNK!r})")
        return cls(data)


class PromptEncoder(nn.Module):
    """Tokens int64 (B, L) → (context float (B, L, D), pad_mask bool (B, L)); see module docstring.

    Token embedding (``padding_idx=0``) + learned position embedding, a pre-norm
    ``torch.nn.TransformerEncoder`` (``layers`` layers, ``heads`` heads, feed-forward 4·D) with the key padding
    mask, a final LayerNorm; padded positions are then set to the learned ``pad_context`` vector. A row
    without any real token is unmasked at position 0 inside the transformer (avoids an all-masked softmax);
    :class:`PromptUNet` replaces such rows by its null context anyway.
    """

    def __init__(self, vocab_size: int, dim: int, max_len: int, layers: int = 1, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.max_len = vocab_size, dim, max_len
        self.token = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.pad_context = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise fail(f"prompt tokens of shape {tuple(tokens.shape)}: expected (B, L) with L <= {self.max_len}")
        tokens = tokens.long()
        if tokens.numel() and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise fail(f"prompt token id {int(tokens.max())}: outside this encoder's {self.vocab_size} embedding rows; "
                       f"encode prompts with the generator's own vocabulary")
        pad = tokens == 0
        h = self.token(tokens) + self.position[: tokens.shape[1]].unsqueeze(0)
        attn_pad = pad.clone()
        attn_pad[attn_pad.all(dim=1), 0] = False
        h = self.norm(self.transformer(h, src_key_padding_mask=attn_pad))
        h = torch.where(pad.unsqueeze(-1), self.pad_context.to(h.dtype).view(1, 1, -1), h)
        return h, pad

    def load_weights(self, path: Path | str) -> None:
        """Load a pretrained encoder state dict from a local ``.safetensors`` file, strictly (one-line errors)."""
        from safetensors.torch import load_file

        p = Path(path)
        if not p.is_file():
            raise fail(f"{p}: prompt.encoder_weights file not found; give a local .safetensors state dict of a "
                       f"PromptEncoder or leave prompt.encoder_weights empty")
        try:
            state = load_file(str(p))
        except Exception as err:  # noqa: BLE001  (safetensors raises its own error types)
            raise fail(f"{p}: unreadable prompt encoder weights ({type(err).__name__}); give a .safetensors "
                       f"state dict") from None
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise fail(f"{p}: weights do not fit the prompt encoder (vocab_capacity={self.vocab_size}, "
                       f"dim={self.dim}, max_len={self.max_len}): {first}; match prompt.* to the weights") from None


class PromptUNet(Pretrained, nn.Module):
    """MONAI ``DiffusionModelUNet`` with cross-attention to the prompt context (see module docstring).

    ``network.json`` config: ``{"net", "channels_in", "channels_out", "vocab_size", "prompt", "vocabulary",
    "partial"}``. ``partial`` (None for a full export) describes what a fine-tuning run adds over its base
    (``self.partial``, set by the method's setup): ``{"kind": "lora", "lora": LoRAConfig, "base_export",
    "base_weights_sha256"}`` — the file holds the adapters (+ the token table with ``lora.train_embeddings``) — or
    ``{"kind": "finetune", "finetune": FinetuneConfig, ...}`` — the hypernetwork tensors and/or the new word rows.
    Loading a partial network loads the base (sha256 checked), adds the modules, overlays the tensors and merges
    them, so the loaded network is a full one again (``partial`` None)."""

    needs = ("tokens",)
    partial: dict[str, Any] | None = None

    def __init__(self, net_cfg: UNetConfig, channels_in: int, channels_out: int, vocab_size: int,
                 prompt_cfg: PromptConfig) -> None:
        super().__init__()
        self.cfg, self.prompt_cfg = net_cfg, prompt_cfg
        self.in_channels, self.out_channels = channels_in, channels_out
        self.unet = build_unet(net_cfg, channels_in, channels_out, with_conditioning=True,
                               cross_attention_dim=prompt_cfg.dim)
        self.text = PromptEncoder(vocab_size, prompt_cfg.dim, prompt_cfg.max_len, prompt_cfg.layers,
                                  prompt_cfg.heads, prompt_cfg.dropout)
        self.null_context = nn.Parameter(torch.randn(prompt_cfg.max_len, prompt_cfg.dim) * 0.02)

    def network_config(self) -> dict[str, Any]:
        vocab = getattr(self, "vocabulary", None)
        return {"net": config_of(self.cfg), "channels_in": self.in_channels, "channels_out": self.out_channels,
                "vocab_size": self.text.vocab_size, "prompt": config_of(self.prompt_cfg),
                "vocabulary": None if vocab is None else vocab.to_list(), "partial": self.partial}

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Any) -> "PromptUNet":
        net = cls(config_from(UNetConfig, config["net"], folder, "config.net"), int(config["channels_in"]),
                  int(config["channels_out"]), int(config["vocab_size"]),
                  config_from(PromptConfig, config["prompt"], folder, "config.prompt"))
        if config.get("vocabulary") is not None:
            net.vocabulary = Vocabulary(config["vocabulary"])
        net.partial = config.get("partial")
        return net

    def saved_state(self) -> dict[str, torch.Tensor]:
        """Full state dict, or for a partial network only what its fine-tuning trained (class docstring)."""
        from .finetune import hyper_state_dict, new_rows_state_dict
        from .lora import LORA_TYPES, lora_state_dict

        kind = (self.partial or {}).get("kind")
        if kind == "finetune":
            return {**hyper_state_dict(self), **new_rows_state_dict(self)}
        if kind == "lora" and any(isinstance(m, LORA_TYPES) for m in self.modules()):
            state = lora_state_dict(self)
            if self.partial["lora"].get("train_embeddings"):
                state[EMBEDDING_KEY] = self.text.token.weight.detach()
            return state
        return self.state_dict()

    def load_saved_state(self, state: dict[str, torch.Tensor], folder: Any) -> None:
        """Strict load, or base + adapters / hypernetwork / new rows, merged (class docstring); RuntimeError
        "... checkpoint for another base model" when the base or the tensors do not fit."""
        from .pretrained import load_base, overlay_state

        part = self.partial
        if not part:
            self.load_state_dict(state, strict=True)
            return
        kind = part.get("kind")
        label = "LoRA" if kind == "lora" else "fine-tuning"
        base = load_base(part, Path(folder), label, "restore that run or export it again from a merged model")
        try:
            self.load_state_dict(base.state_dict(), strict=True)
        except RuntimeError as err:
            raise RuntimeError(f"{label} checkpoint for another base model ({str(err).splitlines()[0]})") from None
        if kind == "lora":
            from .lora import LoRAConfig, check_adapter_state, inject_lora, lora_state_dict, merge_lora

            inject_lora(self, config_from(LoRAConfig, part["lora"], folder, "config.partial.lora"))
            check_adapter_state(self, state)
            unexpected = set(state) - set(lora_state_dict(self)) - {EMBEDDING_KEY}
            if unexpected:
                raise RuntimeError(f"LoRA export holds unexpected tensors (e.g. {sorted(unexpected)[0]})")
            overlay_state(self, state, "LoRA")
            merge_lora(self)
        elif kind == "finetune":
            from .finetune import (FinetuneConfig, hyper_state_dict, inject_hypernetwork, inject_new_rows,
                                   merge_new_rows, new_rows_state_dict)

            fc = config_from(FinetuneConfig, part["finetune"], folder, "config.partial.finetune")
            if fc.mode == "hypernetwork":
                inject_hypernetwork(self, fc)
            if "text.token.rows" in state:
                rows = state["text.token.rows"].long()
                if rows.ndim != 1 or int(rows.max()) >= self.text.vocab_size:
                    raise RuntimeError(f"{folder}: new word rows {rows.tolist()} do not fit this network")
                inject_new_rows(self, rows.tolist(), None)
            want = set(hyper_state_dict(self)) | set(new_rows_state_dict(self))
            if set(state) != want:
                odd = sorted(set(state) ^ want)
                raise RuntimeError(f"{folder}: fine-tuning tensors do not match this network (e.g. {odd[0]})")
            overlay_state(self, state, "fine-tuning")
            merge_new_rows(self)
            self.finetune_cfg = fc
        else:
            raise RuntimeError(f"unknown partial network kind {kind!r}")
        for p in self.parameters():
            p.requires_grad_(True)
        self.partial = None  # merged: a full network now

    @property
    def diffusion_unet(self) -> nn.Module:
        """The MONAI ``DiffusionModelUNet`` (``forward(x, timesteps, context, ..., down_block_additional_residuals,
        mid_block_additional_residual)``)."""
        return self.unet.unet

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens int64 (B, L) → context float (B, L, D); all-padding rows → the learned null context."""
        ctx, pad = self.text(tokens.to(self.null_context.device))
        null = self.null_context[: tokens.shape[1]].unsqueeze(0).to(ctx.dtype)
        return torch.where(pad.all(dim=1).view(-1, 1, 1), null, ctx)

    def context(self, cond: Any, batch: int) -> torch.Tensor:
        """Cond(tokens (B, L), drop (B,) bool | None) → context (B, L, D); dropped rows get the null context."""
        tokens = getattr(cond, "tokens", None)
        if tokens is None:
            raise fail("this prompt-conditioned network needs cond.tokens (B, L) int64; encode prompts with "
                       "method.encode_prompts(...)")
        if tokens.shape[0] != batch:
            raise fail(f"cond.tokens has {tokens.shape[0]} rows for a batch of {batch}; give one prompt per sample")
        ctx = self.encode(tokens)
        drop = getattr(cond, "drop", None)
        if drop is not None:
            null = self.null_context[: tokens.shape[1]].unsqueeze(0).to(ctx.dtype)
            ctx = torch.where(drop.to(ctx.device).view(-1, 1, 1), null, ctx)
        return ctx

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x_t (B, C_in, H, W), t int64 (B,), cond: Cond with tokens (+ drop) → (B, C_out, H, W)."""
        ctx = self.context(cond, x_t.shape[0]).to(x_t.device)
        return self.diffusion_unet(x_t, t, context=ctx)


__all__ = ["EMBEDDING_KEY", "PromptConfig", "Vocabulary", "PromptEncoder", "PromptUNet", "tokenize", "PAD", "UNK"]
