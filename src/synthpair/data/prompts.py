"""Prompt words of an item (the data side of the prompt-conditioned generators and of ``synthpair pool``)."""
from __future__ import annotations

import re

_SPLIT = re.compile(r"[,\s]+")


def tokenize(prompt: str) -> list[str]:
    """``"US, breast,  Enhanced contrast"`` → ``["us", "breast", "enhanced", "contrast"]``."""
    return [w for w in _SPLIT.split(str(prompt).lower()) if w]


def finding_of(item_id: str, labels: dict[str, int]) -> str:
    """``{finding}`` of an item: the id's prefix before the first ``_`` when purely alphabetic (``benign_001``
    → ``benign``), else the first foreground label name (``lesion``)."""
    head, sep, _ = item_id.partition("_")
    if sep and head.isalpha():
        return head.lower()
    fg = sorted((v, k) for k, v in labels.items() if v > 0)
    return fg[0][1] if fg else "image"


__all__ = ["tokenize", "finding_of"]
