"""Classifier guidance (the survey's GDDPM; Dhariwal & Nichol 2021 sec. 4) against classifier-free guidance (Ho &
Salimans 2022): which steers class-conditional generation more faithfully, at what image quality.

``synthpair guidance DATA --out OUT`` (:func:`run_guidance`), fold ``cfg.fold``:

* **Classes** of the items (``classes``): ``prefix`` = the item id before its first ``_`` (BUSI: benign_012 →
  benign), ``field:NAME`` = a field of the dataset.json item, or a JSON file ``{item id: class}``; ``keep``
  restricts them (e.g. benign malignant). Training = the fold's training-side items of the kept classes; the
  test items of those classes are the real reference of the clean classifier.
* **One diffusion network** with a class embedding and a learnt null class (:class:`~.common.ClassDenoiser`),
  trained with the null class on a ``drop_prob`` share of the rows (:func:`~.common.fit_diffusion`). Its null
  branch is the unconditional model, so both guidance kinds steer the same network:

  - classifier guidance at scale s (Dhariwal & Nichol eq. 14, for DDIM): ``eps' = eps_null(x_t) - s
    sqrt(1 - abar_t) grad_x log p_phi(y | x_t, t)`` with a noise-aware classifier p_phi (:class:`~.common.
    Classifier` with a timestep embedding, trained with cross-entropy on ``x_t = q_sample(x0, t, eps)``, t
    uniform) — :func:`classifier_guided`, a model wrapper in the one sampling loop (the output is corrected in
    the network's own prediction type: eps, x0 or v);
  - classifier-free guidance at scale s (:func:`synthpair.diffusion.guidance.classifier_free`: ``out_null + s
    (out_cond - out_null)``; s = 1 is the plain conditional model);
  - unguided: the null branch alone (the classes then only name the seeds).
* Every arm samples ``n_per_class`` images per class from the same seeds (DDIM, ``steps``).
* **Metrics**: class faithfulness = accuracy of a CLEAN classifier (trained on the clean training images, its
  accuracy on the real test images reported beside) on the samples, against the class asked for; Fréchet
  distance and KID of the radiomics features (:mod:`synthpair.metrics.features`, z-scored on the real images)
  of all samples of an arm against the real training images of the kept classes.

OUT: ``config.json``, ``results.{json,md}``, ``figures/`` (samples per arm and class; faithfulness vs scale),
``models/{class_ddpm,noisy_classifier,clean_classifier}/``.
"""
from __future__ import annotations

import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...data.dataset import PreparedDataset
from ...diffusion.cond import Cond
from ...diffusion.guidance import classifier_free
from ...diffusion.sampling import sample
from ...diffusion.schedule import NoiseSchedule
from ...errors import fail
from ...io import atomic_output_dir, read_json
from .common import (ClassDenoiser, Classifier, DiffusionFit, NetFit, fit_diffusion, fit_network, line_plot, log,
                     panel_grid, resolve, save_figure, save_model, seed_generators, table, to_u8, write_outputs)

TASK = "guidance"


@dataclass(frozen=True)
class GuidanceConfig:
    """Settings of ``synthpair guidance`` (saved as OUT/config.json); see the module docstring."""

    fold: int = 0
    seed: int = 0
    classes: str = "prefix"
    keep: tuple[str, ...] = ()
    generator: DiffusionFit = field(default_factory=DiffusionFit)
    drop_prob: float = 0.2
    classifier: NetFit = field(default_factory=NetFit)          # noise-aware (on x_t)
    clean_classifier: NetFit = field(default_factory=NetFit)
    cg_scales: tuple[float, ...] = (1.0, 3.0, 10.0)
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    n_per_class: int = 16
    steps: int = 25
    eval_batch: int = 16
    n_examples: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.drop_prob < 1.0:
            raise fail(f"drop_prob={self.drop_prob}: the null-class rate must be in (0, 1)")
        if any(s < 0 for s in (*self.cg_scales, *self.cfg_scales)):
            raise fail("cg_scales and cfg_scales must be >= 0")
        if self.n_per_class < 1 or self.steps < 1 or self.eval_batch < 1:
            raise fail("n_per_class, steps and eval_batch must be >= 1")


def item_classes(ds: PreparedDataset, spec: str) -> dict[str, str]:
    """{item id: class name} by ``spec`` (``prefix`` | ``field:NAME`` | a JSON file); items without a class are
    left out; one-line error for an unknown spec or a file that is not a {item: class} object."""
    if spec == "prefix":
        return {i: i.split("_", 1)[0] for i in ds.ids if "_" in i}
    if spec.startswith("field:"):
        name = spec.split(":", 1)[1]
        return {it["id"]: str(it[name]) for it in ds.items if it.get(name) not in (None, "")}
    path = Path(spec)
    if not path.is_file():
        raise fail(f"classes={spec!r}: choose 'prefix', 'field:NAME' or a JSON file {{item id: class}}")
    data = read_json(path, "classes file")
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
        raise fail(f"{path}: must be a JSON object {{item id: class name}}")
    known = set(ds.ids)
    return {str(k): str(v) for k, v in data.items() if str(k) in known}


def classifier_guided(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, classifier: torch.nn.Module,
                      scale: float) -> Callable[..., torch.Tensor]:
    """Wrap ``model(x_t, t, cond)`` into its classifier-guided version (Dhariwal & Nichol 2021, eq. 14).

    The network runs on its NULL condition (``drop`` all true: the unconditional model); the class ``y`` to steer
    towards is ``cond.label``. With ``g = grad_{x_t} log softmax(classifier(x_t, t))[y]`` (computed with autograd
    inside the sampling loop's inference mode), ``eps' = eps - scale sqrt(1 - abar_t) g``; the output is returned
    in the network's prediction type (``NoiseSchedule.output_for_eps``): eps → ``eps'``; x0 → ``x0 + scale (1 -
    abar_t)/sqrt(abar_t) g``; v → ``v - scale sqrt(1 - abar_t)/sqrt(abar_t) g``."""
    scale = float(scale)

    def guided(x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if not isinstance(cond, Cond) or cond.label is None:
            raise TypeError("classifier guidance needs Cond(label=...) with the class to steer towards")
        y = cond.label.to(x_t.device).long()
        null = Cond(label=y, drop=torch.ones_like(y, dtype=torch.bool))
        out = model(x_t, t, null).float()
        if scale == 0.0:
            return out
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().float().requires_grad_(True)
            logp = F.log_softmax(classifier(x, t.clone()).float(), dim=1)
            sel = logp[torch.arange(len(y), device=x.device), y.clone()].sum()
            g = torch.autograd.grad(sel, x)[0].detach()
        s1 = schedule.sqrt_1mab.to(x_t.device)[t].view(-1, 1, 1, 1)
        _, eps = schedule.to_x0_eps(out, x_t, t)
        return schedule.output_for_eps(eps - scale * s1 * g, x_t.float(), t)

    return guided


def _fd_kid(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    from ...metrics.distribution import SampleSizeWarning, frechet_distance, kid
    from ...metrics.features import extract, get_extractor, standardize

    ex = get_extractor("radiomics")
    fr, ff = standardize(extract(ex, real), extract(ex, fake))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        warnings.filterwarnings("ignore", message="Matrix is singular")
        fd = frechet_distance(fr, ff)
    return fd, float(kid(fr, ff, subsets=50, subset_size=min(len(fr), len(ff), 100))["mean"])


def run_guidance(data: Path | str, out: Path | str, cfg: GuidanceConfig = GuidanceConfig(), *,
                 overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the classifier-guidance vs classifier-free-guidance comparison (module docstring); returns the results."""
    from ...env import resolve_autocast

    data, out = Path(data), Path(out)
    ds = PreparedDataset.open(data)
    device = resolve(cfg.device)
    cls_of = item_classes(ds, cfg.classes)
    if not cls_of:
        raise fail(f"{data}: no item has a class by --classes {cfg.classes!r}; choose 'prefix' (ids like "
                   f"benign_001), 'field:NAME' or a JSON file {{item: class}}")
    _, test_all = ds.split(cfg.fold)
    train_all = ds.image_train_ids(cfg.fold)
    present = sorted({cls_of[i] for i in train_all if i in cls_of})
    unknown = [c for c in cfg.keep if c not in present]
    if unknown:
        raise fail(f"--keep {unknown[0]!r}: no training item of fold {cfg.fold} has that class (classes: "
                   f"{', '.join(present) or 'none'})")
    names = list(cfg.keep) if cfg.keep else present
    if len(names) < 2:
        raise fail(f"{data}: guidance needs at least two classes with training items, found {names}; check --classes "
                   f"and --keep")
    index = {c: k for k, c in enumerate(names)}
    train_ids = [i for i in train_all if cls_of.get(i) in index]
    test_ids = [i for i in test_all if cls_of.get(i) in index]
    autocast = resolve_autocast(cfg.generator.amp, device)
    cost: dict[str, Any] = {}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        x = torch.from_numpy(ds.load_images(train_ids))
        y = torch.tensor([index[cls_of[i]] for i in train_ids])
        torch.manual_seed(cfg.seed)
        net = ClassDenoiser(cfg.generator.net, ds.channels, len(names))
        model, rec = fit_diffusion(net, x, cfg.generator, seed=cfg.seed, device=device, labels=y,
                                   drop_prob=cfg.drop_prob, progress=progress, desc="class DDPM")
        save_model(tmp / "models" / "class_ddpm", model, {"network": "ClassDenoiser", "classes": names,
                                                          "drop_prob": cfg.drop_prob, "record": rec})
        cost["diffusion_train_cpu_s"] = rec["cpu_seconds"]
        sched = NoiseSchedule(cfg.generator.diffusion, device=device)
        counts = torch.bincount(y, minlength=len(names)).float().clamp_min(1)
        weight = (counts.sum() / (len(names) * counts)).to(device)

        def flip(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            fl = torch.rand((len(xb), 2), generator=gen) < 0.5
            xb = torch.where(fl[:, 0].view(-1, 1, 1, 1), xb.flip(-1), xb)
            return torch.where(fl[:, 1].view(-1, 1, 1, 1), xb.flip(-2), xb)

        torch.manual_seed(cfg.seed)
        noisy = Classifier(ds.channels, len(names), cfg.classifier.features, noise_aware=True)

        def noisy_step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            xb = flip(x[idx], gen)
            t = torch.randint(0, sched.T, (len(idx),), generator=gen)
            xt = sched.q_sample(xb.to(device), t.to(device), torch.randn(xb.shape, generator=gen).to(device))
            return F.cross_entropy(noisy(xt, t.to(device)), y[idx].to(device), weight=weight)

        noisy, nrec = fit_network(noisy, noisy_step, len(x), cfg.classifier, seed=cfg.seed, device=device,
                                  progress=progress, desc="noise-aware classifier")
        save_model(tmp / "models" / "noisy_classifier", noisy, {"network": "Classifier(noise_aware)", "classes": names,
                                                               "record": nrec})
        torch.manual_seed(cfg.seed + 1)
        clean = Classifier(ds.channels, len(names), cfg.clean_classifier.features)

        def clean_step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return F.cross_entropy(clean(flip(x[idx], gen).to(device)), y[idx].to(device), weight=weight)

        clean, crec = fit_network(clean, clean_step, len(x), cfg.clean_classifier, seed=cfg.seed + 1, device=device,
                                  progress=progress, desc="clean classifier")
        save_model(tmp / "models" / "clean_classifier", clean, {"network": "Classifier", "classes": names,
                                                               "record": crec})
        cost["classifiers_train_cpu_s"] = nrec["cpu_seconds"] + crec["cpu_seconds"]

        def classify(imgs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([clean(imgs[i:i + cfg.eval_batch].to(device)).argmax(1).cpu()
                                  for i in range(0, len(imgs), cfg.eval_batch)])

        real_acc = None
        if test_ids:
            yt = torch.tensor([index[cls_of[i]] for i in test_ids])
            real_acc = float((classify(torch.from_numpy(ds.load_images(test_ids))) == yt).float().mean())

        arms: list[tuple[str, float | None, Callable[..., torch.Tensor], bool]] = [("unguided (null class)", None,
                                                                                     model, True)]
        arms += [("classifier guidance", s, classifier_guided(model, sched, noisy, s), False) for s in cfg.cg_scales]
        arms += [("classifier-free guidance", s, classifier_free(model, s), False) for s in cfg.cfg_scales]
        want = torch.tensor([k for k in range(len(names)) for _ in range(cfg.n_per_class)])
        seeds = [zlib.crc32(f"{cfg.seed}:{int(c)}:{j}".encode()) for j, c in enumerate(want.tolist())]
        rows: list[dict[str, Any]] = []
        samples_of: dict[str, torch.Tensor] = {}
        for name, s, fn, null in arms:
            t0 = time.process_time()
            imgs = []
            for i in range(0, len(want), cfg.eval_batch):
                gens = seed_generators(seeds[i:i + cfg.eval_batch])
                lab = want[i:i + cfg.eval_batch].to(device)
                x_T = torch.stack([torch.randn((ds.channels, *ds.size), generator=g) for g in gens]).to(device)
                cond = Cond(label=lab, drop=torch.ones_like(lab, dtype=torch.bool) if null else None)
                imgs.append(sample(fn, sched, x_T, sampler="ddim", steps=cfg.steps, cond=cond,
                                   autocast_dtype=autocast).cpu())
            imgs_t = torch.cat(imgs)
            cpu = (time.process_time() - t0) / len(want)
            pred = classify(imgs_t)
            per_class = {names[k]: float((pred[want == k] == k).float().mean()) for k in range(len(names))}
            fd, kd = _fd_kid(x.numpy(), imgs_t.numpy())
            label = name if s is None else f"{name} s={s:g}"
            samples_of[label] = imgs_t
            rows.append({"method": name, "scale": s, "faithfulness": float((pred == want).float().mean()),
                         **{f"acc_{c}": v for c, v in per_class.items()}, "fd": fd, "kid": kd,
                         "cpu_s_per_image": round(cpu, 4), "n": len(want)})
            log(progress, f"guidance: {label}: faithfulness {rows[-1]['faithfulness']:.3f}, FD {fd:.2f}")
        figures: list[dict[str, str]] = []
        line_plot(tmp, "faithfulness_vs_scale",
                  {kind: ([r["scale"] for r in rows if r["method"] == kind],
                          [r["faithfulness"] for r in rows if r["method"] == kind])
                   for kind in ("classifier guidance", "classifier-free guidance")},
                  xlabel="guidance scale s", ylabel="clean-classifier accuracy on samples",
                  title="Class faithfulness vs guidance scale",
                  caption="Accuracy of the clean classifier on the samples (against the class asked for) per "
                          "guidance scale" + (f"; on real test images it is {real_acc:.3f}." if real_acc is not None
                                              else "."), figures=figures)
        if cfg.n_examples:
            per = min(cfg.n_examples, cfg.n_per_class)
            panels = [[to_u8(v[k * cfg.n_per_class + j].numpy()) for k in range(len(names)) for j in range(per)]
                      for v in samples_of.values()]
            save_figure(tmp, "samples", panel_grid(panels, scale=1),
                        f"Rows: {', '.join(samples_of)}. Columns: {per} samples of each class ({', '.join(names)}), "
                        f"the same seeds in every row.", figures)
        headers = ["method", "scale", "faithfulness"] + [f"acc_{c}" for c in names] + ["fd", "kid", "cpu_s_per_image",
                                                                                       "n"]
        tables = [table("guidance", f"Class-conditional sampling, {len(names)} classes × {cfg.n_per_class} samples",
                        headers, rows,
                        note="faithfulness: accuracy of the clean classifier on the samples vs the class asked for"
                             + (f" (its accuracy on {len(test_ids)} real test images: {real_acc:.3f})"
                                if real_acc is not None else "")
                             + "; FD/KID: radiomics features vs the real training images (z-scored on them).")]
        notes = [f"Classes by {cfg.classes!r}: {', '.join(f'{c} ({int(counts[k])})' for k, c in enumerate(names))} "
                 f"training items of fold {cfg.fold}.",
                 f"One class-conditional network ({rec['params']} parameters, null class on {cfg.drop_prob:g} of the "
                 f"rows): its null branch is the unconditional model that classifier guidance steers; classifiers: "
                 f"{nrec['params']} (noise-aware) and {crec['params']} (clean) parameters.",
                 f"DDIM {cfg.steps} steps; classifier guidance adds one classifier forward and backward pass per step, "
                 f"classifier-free guidance (s != 1) doubles the network batch."]
        results = write_outputs(tmp, task=TASK, title="Classifier guidance vs classifier-free guidance",
                                data=str(data.resolve()), config=cfg, tables=tables, figures=figures, notes=notes,
                                cost=cost, classes=names, real_test_accuracy=real_acc)
    log(progress, f"guidance: results in {out / 'results.md'}")
    return results


__all__ = ["GuidanceConfig", "classifier_guided", "item_classes", "run_guidance"]
