"""The prepared dataset folder (see docs/architecture.md): reading it and writing it.

A prepared folder holds ``images/<id>.png`` (uint8, value v ↔ intensity v/127.5 − 1 in [-1, 1]),
``masks/<id>.png`` (uint8 labels 0..K), ``dataset.json`` (items with their case ids) and ``splits.json``
(case-level folds). Generated (synthetic) folders use the same layout plus ``manifest.jsonl``.

Labelled and unlabelled items. An item whose dataset.json entry has ``"labelled": false`` is an image without
a mask (no ``masks/<id>.png`` exists): an unlabelled image given to ``prepare --unlabelled``, or a training
item whose mask a label-budget view (:mod:`.budget`) hides. Unlabelled items are on the training side of
every fold and never in a test split. Stages that need masks get labelled items only:
:meth:`PreparedDataset.split` lists labelled training items, and :meth:`PreparedDataset.load` refuses an
unlabelled item; stages that only need images use :meth:`PreparedDataset.image_train_ids` and
:meth:`PreparedDataset.load_images`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import fail
from ..io import from_uint8, read_json, save_png_atomic, to_uint8, write_json_atomic  # noqa: F401 (re-export)

FORMAT = "synthpair-dataset"
FORMAT_VERSION = 1


def read_png(path: Path) -> np.ndarray:
    """Read a PNG written by synthpair → uint8 (H, W), (H, W, 2) (mode LA: 2 named channels), (H, W, 3) or
    (H, W, 4) (mode RGBA: 4 named channels, e.g. BraTS' contrasts; the 4th is data, not transparency)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK") else "L")
            return np.asarray(im)
    except FileNotFoundError:
        raise fail(f"{path}: file missing from the prepared folder; rerun 'synthpair prepare'") from None
    except OSError as err:
        raise fail(f"{path}: unreadable image ({err}); rerun the stage that wrote it") from None


@dataclass
class PreparedDataset:
    """A prepared (or synthetic) dataset folder loaded for training/evaluation."""

    root: Path
    info: dict[str, Any]
    splits: dict[str, Any] | None
    _by_id: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: Path | str, *, require_splits: bool = True) -> "PreparedDataset":
        root = Path(root)
        if not root.is_dir():
            raise fail(f"{root}: prepared dataset folder not found; run 'synthpair prepare SRC --out {root}' first")
        info = read_json(root / "dataset.json", "dataset.json")
        if info.get("format") != FORMAT:
            raise fail(f"{root / 'dataset.json'}: not a synthpair dataset; run 'synthpair prepare' on the source folder")
        splits = None
        if (root / "splits.json").is_file():
            splits = read_json(root / "splits.json", "splits.json")
        elif require_splits:
            raise fail(f"{root / 'splits.json'}: missing; rerun 'synthpair prepare' to write the case-level splits")
        ds = cls(root=root, info=info, splits=splits)
        ds._by_id = {item["id"]: item for item in info["items"]}
        ds._check_unlabelled()
        return ds

    def _check_unlabelled(self) -> None:
        """An unlabelled item must never sit in a test split (it has no mask to score, and its case would
        reach training through the image-only stages)."""
        if not self.splits or not any(not it.get("labelled", True) for it in self.items):
            return
        for f in self.splits["folds"]:
            test = set(f["test"])
            bad = [it["id"] for it in self.items if not it.get("labelled", True) and it["case"] in test]
            if bad:
                raise fail(f"{self.root / 'splits.json'}: unlabelled item {bad[0]!r} is in the test split of fold "
                           f"{f['fold']}; unlabelled images belong on the training side; rerun 'synthpair prepare'")

    # --- metadata ---
    @property
    def items(self) -> list[dict[str, Any]]:
        return self.info["items"]

    @property
    def ids(self) -> list[str]:
        return [it["id"] for it in self.items]

    def is_labelled(self, item_id: str) -> bool:
        """True when the item has a mask (dataset.json ``labelled``, absent = true)."""
        return bool(self._by_id[item_id].get("labelled", True))

    @property
    def labelled_ids(self) -> list[str]:
        return [it["id"] for it in self.items if it.get("labelled", True)]

    @property
    def unlabelled_ids(self) -> list[str]:
        """Items without a mask; they are on the training side of every fold."""
        return [it["id"] for it in self.items if not it.get("labelled", True)]

    @property
    def subsets(self) -> dict[str, list[str]]:
        """Named labelled subsets of the training side recorded by ``prepare --splits FILE`` (e.g.
        ``seed0_N16``), item ids; {} when none."""
        return {str(k): list(v) for k, v in ((self.splits or {}).get("subsets") or {}).items()}

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @property
    def num_classes(self) -> int:
        """Number of labels including background (2 for a binary lesion mask)."""
        return int(self.info["num_classes"])

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.info["labels"])

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.info["size"]
        return int(h), int(w)

    @property
    def modality(self) -> str:
        return str(self.info.get("modality", "unknown"))

    @property
    def num_folds(self) -> int:
        return len(self.splits["folds"]) if self.splits else 0

    def case_of(self, item_id: str) -> str:
        return str(self._by_id[item_id]["case"])

    def spacing_of(self, item_id: str) -> tuple[float, float] | None:
        sp = self._by_id[item_id].get("spacing")
        return None if sp is None else (float(sp[0]), float(sp[1]))

    def cases(self) -> list[str]:
        return sorted({str(it["case"]) for it in self.items})

    def split(self, fold: int) -> tuple[list[str], list[str]]:
        """Item ids of (train, test) of ``fold``: the LABELLED training items and the test items; all items of
        a case fall on the same side. Unlabelled items are in neither list (see :meth:`image_train_ids`)."""
        if not self.splits:
            raise fail(f"{self.root}: no splits.json; rerun 'synthpair prepare'")
        folds = self.splits["folds"]
        if not 0 <= fold < len(folds):
            raise fail(f"--fold {fold}: {self.root} has folds 0..{len(folds) - 1}; choose one of them")
        test_cases = set(folds[fold]["test"])
        train_cases = set(folds[fold]["train"])
        train = [it["id"] for it in self.items if it["case"] in train_cases and it.get("labelled", True)]
        test = [it["id"] for it in self.items if it["case"] in test_cases and it.get("labelled", True)]
        return train, test

    def image_train_ids(self, fold: int, unlabelled: bool = True) -> list[str]:
        """Every image a stage that needs no mask may learn from in ``fold``: the labelled training items plus
        (``unlabelled=True``) every unlabelled item, in dataset order."""
        train, _ = self.split(fold)
        keep = set(train) | (set(self.unlabelled_ids) if unlabelled else set())
        return [i for i in self.ids if i in keep]

    def fold_cases(self, fold: int) -> tuple[list[str], list[str]]:
        """Case ids of (train, test) of ``fold``."""
        f = self.splits["folds"][fold]
        return list(f["train"]), list(f["test"])

    # --- pixels ---
    def load(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Load labelled items → images float32 (N, C, H, W) in [-1, 1], masks int64 (N, H, W) labels 0..K.

        An unlabelled id is refused: a stage that needs masks must never receive one (use :meth:`load_images`).
        """
        unl = [i for i in ids if i in self._by_id and not self._by_id[i].get("labelled", True)]
        if unl:
            raise fail(f"{self.root}: item {unl[0]!r} is unlabelled (no mask) but a stage that needs masks asked "
                       f"for it ({len(unl)} such item(s)); pass labelled items only (PreparedDataset.split)")
        h, w = self.size
        images = self.load_images(ids)
        masks = np.empty((len(ids), h, w), dtype=np.int64)
        for i, item_id in enumerate(ids):
            msk = read_png(self.root / "masks" / f"{item_id}.png")
            if msk.shape != (h, w):
                raise fail(f"{self.root / 'masks' / (item_id + '.png')}: shape {msk.shape} does not match "
                           f"dataset.json ({h}, {w}); rerun 'synthpair prepare'")
            masks[i] = msk
        return images, masks

    def load_images(self, ids: Sequence[str]) -> np.ndarray:
        """Load the images of any items (labelled or not) → float32 (N, C, H, W) in [-1, 1]."""
        h, w = self.size
        images = np.empty((len(ids), self.channels, h, w), dtype=np.float32)
        for i, item_id in enumerate(ids):
            img = read_png(self.root / "images" / f"{item_id}.png")
            img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
            if img.shape != (self.channels, h, w):
                raise fail(f"{self.root / 'images' / (item_id + '.png')}: shape {img.shape} does not match "
                           f"dataset.json ({self.channels}, {h}, {w}); rerun 'synthpair prepare'")
            images[i] = from_uint8(img)
        return images


def write_pair(root: Path, item_id: str, image: np.ndarray, mask: np.ndarray | None) -> None:
    """Write one pair: image float (C, H, W) in [-1, 1] (C = 1 … 4: PNG mode L, LA, RGB or RGBA), mask int (H, W)
    labels, or None for an unlabelled item (image only, no mask file)."""
    img = to_uint8(image)
    img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    save_png_atomic(root / "images" / f"{item_id}.png", img)
    if mask is not None:
        save_png_atomic(root / "masks" / f"{item_id}.png", np.asarray(mask).astype(np.uint8))


def dataset_info(*, name: str, modality: str, channels: int, labels: dict[str, int], size: Sequence[int],
                 normalisation: dict[str, Any], items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Build a ``dataset.json`` dict in the documented format."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "modality": modality,
        "channels": int(channels),
        "labels": dict(labels),
        "num_classes": len(labels),
        "size": [int(size[0]), int(size[1])],
        "normalisation": normalisation,
        **extra,
        "items": items,
    }


def write_dataset_json(root: Path, info: dict[str, Any]) -> None:
    write_json_atomic(Path(root) / "dataset.json", info)
