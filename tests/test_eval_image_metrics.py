"""Paired image metrics against scikit-image (and MS-SSIM against MONAI) on random arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from synthpair.metrics.image import (PairedImageMetrics, mae, ms_ssim, ms_ssim_scales, mse, nmae, psnr, rmse, ssim,
                                     to_unit)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 40, 36))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    return x, y


def test_errors_match_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = pair
    for i in range(len(x)):
        assert mse(x, y)[i] == pytest.approx(mean_squared_error(x[i], y[i]), rel=1e-12)
        assert rmse(x, y)[i] == pytest.approx(np.sqrt(mean_squared_error(x[i], y[i])), rel=1e-12)
        assert psnr(x, y)[i] == pytest.approx(peak_signal_noise_ratio(x[i], y[i], data_range=1.0), rel=1e-10)
        assert psnr(x * 255, y * 255, 255.0)[i] == pytest.approx(
            peak_signal_noise_ratio(x[i] * 255, y[i] * 255, data_range=255.0), rel=1e-10)
        assert mae(x, y)[i] == pytest.approx(np.abs(x[i] - y[i]).mean(), rel=1e-12)
        assert nmae(x * 2, y * 2, data_range=2.0)[i] == pytest.approx(np.abs(x[i] - y[i]).mean(), rel=1e-12)
    assert np.isinf(psnr(x, x)).all() and (mse(x, x) == 0).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(pair: tuple[np.ndarray, np.ndarray], channels: int) -> None:
    x, y = pair
    x, y = np.repeat(x, channels, 1), np.repeat(y, channels, 1)
    y[:, -1] = y[:, -1] ** 2  # channels differ
    ours = ssim(x, y)
    for i in range(len(x)):
        ref = structural_similarity(x[i].transpose(1, 2, 0), y[i].transpose(1, 2, 0), data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=2)
        assert ours[i] == pytest.approx(ref, abs=1e-6)
    assert ours.max() < 0.95 and ssim(x, x) == pytest.approx(1.0)


def test_ms_ssim_matches_monai_and_reduces_scales_for_small_images() -> None:
    from monai.metrics.regression import compute_ms_ssim

    rng = np.random.default_rng(1)
    x = rng.random((2, 1, 176, 176)).astype(np.float32)
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(x, (0, 0, 2, 2))  # structure at several scales
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    assert ms_ssim_scales(176, 176) == 5
    ref = compute_ms_ssim(torch.from_numpy(y), torch.from_numpy(x), spatial_dims=2).view(-1).numpy()
    np.testing.assert_allclose(ms_ssim(x, y), ref, atol=5e-5)  # MONAI computes in float32
    # small images: fewer scales; one scale is exactly SSIM
    assert ms_ssim_scales(64, 64) == 3 and ms_ssim_scales(16, 16) == 1
    np.testing.assert_allclose(ms_ssim(x[:, :, :16, :16], y[:, :, :16, :16]), ssim(x[:, :, :16, :16], y[:, :, :16, :16]))
    assert ms_ssim(x, x) == pytest.approx(1.0)


def test_accumulator_and_range_conversion(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = pair
    acc = PairedImageMetrics()
    acc.update(x[:2], y[:2])
    acc.update(x[2:], y[2:])
    agg = acc.aggregate()
    assert agg["mse"]["n"] == 3 and agg["mse"]["mean"] == pytest.approx(mse(x, y).mean())
    np.testing.assert_allclose(to_unit(np.array([-1.0, 0.0, 1.0, 2.0])), [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        mse(x, y[:, :, :10])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x[:, :, :8, :8], y[:, :, :8, :8])
