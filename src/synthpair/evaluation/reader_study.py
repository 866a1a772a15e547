"""Scoring a blinded reader study (``synthpair reader-study score DIR ANSWERS.json ...``).

The study folder DIR (built by :func:`synthpair.report.reader_study.build_reader_study`) holds the page the readers
open and ``key.json``, which links each numbered image to its truth and never enters the page::

    {"format": "synthpair-reader-key", "version": 1, "study_id", "masks", "n", "n_real", "n_synthetic", "seed",
     "fold", "real", "synthetic", "page",
     "items": [{"item": 1, "truth": "real" | "synthetic", "id", "case", "seed"}, ...]}

Each reader downloads one answers file from the page::

    {"format": "synthpair-reader-answers", "version": 1, "study_id", "reader", "saved_at", "masks", "complete",
     "answers": [{"item": 1, "call": "real" | "synthetic", "confidence": 1..5, "image_quality": 1..5,
                  "mask_quality": 1..5 | null}, ...]}

Scores, per reader, averaged over readers (the "avg" row of DiffusionDCI Table 4) and pooled over all answers:
accuracy of the real/synthetic call, sensitivity (synthetic images called synthetic = Table 4's "Synthetic"
classification accuracy) and specificity (real images called real = its "Real" column), the mean confidence, a
two-sided binomial test of the reader's accuracy against chance (0.5; per reader only), and for the 1-5 image
(and mask) quality scores the mean ± sd on real and on synthetic images with a two-sided Mann–Whitney U test
(scipy; U of the real scores against the synthetic ones). Pooled tests treat every answer as independent,
although readers score the same images: read them as descriptive. Inter-reader agreement (two or more readers):
Fleiss' kappa on each rating (the call; quality scores as nominal categories), Cohen's kappa for exactly two
readers, and the mean pairwise agreement (:mod:`synthpair.metrics.agreement`).

Refused with one line naming the file: a folder without key.json, an answers file of another study (study id),
the same reader twice (names compared without case and surrounding blanks) or the same file twice, an unanswered
or unknown image, a value outside its range.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import fail
from ..io import read_json, write_json_atomic, write_text_atomic
from ..metrics.agreement import cohen_kappa, fleiss_kappa, percent_agreement, rating_counts
from ..metrics.statistics import mean_sd

KEY_FORMAT = "synthpair-reader-key"
ANSWERS_FORMAT = "synthpair-reader-answers"
SCORES_FORMAT = "synthpair-reader-scores"
KEY_FILE = "key.json"
PAGE_FILE = "reader_study.html"
TRUTHS = ("real", "synthetic")
SCORE_FIELDS = ("confidence", "image_quality", "mask_quality")
"""Fields scored 1..5 (Likert); ``mask_quality`` only in a study that shows masks."""


def answer_fields(masks: bool) -> tuple[str, ...]:
    """The fields a reader answers for every image."""
    return ("call", "confidence", "image_quality") + (("mask_quality",) if masks else ())


def read_key(study_dir: Path | str) -> dict[str, Any]:
    """``DIR/key.json`` checked (format, items numbered 1..n, truths real/synthetic, both present)."""
    study_dir = Path(study_dir)
    path = study_dir / KEY_FILE
    if not path.is_file():
        raise fail(f"{study_dir}: not a reader-study folder (no {KEY_FILE}); build one with 'synthpair reader-study "
                   f"SYN --real DATA --out DIR'")
    key = read_json(path, KEY_FILE)
    items = key.get("items") if isinstance(key, dict) else None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or not isinstance(items, list) or not items:
        raise fail(f"{path}: not a synthpair reader-study key; rebuild the study with 'synthpair reader-study'")
    if [it.get("item") for it in items] != list(range(1, len(items) + 1)) or \
            any(it.get("truth") not in TRUTHS for it in items) or {it["truth"] for it in items} != set(TRUTHS):
        raise fail(f"{path}: items must be numbered 1..n with truths real and synthetic (both present); rebuild the "
                   f"study with 'synthpair reader-study'")
    return key


def _reader_name(name: Any) -> str:
    return " ".join(str(name or "").split())


def read_answers(path: Path | str, key: dict[str, Any]) -> dict[str, Any]:
    """One answers file checked against ``key`` → ``{"reader", "file", "answers": {item: {field: value}}}``."""
    path = Path(path)
    obj = read_json(path, "answers file")
    hint = "download it with the study page's 'Download answers' button"
    if not isinstance(obj, dict) or obj.get("format") != ANSWERS_FORMAT or not isinstance(obj.get("answers"), list):
        raise fail(f"{path}: not a synthpair reader-study answers file; {hint}")
    if obj.get("study_id") != key["study_id"]:
        raise fail(f"{path}: answers for study {obj.get('study_id')!r} but the key is study {key['study_id']!r}; "
                   f"score it with the folder of its own study")
    reader = _reader_name(obj.get("reader"))
    if not reader:
        raise fail(f"{path}: no reader name; enter the name in the page and download the answers again")
    masks = bool(key.get("masks"))
    fields = answer_fields(masks)
    n = len(key["items"])
    answers: dict[int, dict[str, Any]] = {}
    missing: list[str] = []
    for a in obj["answers"]:
        item = a.get("item") if isinstance(a, dict) else None
        if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item <= n:
            raise fail(f"{path}: answer for unknown image {item!r} (the study has images 1..{n}); {hint}")
        if item in answers:
            raise fail(f"{path}: image {item} is answered twice; {hint}")
        rec = {}
        for field in fields:
            v = a.get(field)
            if v is None:
                missing.append(f"image {item}: {field}")
                continue
            ok = v in TRUTHS if field == "call" else (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5)
            if not ok:
                want = "real or synthetic" if field == "call" else "an integer 1..5"
                raise fail(f"{path}: image {item} {field} is {v!r}, expected {want}; {hint}")
            rec[field] = v
        if not masks and a.get("mask_quality") is not None:
            raise fail(f"{path}: image {item} has a mask_quality but this study shows no masks; {hint}")
        answers[item] = rec
    missing = [f"image {i}: all" for i in range(1, n + 1) if i not in answers] + missing
    if missing:
        raise fail(f"{path}: reader {reader!r} left {len(missing)} answer(s) open (e.g. {missing[0]}); finish them in "
                   f"the page (the browser keeps the answers) and download again")
    return {"reader": reader, "file": str(path), "answers": answers}


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def call_scores(truth: Sequence[str], call: Sequence[str], confidence: Sequence[int], *, test: bool = True
                ) -> dict[str, Any]:
    """Real/synthetic calls against the truth: accuracy, sensitivity / specificity of "synthetic" calls, mean
    confidence and (``test``) a two-sided binomial test of accuracy against 0.5."""
    from scipy.stats import binomtest

    t = np.asarray(truth)
    c = np.asarray(call)
    syn, real = t == "synthetic", t == "real"
    tp, tn = int(np.sum(syn & (c == "synthetic"))), int(np.sum(real & (c == "real")))
    correct = tp + tn
    out = {"n": int(t.size), "n_real": int(real.sum()), "n_synthetic": int(syn.sum()), "correct": correct,
           "accuracy": correct / t.size, "sensitivity": tp / int(syn.sum()), "specificity": tn / int(real.sum()),
           "called_synthetic": int(np.sum(c == "synthetic")), "confidence": mean_sd(confidence)["mean"],
           "p_vs_chance": float(binomtest(correct, int(t.size), 0.5).pvalue) if test else None}
    return out


def quality_scores(truth: Sequence[str], scores: Sequence[int]) -> dict[str, Any]:
    """1..5 scores on real vs synthetic images: mean ± sd of each and a two-sided Mann–Whitney U test (U of the
    real scores; scipy's default: exact without ties, else normal approximation with continuity correction)."""
    from scipy.stats import mannwhitneyu

    t = np.asarray(truth)
    s = np.asarray(scores, dtype=np.float64)
    real, syn = s[t == "real"], s[t == "synthetic"]
    res = mannwhitneyu(real, syn, alternative="two-sided")
    return {"real": mean_sd(real), "synthetic": mean_sd(syn), "U": float(res.statistic),
            "p": _nan_to_none(float(res.pvalue))}


def _scores_of(truth: list[str], rows: list[dict[str, Any]], masks: bool, *, test: bool) -> dict[str, Any]:
    out = call_scores(truth, [r["call"] for r in rows], [r["confidence"] for r in rows], test=test)
    out["image_quality"] = quality_scores(truth, [r["image_quality"] for r in rows])
    out["mask_quality"] = quality_scores(truth, [r["mask_quality"] for r in rows]) if masks else None
    return out


def _agreement(readers: list[dict[str, Any]], items: list[int], masks: bool) -> dict[str, Any] | None:
    if len(readers) < 2:
        return None
    out = {}
    for field in ("call", "image_quality") + (("mask_quality",) if masks else ()):
        ratings = [[r["answers"][i][field] for i in items] for r in readers]
        counts, _ = rating_counts(ratings)
        out[field] = {"fleiss_kappa": _nan_to_none(fleiss_kappa(counts)),
                      "cohen_kappa": _nan_to_none(cohen_kappa(*ratings)) if len(readers) == 2 else None,
                      "percent_agreement": percent_agreement(ratings)}
    return out


def score_answers(key: dict[str, Any], readers: list[dict[str, Any]]) -> dict[str, Any]:
    """Checked answers (:func:`read_answers`) → the scores dict written to ``scores.json``."""
    masks = bool(key.get("masks"))
    items = [it["item"] for it in key["items"]]
    truth = [it["truth"] for it in key["items"]]
    per_reader = []
    for r in readers:
        rows = [r["answers"][i] for i in items]
        per_reader.append({"reader": r["reader"], "file": r["file"], **_scores_of(truth, rows, masks, test=True)})
    pooled = _scores_of(truth * len(readers), [r["answers"][i] for r in readers for i in items], masks, test=False)

    def avg(get) -> float | None:
        vals = [get(r) for r in per_reader]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    mean_over = {"n_readers": len(readers)}
    for m in ("accuracy", "sensitivity", "specificity", "confidence"):
        mean_over[m] = avg(lambda r, m=m: r[m])
    mean_over["accuracy_sd"] = float(np.std([r["accuracy"] for r in per_reader], ddof=1)) if len(readers) > 1 else 0.0
    for field in ("image_quality",) + (("mask_quality",) if masks else ()):
        mean_over[field] = {side: avg(lambda r, f=field, s=side: r[f][s]["mean"]) for side in TRUTHS}
    return {"format": SCORES_FORMAT, "version": 1, "study_id": key["study_id"], "masks": masks, "n_items": len(items),
            "n_real": truth.count("real"), "n_synthetic": truth.count("synthetic"), "readers": per_reader,
            "mean_over_readers": mean_over, "pooled": pooled, "agreement": _agreement(readers, items, masks)}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3g}" if x >= 0.001 else "<0.001")


def _ms(d: dict[str, Any]) -> str:
    return "–" if d["mean"] is None else f"{d['mean']:.2f} ± {d['sd']:.2f}"


def scores_markdown(scores: dict[str, Any]) -> str:
    """The scores as markdown tables (the first in the layout of DiffusionDCI Table 4)."""
    masks = scores["masks"]
    lines = [f"# Reader study {scores['study_id']}",
             "",
             f"{scores['n_items']} images ({scores['n_real']} real, {scores['n_synthetic']} synthetic), "
             f"{len(scores['readers'])} reader(s).",
             "",
             "## Real or synthetic (layout of DiffusionDCI Table 4)",
             "",
             "| Reader | Real correct % (specificity) | Synthetic correct % (sensitivity) | Accuracy % | "
             "p vs chance | Confidence (1–5) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in scores["readers"]:
        lines.append(f"| {r['reader']} | {_pct(r['specificity'])} | {_pct(r['sensitivity'])} | {_pct(r['accuracy'])} "
                     f"| {_p(r['p_vs_chance'])} | {_num(r['confidence'])} |")
    m, pooled = scores["mean_over_readers"], scores["pooled"]
    lines.append(f"| avg (mean of readers) | {_pct(m['specificity'])} | {_pct(m['sensitivity'])} | "
                 f"{_pct(m['accuracy'])} | – | {_num(m['confidence'])} |")
    lines.append(f"| pooled ({pooled['n']} answers) | {_pct(pooled['specificity'])} | {_pct(pooled['sensitivity'])} "
                 f"| {_pct(pooled['accuracy'])} | – | {_num(pooled['confidence'])} |")
    lines += ["", "p vs chance: two-sided binomial test of the reader's accuracy against 0.5.", "",
              "## Quality scores (1–5), real vs synthetic images",
              "",
              "Mean ± sd; U and p of a two-sided Mann–Whitney U test (U of the real scores). Pooled answers repeat "
              "the same images across readers, so the pooled test is descriptive.",
              ""]
    head = "| Reader | Image quality real | synthetic | U | p |"
    sep = "|---|---:|---:|---:|---:|"
    if masks:
        head += " Mask quality real | synthetic | U | p |"
        sep += "---:|---:|---:|---:|"
    lines += [head, sep]
    for name, r in [(r["reader"], r) for r in scores["readers"]] + [(f"pooled ({pooled['n']} answers)", pooled)]:
        row = f"| {name} |"
        for field in ("image_quality",) + (("mask_quality",) if masks else ()):
            q = r[field]
            row += f" {_ms(q['real'])} | {_ms(q['synthetic'])} | {_num(q['U'], 1)} | {_p(q['p'])} |"
        lines.append(row)
    agr = scores["agreement"]
    lines += ["", "## Inter-reader agreement", ""]
    if agr is None:
        lines.append("One reader: no agreement to measure.")
    else:
        lines += ["| Rating | Fleiss' κ | Cohen's κ | Agreement % |", "|---|---:|---:|---:|"]
        names = {"call": "real / synthetic call", "image_quality": "image quality (nominal 1–5)",
                 "mask_quality": "mask quality (nominal 1–5)"}
        for field, a in agr.items():
            lines.append(f"| {names[field]} | {_num(a['fleiss_kappa'], 3)} | "
                         f"{'–' if a['cohen_kappa'] is None else _num(a['cohen_kappa'], 3)} | "
                         f"{_pct(a['percent_agreement'])} |")
        lines += ["", "Cohen's κ for exactly two readers; agreement % = mean over images of the agreeing reader "
                      "pairs; κ is undefined (–) when every rating falls in one category."]
    return "\n".join(lines) + "\n"


def score_reader_study(study_dir: Path | str, answers: Sequence[Path | str]) -> dict[str, Any]:
    """Check the answers files against ``DIR/key.json``, score them and write ``DIR/scores.json`` and
    ``DIR/scores.md`` (replacing earlier scores). Nothing is written when a file is refused."""
    study_dir = Path(study_dir)
    key = read_key(study_dir)
    if not answers:
        raise fail(f"{study_dir}: no answers files given; pass the readers' downloaded JSON files")
    seen_files: dict[Path, str] = {}
    readers: list[dict[str, Any]] = []
    by_name: dict[str, str] = {}
    for p in answers:
        rp = Path(p).resolve()
        if rp in seen_files:
            raise fail(f"{p}: given twice; pass each reader's answers file once")
        seen_files[rp] = str(p)
        r = read_answers(p, key)
        norm = r["reader"].casefold()
        if norm in by_name:
            raise fail(f"{p}: reader {r['reader']!r} also answered in {by_name[norm]}; pass each reader once (or give "
                       f"two people who share a name distinct names in the page)")
        by_name[norm] = str(p)
        readers.append(r)
    scores = score_answers(key, readers)
    write_json_atomic(study_dir / "scores.json", scores)
    write_text_atomic(study_dir / "scores.md", scores_markdown(scores))
    return scores


__all__ = ["read_key", "read_answers", "call_scores", "quality_scores", "score_answers", "scores_markdown",
           "score_reader_study", "answer_fields", "KEY_FORMAT", "ANSWERS_FORMAT", "KEY_FILE", "PAGE_FILE"]
