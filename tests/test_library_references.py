"""Hand-written code checked against the libraries that have it (issue 13): the DDPM and DDIM steps of the one
sampling loop against MONAI's ``DDPMScheduler`` / ``DDIMScheduler`` on the same network and schedule, a
stored-number regression per sampler (DPM-Solver++(2M)'s is in tests/test_sampler_dpmpp.py), and the GLCM / LBP
radiomics features (metrics/features.py) against scikit-image's ``graycomatrix`` / ``graycoprops`` /
``local_binary_pattern``."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from synthpair.diffusion.sampling import respaced_timesteps, sample
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from test_sampler_dpmpp import _tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")

MONAI_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _monai(cls: Any, schedule: NoiseSchedule, **kw: Any) -> Any:
    """A MONAI scheduler on OUR schedule, in float64 as our coefficient table is (MONAI's float32 ``1 - abar_0`` at
    t = 0 of the linear schedule, 1e-4, loses 4 digits and moves its last step by 1.7e-4): the check is of the step
    arithmetic, not of float32 rounding."""
    sched = cls(num_train_timesteps=schedule.T, prediction_type=MONAI_PREDICTION[schedule.prediction], **kw)
    sched.betas = schedule.betas64.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = schedule.alphas_cumprod64.clone()
    return sched


def _model(seed: int = 0) -> Any:
    net = _tiny_unet(seed)
    return lambda x, t, c=None: net(x, t)


CASES = [("linear", "eps"), ("linear", "v"), ("linear", "x0"), ("cosine", "v"), ("cosine", "x0")]


@pytest.mark.parametrize("schedule,prediction", CASES)
def test_ddpm_matches_monai_ddpm_scheduler(schedule: str, prediction: str) -> None:
    """Ancestral DDPM over the full chain (MONAI's scheduler steps t → t-1), clipping x0_hat to [-1, 1] as both
    do, the same per-step noise (one sample, one generator seeded alike: both draw z only while t > 0)."""
    from monai.networks.schedulers import DDPMScheduler

    s = NoiseSchedule(DiffusionConfig(schedule=schedule, num_timesteps=40, prediction=prediction))  # type: ignore[arg-type]
    model = _model(1)
    x_T = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(4))
    ours = sample(model, s, x_T, sampler="ddpm", steps=s.T, generators=[torch.Generator().manual_seed(9)])
    ref = _monai(DDPMScheduler, s, clip_sample=True, variance_type="fixed_small")
    ref.set_timesteps(s.T)
    assert ref.timesteps.tolist() == respaced_timesteps(s.T, s.T)
    g, x = torch.Generator().manual_seed(9), x_T.clone()
    with torch.inference_mode():
        for t in ref.timesteps.tolist():
            x, _ = ref.step(model(x, torch.full((1,), t)), t, x, generator=g)
            x = x.float()
    assert ours.abs().max() > 0.05
    assert (ours - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("schedule,prediction", CASES)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_monai_ddim_scheduler(schedule: str, prediction: str, eta: float) -> None:
    """DDIM on 11 respaced timesteps 100, 90, …, 0 of T = 101 (MONAI's stride T // num_inference_steps = 10 gives the
    same previous timesteps; t = 0 steps to abar = 1, MONAI's set_alpha_to_one), unclipped (MONAI does not re-derive
    eps from a clipped x0), eta 0 and 0.5 (one sample, one generator: MONAI also draws z at the last step, where its
    variance is 0)."""
    from monai.networks.schedulers import DDIMScheduler

    s = NoiseSchedule(DiffusionConfig(schedule=schedule, num_timesteps=101, prediction=prediction))  # type: ignore[arg-type]
    model = _model(2)
    ts = respaced_timesteps(s.T, 11)
    assert ts == list(range(100, -1, -10))
    x_T = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(5))
    ours = sample(model, s, x_T, sampler="ddim", steps=11, eta=eta, clip=False,
                  generators=[torch.Generator().manual_seed(8)])
    ref = _monai(DDIMScheduler, s, clip_sample=False, set_alpha_to_one=True)
    ref.num_inference_steps = 10  # prev_timestep = t - 101 // 10
    g, x = torch.Generator().manual_seed(8), x_T.clone()
    with torch.inference_mode():
        for t in ts:
            x, _ = ref.step(model(x, torch.full((1,), t)), t, x, eta=eta, generator=g)
            x = x.float()
    assert ours.abs().max() > 0.05
    assert (ours - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("sampler,eta,expected", [
    ("ddpm", 0.0, [-0.189655, -0.702514, -0.337955, 0.326149, 0.142905, -0.080327, 1.0, 1.0, 0.142809, 0.639208]),
    ("ddim", 0.0, [-0.375522, 0.782276, -0.427582, -0.124658, 0.816067, 0.539682, -0.992076, -0.093559, 0.087922,
                   0.703588]),
    # DDIM with eta = 1 on the respaced chain IS the DDPM posterior (Song et al. 2021, sec. 4.1): same numbers
    ("ddim", 1.0, [-0.189655, -0.702514, -0.337955, 0.326149, 0.142905, -0.080327, 1.0, 1.0, 0.142809, 0.639208]),
])
def test_stored_regression_values_per_sampler(sampler: str, eta: float, expected: list[float]) -> None:
    """The setting of tests/test_sampler_dpmpp.py::test_stored_regression_values (seeded tiny U-Net, v-prediction,
    cosine, 10 steps, clipping on) for DDPM and DDIM (eta 0 and 1, per-pair generators): a refactor of the loop or
    of the coefficient table must not change these numbers."""
    s = NoiseSchedule(DiffusionConfig(prediction="v"))
    net = _tiny_unet(seed=7)
    x_T = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(11))
    gens = [torch.Generator().manual_seed(21), torch.Generator().manual_seed(22)]
    out = sample(lambda x, t, c=None: net(x, t), s, x_T, sampler=sampler, steps=10, eta=eta,  # type: ignore[arg-type]
                 generators=gens)
    got = torch.stack([out[0, 0, 0, :4], out[1, 1, 8, 4:8]]).flatten().tolist() + [out.mean().item(), out.std().item()]
    assert got == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------------- radiomics features
def _quantised(rng: np.random.Generator, n: int = 3, size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Grey images in [0, 1] with some structure and their 16-level quantisation (as the extractor makes it)."""
    from synthpair.metrics.features import GLCM_LEVELS

    yy, xx = np.mgrid[:size, :size] / size
    g = np.clip(0.5 + 0.3 * np.sin(6 * yy + 3 * xx)[None] + 0.2 * rng.standard_normal((n, size, size)), 0, 1)
    return g, np.clip((g * GLCM_LEVELS).astype(np.int64), 0, GLCM_LEVELS - 1)


@pytest.mark.parametrize("distance", [1, 3])
def test_glcm_features_match_scikit_image(distance: int) -> None:
    """``_glcm``: the mean of the four symmetric, normalised co-occurrence matrices at offsets (0, d), (d, 0),
    (d, d), (d, -d) — skimage's angles 0, π/2 at distance d and π/4, 3π/4 at distance d·√2 (skimage rounds
    d·sin/cos; at d = 1 that is the plain π/4 offset) — and its features against ``graycoprops`` (entropy there
    in nats; cluster shade / prominence, which skimage lacks, by their definition on skimage's matrix)."""
    from skimage.feature import graycomatrix, graycoprops

    from synthpair.metrics.features import GLCM_LEVELS, _glcm

    g, q = _quantised(np.random.default_rng(0))
    ours = _glcm(q, distance)
    L = GLCM_LEVELS
    for k in range(len(q)):
        img = q[k].astype(np.uint8)
        axes = graycomatrix(img, [distance], [0, np.pi / 2], levels=L, symmetric=True, normed=True)
        diag = graycomatrix(img, [distance * math.sqrt(2) if distance > 1 else 1], [np.pi / 4, 3 * np.pi / 4],
                            levels=L, symmetric=True, normed=True)
        P = np.concatenate([axes, diag], axis=3).mean(axis=3, keepdims=True)
        props = {p: float(graycoprops(P, p)[0, 0]) for p in ("contrast", "dissimilarity", "homogeneity", "ASM",
                                                             "correlation", "entropy")}
        p2 = P[:, :, 0, 0]
        i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
        s = i + j - (p2 * i).sum() - (p2 * j).sum()
        expected = [props["contrast"], props["dissimilarity"], props["homogeneity"], props["ASM"],
                    props["correlation"], props["entropy"] / math.log(2), (p2 * s ** 3).sum(), (p2 * s ** 4).sum()]
        np.testing.assert_allclose(ours[k], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1])
def test_lbp_histogram_matches_scikit_image_where_sampling_agrees(axis: int) -> None:
    """``_lbp_hist``: rotation-invariant uniform LBP (P = 8, R = 1), codes 0..9 as skimage's ``method="uniform"``.
    synthpair reads the 8 SQUARE neighbours (edge-replicated border), skimage samples the circle of radius 1
    (bilinear at the diagonals, zeros outside): on images that vary along one axis only (stripes, every stripe a
    distinct value), with skimage run on the edge-padded image, the two must give the same code at every pixel."""
    from skimage.feature import local_binary_pattern

    from synthpair.metrics.features import LBP_BINS, _lbp_hist

    rng = np.random.default_rng(1)
    n, size = 4, 16
    g = np.empty((n, size, size))
    for k in range(n):
        line = rng.permutation(size) / size  # distinct values along the axis
        g[k] = line[:, None] if axis == 0 else line[None, :]
        g[k] = np.broadcast_to(g[k], (size, size))
    ours = _lbp_hist(g)
    for k in range(n):
        padded = np.pad(g[k], 1, mode="edge")
        codes = local_binary_pattern(padded, P=8, R=1, method="uniform")[1:-1, 1:-1].astype(int)
        ref = np.bincount(codes.ravel(), minlength=LBP_BINS) / codes.size
        np.testing.assert_allclose(ours[k], ref, rtol=0, atol=1e-12)
    assert (ours > 0).sum() >= 3 * n  # several different codes occur: the check is not trivial
