"""Results tables in the layout of EMIT-Diff's Table 2 (seed 000): one row per setting,
columns Dice, IoU, precision, recall, pixel accuracy, HD95, ASSD as ``mean ± sd``.

Dice/IoU/precision/recall/pixel accuracy are printed in percent (as in the paper); HD95/ASSD in the unit of the
results (mm when the dataset knows its spacing, else pixels).
"""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping

METRICS = ("dice", "iou", "precision", "recall", "pixel_accuracy", "hd95", "assd")
HEADERS = {"dice": "Dice ↑", "iou": "IoU ↑", "precision": "Precision ↑", "recall": "Recall ↑",
           "pixel_accuracy": "Pixel acc. ↑", "hd95": "HD95 ({unit}) ↓", "assd": "ASSD ({unit}) ↓"}
PERCENT = {"dice", "iou", "precision", "recall", "pixel_accuracy"}


def _cell(summary: Mapping[str, Any], metric: str) -> str:
    s = summary.get(metric)
    if not s or s.get("mean") is None:
        return "–"
    scale = 100.0 if metric in PERCENT else 1.0
    return f"{s['mean'] * scale:.2f} ± {s['sd'] * scale:.2f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]], unit: str = "pixel", n_cases: Mapping[str, int] | None = None
                   ) -> str:
    """``rows``: setting name → summary {metric: {"mean", "sd", "n"}} → a markdown table."""
    heads = ["Setting"] + [HEADERS[m].format(unit=unit) for m in METRICS] + ["cases"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, summary in rows.items():
        n = (n_cases or {}).get(name, summary.get("dice", {}).get("n", ""))
        lines.append("| " + " | ".join([name] + [_cell(summary, m) for m in METRICS] + [str(n)]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "sd", "n")])
    for name, summary in rows.items():
        w.writerow([name] + [summary.get(m, {}).get(k, "") for m in METRICS for k in ("mean", "sd", "n")])
    return buf.getvalue()


def format_summary(results: Mapping[str, Any]) -> str:
    """One-setting results (as returned by ``segment``) → a short markdown table."""
    summary = results.get("summary", results)
    unit = results.get("distance_unit", "pixel")
    return markdown_table({results.get("setting", "result"): summary}, unit=unit)
