"""The survey's other tasks as pipelines, each beside a non-diffusion baseline (issue 14; survey sec. 3.2-3.5,
Tables 10-13): anomaly detection (:mod:`.anomaly`, AnoDDPM), denoising (:mod:`.denoise`), diffusion as the
segmenter (:mod:`.segdiff`, MedSegDiff-style ensembles), modality conversion (:mod:`.translate`) and classifier
guidance (:mod:`.guidance`, GDDPM). Each is a library function ``run_<task>(DATA, OUT, config)`` behind a
``synthpair <task>`` command; shared pieces are in :mod:`.common`.

Modules are imported on use (``from synthpair.evaluation.tasks.anomaly import run_anomaly``), so importing the
package stays cheap.
"""
