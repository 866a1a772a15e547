"""Anomaly detection by partial diffusion and reconstruction (AnoDDPM, Wyatt et al. 2022; survey sec. 3.5 and
Table 13), beside a convolutional autoencoder with the same scoring and a supervised classifier.

``synthpair anomaly DATA --out OUT`` (:func:`run_anomaly`), fold ``cfg.fold`` of a prepared folder:

* **Normal** = a labelled item whose mask is empty; abnormal = a non-empty mask (BUSI's "normal" images, LGG
  slices without tumour). Unlabelled items are neither and never used.
* **Splits.** The fold's TEST items are the held-out evaluation set. From the fold's training side a
  validation set is carved by case (``val_fraction`` of the cases with an abnormal item and of the others,
  shuffled with ``seed``): it chooses t*, the noise type and the thresholds. The generative models train on the
  NORMAL items of the remaining training cases (or on ``train_items``, which must all be normal: a training set
  with an abnormal item is refused); the supervised classifier on every remaining training item with its label.
* **Diffusion.** An image-only DDPM trained by the project trainer (method ``image``, ``TrainConfig.items`` =
  the normal training items) — Gaussian noise — and, for the ``simplex`` arm, AnoDDPM's model trained and
  reconstructed with multi-scale simplex noise (:mod:`synthpair.diffusion.simplex`, trained by
  :func:`~.common.fit_diffusion` with the same settings). A test image x0 is noised to ``x_{t*} = sqrt(abar)
  x0 + sqrt(1 - abar) n`` and reconstructed by the one sampling loop from t* (DDIM, eta 0, ``recon_steps``;
  :func:`synthpair.diffusion.partial.reconstruct`), n drawn per image from its own seed. Arms: ``gaussian``
  (Gaussian model, Gaussian n), ``simplex`` (simplex model, simplex n), ``simplex-on-gaussian`` (Gaussian
  model, simplex n: the noise without the training).
* **Scores.** Anomaly map = squared reconstruction error averaged over channels (AnoDDPM); image score from the
  map (:func:`synthpair.metrics.anomaly.image_score`: ``top`` = mean of the highest ``top_fraction`` pixels
  after a ``smooth_sigma`` Gaussian blur, or ``mean``/``max``).
* **Selection.** Every (arm, t*) is scored on validation; per arm the t* with the best validation AUC is
  reported, and the best arm overall. The image threshold is Youden's J on validation, the pixel threshold the
  best mean validation Dice on abnormal validation images (:mod:`synthpair.metrics.anomaly`).
* **Baselines.** A convolutional autoencoder (:class:`~.common.ConvAutoencoder`, trained with L2 on the same
  normal images, same map and scoring, thresholds on validation) and a supervised classifier
  (:class:`~.common.Classifier`, class-weighted cross-entropy on the labelled training items; the survey's
  upper reference: it sees abnormal examples).
* **Metrics on the test items**: image AUC, top-1 and balanced error at the validation threshold, pixel AUPRC
  (all test pixels) and Dice of the thresholded map (abnormal test images), mean ± sd.

OUT: ``config.json``, ``results.{json,md}``, ``figures/`` (examples: input with the lesion contour,
reconstruction, map, thresholded map, autoencoder reconstruction and map; validation AUC vs t* per arm),
``generator/`` (the image-only RUN folder), ``models/{simplex_ddpm,autoencoder,classifier}/``.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...config import from_dict, to_dict
from ...data.dataset import PreparedDataset
from ...diffusion.partial import reconstruct
from ...diffusion.schedule import DiffusionConfig, NoiseSchedule
from ...diffusion.simplex import SimplexConfig, draw_noise
from ...errors import fail
from ...io import atomic_output_dir, read_json, write_json_atomic
from ...metrics import anomaly as am
from ...networks.unet import DiffusionUNet
from .common import (Classifier, ConvAutoencoder, DiffusionFit, NetFit, fit_diffusion, fit_network, heat, line_plot,
                     load_generator, log, mean_sd, outline, panel_grid, resolve, save_figure, save_model,
                     seed_generators, table, to_u8, write_outputs)

ARMS = ("gaussian", "simplex", "simplex-on-gaussian")
TASK = "anomaly"


@dataclass(frozen=True)
class AnomalyConfig:
    """Settings of ``synthpair anomaly`` (saved as OUT/config.json); see the module docstring."""

    fold: int = 0
    seed: int = 0
    val_fraction: float = 0.25
    train_items: str = ""                 # JSON list of training items (all normal); "" = every normal one
    generator: DiffusionFit = field(default_factory=DiffusionFit)
    noise_types: tuple[str, ...] = ARMS
    simplex: SimplexConfig = field(default_factory=SimplexConfig)
    t_star: tuple[int, ...] = (100, 200, 300, 500)
    recon_steps: int = 10
    score: Literal["mean", "max", "top"] = "top"
    top_fraction: float = 0.05
    smooth_sigma: float = 1.0
    autoencoder: NetFit = field(default_factory=NetFit)
    classifier: NetFit = field(default_factory=NetFit)
    eval_batch: int = 32
    n_examples: int = 6
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = [n for n in self.noise_types if n not in ARMS]
        if bad or not self.noise_types or len(set(self.noise_types)) != len(self.noise_types):
            raise fail(f"noise_types={list(self.noise_types)}: choose one or more of {', '.join(ARMS)}, each once")
        T = self.generator.diffusion.num_timesteps
        if not self.t_star or any(not 1 <= t < T for t in self.t_star):
            raise fail(f"t_star={list(self.t_star)}: each must be between 1 and {T - 1} (the schedule's timesteps)")
        if not 0.0 < self.val_fraction < 1.0:
            raise fail(f"val_fraction={self.val_fraction}: must be in (0, 1)")
        if self.recon_steps < 1 or self.eval_batch < 1 or self.n_examples < 0:
            raise fail("recon_steps and eval_batch must be >= 1, n_examples >= 0")
        if not 0.0 < self.top_fraction <= 1.0 or self.smooth_sigma < 0:
            raise fail(f"top_fraction={self.top_fraction} must be in (0, 1], smooth_sigma={self.smooth_sigma} >= 0")


@dataclass
class _Split:
    train_normal: list[str]     # generative models
    classifier: list[str]       # supervised classifier (labelled, both classes)
    val: list[str]
    test: list[str]
    abnormal: dict[str, bool]


def _is_abnormal(ds: PreparedDataset, ids: list[str]) -> dict[str, bool]:
    _, masks = ds.load(ids)
    return {i: bool(m.any()) for i, m in zip(ids, masks)}


def plan_split(ds: PreparedDataset, cfg: AnomalyConfig, data: Path) -> _Split:
    """Normal training items, classifier items, validation and test items of the fold (module docstring);
    one-line errors for an abnormal item in ``train_items`` and for splits without both classes."""
    train_ids, test_ids = ds.split(cfg.fold)
    abn = _is_abnormal(ds, train_ids + test_ids)
    cases: dict[str, list[str]] = {}
    for i in train_ids:
        cases.setdefault(ds.case_of(i), []).append(i)
    fixed: list[str] = []
    if cfg.train_items:
        listed = read_json(cfg.train_items, "train_items file")
        listed = listed.get("items") if isinstance(listed, dict) else listed
        if not isinstance(listed, list) or not listed or not all(isinstance(i, str) for i in listed):
            raise fail(f"{cfg.train_items}: train_items must be a non-empty JSON list of item ids (or {{\"items\": "
                       f"[...]}})")
        known = set(train_ids)
        outside = [i for i in listed if i not in known]
        if outside:
            raise fail(f"{cfg.train_items}: item {outside[0]!r} is not a labelled training item of fold {cfg.fold} "
                       f"of {data} ({len(outside)} such); list training items with empty masks only")
        ab = [i for i in listed if abn[i]]
        if ab:
            raise fail(f"{cfg.train_items}: item {ab[0]!r} has a non-empty mask (abnormal; {len(ab)} such item(s)); "
                       f"an anomaly model trains on normal images only — list items with empty masks")
        fixed = sorted(set(listed), key=train_ids.index)
    fixed_cases = {ds.case_of(i) for i in fixed}
    free = sorted(c for c in cases if c not in fixed_cases)
    rng = np.random.default_rng(int(cfg.seed))
    val_cases: set[str] = set()
    for group in ([c for c in free if any(abn[i] for i in cases[c])],
                  [c for c in free if not any(abn[i] for i in cases[c])]):
        if group:
            k = int(round(cfg.val_fraction * len(group)))
            k = min(max(k, 1), len(group) - 1) if len(group) > 1 else 1
            val_cases |= {group[j] for j in rng.permutation(len(group))[:k]}
    val = [i for i in train_ids if ds.case_of(i) in val_cases]
    rest = [i for i in train_ids if ds.case_of(i) not in val_cases]
    normal = fixed or [i for i in rest if not abn[i]]
    split = _Split(normal, rest, val, list(test_ids), abn)
    for name, ids, need in (("the normal training items", split.train_normal, (1, 0)),
                            ("the validation items (carved from the training side)", split.val, (1, 1)),
                            ("the test items", split.test, (1, 1))):
        n_ab = sum(abn[i] for i in ids)
        n_no = len(ids) - n_ab
        if n_no < need[0] or n_ab < need[1]:
            raise fail(f"{data}: fold {cfg.fold}: {name} hold {n_no} normal (empty-mask) and {n_ab} abnormal items; "
                       f"anomaly detection needs normal training images and both classes in validation and test — "
                       f"use a dataset with normal images (e.g. BUSI's normal class) or another fold/val_fraction")
    return split


def _item_seeds(ids: list[str], seed: int) -> list[int]:
    return [zlib.crc32(f"{seed}:{i}".encode()) for i in ids]


def _recon(model: Any, sched: NoiseSchedule, x: torch.Tensor, ids: list[str], t_star: int, kind: str,
           cfg: AnomalyConfig, device: torch.device, autocast: Any) -> torch.Tensor:
    """Reconstructions float32 (N, C, H, W) of ``x`` from t* with per-item noise of ``kind``."""
    out = []
    seeds = _item_seeds(ids, cfg.seed)
    for i in range(0, len(x), cfg.eval_batch):
        xb = x[i:i + cfg.eval_batch].to(device)
        n = draw_noise(kind, xb.shape, seed_generators(seeds[i:i + cfg.eval_batch]), cfg.simplex, device)
        out.append(reconstruct(model, sched, xb, t_star, n, steps=cfg.recon_steps, autocast_dtype=autocast).cpu())
    return torch.cat(out)


def _err_map(x: torch.Tensor, rec: torch.Tensor) -> np.ndarray:
    """Squared reconstruction error averaged over channels → float32 (N, H, W)."""
    return ((x - rec) ** 2).mean(dim=1).numpy()


def _evaluate(scores_val: np.ndarray, scores_test: np.ndarray, y_val: np.ndarray, y_test: np.ndarray,
              maps_val: np.ndarray | None, maps_test: np.ndarray | None, m_val: np.ndarray, m_test: np.ndarray
              ) -> dict[str, Any]:
    """Test metrics with thresholds chosen on validation (image: Youden; pixel: best validation Dice)."""
    th = am.choose_threshold(y_val, scores_val)
    row: dict[str, Any] = {"val_auc": am.auc(y_val, scores_val), "auc": am.auc(y_test, scores_test),
                           "threshold": th, **am.classification_errors(y_test, scores_test, th)}
    if maps_val is not None and maps_test is not None:
        pv = am.choose_pixel_threshold(m_val[y_val == 1], maps_val[y_val == 1])
        dice = am.dice_at(m_test[y_test == 1], maps_test[y_test == 1], pv)
        row.update({"pixel_auprc": am.pixel_auprc(m_test, maps_test), "pixel_threshold": pv,
                    "dice": mean_sd(dice.tolist())})
    return row


def run_anomaly(data: Path | str, out: Path | str, cfg: AnomalyConfig = AnomalyConfig(), *, overwrite: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Run the anomaly-detection comparison (module docstring) and write OUT; returns the results dict.
    Every input check runs before OUT is created (a refused input leaves nothing behind)."""
    from ...env import resolve_autocast
    from ...training.trainer import train_generator

    data, out = Path(data), Path(out)
    ds = PreparedDataset.open(data)
    device = resolve(cfg.device)
    split = plan_split(ds, cfg, data)
    autocast = resolve_autocast(cfg.generator.amp, device)
    y = split.abnormal
    log(progress, f"anomaly: {len(split.train_normal)} normal training items, validation {len(split.val)} "
                  f"({sum(y[i] for i in split.val)} abnormal), test {len(split.test)} "
                  f"({sum(y[i] for i in split.test)} abnormal)")
    cost: dict[str, Any] = {}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "split.json", {"fold": cfg.fold, "train_normal": split.train_normal,
                                               "classifier": split.classifier, "val": split.val, "test": split.test})
        items_file = tmp / "generator_items.json"
        write_json_atomic(items_file, {"items": split.train_normal})
        # --- the Gaussian image-only DDPM through the project trainer
        tcfg = cfg.generator.train_config(method="image", fold=cfg.fold, seed=cfg.seed, device=cfg.device,
                                          items=str(items_file), unlabelled=False)
        t0 = time.process_time()
        run = train_generator(data, tmp / "generator", tcfg, progress=progress)
        cost["generator_train_cpu_s"] = round(time.process_time() - t0, 1)
        gauss, ecfg = load_generator(Path(run) / "export", device=device)
        sched = NoiseSchedule(from_dict(DiffusionConfig, ecfg["diffusion"], where="generator export"), device=device)
        x_norm = torch.from_numpy(ds.load_images(split.train_normal))
        models: dict[str, Any] = {"gaussian": gauss, "simplex-on-gaussian": gauss}
        # --- AnoDDPM's simplex-noise DDPM (same settings, trained with simplex noise)
        if "simplex" in cfg.noise_types:
            net = DiffusionUNet(cfg.generator.net, ds.channels, ds.channels)
            torch.manual_seed(cfg.seed)
            simplex_model, rec = fit_diffusion(net, x_norm, cfg.generator, seed=cfg.seed, device=device,
                                               noise="simplex", simplex=cfg.simplex, progress=progress,
                                               desc="simplex DDPM")
            save_model(tmp / "models" / "simplex_ddpm", simplex_model, {
                "network": "DiffusionUNet", "net": to_dict(cfg.generator.net), "channels": ds.channels,
                "noise": "simplex", "simplex": to_dict(cfg.simplex), "record": rec})
            cost["simplex_ddpm_train_cpu_s"] = rec["cpu_seconds"]
            models["simplex"] = simplex_model
        # --- baselines: autoencoder (same images, L2) and supervised classifier (labels)
        ae, ae_rec = _train_autoencoder(x_norm, ds.channels, cfg, device, progress)
        save_model(tmp / "models" / "autoencoder", ae, {"network": "ConvAutoencoder", "channels": ds.channels,
                                                        "features": cfg.autoencoder.features, "record": ae_rec})
        cost["autoencoder_train_cpu_s"] = ae_rec["cpu_seconds"]
        clf, clf_rec = _train_classifier(ds, split, cfg, device, progress)
        save_model(tmp / "models" / "classifier", clf, {"network": "Classifier", "channels": ds.channels,
                                                        "num_classes": 2, "features": cfg.classifier.features,
                                                        "record": clf_rec})
        cost["classifier_train_cpu_s"] = clf_rec["cpu_seconds"]

        # --- score validation and test images
        x_val, m_val = (torch.from_numpy(a) for a in ds.load(split.val))
        x_test, m_test = (torch.from_numpy(a) for a in ds.load(split.test))
        y_val = np.array([y[i] for i in split.val], dtype=int)
        y_test = np.array([y[i] for i in split.test], dtype=int)
        m_val_b, m_test_b = (m_val.numpy() > 0), (m_test.numpy() > 0)

        def score(maps: np.ndarray) -> np.ndarray:
            return am.image_score(maps, cfg.score, cfg.top_fraction, cfg.smooth_sigma)

        sweep: list[dict[str, Any]] = []
        maps: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for arm in cfg.noise_types:
            kind = "gaussian" if arm == "gaussian" else "simplex"
            t0 = time.process_time()
            for ts in cfg.t_star:
                mv = _err_map(x_val, _recon(models[arm], sched, x_val, split.val, ts, kind, cfg, device, autocast))
                mt = _err_map(x_test, _recon(models[arm], sched, x_test, split.test, ts, kind, cfg, device, autocast))
                maps[(arm, ts)] = (mv, mt)
                sweep.append({"arm": arm, "t_star": ts, "val_auc": am.auc(y_val, score(mv)),
                              "test_auc": am.auc(y_test, score(mt))})
                log(progress, f"anomaly: {arm} t*={ts}: validation AUC {sweep[-1]['val_auc']:.3f}")
            n_img = (len(split.val) + len(split.test)) * len(cfg.t_star)
            cost[f"score_{arm}_cpu_s_per_image"] = round((time.process_time() - t0) / max(n_img, 1), 3)

        rows: list[dict[str, Any]] = []
        best_by_arm: dict[str, int] = {}
        for arm in cfg.noise_types:
            cand = [r for r in sweep if r["arm"] == arm]
            best = max(cand, key=lambda r: (np.nan_to_num(r["val_auc"], nan=-1.0), -r["t_star"]))
            best_by_arm[arm] = best["t_star"]
            mv, mt = maps[(arm, best["t_star"])]
            ev = _evaluate(score(mv), score(mt), y_val, y_test, mv, mt, m_val_b, m_test_b)
            rows.append({"method": f"AnoDDPM {arm}", "t_star": best["t_star"], **ev})
        best_row = max(rows, key=lambda r: np.nan_to_num(r["val_auc"], nan=-1.0))
        best_row["best"] = True
        best_arm = best_row["method"].split(" ", 1)[1]

        with torch.inference_mode():
            t0 = time.process_time()
            ae_val = torch.cat([ae(x_val[i:i + cfg.eval_batch].to(device)).cpu() for i in range(0, len(x_val), cfg.eval_batch)])
            ae_test = torch.cat([ae(x_test[i:i + cfg.eval_batch].to(device)).cpu() for i in range(0, len(x_test), cfg.eval_batch)])
            cost["score_autoencoder_cpu_s_per_image"] = round((time.process_time() - t0) / (len(x_val) + len(x_test)), 4)
        amv, amt = _err_map(x_val, ae_val), _err_map(x_test, ae_test)
        rows.append({"method": "autoencoder", "t_star": None,
                     **_evaluate(score(amv), score(amt), y_val, y_test, amv, amt, m_val_b, m_test_b)})
        with torch.inference_mode():
            pv = torch.cat([F.softmax(clf(x_val[i:i + cfg.eval_batch].to(device)), 1)[:, 1].cpu()
                            for i in range(0, len(x_val), cfg.eval_batch)]).numpy()
            pt = torch.cat([F.softmax(clf(x_test[i:i + cfg.eval_batch].to(device)), 1)[:, 1].cpu()
                            for i in range(0, len(x_test), cfg.eval_batch)]).numpy()
        rows.append({"method": "supervised classifier (upper reference)", "t_star": None,
                     **_evaluate(pv, pt, y_val, y_test, None, None, m_val_b, m_test_b)})
        for r in rows:
            r["n_test_normal"], r["n_test_abnormal"] = int((y_test == 0).sum()), int((y_test == 1).sum())

        figures: list[dict[str, str]] = []
        line_plot(tmp, "val_auc_vs_tstar", {arm: ([r["t_star"] for r in sweep if r["arm"] == arm],
                                                   [r["val_auc"] for r in sweep if r["arm"] == arm])
                                            for arm in cfg.noise_types},
                  xlabel="t* (noising timestep)", ylabel="validation AUC", title="AnoDDPM: validation AUC vs t*",
                  caption="Validation image AUC of each noise arm against the partial-noising timestep t*; the "
                          "best t* per arm is reported on the test items.", figures=figures)
        if cfg.n_examples:
            _examples(tmp, figures, cfg, models[best_arm], sched, best_arm, best_by_arm[best_arm], x_test,
                      m_test_b, y_test, split.test, maps[(best_arm, best_by_arm[best_arm])][1], amt, ae_test,
                      best_row.get("pixel_threshold"), device, autocast)

        headers = ["method", "t_star", "auc", "top1_error", "balanced_error", "pixel_auprc", "dice", "val_auc",
                   "n_test_normal", "n_test_abnormal"]
        tables = [table("test", f"Held-out test items of fold {cfg.fold} (thresholds and t* chosen on validation)",
                        headers, rows, note=f"Best diffusion arm by validation AUC: {best_arm} (t* = "
                                            f"{best_by_arm[best_arm]}). Image score: {cfg.score}"
                                            + (f" (top {cfg.top_fraction:g})" if cfg.score == "top" else "")
                                            + f"; map = squared reconstruction error; recon: DDIM {cfg.recon_steps} "
                                              f"steps from t*."),
                  table("sweep", "Validation sweep over noise type and t*", ["arm", "t_star", "val_auc", "test_auc"],
                        sweep, note="test_auc is shown for information only; nothing is chosen on it.")]
        notes = [f"Normal = labelled item with an empty mask. Generative models trained on "
                 f"{len(split.train_normal)} normal training items; validation {len(split.val)} items "
                 f"({int(y_val.sum())} abnormal) carved by case from the training side; classifier trained on "
                 f"{len(split.classifier)} labelled training items.",
                 f"Networks: image DDPM {ecfg.get('step')} steps (project trainer, method image); autoencoder "
                 f"{ae_rec['params']} parameters; classifier {clf_rec['params']} parameters."]
        cost["generator_export_cpu_s"] = ecfg.get("cpu_seconds")
        results = write_outputs(tmp, task=TASK, title="Anomaly detection: AnoDDPM vs autoencoder vs supervised",
                                data=str(data.resolve()), config=cfg, tables=tables, figures=figures, notes=notes,
                                cost=cost, best={"arm": best_arm, "t_star": best_by_arm[best_arm]})
    log(progress, f"anomaly: results in {out / 'results.md'}")
    return results


def _train_autoencoder(x: torch.Tensor, c: int, cfg: AnomalyConfig, device: torch.device, progress: bool
                       ) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    ae = ConvAutoencoder(c, cfg.autoencoder.features)

    def step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = x[idx]
        fl = torch.rand((len(idx), 2), generator=gen) < 0.5
        xb = torch.where(fl[:, 0].view(-1, 1, 1, 1), xb.flip(-1), xb)
        xb = torch.where(fl[:, 1].view(-1, 1, 1, 1), xb.flip(-2), xb).to(device)
        return F.mse_loss(ae(xb), xb)

    return fit_network(ae, step, len(x), cfg.autoencoder, seed=cfg.seed, device=device, progress=progress,
                       desc="autoencoder")


def _train_classifier(ds: PreparedDataset, split: _Split, cfg: AnomalyConfig, device: torch.device,
                      progress: bool) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    ids = split.classifier
    x = torch.from_numpy(ds.load_images(ids))
    yv = torch.tensor([int(split.abnormal[i]) for i in ids])
    counts = torch.bincount(yv, minlength=2).float().clamp_min(1)
    weight = (counts.sum() / (2 * counts)).to(device)
    clf = Classifier(ds.channels, 2, cfg.classifier.features)

    def step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = x[idx]
        fl = torch.rand((len(idx), 2), generator=gen) < 0.5
        xb = torch.where(fl[:, 0].view(-1, 1, 1, 1), xb.flip(-1), xb)
        xb = torch.where(fl[:, 1].view(-1, 1, 1, 1), xb.flip(-2), xb).to(device)
        return F.cross_entropy(clf(xb), yv[idx].to(device), weight=weight)

    return fit_network(clf, step, len(x), cfg.classifier, seed=cfg.seed, device=device, progress=progress,
                       desc="classifier")


def _examples(tmp: Path, figures: list[dict[str, str]], cfg: AnomalyConfig, model: Any, sched: NoiseSchedule,
              arm: str, t_star: int, x_test: torch.Tensor, m_test: np.ndarray, y_test: np.ndarray, ids: list[str],
              maps: np.ndarray, ae_maps: np.ndarray, ae_rec: torch.Tensor, pixel_th: float | None,
              device: torch.device, autocast: Any) -> None:
    """Rows: input (+ lesion contour), diffusion reconstruction, its map, thresholded map, AE reconstruction,
    AE map — half normal, half abnormal test images (the first ones in test order)."""
    ab = [k for k in range(len(ids)) if y_test[k] == 1]
    no = [k for k in range(len(ids)) if y_test[k] == 0]
    half = cfg.n_examples // 2
    pick = no[: cfg.n_examples - min(half, len(ab))] + ab[:half]
    if not pick:
        return
    kind = "gaussian" if arm == "gaussian" else "simplex"
    rec = _recon(model, sched, x_test[pick], [ids[k] for k in pick], t_star, kind, cfg, device, autocast)
    vmax = float(np.quantile(maps, 0.999)) or 1.0
    rows = []
    for j, k in enumerate(pick):
        inp = outline(to_u8(x_test[k].numpy()), m_test[k])
        th = (maps[k] >= pixel_th) if pixel_th is not None else np.zeros_like(m_test[k])
        rows.append([inp, to_u8(rec[j].numpy()), heat(maps[k], vmax),
                     outline(to_u8((th * 2.0 - 1.0)[None]), m_test[k]), to_u8(ae_rec[k].numpy()),
                     heat(ae_maps[k], vmax)])
    save_figure(tmp, "examples", panel_grid(rows), f"Test examples (first {len(pick) - min(half, len(ab))} normal, then "
                f"abnormal). Columns: input with the lesion contour; AnoDDPM {arm} reconstruction from t* = {t_star}; "
                f"its anomaly map; the map thresholded at the validation pixel threshold (lesion contour in red); "
                f"autoencoder reconstruction; autoencoder map (same colour scale).", figures)


__all__ = ["ARMS", "AnomalyConfig", "plan_split", "run_anomaly"]
