"""One self-contained HTML page: inline CSS and JS, images as base64 ``data:`` URIs, no network fetches.

The page is a list of sections ``(anchor, title, html)`` with a table of contents. A small inline script
records on ``<body>`` whether every ``<img>`` decoded (``data-images-loaded="true"``, ``data-images-total``,
``data-images-ok``) so a headless browser can check the page (tests/test_eval_browser.py).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #d5dae0;padding-bottom:4px;margin-top:1.8em}
h3{margin-bottom:.3em}nav{background:#1d2329;padding:8px 28px}nav a{color:#cfe3ff;margin-right:16px;text-decoration:none;font-size:.92em}
table{border-collapse:collapse;margin:8px 0 12px;background:#fff;font-size:.9em}
th,td{border:1px solid #d5dae0;padding:4px 9px;text-align:left;vertical-align:top}th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0 18px;display:inline-block;vertical-align:top;margin-right:18px}
figcaption{font-size:.85em;color:#555;max-width:640px}
img{image-rendering:pixelated;border:1px solid #c9ced6;max-width:100%}
pre{background:#fff;border:1px solid #d5dae0;padding:10px;overflow:auto;max-height:420px;font-size:.8em}
.note{color:#555;font-size:.88em}.warn{color:#8a5300;font-size:.88em}.swatch{display:inline-block;width:12px;height:12px;
border:1px solid #333;margin:0 4px -1px 10px}
"""

SCRIPT = """
(function(){
  function check(){
    var imgs=Array.prototype.slice.call(document.images);
    var ok=imgs.filter(function(i){return i.complete && i.naturalWidth>0;}).length;
    document.body.setAttribute('data-images-total', String(imgs.length));
    document.body.setAttribute('data-images-ok', String(ok));
    document.body.setAttribute('data-images-loaded', ok===imgs.length ? 'true' : 'false');
  }
  window.addEventListener('load', check);
})();
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 3) → PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(image: np.ndarray | bytes | Path) -> str:
    """An image array, PNG bytes or a PNG file → ``data:image/png;base64,…``."""
    if isinstance(image, Path):
        raw = image.read_bytes()
    elif isinstance(image, bytes):
        raw = image
    else:
        raw = png_bytes(image)
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def figure(image: np.ndarray | bytes | Path, caption: str, width: int | None = None, alt: str | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return (f'<figure><img src="{data_uri(image)}" alt="{esc(alt or caption)}"{w}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(rows: Sequence[dict[str, Any]], headers: Sequence[str] | None = None, numeric: Iterable[str] = ()) -> str:
    """Rows of dicts → an HTML table (values escaped; columns in ``numeric`` right-aligned)."""
    if not rows:
        return '<p class="note">(no rows)</p>'
    headers = list(headers or rows[0].keys())
    num = set(numeric)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td{" class=num" if h in num else ""}>{esc(r.get(h, ""))}</td>'
                                     for h in headers) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def markdown_to_table(md: str) -> str:
    """A pipe table in markdown (as written by report.tables) → HTML table; other lines → paragraphs."""
    lines = [ln for ln in md.splitlines() if ln.strip()]
    rows = [ln for ln in lines if ln.startswith("|")]
    rest = [ln for ln in lines if not ln.startswith("|")]
    if len(rows) < 2:
        return "".join(f"<p>{esc(ln)}</p>" for ln in lines)
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    heads = split(rows[0])
    body = [dict(zip(heads, split(r))) for r in rows[2:]]
    notes = "".join(f'<p class="note">{esc(ln.lstrip("- "))}</p>' for ln in rest)
    return table(body, heads, numeric=heads[1:]) + notes


def pre_json(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=2, sort_keys=False, default=str))}</pre>"


def page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str = "") -> str:
    """Sections ``(anchor, title, inner html)`` → the whole self-contained HTML document."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(t)}</h2>{inner}</section>' for a, t, inner in sections)
    sub = f'<p class="note">{esc(subtitle)}</p>' if subtitle else ""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><nav>{nav}</nav><main>"
            f"<h1>{esc(title)}</h1>{sub}{body}</main><script>{SCRIPT}</script></body></html>")


__all__ = ["data_uri", "esc", "figure", "markdown_to_table", "page", "png_bytes", "pre_json", "table"]
