"""DreamBooth, HyperNetwork and Embedding (textual inversion) fine-tuning of a ``prompt`` run (paper 003 sec. 4.1;
``TrainConfig.finetune`` = :class:`synthpair.networks.finetune.FinetuneConfig`; the modules are in
:mod:`synthpair.networks.finetune`). :class:`~synthpair.methods.prompt.PromptMethod` calls these helpers from its
hooks (``training_vocabulary`` → :func:`finetune_prompts` / :func:`check_vocabulary`, ``setup`` →
:func:`setup_finetune`, ``loss`` → :func:`prior_loss`, ``export_*`` / ``load_weights``).

Every mode starts from the ``init_from`` export B (a ``prompt`` run) with B's vocabulary (word ids kept; new words
appended, rows of ``prompt.vocab_capacity``):

- **dreambooth** (Ruiz et al., CVPR 2023): every weight trains; instance prompts carry the identifier
  (``finetune.template``, default ``"{identifier} {prompt}"`` → ``"sks US, breast, benign"``). Prior preservation:
  before training the frozen base generates ``prior_n`` class images ``x_pr`` (float32 (N, C, H, W) in [-1, 1])
  from the class prompts ``c_pr`` (without identifier), seed ``prior_seed + i`` for image i; they are saved in
  ``RUN/prior/`` (``images.safetensors`` + ``prior.json``: seeds, prompts, sampler, base sha256) and reused
  on resume. The loss of a step with instance batch (x, c) and a prior batch drawn from the N class images is
  (eq. 2 of the paper, epsilon/v target as ``diffusion.prediction``)::

      L = E_{t,eps} || f(x_t, t, c) - y ||^2  +  lambda * E_{t',eps'} || f(x_pr,t', t', c_pr) - y' ||^2

  with ``lambda = finetune.prior_weight`` and ``finetune.prior_batch`` prior rows (0 = ``batch_size``). The
  export is the whole state dict (a full fine-tune).
- **hypernetwork**: base frozen; ``k = W_k (c + f_k(c))``, ``v = W_v (c + f_v(c))`` in every cross-attention block
  (:class:`~synthpair.networks.finetune.HyperLinear`, zero-initialised output: step 0 = the base); with
  ``train_new_words`` the rows of words B never had train too. Export: the MLPs (+ new rows) only.
- **embedding** (Gal et al., ICLR 2023): base frozen; only the rows of the new words (the identifier and any
  word B never had) train, initialised from ``finetune.init_word``'s row. Export: those rows only.

Partial exports (hypernetwork, embedding) record ``finetune.base_export`` + ``base_weights_sha256``; loading
rebuilds the base (sha checked: "fine-tuning checkpoint for another base model"), adds the modules and loads
them (new rows are merged into the table; the hypernetwork stays a module).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import to_dict
from ..errors import fail
from ..networks.finetune import FinetuneConfig, NewRowsEmbedding, inject_hypernetwork, inject_new_rows
from ..networks.prompt import Vocabulary, tokenize
from .base import unwrap

PRIOR_DIR = "prior"
PRIOR_CHUNK = 16  # images per sampling call (pairs depend only on their seed; recorded for the record)


def finetune_of(cfg: Any) -> FinetuneConfig | None:
    """The run's FinetuneConfig when a mode is on, else None."""
    fc = getattr(cfg, "finetune", None)
    return fc if fc is not None and fc.enabled else None


def check_train_config(cfg: Any) -> None:
    """One-line errors for settings that cannot work together (called by TrainConfig before anything runs)."""
    fc = finetune_of(cfg)
    if fc is None:
        return
    if not cfg.init_from:
        raise fail(f"finetune.mode={fc.mode} needs a base run: add --set init_from=BASE_RUN (a 'prompt' run)")
    if cfg.lora.enabled:
        raise fail(f"finetune.mode={fc.mode} and lora.enabled=true are two fine-tuning modes; choose one "
                   f"(--set lora.enabled=false or --set finetune.mode=off)")


def finetune_prompts(fc: FinetuneConfig, base: Vocabulary, prompts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(instance prompts, class prompts). The identifier must be new (neither a word of the base vocabulary nor
    of the data's prompts); the class prompts (``finetune.class_prompts``, else the distinct item prompts) may
    only use words the base knows (the frozen base generates them)."""
    if fc.uses_identifier:
        if fc.identifier in base:
            raise fail(f"finetune.identifier={fc.identifier!r}: already a word of the base run's vocabulary; choose "
                       f"a word it never saw (e.g. --set finetune.identifier=sks)")
        if any(fc.identifier in tokenize(p) for p in prompts):
            raise fail(f"finetune.identifier={fc.identifier!r}: already a word of the training prompts; choose "
                       f"another identifier")
    classes = list(fc.class_prompts) or sorted(set(prompts))
    if fc.mode == "dreambooth":
        for p in classes:
            unknown = [w for w in tokenize(p) if w not in base]
            if unknown:
                raise fail(f"finetune.class_prompts: {p!r} has words the base run never learnt ({', '.join(unknown)}); "
                           f"the frozen base makes the prior images, so give prompts of its vocabulary, e.g. "
                           f"--set 'finetune.class_prompts=[\"{', '.join(base.words[2:5])}\"]'")
    return [fc.instance_prompt(p) for p in prompts], classes


def new_words(vocab: Vocabulary, base: Vocabulary) -> list[str]:
    """Words of ``vocab`` that ``base`` lacks (appended after the base's words)."""
    return [w for w in vocab.words[2:] if w not in base]


def check_vocabulary(fc: FinetuneConfig, base: Vocabulary, vocab: Vocabulary) -> None:
    if fc.init_word and fc.init_word not in base:
        raise fail(f"finetune.init_word={fc.init_word!r}: not a word of the base run's vocabulary; choose one of "
                   f"{', '.join(base.words[2:])}")
    if fc.mode == "embedding" and not fc.init_word:
        raise fail("finetune.mode=embedding: give finetune.init_word, the base word whose embedding the new words "
                   "start from (e.g. --set finetune.init_word=lesion)")


# ------------------------------------------------------------------------------------------------- setup
def setup_finetune(method: Any, model: nn.Module, cfg: Any, *, data: Any, base_vocab: Vocabulary,
                   class_prompts: Sequence[str], run_dir: Path | None, log: Callable[[str], None] | None
                   ) -> dict[str, Any]:
    """Apply ``cfg.finetune`` to ``model`` (the base weights are loaded): rows of new words, freezing,
    hypernetwork, prior images. Returns the info recorded in the export (``new_words``, ``trainable``, the
    wrapped layers) and, for dreambooth, ``prior`` = (images (N, C, H, W), tokens (N, L))."""
    fc: FinetuneConfig = cfg.finetune
    net = unwrap(model)
    vocab: Vocabulary = net.vocabulary
    new = new_words(vocab, base_vocab)
    rows = [vocab.index[w] for w in new]
    init_row = vocab.index[fc.init_word] if fc.init_word else None
    info: dict[str, Any] = {"new_words": new}
    if fc.mode == "dreambooth":
        if init_row is not None and rows:
            with torch.no_grad():
                net.text.token.weight[rows] = net.text.token.weight[init_row]
        info["prior"] = prior_images(method, model, cfg, data=data, class_prompts=class_prompts, run_dir=run_dir,
                                     log=log)
    elif fc.mode == "hypernetwork":
        info["wrapped"] = inject_hypernetwork(net, fc)
        if fc.train_new_words and rows:
            inject_new_rows(net, rows, init_row)
    else:  # embedding
        for p in net.parameters():
            p.requires_grad_(False)
        inject_new_rows(net, rows, init_row)
    info["trainable"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if log is not None:
        extra = f", {len(info['wrapped'])} key/value projections wrapped" if "wrapped" in info else ""
        trained_rows = isinstance(net.text.token, NewRowsEmbedding) or fc.mode == "dreambooth"
        log(f"finetune: mode {fc.mode}{extra}; new words {', '.join(new) or '-'}"
            f"{' (rows trained)' if new and trained_rows else ''}; {info['trainable']} trainable parameters")
    return info


def _base_sha(cfg: Any) -> tuple[Path, str]:
    from ..networks.export import export_source, sha256_file

    base = export_source(cfg.init_from)[0].resolve()
    return base, sha256_file(base / "model.safetensors")


def prior_images(method: Any, model: nn.Module, cfg: Any, *, data: Any, class_prompts: Sequence[str],
                 run_dir: Path | None, log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamBooth's class images: (images float32 (N, C, H, W) in [-1, 1] on CPU, tokens int64 (N, L)).

    Image i is sampled by ``model`` (the frozen base: called before any training step) from class prompt
    ``class_prompts[i % len]`` with seed ``prior_seed + i``. With ``run_dir``: read from ``RUN/prior/`` when it
    was recorded with the same settings (resume), else generated and recorded there (``images.safetensors``,
    ``prior.json``); recorded with other settings is a one-line error."""
    from safetensors.torch import load_file, save

    from ..diffusion.schedule import NoiseSchedule
    from ..io import ensure_dir, read_json, write_bytes_atomic, write_json_atomic

    fc: FinetuneConfig = cfg.finetune
    seeds = list(range(fc.prior_seed, fc.prior_seed + fc.prior_n))
    prompts = [class_prompts[i % len(class_prompts)] for i in range(fc.prior_n)]
    base, sha = _base_sha(cfg)
    guidance = fc.prior_guidance or method.default_guidance(model)
    record = {"seeds": seeds, "prompts": prompts, "sampler": fc.prior_sampler, "spacing": fc.prior_spacing,
              "steps": fc.prior_steps, "guidance": guidance, "base_export": str(base), "base_weights_sha256": sha,
              "chunk": PRIOR_CHUNK}
    tokens = method.encode_prompts(model, prompts)
    folder = None if run_dir is None else Path(run_dir) / PRIOR_DIR
    if folder is not None and (folder / "prior.json").is_file() and (folder / "images.safetensors").is_file():
        old = read_json(folder / "prior.json", "prior.json")
        diff = [k for k in record if old.get(k) != record[k]]
        if diff:
            raise fail(f"{folder}: prior images were made with other settings ({', '.join(diff)}); resume with the "
                       f"run's own config or delete {folder} to make them again")
        images = load_file(str(folder / "images.safetensors"))["images"]
        if log is not None:
            log(f"finetune: {len(seeds)} prior class images reused from {folder}")
        return images, tokens
    dev = next(model.parameters()).device
    schedule = NoiseSchedule(cfg.diffusion, device=dev)
    was_training = model.training
    model.eval()
    c0 = time.process_time()
    parts = []
    with torch.no_grad():
        for s in range(0, len(seeds), PRIOR_CHUNK):
            imgs, _ = method.sample(model, schedule, seeds[s:s + PRIOR_CHUNK], data=data, sampler=fc.prior_sampler,
                                    spacing=fc.prior_spacing, steps=min(fc.prior_steps, cfg.diffusion.num_timesteps),
                                    device=dev, guidance=guidance, cond=None, prompts=prompts[s:s + PRIOR_CHUNK])
            parts.append(imgs)
    model.train(was_training)
    images = torch.cat(parts).contiguous()
    if folder is not None:
        ensure_dir(folder)
        write_bytes_atomic(folder / "images.safetensors", save({"images": images}))
        write_json_atomic(folder / "prior.json", {**record, "cpu_seconds": round(time.process_time() - c0, 2)})
    if log is not None:
        log(f"finetune: {len(seeds)} prior class images made by the base ({time.process_time() - c0:.0f} CPU-s)"
            + (f", recorded in {folder}" if folder is not None else ""))
    return images, tokens


# -------------------------------------------------------------------------------------------------- loss
def prior_loss(model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, prior: tuple[torch.Tensor, torch.Tensor],
               n_rows: int, shard: Any, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``L_prior`` on ``n_rows`` class images drawn (after the instance draws, whole global batch) from the
    trainer's generator: indices (without replacement when they fit), t, noise, null-prompt flags."""
    from ..diffusion.cond import Cond, null_cond_flags
    from ..diffusion.losses import diffusion_loss

    images, tokens = prior
    n = images.shape[0]
    idx = (torch.randperm(n, generator=generator)[:n_rows] if n_rows <= n
           else torch.randint(0, n, (n_rows,), generator=generator))
    t = schedule.sample_timesteps(n_rows, generator)
    noise = torch.randn((n_rows, *images.shape[1:]), generator=generator)
    p = net.prompt_cfg.drop_prob
    drop = null_cond_flags(n_rows, p, generator) if p > 0 else None
    cond = Cond(tokens=shard.take(tokens[idx], device), drop=None if drop is None else shard.take(drop, device))
    return diffusion_loss(model, schedule, shard.take(images[idx], device), shard.take(t, device),
                          shard.take(noise, device), cond)


# ------------------------------------------------------------------------------------------------ export
def export_section(cfg: Any, info: dict[str, Any], class_prompts: Sequence[str]) -> dict[str, Any]:
    """The export's ``finetune`` section."""
    fc: FinetuneConfig = cfg.finetune
    base, sha = _base_sha(cfg)
    out = {"config": to_dict(fc), "base_export": str(base), "base_weights_sha256": sha,
           "partial": fc.mode in ("hypernetwork", "embedding"), "new_words": list(info.get("new_words", [])),
           "trainable_parameters": int(info.get("trainable", 0))}
    if fc.mode == "dreambooth":
        out["class_prompts"] = list(class_prompts)
    return out


__all__ = ["finetune_of", "check_train_config", "finetune_prompts", "check_vocabulary", "new_words",
           "setup_finetune", "prior_images", "prior_loss", "export_section"]
