"""``SYN/manifest.jsonl``: one typed record per synthetic pair, ONE writer for every synthetic folder, ONE subset
helper (docs/architecture.md, "Synthetic folder").

Every writer of a synthetic folder — ``synthpair generate``, ``synthpair inpaint``, ``synthpair harmonise`` and the
studies' own sampled sets — builds :class:`PairRecord` lines and writes the folder through
:class:`SyntheticWriter`; every consumer that keeps part of a folder (views, ablation subsets) goes through
:func:`subset_folder`. A line is a flat JSON object (the on-disk format is unchanged since issue 1, so every
older folder still reads):

* the provenance every pair carries — :class:`PairRecord`'s typed fields ``id``, ``seed``, ``method``,
  ``generator_run``, ``model_sha256``, ``fold``, ``train_cases`` (every real case the models behind the pair
  saw; the leakage guard reads it), ``source_case``, ``mask_area``, ``faithfulness``;
* the writer's own fields (``fields``), among them its **replay recipe** — what ``synthpair replay`` needs to
  re-create the pair bit for bit (:func:`recipe_of` names it):

  ``sample`` (generate, studies' sampled sets): ``batch_seeds`` (the whole batch, so batched kernels see the
  same rows), ``sampler``, ``steps``, ``eta``, ``device``, ``amp``, ``min_component``, the condition source
  (``mask_source`` + ``mask_order_seed`` + ``reference`` + ``guidance``; ``per_real`` + ``per_real_first_seed``
  + ``aug_prompts``) and ``batch_labels`` (explicit class/cluster labels of the batch, aligned with
  ``batch_seeds``; absent = the method's own label-free draw);
  ``inpaint``: ``batch_seeds`` + ``batch_items`` (the RePaint block), ``generator_runs`` (+ their
  ``generator_sha256s``), ``source_data``,
  ``dilate_px``, ``min_component`` and the RePaint settings;
  ``harmonise``: ``harmonise_input`` (the SYN folder it read), ``harmonise`` (settings), the block
  ``harmonise_batch_ids`` + ``harmonise_batch_seeds``, ``harmonise_generator_run`` / ``harmonise_model_sha256``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from ..errors import fail

MANIFEST = "manifest.jsonl"

Recipe = Literal["sample", "inpaint", "harmonise"]
INPAINT_METHODS = ("repaint", "fast-repaint")

CASE_FIELDS: tuple[str, ...] = ("train_cases", "source_case", "reference_case", "reference_cases")
"""Manifest fields naming real cases a pair depends on (str or list of str)."""

ITEM_FIELDS: tuple[str, ...] = ("source_item", "reference_item")
"""Manifest fields naming real *items* a pair depends on; mapped to their cases by the real dataset."""


def manifest_cases(records: Iterable[dict[str, Any]]) -> set[str]:
    """Every real case id named by the :data:`CASE_FIELDS` of the manifest records."""
    cases: set[str] = set()
    for rec in records:
        for key in CASE_FIELDS:
            val = rec.get(key)
            if val is None:
                continue
            cases.update(str(v) for v in (val if isinstance(val, list) else [val]) if v is not None)
    return cases


_CORE = ("id", "seed", "method", "generator_run", "model_sha256", "fold", "train_cases", "source_case",
         "mask_area", "faithfulness")


@dataclass(frozen=True)
class PairRecord:
    """One manifest line. Writers pass every typed field explicitly (``None`` where it does not apply, e.g.
    ``mask_area`` of an image-only pair); ``fields`` holds the writer's provenance and replay recipe (module
    docstring), in the order they are written."""

    id: str
    seed: int | None
    method: str | None
    generator_run: str | None
    model_sha256: str | None
    fold: int | None
    train_cases: tuple[str, ...]
    source_case: str | None
    mask_area: int | None
    faithfulness: float | None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"manifest record: id must be a non-empty string, got {self.id!r}")
        if isinstance(self.train_cases, (str, bytes)) or not isinstance(self.train_cases, (list, tuple)):
            raise ValueError(f"manifest record {self.id}: train_cases must be a list of case ids")
        object.__setattr__(self, "train_cases", tuple(str(c) for c in self.train_cases))
        for name in ("seed", "fold", "mask_area"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"manifest record {self.id}: {name} must be an integer or null, got {v!r}")
        if self.faithfulness is not None and not isinstance(self.faithfulness, (int, float)):
            raise ValueError(f"manifest record {self.id}: faithfulness must be a number or null")
        clash = set(self.fields) & set(_CORE)
        if clash:
            raise ValueError(f"manifest record {self.id}: fields repeat typed keys {sorted(clash)}")
        object.__setattr__(self, "fields", dict(self.fields))

    # -------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of the line (typed keys first, then ``fields``)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _CORE}
        out["train_cases"] = list(self.train_cases)
        out.update(self.fields)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PairRecord":
        """A line as read (older folders may lack typed keys: they read as None)."""
        return cls(**{k: d.get(k) for k in _CORE if k != "train_cases"}, train_cases=d["train_cases"],
                   fields={k: v for k, v in d.items() if k not in _CORE})

    def replace(self, **changes: Any) -> "PairRecord":
        """A copy with typed keys and/or ``fields`` entries changed (unknown names go to ``fields``)."""
        core = {k: changes.pop(k) for k in list(changes) if k in _CORE}
        base = {k: getattr(self, k) for k in _CORE}
        return PairRecord(**{**base, **core}, fields={**self.fields, **changes})

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _CORE else self.fields.get(key, default)


def recipe_of(rec: Mapping[str, Any]) -> Recipe:
    """Which replay recipe a manifest line carries (decided by its keys, so older folders are read too):
    ``harmonise`` when it has a ``harmonise`` section, ``inpaint`` for the RePaint methods, else ``sample``."""
    if rec.get("harmonise") is not None:
        return "harmonise"
    if rec.get("method") in INPAINT_METHODS:
        return "inpaint"
    return "sample"


def dumps_line(rec: PairRecord | Mapping[str, Any]) -> str:
    d = rec.to_json() if isinstance(rec, PairRecord) else dict(rec)
    return json.dumps(d) + "\n"


def read_manifest(syn_dir: Path | str, *, allow_empty: bool = True) -> list[dict[str, Any]]:
    """Read ``SYN/manifest.jsonl`` → one dict per line; one-line errors for a missing/invalid manifest.

    A generation whose filters kept no pair has an empty manifest; ``allow_empty=False`` (training on it)
    makes that an error too. Every line is checked as a :class:`PairRecord` (``id``, ``train_cases`` list,
    integer ``seed``/``fold``/``mask_area``).
    """
    return [r.to_json() for r in read_records(syn_dir, allow_empty=allow_empty)]


def read_records(syn_dir: Path | str, *, allow_empty: bool = True) -> list[PairRecord]:
    """:func:`read_manifest` as typed :class:`PairRecord` objects."""
    syn_dir = Path(syn_dir)
    path = syn_dir / MANIFEST
    if not path.is_file():
        raise fail(f"{syn_dir}: has no manifest.jsonl; synthetic folders must come from `synthpair generate`")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise fail(f"{path}:{n}: not valid JSON ({err}); regenerate the folder with `synthpair generate`") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise fail(f"{path}:{n}: expected an object with an 'id'; regenerate the folder with `synthpair generate`")
        if not isinstance(rec.get("train_cases"), list):
            raise fail(f"{path}:{n}: no 'train_cases' list, so leakage cannot be ruled out; regenerate the folder "
                       f"with `synthpair generate`")
        try:
            records.append(PairRecord.from_json(rec))
        except ValueError as err:
            raise fail(f"{path}:{n}: {err}; regenerate the folder with `synthpair generate`") from None
    if not records and not allow_empty:
        raise fail(f"{path}: empty manifest; regenerate the folder with `synthpair generate`")
    return records


# ------------------------------------------------------------------------------------------------ writer
def dataset_items(records: Iterable[PairRecord], size: Sequence[int], *,
                  spacing: Callable[[PairRecord], Any] | None = None, source_item: bool = False
                  ) -> list[dict[str, Any]]:
    """``dataset.json`` items of synthetic pairs: id, case ``synthetic:<id>``, seed, source_case (+ source_item),
    spacing (``spacing(record)``, else null) and foreground_fraction — or ``labelled: false`` for an image-only
    pair (``mask_area`` null)."""
    pixels = float(size[0]) * float(size[1])
    out = []
    for r in records:
        item: dict[str, Any] = {"id": r.id, "case": f"synthetic:{r.id}", "seed": r.seed, "source_case": r.source_case}
        if source_item:
            item["source_item"] = r.get("source_item")
        item["spacing"] = spacing(r) if spacing is not None else None
        if r.mask_area is None:
            item.update(labelled=False, foreground_fraction=None)
        else:
            item["foreground_fraction"] = r.mask_area / pixels
        out.append(item)
    return out


class SyntheticWriter:
    """Writes one synthetic folder ``root`` (images/, masks/, regions/, manifest.jsonl, dataset.json).

    Every file is written atomically. Resumable writers (``generate``) append each batch's lines durably
    (:meth:`append`) and replace the manifest when cleaning up (:meth:`rewrite`); one-shot writers build the
    folder in a temporary sibling (:func:`synthpair.io.atomic_output_dir`) and call :meth:`rewrite` once.
    ``dataset.json`` (:meth:`finish`) is written last, so an unfinished folder is never taken for a complete one.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def pair(self, rec: PairRecord, image: Any, mask: Any, region: Any = None) -> None:
        """images/<id>.png (float (C, H, W) in [-1, 1]), masks/<id>.png (labels; None = image-only pair) and,
        for inpainted pairs, regions/<id>.png (uint8 0/1)."""
        import numpy as np

        from ..data.dataset import write_pair
        from ..io import save_png_atomic

        write_pair(self.root, rec.id, image, mask)
        if region is not None:
            save_png_atomic(self.root / "regions" / f"{rec.id}.png", np.asarray(region).astype(np.uint8))

    def append(self, records: Sequence[PairRecord]) -> None:
        """Append lines and fsync (one committed batch of a resumable generation)."""
        from ..io import translate_os_errors

        path = self.root / MANIFEST
        with translate_os_errors(path):
            with open(path, "a", encoding="utf-8") as fh:
                for rec in records:
                    fh.write(dumps_line(rec))
                fh.flush()
                os.fsync(fh.fileno())

    def rewrite(self, records: Sequence[PairRecord | Mapping[str, Any]]) -> None:
        """Replace the manifest with ``records`` (atomically)."""
        from ..io import write_text_atomic

        write_text_atomic(self.root / MANIFEST, "".join(dumps_line(r) for r in records))

    def finish(self, info: dict[str, Any]) -> None:
        """Write ``dataset.json`` (:func:`synthpair.data.dataset.dataset_info`), last."""
        from ..data.dataset import write_dataset_json

        write_dataset_json(self.root, info)


def subset_folder(src: Path | str, dst: Path | str, keep: Callable[[dict[str, Any]], bool] | Sequence[str], *,
                  files: Literal["symlink", "link", "copy"] = "link", info: Mapping[str, Any] | None = None,
                  overwrite: bool = False, allow_empty: bool = True) -> Path:
    """Write ``dst``: the pairs of synthetic folder ``src`` that ``keep`` selects (a predicate on manifest lines,
    or a list of ids), with their manifest lines (unchanged, so every pair still replays) and ``dataset.json``
    (``src``'s, items filtered, updated with ``info``). Skipped when ``dst/dataset.json`` exists.

    ``files``: ``symlink`` — ``images``/``masks`` are links to ``src``'s folders (a view); ``link`` — a hard link
    per PNG (a copy where links are impossible); ``copy`` — copies.
    """
    import shutil

    from ..io import atomic_output_dir, read_json, write_json_atomic

    src, dst = Path(src), Path(dst)
    if (dst / "dataset.json").is_file():
        return dst
    lines = read_manifest(src, allow_empty=allow_empty)
    chosen = set(keep) if not callable(keep) else None
    lines = [r for r in lines if (keep(r) if chosen is None else r["id"] in chosen)]  # type: ignore[operator]
    ids = {r["id"] for r in lines}
    meta = read_json(src / "dataset.json", "synthetic dataset.json")
    meta = {**meta, "items": [it for it in meta["items"] if it["id"] in ids], **dict(info or {})}
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        for sub in ("images", "masks"):
            if files == "symlink":
                os.symlink(os.path.relpath(src / sub, dst), tmp / sub)
                continue
            (tmp / sub).mkdir()
            for pid in sorted(ids):
                a, b = src / sub / f"{pid}.png", tmp / sub / f"{pid}.png"
                if sub == "masks" and not a.is_file():  # an image-only pair has no mask file
                    continue
                if files == "link":
                    try:
                        os.link(a, b)
                        continue
                    except OSError:
                        pass
                shutil.copy2(a, b)
        SyntheticWriter(tmp).rewrite(lines)
        write_json_atomic(tmp / "dataset.json", meta)
    return dst


__all__ = ["CASE_FIELDS", "ITEM_FIELDS", "MANIFEST", "PairRecord", "manifest_cases", "SyntheticWriter", "dataset_items", "read_manifest", "read_records",
           "recipe_of", "subset_folder"]
