"""The HTML page of a survey-task folder (``synthpair anomaly|denoise|segdiff|translate|guidance``; issue 14).

:func:`write_task_report` reads ``OUT/results.json`` (written by :func:`synthpair.evaluation.tasks.common.
write_outputs`) and the figures it lists and writes ``OUT/report.html``: one self-contained page
(:mod:`synthpair.report.html`: inline CSS, images as data URIs, no network) with a section per table, the
figures with their captions, the notes, the cost and the configuration. :func:`task_section` returns the same
content as one ``(anchor, title, html)`` section for a page that gathers several tasks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import fail
from ..io import read_json, write_text_atomic
from .html import esc, figure, page, pre_json, table

FORMAT = "synthpair-task-results"


def _cell(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v:
        m, sd = v.get("mean"), v.get("sd")
        if m is None:
            return "—"
        return f"{float(m):.3f}" + (f" ± {float(sd):.3f}" if sd is not None else "")
    if isinstance(v, float):
        return "—" if v != v else f"{v:.3f}"
    return "—" if v is None else str(v)


def _read(out: Path) -> dict[str, Any]:
    res = read_json(out / "results.json", "task results.json")
    if not isinstance(res, dict) or res.get("format") != FORMAT:
        raise fail(f"{out / 'results.json'}: not the results of a synthpair task command (anomaly, denoise, segdiff, "
                   f"translate, guidance); rerun the command")
    return res


def task_html(out: Path | str, res: dict[str, Any] | None = None) -> str:
    """The inner HTML of a task folder's results: tables, figures, notes, cost, config."""
    out = Path(out)
    res = res if res is not None else _read(out)
    parts = [f'<p class="note">Data: {esc(res.get("data", ""))}</p>']
    for tb in res.get("tables", []):
        rows = [{h: _cell(r.get(h)) for h in tb["headers"]} for r in tb["rows"]]
        parts.append(f"<h3>{esc(tb['title'])}</h3>" + table(rows, tb["headers"], numeric=tb["headers"][1:]))
        if tb.get("note"):
            parts.append(f'<p class="note">{esc(tb["note"])}</p>')
    for fg in res.get("figures", []):
        path = out / fg["file"]
        if path.is_file():
            parts.append(figure(path, fg.get("caption", ""), alt=fg["file"]))
        else:
            parts.append(f'<p class="warn">figure missing: {esc(fg["file"])}</p>')
    if res.get("notes"):
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in res["notes"]) + "</ul>")
    if res.get("cost"):
        parts.append("<h3>Cost</h3>" + table([{"item": k, "value": _cell(v)} for k, v in res["cost"].items()],
                                             ["item", "value"], numeric=["value"]))
    parts.append("<details><summary>Configuration</summary>" + pre_json(res.get("config", {})) + "</details>")
    return "".join(parts)


def task_section(out: Path | str) -> tuple[str, str, str]:
    """``(anchor, title, html)`` of a task folder, for :func:`synthpair.report.html.page`."""
    res = _read(Path(out))
    return (str(res.get("task", "task")), str(res.get("title", "task")), task_html(out, res))


def write_task_report(out: Path | str) -> Path:
    """Write ``OUT/report.html`` for a task folder (atomically) and return its path."""
    out = Path(out)
    res = _read(out)
    html = page(str(res.get("title", "synthpair task")), [(str(res.get("task", "task")), "Results", task_html(out, res))],
                subtitle=f"synthpair {res.get('task')} — tables, figures and configuration of {out.name}")
    path = out / "report.html"
    write_text_atomic(path, html)
    return path


__all__ = ["task_html", "task_section", "write_task_report"]
