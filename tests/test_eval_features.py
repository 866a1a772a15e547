"""Feature extractors: the radiomics-style default ranks degraded sets worse than real-vs-real; the
Inception-v3 extractor loads a local state dict (random weights made here) and fails clearly otherwise."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from synthpair.data.phantoms import phantom_pair
from synthpair.errors import SynthpairError
from synthpair.metrics.distribution import frechet_distance, kid
from synthpair.metrics.features import (InceptionV3, RadiomicsExtractor, clean_resize, extract, get_extractor,
                                        radiomics_names, standardize)


@pytest.fixture(scope="module")
def phantoms() -> np.ndarray:
    imgs = np.stack([phantom_pair(i, 48, seed=0)[0] for i in range(80)]).astype(np.float32)
    return (imgs / 127.5 - 1.0)[:, None]


def test_radiomics_features_shape_names_and_determinism(phantoms: np.ndarray) -> None:
    ex = RadiomicsExtractor()
    f = extract(ex, phantoms[:10], batch_size=4)
    assert f.shape == (10, len(radiomics_names(1))) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, ex(phantoms[:10]))
    rgb = np.repeat(phantoms[:3], 3, axis=1)
    assert ex(rgb).shape == (3, len(radiomics_names(3)))
    # an intensity shift moves the mean feature by the shift (in [0, 1] units)
    shifted = ex(np.clip(phantoms[:3] + 0.2, -1, 1))
    assert np.all(shifted[:, 0] > f[:3, 0] + 0.05)


def test_default_extractor_ranks_degraded_sets_worse_than_real(phantoms: np.ndarray) -> None:
    ex = RadiomicsExtractor()
    a, b = phantoms[:40], phantoms[40:]
    rng = np.random.default_rng(0)
    degraded = {"noise": rng.uniform(-1, 1, b.shape).astype(np.float32),
                "blur": gaussian_filter(b, (0, 0, 1.5, 1.5)),
                "shift": np.clip(b + 0.3, -1, 1)}
    fa = ex(a)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, imgs in {"real": b, **degraded}.items():
            ra, rb = standardize(fa, ex(imgs))
            scores[name] = (frechet_distance(ra, rb), kid(ra, rb)["mean"])
    for name in degraded:
        assert scores[name][0] > 3 * scores["real"][0], (name, scores)
        assert scores[name][1] > 3 * max(scores["real"][1], 0.01), (name, scores)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = InceptionV3()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["fc.weight"] = torch.zeros(1000, 2048)  # ignored like torchvision's classifier head
    path = tmp_path_factory.mktemp("w") / "inception.safetensors"
    save_file(sd, str(path))
    return path


def test_inception_extractor_from_local_weights(inception_weights: Path, phantoms: np.ndarray) -> None:
    ex = get_extractor("inception", inception_weights)
    f = ex(phantoms[[0, 0, 5]])
    assert f.shape == (3, 2048) and np.isfinite(f).all() and f.std() > 0
    np.testing.assert_allclose(f[0], f[1], rtol=1e-5, atol=1e-6)  # deterministic, batch-independent (eval BN)
    assert not np.allclose(f[0], f[2])
    # clean-fid preprocessing: same 299×299 resizing for any input size, grey → 3 channels, ~[-1, 1]
    x = clean_resize(phantoms[:1])
    assert x.shape == (1, 3, 299, 299) and float(x.min()) >= -1.0 and float(x.max()) <= 127 / 128
    assert torch.equal(x[:, 0], x[:, 1])


def test_lpips_style_distance_with_local_weights(inception_weights: Path, phantoms: np.ndarray) -> None:
    from synthpair.metrics.diversity import lpips_style_distance
    from synthpair.metrics.features import load_inception

    model = load_inception(inception_weights)
    d = lpips_style_distance(phantoms[:2], phantoms[[0, 5]], model, layers=("Conv2d_2b_3x3", "Conv2d_4a_3x3"))
    assert d[0] == pytest.approx(0.0, abs=1e-6) and d[1] > 1e-3


def test_missing_or_wrong_weights_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SynthpairError, match="weights file not found") as e:
        get_extractor("inception", tmp_path / "nope.safetensors")
    assert "\n" not in str(e.value) and "nope.safetensors" in str(e.value)
    with pytest.raises(SynthpairError, match="needs --weights"):
        get_extractor("inception", None)
    small = tmp_path / "small.pt"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), small)
    with pytest.raises(SynthpairError, match="not an Inception-v3 state dict") as e:
        get_extractor("inception", small)
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(SynthpairError, match="cannot read weights"):
        get_extractor("inception", junk)
    with pytest.raises(SynthpairError, match="unknown"):
        get_extractor("vgg")
