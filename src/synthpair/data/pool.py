"""``pool``: several prepared datasets → one prepared folder for pre-training a prompt-conditioned generator
(EMIT-Diff sec. 4.2 pre-trains on the multi-modality RadImageNet with prompts "modality, organ, finding").

The pool folder has the prepared layout of docs/architecture.md (``images/``, ``masks/``, ``dataset.json``,
``splits.json``, ``duplicates.json``) with:

- item ids ``<dataset name>__<original id>`` (``/`` would make sub-folders; ``__`` never occurs in prepared
  ids of the bundled readers, and the pair stays traceable), and per item ``"prompt"`` (the dataset's
  prompt; ``{finding}`` / ``{name}`` / ``{modality}`` / ``{label}`` are filled per item as in
  :func:`synthpair.methods.prompt.item_prompts`), ``"source_dataset"`` (name), ``"source_data"`` (absolute
  DATA path), ``"source_id"`` and ``"case"`` = the ORIGINAL case id. Keeping original case ids means the
  pool run's ``training_cases.json`` lists them, ``train.init_from`` unions them into a fine-tuned run and the
  leakage guard (``train_cases`` in the manifest) sees every target case the generator ever saw;
- channels converted to ``channels``: RGB → gray by luminance (scikit-image ``rgb2gray``, Rec. 709 weights,
  on the [0, 1] intensities), gray → RGB by repetition; unchanged items are copied byte for byte;
- one split (``splits.json`` with one fold: every case in ``train``, ``test = []``): the pool is for
  generator pre-training only, never for evaluation;
- ``exclude_test = {DATA: fold}``: LEAKAGE guard for a target dataset: only the training split of that
  fold enters the pool (its test cases are listed in ``dataset.json: pool.sources[i].excluded_test``).
  Every dataset you will evaluate on must be named here; a dataset that enters whole contributes all its
  cases, so a fine-tuned generator's ``train_cases`` then covers all of them and the leakage guard refuses
  to evaluate on it (safe, never silent);
- all sources must have the same size (else: re-prepare with ``synthpair prepare SRC --size N``) and the
  same number of labels (masks are copied unchanged; the first dataset's label names are used).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import fail
from ..io import atomic_output_dir, write_json_atomic
from .dataset import PreparedDataset, dataset_info, write_dataset_json, write_pair

SEP = "__"


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """images float32 (N, C, H, W) in [-1, 1] → (N, channels, H, W): RGB → gray by luminance (skimage
    ``rgb2gray``), gray → RGB by repetition; same channel count → unchanged."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if c == 3 and channels == 1:
        from skimage.color import rgb2gray

        u = np.clip((images.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)
        return (rgb2gray(u)[:, None] * 2.0 - 1.0).astype(np.float32)
    raise fail(f"--channels {channels}: cannot convert {c}-channel images; use 1 or 3")


def parse_source(spec: str) -> tuple[Path, str]:
    """``DATA:prompt`` → (DATA, prompt); ``DATA`` alone → (DATA, "{name}, {finding}")."""
    path, sep, prompt = spec.partition(":")
    if sep and not prompt.strip():
        raise fail(f"{spec!r}: empty prompt after ':'; write DATA:\"US, breast, {{finding}}\" or leave out ':'")
    return Path(path), prompt.strip() if sep else "{name}, {finding}"


def build_pool(out: Path | str, sources: Sequence[tuple[Path | str, str]], *, channels: int = 1,
               size: int | None = None, exclude_test: dict[str, int] | None = None, overwrite: bool = False,
               progress: bool = True) -> Path:
    """Write the pool folder ``out`` from ``sources`` = [(DATA, prompt), ...] (see module docstring).

    ``exclude_test`` maps a DATA path (as given in ``sources``) to the fold whose test split stays out.
    Returns ``out``; on any error nothing is written.
    """
    from .prompts import finding_of, tokenize

    if not sources:
        raise fail("pool: give at least one DATA:\"prompt\" source")
    if channels not in (1, 3):
        raise fail(f"--channels {channels}: must be 1 or 3")
    exclude = {str(Path(k).resolve()): int(v) for k, v in (exclude_test or {}).items()}
    opened = []
    for data, prompt in sources:
        ds = PreparedDataset.open(data)
        opened.append((Path(data), ds, prompt))
    given = {str(Path(d).resolve()) for d, _, _ in opened}
    for k in exclude:
        if k not in given:
            raise fail(f"--exclude-test {k}: not one of the pool's sources; add it as a source or drop the option")
    names = [str(ds.info.get("name", d.name)) for d, ds, _ in opened]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise fail(f"pool: two sources are both named {dup!r}; re-prepare one with 'synthpair prepare SRC "
                   f"--set name=OTHER' so their item ids stay distinct")
    ref = size if size is not None else opened[0][1].size[0]
    for d, ds, _ in opened:
        if ds.size != (ref, ref):
            raise fail(f"{d}: size {ds.size[0]}x{ds.size[1]} differs from the pool size {ref}x{ref}; re-prepare it "
                       f"with 'synthpair prepare SRC --size {ref}'")
    ncls = {ds.num_classes for _, ds, _ in opened}
    if len(ncls) > 1:
        raise fail(f"pool: the sources have different numbers of labels ({sorted(ncls)}); pool datasets with the "
                   f"same label layout (e.g. binary lesion masks)")
    modalities = sorted({ds.modality for _, ds, _ in opened})

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        items: list[dict[str, Any]] = []
        summary: list[dict[str, Any]] = []
        for (d, ds, prompt), name in zip(opened, names):
            key = str(d.resolve())
            if key in exclude:
                fold = exclude[key]
                ids, _ = ds.split(fold)
                excluded = {"fold": fold, "test_cases": len(ds.fold_cases(fold)[1])}
            else:
                ids, excluded = list(ds.ids), None
            by_id = {it["id"]: it for it in ds.items}
            prompts = []
            for i in ids:
                try:
                    p = prompt.format(finding=finding_of(i, ds.labels), modality=ds.modality, name=name,
                                      label=finding_of("", ds.labels))
                except (KeyError, IndexError, ValueError) as err:
                    raise fail(f"prompt {prompt!r} of {d}: bad placeholder ({err}); use {{finding}}, {{name}}, "
                               f"{{modality}}, {{label}}") from None
                if not tokenize(p):
                    raise fail(f"prompt {prompt!r} of {d}: empty; give words such as \"US, breast, lesion\"")
                prompts.append(p)
            if progress:
                print(f"pool: {name}: {len(ids)} items ({ds.channels} -> {channels} channel(s))"
                      + (f", test split of fold {excluded['fold']} excluded" if excluded else ""),
                      file=sys.stderr, flush=True)
            step = 256
            for s in range(0, len(ids), step):
                chunk = ids[s:s + step]
                if ds.channels == channels:  # byte-for-byte copies
                    for i in chunk:
                        new = f"{name}{SEP}{i}"
                        shutil.copyfile(ds.root / "images" / f"{i}.png", tmp / "images" / f"{new}.png")
                        shutil.copyfile(ds.root / "masks" / f"{i}.png", tmp / "masks" / f"{new}.png")
                else:
                    imgs, msks = ds.load(chunk)
                    imgs = convert_channels(imgs, channels)
                    for i, img, msk in zip(chunk, imgs, msks):
                        write_pair(tmp, f"{name}{SEP}{i}", img, msk)
            for i, p in zip(ids, prompts):
                src = by_id[i]
                items.append({"id": f"{name}{SEP}{i}", "case": str(src["case"]), "prompt": p,
                              "source_dataset": name, "source_data": key, "source_id": i,
                              **{k: src.get(k) for k in ("slice_index", "spacing", "original_size",
                                                         "foreground_fraction")}})
            summary.append({"data": key, "name": name, "prompt": prompt, "items": len(ids),
                            "channels": ds.channels, "excluded_test": excluded})
        h = ref
        info = dataset_info(name="pool", modality=modalities[0] if len(modalities) == 1 else "mixed",
                            channels=channels, labels=opened[0][1].labels, size=(h, h),
                            normalisation={"method": "pool", "per_source": "see pool.sources"},
                            items=items, pool={"sources": summary, "channels": channels})
        write_dataset_json(tmp, info)
        cases = sorted({it["case"] for it in items})
        write_json_atomic(tmp / "splits.json", {"by": "case", "seed": 0, "num_folds": 1, "pool": True,
                                                "folds": [{"fold": 0, "train": cases, "test": []}]})
        write_json_atomic(tmp / "duplicates.json", {"method": "pool: see the source datasets' duplicates.json",
                                                    "threshold": None, "groups": []})
    if progress:
        print(f"pool: {len(items)} items from {len(opened)} dataset(s), {channels} channel(s), {ref}x{ref} → {out}",
              file=sys.stderr, flush=True)
    return Path(out)


__all__ = ["build_pool", "convert_channels", "parse_source", "SEP"]
