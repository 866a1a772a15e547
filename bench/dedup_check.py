"""Does a change to near-duplicate grouping move any fold? Re-prepare datasets with their stored prepare config
(``dataset.json``'s ``prepare_config``; the current code) and compare ``duplicates.json`` groups and
``splits.json`` folds with the stored ones.

    python bench/dedup_check.py /work/runs/data/busi64 /work/runs/data/kvasir64 /work/runs/bench14/modality_lgg/data64 \\
        --splits-file ../shared/splits/label-scarce.json --work /tmp/dedup_check

Prints one line per dataset (groups before/after, largest group, whether groups and folds are identical) and the
groups only one side has.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", type=Path, nargs="+", help="prepared datasets (their source must still exist)")
    ap.add_argument("--splits-file", type=Path, help="where the stored config's split file is now (relative paths "
                                                     "in dataset.json are relative to where prepare ran)")
    ap.add_argument("--work", type=Path, required=True, help="re-prepared copies go here (reused when present)")
    args = ap.parse_args()
    from synthpair.data.prepare import PrepareConfig, prepare_dataset

    for old in args.datasets:
        meta = json.loads((old / "dataset.json").read_text())
        pc = dict(meta["prepare_config"])
        if pc.get("splits_file") and args.splits_file:
            pc["splits_file"] = str(args.splits_file)
        out = args.work / old.name
        if not (out / "dataset.json").is_file():
            prepare_dataset(meta["source"], out, PrepareConfig(**pc), progress=False)
        before = sorted(map(sorted, json.loads((old / "duplicates.json").read_text())["groups"]))
        after = sorted(map(sorted, json.loads((out / "duplicates.json").read_text())["groups"]))
        same_folds = json.loads((old / "splits.json").read_text())["folds"] == \
            json.loads((out / "splits.json").read_text())["folds"]
        print(f"{old}: groups {len(before)} -> {len(after)}, largest {max(map(len, before), default=0)} -> "
              f"{max(map(len, after), default=0)}; groups identical: {before == after}; folds identical: {same_folds}")
        for side, a, b in (("only before", before, after), ("only after", after, before)):
            only = [g for g in a if g not in b]
            if only:
                print(f"  {side} ({len(only)}): " + "; ".join(", ".join(g[:4]) + (" ..." if len(g) > 4 else "")
                                                           for g in only[:6]))


if __name__ == "__main__":
    main()
