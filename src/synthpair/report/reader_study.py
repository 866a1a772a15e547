"""A blinded reader study as one self-contained HTML page (``synthpair reader-study SYN --real DATA --out DIR``).

Expert reading is how the papers validate synthetic images (DiffusionDCI Table 4: five pathologists tell real
from synthetic and give a confidence; seed 002's blinded review; the survey's physician scores). The page shows
``n`` images — ``n - n // 2`` real ones drawn from DATA's training side of ``fold`` and ``n // 2`` synthetic ones
from SYN, drawn and shuffled with ``seed`` — numbered 1..n, nothing else about them: no file names, ids or
metadata; every image is decoded and re-encoded the same way (PNG, no metadata) and shown at the same size
(nearest-neighbour upscaling). With ``masks`` each image also appears with its mask's contours (class colours;
real masks for real images, the generated masks for synthetic pairs) and the reader scores the mask too.

For every image the reader answers real / synthetic, a confidence 1–5 and an image quality 1–5 (+ a mask quality
1–5). Answers stay in the browser (``localStorage``, keyed by the study id, so a reload keeps them) and leave it
only as the JSON file the "Download answers" button makes from a Blob URL; the page loads and sends nothing
(inline CSS/JS, base64 images, a Content-Security-Policy that blocks every fetch). ``window.readerStudy``
exposes ``collectAnswers()`` and ``exportAnswers()`` (which also returns the JSON and writes it into
``<pre id="answers-json">``) for scripted checks.

``DIR/key.json`` links each number to its truth, item id and source and never enters the page; a study id (sha256
of the key's content) is in both, so ``synthpair reader-study score`` (:mod:`synthpair.evaluation.reader_study`)
refuses answers of another study.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..data.dataset import PreparedDataset, read_png
from ..errors import fail
from ..evaluation.reader_study import ANSWERS_FORMAT, KEY_FILE, KEY_FORMAT, PAGE_FILE, answer_fields
from ..io import atomic_output_dir, write_json_atomic, write_text_atomic
from .html import data_uri, esc

CONTOUR_COLOURS = ((255, 214, 0), (0, 229, 255), (255, 64, 160), (120, 255, 80), (255, 140, 0), (170, 120, 255))
"""Contour colour of class 1, 2, … (repeating)."""


@dataclass(frozen=True)
class ReaderStudyConfig:
    """``n`` images (``n // 2`` synthetic, the rest real), drawn and shuffled with ``seed``; ``masks``: show mask
    contours and ask for a mask quality; ``fold``: real images from this fold's training side (None = the fold
    of SYN's manifest); ``display``: on-screen size of an image's longer side in CSS pixels."""

    n: int = 30
    seed: int = 0
    masks: bool = False
    fold: int | None = None
    display: int = 320

    def __post_init__(self) -> None:
        if self.n < 2:
            raise fail(f"--n {self.n}: a reader study needs at least 2 images (one real, one synthetic), e.g. --n 30")
        if not 64 <= self.display <= 2048:
            raise fail(f"display={self.display}: choose an on-screen size of 64..2048 pixels")


def _study_fold(syn_dir: Path, cfg: ReaderStudyConfig) -> int:
    if cfg.fold is not None:
        return cfg.fold
    from ..synthesis.manifest import read_manifest

    if not (syn_dir / "manifest.jsonl").is_file():
        raise fail(f"{syn_dir}: no manifest.jsonl to tell the generator's fold; pass --fold K (real images come from "
                   f"that fold's training side)")
    folds = {r.get("fold") for r in read_manifest(syn_dir)}
    if len(folds) != 1 or not isinstance(next(iter(folds)), int):
        raise fail(f"{syn_dir / 'manifest.jsonl'}: pairs of fold(s) {sorted(map(str, folds))}; pass --fold K (real "
                   f"images come from that fold's training side)")
    return int(next(iter(folds)))


def contour_overlay(image: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """uint8 image (H, W) or (H, W, 3) and labels (H, W) → RGB uint8 (H·f, W·f, 3): the image upscaled by
    ``factor`` (nearest) with the inner boundary of every class of the (equally upscaled) mask in its colour."""
    from skimage.segmentation import find_boundaries

    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    big = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1).copy()
    lab = np.repeat(np.repeat(np.asarray(mask), factor, axis=0), factor, axis=1)
    for k in sorted(int(v) for v in np.unique(lab) if v > 0):
        edge = find_boundaries(lab == k, mode="inner")
        big[edge] = CONTOUR_COLOURS[(k - 1) % len(CONTOUR_COLOURS)]
    return big


def _pick(pool: list[str], k: int, rng: np.random.Generator) -> list[str]:
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]


def build_reader_study(synthetic: Path | str, real: Path | str, out: Path | str,
                       cfg: ReaderStudyConfig = ReaderStudyConfig(), *, overwrite: bool = False) -> Path:
    """Write ``out/reader_study.html`` (the blinded page) and ``out/key.json`` (module docstring); returns ``out``.

    Refused with one line before anything is written: SYN and DATA of other channels or sizes (the size alone
    would give the answer away), ``masks`` with an image-only SYN, too few real or synthetic images for ``n``,
    an unknown fold.
    """
    syn_dir, real_dir = Path(synthetic), Path(real)
    ds = PreparedDataset.open(real_dir)
    syn = PreparedDataset.open(syn_dir, require_splits=False)
    if syn.channels != ds.channels or syn.size != ds.size:
        raise fail(f"{syn_dir}: {syn.channels}-channel {syn.size[0]}×{syn.size[1]} images but {real_dir} has "
                   f"{ds.channels}-channel {ds.size[0]}×{ds.size[1]}; compare images of one format (the format "
                   f"alone would unblind the readers)")
    fold = _study_fold(syn_dir, cfg)
    ds.split(fold)  # one-line error for an unknown fold
    if cfg.masks:
        real_pool, syn_pool = ds.split(fold)[0], syn.labelled_ids
        if not syn_pool:
            raise fail(f"{syn_dir}: no masks (an image-only generator made it); drop --masks or use a folder of "
                       f"image+mask pairs")
        if syn.num_classes > ds.num_classes:
            raise fail(f"{syn_dir}: {syn.num_classes} classes but {real_dir} has {ds.num_classes}; compare folders of "
                       f"one dataset")
    else:
        real_pool, syn_pool = ds.image_train_ids(fold), syn.ids
    n_syn = cfg.n // 2
    n_real = cfg.n - n_syn
    if len(real_pool) < n_real:
        raise fail(f"{real_dir}: fold {fold} has {len(real_pool)} training image(s){' with masks' if cfg.masks else ''}"
                   f" but --n {cfg.n} needs {n_real} real ones; lower --n")
    if len(syn_pool) < n_syn:
        raise fail(f"{syn_dir}: {len(syn_pool)} synthetic image(s){' with masks' if cfg.masks else ''} but --n "
                   f"{cfg.n} needs {n_syn}; lower --n or generate more pairs")
    rng = np.random.default_rng(cfg.seed)
    chosen = [("real", i) for i in _pick(real_pool, n_real, rng)] + [("synthetic", i) for i in _pick(syn_pool, n_syn,
                                                                                                     rng)]
    chosen = [chosen[j] for j in rng.permutation(len(chosen))]
    seeds = {}
    if (syn_dir / "manifest.jsonl").is_file():
        from ..synthesis.manifest import read_manifest

        seeds = {str(r["id"]): r.get("seed") for r in read_manifest(syn_dir)}
    items = []
    for number, (truth, item_id) in enumerate(chosen, start=1):
        rec = {"item": number, "truth": truth, "id": item_id}
        rec.update({"case": ds.case_of(item_id)} if truth == "real" else {"case": None, "seed": seeds.get(item_id)})
        items.append(rec)
    content = {"real": str(real_dir.resolve()), "synthetic": str(syn_dir.resolve()), "fold": fold, "seed": cfg.seed,
               "masks": cfg.masks, "items": items}
    study_id = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
    key = {"format": KEY_FORMAT, "version": 1, "study_id": study_id, "page": PAGE_FILE, "n": cfg.n,
           "n_real": n_real, "n_synthetic": n_syn, **content, "config": to_dict(cfg)}

    factor = max(1, cfg.display // max(ds.size))
    cards = []
    for rec in items:
        folder = real_dir if rec["truth"] == "real" else syn_dir
        img = read_png(folder / "images" / f"{rec['id']}.png")
        overlay = None
        if cfg.masks:
            overlay = contour_overlay(img, read_png(folder / "masks" / f"{rec['id']}.png"), factor)
        cards.append(_card(rec["item"], img, overlay, cfg))
    page = _page(study_id, cfg, cards, ds)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_text_atomic(tmp / PAGE_FILE, page)
        write_json_atomic(tmp / KEY_FILE, key)
    return Path(out)


def _likert(item: int, field: str, legend: str, low: str, high: str) -> str:
    radios = "".join(f'<label><input type="radio" name="{field}-{item}" value="{v}" data-item="{item}" '
                     f'data-field="{field}">{v}</label>' for v in range(1, 6))
    return (f'<fieldset class="q"><legend>{esc(legend)}</legend><span class="lo">{esc(low)}</span>{radios}'
            f'<span class="hi">{esc(high)}</span></fieldset>')


def _card(item: int, image: np.ndarray, overlay: np.ndarray | None, cfg: ReaderStudyConfig) -> str:
    h, w = image.shape[:2]
    scale = cfg.display / max(h, w)
    size = f'width="{round(w * scale)}" height="{round(h * scale)}"'
    figs = f'<img src="{data_uri(image)}" alt="image {item}" {size}>'
    if overlay is not None:
        figs += f'<img src="{data_uri(overlay)}" alt="image {item} with mask contours" {size}>'
    call = "".join(f'<label><input type="radio" name="call-{item}" value="{v}" data-item="{item}" data-field="call">'
                   f"{v.capitalize()}</label>" for v in ("real", "synthetic"))
    qs = (f'<fieldset class="q"><legend>Real or synthetic?</legend>{call}</fieldset>'
          + _likert(item, "confidence", "Confidence in that call", "guess", "certain")
          + _likert(item, "image_quality", "Image quality", "very poor", "very good"))
    if cfg.masks:
        qs += _likert(item, "mask_quality", "Mask quality (does the contour outline the structure?)", "very poor",
                      "very good")
    return (f'<section class="item" id="item-{item}" data-item="{item}" data-answered="false">'
            f'<h2>Image {item}</h2><div class="imgs">{figs}</div><div class="qs">{qs}</div></section>')


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{position:sticky;top:0;background:#1d2329;color:#eef1f5;padding:10px 24px;z-index:2;display:flex;gap:18px;
align-items:center;flex-wrap:wrap}header h1{font-size:1.15em;margin:0}header input{font-size:1em;padding:3px 6px}
button{font-size:1em;padding:5px 14px;cursor:pointer}#status{font-size:.9em;color:#ffd27a}
main{max-width:1180px;margin:0 auto;padding:12px 24px 60px}.intro{font-size:.95em;line-height:1.45}
.item{background:#fff;border:1px solid #d5dae0;border-radius:6px;margin:14px 0;padding:10px 16px;display:flex;
gap:18px;flex-wrap:wrap}.item[data-answered=true]{border-left:6px solid #3c9a5f}.item h2{width:100%;margin:0;
font-size:1.05em}.imgs img{image-rendering:pixelated;border:1px solid #c9ced6;margin-right:8px;background:#000}
.q{border:1px solid #e1e5ea;border-radius:4px;margin:0 0 8px;padding:4px 10px}.q legend{font-weight:600;font-size:.92em}
.q label{margin-right:12px;white-space:nowrap}.lo,.hi{font-size:.8em;color:#667;margin:0 8px}
pre#answers-json{display:none}
"""

JS = """
(function () {
  "use strict";
  var STUDY = JSON.parse(document.getElementById("study").textContent);
  var FIELDS = STUDY.fields, STORE = "synthpair-reader-study:" + STUDY.study_id;
  var state = {reader: "", answers: {}};
  try { var saved = JSON.parse(window.localStorage.getItem(STORE) || "null"); if (saved) state = saved; } catch (e) {}
  function save() { try { window.localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) {} }
  function missing() {
    var out = [];
    for (var i = 1; i <= STUDY.n; i++) {
      var a = state.answers[i] || {};
      var open = FIELDS.filter(function (f) { return a[f] === undefined || a[f] === null; });
      if (open.length) out.push({item: i, fields: open});
    }
    return out;
  }
  function refresh() {
    var open = missing(), openItems = {};
    open.forEach(function (m) { openItems[m.item] = true; });
    document.querySelectorAll("section.item").forEach(function (s) {
      s.setAttribute("data-answered", openItems[s.getAttribute("data-item")] ? "false" : "true");
    });
    document.getElementById("progress").textContent = (STUDY.n - open.length) + " / " + STUDY.n + " images answered";
    document.body.setAttribute("data-complete", open.length ? "false" : "true");
  }
  function setAnswer(item, field, value) {
    var a = state.answers[item] || (state.answers[item] = {});
    a[field] = field === "call" ? value : parseInt(value, 10);
    save(); refresh();
  }
  function restore() {
    document.getElementById("reader").value = state.reader || "";
    Object.keys(state.answers).forEach(function (item) {
      var a = state.answers[item];
      Object.keys(a).forEach(function (field) {
        var el = document.querySelector('input[data-item="' + item + '"][data-field="' + field + '"][value="' +
                                        a[field] + '"]');
        if (el) el.checked = true;
      });
    });
  }
  function collectAnswers() {
    var answers = [];
    for (var i = 1; i <= STUDY.n; i++) {
      var a = state.answers[i] || {}, rec = {item: i};
      FIELDS.forEach(function (f) { rec[f] = a[f] === undefined ? null : a[f]; });
      if (!STUDY.masks) rec.mask_quality = null;
      answers.push(rec);
    }
    return {format: STUDY.format, version: 1, study_id: STUDY.study_id, reader: (state.reader || "").trim(),
            saved_at: new Date().toISOString(), masks: STUDY.masks, complete: missing().length === 0,
            answers: answers};
  }
  function exportAnswers() {
    var status = document.getElementById("status");
    var obj = collectAnswers();
    if (!obj.reader) { status.textContent = "Enter your name first."; document.getElementById("reader").focus();
                       return null; }
    var text = JSON.stringify(obj, null, 2);
    document.getElementById("answers-json").textContent = text;
    var link = document.getElementById("download-link");
    if (link.href && link.href.indexOf("blob:") === 0) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    link.download = "answers_" + STUDY.study_id + "_" + obj.reader.replace(/[^A-Za-z0-9_-]+/g, "_") + ".json";
    link.click();
    var open = missing();
    status.textContent = open.length ? "Saved, but " + open.length + " image(s) still need answers (first: image " +
      open[0].item + "). Download again when done." : "Saved " + link.download + ". Send that file to the study lead.";
    return text;
  }
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.matches && t.matches("input[type=radio][data-field]")) setAnswer(t.getAttribute("data-item"),
                                                                           t.getAttribute("data-field"), t.value);
  });
  document.getElementById("reader").addEventListener("input", function (e) { state.reader = e.target.value; save(); });
  document.getElementById("download").addEventListener("click", function () { exportAnswers(); });
  window.readerStudy = {collectAnswers: collectAnswers, exportAnswers: exportAnswers, missing: missing};
  restore(); refresh();
})();
"""


def _page(study_id: str, cfg: ReaderStudyConfig, cards: list[str], ds: PreparedDataset) -> str:
    study = {"study_id": study_id, "n": cfg.n, "masks": cfg.masks, "format": ANSWERS_FORMAT,
             "fields": list(answer_fields(cfg.masks))}
    mask_note = (" Each image is shown twice: as it is, and with the outline of its segmentation mask (one colour "
                 "per class); score how well that outline follows the structure." if cfg.masks else "")
    intro = (f"<p class=\"intro\">{cfg.n} {esc(ds.modality)} images follow, some real and some made by a generative "
             f"model, in random order. For each image say whether you think it is real or synthetic, how confident "
             f"you are (1 = a guess, 5 = certain) and rate its image quality (1 = very poor, 5 = very good).{mask_note}"
             f" Your answers are kept in this browser as you go (reloading the page keeps them); when you are done, "
             f"enter your name and press <b>Download answers</b>, then send the downloaded file to the study lead. "
             f"Nothing is sent anywhere by this page.</p>")
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "base-uri 'none'; form-action 'none'")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Reader study {study_id}</title><style>{CSS}</style></head>\n"
            f'<body data-study-id="{study_id}" data-complete="false">'
            f'<header><h1>Reader study {study_id}</h1><label>Your name <input id="reader" type="text" '
            f'autocomplete="name"></label><span id="progress"></span><button id="download" type="button">Download '
            f'answers</button><a id="download-link" hidden></a><span id="status" role="status"></span></header>'
            f"<main>{intro}\n" + "\n".join(cards) + "\n</main>"
            f'<pre id="answers-json"></pre>'
            f'<script type="application/json" id="study">{json.dumps(study)}</script>'
            f"<script>{JS}</script>\n</body></html>\n")


__all__ = ["ReaderStudyConfig", "build_reader_study", "contour_overlay"]
