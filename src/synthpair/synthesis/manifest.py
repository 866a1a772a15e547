"""``SYN/manifest.jsonl``: one JSON object per synthetic pair (provenance, see docs/architecture.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import fail

MANIFEST = "manifest.jsonl"


def read_manifest(syn_dir: Path | str, *, allow_empty: bool = True) -> list[dict[str, Any]]:
    """Read ``SYN/manifest.jsonl`` → one dict per line; one-line errors for a missing/invalid manifest.

    A generation whose filters kept no pair has an empty manifest; ``allow_empty=False`` (training on it)
    makes that an error too.
    """
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
        records.append(rec)
    if not records and not allow_empty:
        raise fail(f"{path}: empty manifest; regenerate the folder with `synthpair generate`")
    return records


