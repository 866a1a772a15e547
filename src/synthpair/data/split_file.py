"""Fixed splits from a file (``synthpair prepare SRC --splits FILE``).

Two layouts are read:

* **test / pool / labelled subsets** (the benchmark layout of ``label-scarce.json``)::

      {"test": [stem, ...], "pool": [stem, ...], "train_subsets": {"seed0_N16": [stem, ...], ...}}

  optionally one such object per dataset under its name (``{"busi": {...}, "kvasir": {...}, "about": ...}``;
  ``--splits-key`` picks one, else the only one or the one whose name the source folder name starts with).
  The prepared folder gets ONE fold (train = the pool, test = the test set); items in neither list are left
  out. ``train_subsets`` become named labelled subsets (:attr:`PreparedDataset.subsets`) for label-budget
  views; subsets named ``<prefix>_N<n>`` must be nested within a prefix (the 16 inside the 32) and every
  subset must lie in the pool.
* **nnU-Net's** ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``, one per fold; each fold's
  ``val`` becomes its test split.

Names are item ids (file stems of 2-D sources) or case ids (volumes, nnU-Net cases: every item of the case).
The fingerprint of a split is the first 12 hex digits of the sha1 of the comma-joined sorted test names
(BUSI ``67e5baa1bce6``, Kvasir-SEG ``a406fabedfdd`` for ``label-scarce.json``); a file that states its own
``sha1_test`` must match it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import fail
from ..io import read_json

_NESTED = re.compile(r"^(?P<prefix>.*)_N(?P<n>\d+|all)$")


def fingerprint(test_names: Sequence[str]) -> str:
    """First 12 hex digits of sha1(','.join(sorted(test_names)))."""
    return hashlib.sha1(",".join(sorted(str(s) for s in test_names)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SplitSpec:
    """A split file resolved to names: ``folds`` = [(train names, test names)], ``subsets`` name → names."""

    path: str
    key: str | None
    kind: str  # "test-pool" | "nnunet"
    folds: list[tuple[list[str], list[str]]]
    subsets: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str = ""

    def record(self) -> dict[str, Any]:
        """What splits.json keeps about the file (``source``)."""
        return {"file": self.path, "key": self.key, "kind": self.kind, "fingerprint": self.fingerprint}


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"{where}: expected a list of stems (strings); fix the split file")
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        raise fail(f"{where}: stem {dup[0]!r} is listed twice; list each stem once")
    return list(value)


def read_split_file(path: Path | str, key: str | None = None, dataset_name: str | None = None) -> SplitSpec:
    """Read and check a split file (see module doc) → :class:`SplitSpec`; one-line errors naming the file."""
    path = Path(path)
    data = read_json(path, "split file")
    if isinstance(data, list):
        if key is not None:
            raise fail(f"{path}: --splits-key {key!r} given but the file is an nnU-Net fold list; drop --splits-key")
        folds = []
        for k, f in enumerate(data):
            if not isinstance(f, dict) or "train" not in f or "val" not in f:
                raise fail(f"{path}: fold {k} must be an object with 'train' and 'val' lists (nnU-Net "
                           f"splits_final.json); fix the file")
            train, val = _names(f["train"], f"{path}: fold {k} train"), _names(f["val"], f"{path}: fold {k} val")
            both = sorted(set(train) & set(val))
            if both:
                raise fail(f"{path}: {both[0]!r} is in both train and val of fold {k}; a case belongs to one side")
            folds.append((train, val))
        if not folds:
            raise fail(f"{path}: empty fold list; add at least one fold")
        return SplitSpec(str(path.resolve()), None, "nnunet", folds, {}, fingerprint(folds[0][1]))
    if not isinstance(data, dict):
        raise fail(f"{path}: a split file is an object (test/pool/train_subsets) or an nnU-Net fold list")
    spec = data
    if "test" not in data:
        candidates = sorted(k for k, v in data.items() if isinstance(v, dict) and "test" in v)
        if not candidates:
            raise fail(f"{path}: no 'test' list (nor datasets holding one); write {{\"test\": [...], \"pool\": [...]}}")
        if key is None:
            if len(candidates) == 1:
                key = candidates[0]
            else:
                low = (dataset_name or "").lower()
                match = [c for c in candidates if low.startswith(c.lower()) or c.lower().startswith(low)] if low else []
                if len(match) != 1:
                    raise fail(f"{path}: holds splits for {', '.join(candidates)}; choose one with --splits-key")
                key = match[0]
        if key not in candidates:
            raise fail(f"{path}: no dataset {key!r} in the file; choose --splits-key from {', '.join(candidates)}")
        spec = data[key]
    elif key is not None:
        raise fail(f"{path}: --splits-key {key!r} given but the file holds one split; drop --splits-key")
    where = f"{path}" + (f" [{key}]" if key else "")
    test = _names(spec.get("test"), f"{where}: test")
    if "pool" not in spec:
        raise fail(f"{where}: no 'pool' list (the training side); add it")
    pool = _names(spec.get("pool"), f"{where}: pool")
    if not test or not pool:
        raise fail(f"{where}: test and pool must both be non-empty")
    both = sorted(set(test) & set(pool))
    if both:
        raise fail(f"{where}: {len(both)} stem(s) are in both test and pool (e.g. {both[0]!r}); a test image must "
                   f"never be on the training side — fix the split file")
    fp = fingerprint(test)
    stated = spec.get("sha1_test")
    if stated is not None and not (str(stated) == fp or str(stated).startswith(fp) or fp.startswith(str(stated))):
        raise fail(f"{where}: sha1_test {stated} does not match the test list (sha1 {fp}); the file was edited — "
                   f"restore it or update sha1_test")
    subsets: dict[str, list[str]] = {}
    pool_set = set(pool)
    for name, stems in (spec.get("train_subsets") or {}).items():
        stems = _names(stems, f"{where}: train_subsets.{name}")
        out = [s for s in stems if s not in pool_set]
        if out:
            raise fail(f"{where}: train_subsets.{name} has {len(out)} stem(s) outside the pool (e.g. {out[0]!r}); "
                       f"labelled subsets must be drawn from the pool")
        subsets[str(name)] = stems
    _check_nested(subsets, where)
    return SplitSpec(str(path.resolve()), key, "test-pool", [(pool, test)], subsets, fp)


def _check_nested(subsets: dict[str, list[str]], where: str) -> None:
    """Subsets ``<prefix>_N<n>`` of one prefix must be nested by size."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name, stems in subsets.items():
        m = _NESTED.match(name)
        if m:
            groups.setdefault(m.group("prefix"), []).append((len(stems), name))
    for prefix, members in groups.items():
        members.sort()
        for (_, small), (_, big) in zip(members, members[1:]):
            missing = sorted(set(subsets[small]) - set(subsets[big]))
            if missing:
                raise fail(f"{where}: train_subsets.{small} is not inside {big} ({len(missing)} stem(s), e.g. "
                           f"{missing[0]!r}); nested label budgets need the smaller subset inside the larger")


def resolve_names(names: Sequence[str], item_ids: Sequence[str], case_of: dict[str, str], where: str
                  ) -> list[str]:
    """Names (item ids, or case ids meaning all their items) → item ids in ``item_ids`` order; unknown names
    are one-line errors."""
    ids = set(item_ids)
    by_case: dict[str, list[str]] = {}
    for i in item_ids:
        by_case.setdefault(case_of[i], []).append(i)
    out: set[str] = set()
    missing = []
    for n in names:
        if n in ids:
            out.add(n)
        elif n in by_case:
            out.update(by_case[n])
        else:
            missing.append(n)
    if missing:
        raise fail(f"{where}: {len(missing)} stem(s) do not exist in the source (e.g. {missing[0]!r}); the split "
                   f"file belongs to another dataset or the source folder is incomplete")
    return [i for i in item_ids if i in out]
