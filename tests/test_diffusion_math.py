"""Schedule, noising, prediction conversions, loss and the sampling loop against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from synthpair.diffusion import DiffusionConfig, NoiseSchedule, diffusion_loss, respaced_timesteps, sample
from synthpair.diffusion.sampling import step_coefficients
from synthpair.errors import SynthpairError


def test_linear_schedule_alphas_cumprod_by_hand():
    s = NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=3, beta_start=0.1, beta_end=0.3))
    assert torch.allclose(s.betas, torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(s.alphas_cumprod, torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7]))
    assert s.alphas_cumprod.dtype == torch.float32 and s.alphas_cumprod64.dtype == torch.float64


def test_cosine_schedule_matches_improved_ddpm_formula():
    T = 10
    s = NoiseSchedule(DiffusionConfig(schedule="cosine", num_timesteps=T))
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # alphabar_t = f(t+1)/f(0) as long as no beta is clipped (true for t < T-1)
    for t in range(T - 1):
        assert float(s.alphas_cumprod64[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert float(s.betas64[-1]) == pytest.approx(0.999)  # last beta clipped at 0.999
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])


def test_q_sample_at_known_t():
    s = NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=3, beta_start=0.1, beta_end=0.3))
    x0 = torch.full((2, 1, 2, 2), 0.5)
    noise = torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([0, 2])
    xt = s.q_sample(x0, t, noise)
    ab = [0.9, 0.9 * 0.8 * 0.7]
    for i in range(2):
        expect = math.sqrt(ab[i]) * 0.5 - math.sqrt(1 - ab[i])
        assert torch.allclose(xt[i], torch.full((1, 2, 2), expect), atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_conversions_round_trip(prediction):
    s = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction=prediction))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 2, 3, 3), generator=g) * 2 - 1
    eps = torch.randn((4, 2, 3, 3), generator=g)
    t = torch.tensor([0, 10, 50, 98])
    xt = s.q_sample(x0, t, eps)
    x0_hat, eps_hat = s.to_x0_eps(s.target(x0, t, eps), xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(eps_hat, eps, atol=1e-4)


def test_v_target_by_hand():
    s = NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=3, beta_start=0.1, beta_end=0.3, prediction="v"))
    x0, eps, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([1])
    ab = 0.72
    assert s.target(x0, t, eps).item() == pytest.approx(math.sqrt(ab) * 2 - math.sqrt(1 - ab) * 1, rel=1e-6)


def test_diffusion_loss_is_mse_to_target():
    s = NoiseSchedule(DiffusionConfig(num_timesteps=50, prediction="eps"))
    x0 = torch.zeros(2, 1, 4, 4)
    noise = torch.ones(2, 1, 4, 4)
    zero_model = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    assert diffusion_loss(zero_model, s, x0, torch.tensor([3, 7]), noise).item() == pytest.approx(1.0)


def test_respacing_and_last_step():
    assert respaced_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert respaced_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(SynthpairError):
        respaced_timesteps(10, 11)
    s = NoiseSchedule(DiffusionConfig(num_timesteps=100))
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        c = step_coefficients(s, respaced_timesteps(100, 7), sampler, 0.0)
        assert c[-1] == pytest.approx((1.0, 0.0, 0.0, 0.0))  # the last step returns x0_hat
        assert c[0].c_x0_prev == 0.0  # no previous x0_hat at the first step


def test_ddim_eta1_equals_ddpm_posterior():
    s = NoiseSchedule(DiffusionConfig(num_timesteps=100))
    ts = respaced_timesteps(100, 10)
    for a, b in zip(step_coefficients(s, ts, "ddpm", 0.0), step_coefficients(s, ts, "ddim", 1.0)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def _oracle(x0_true):
    """A 'network' predicting x0 exactly (prediction='x0'); the sampler must then return x0_true."""
    return lambda x, t, c=None: x0_true.expand_as(x)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0), ("dpm++2m", 0.0)])
def test_sampler_with_exact_x0_network_recovers_x0(sampler, eta):
    s = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="x0"))
    x0 = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    xT = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = sample(_oracle(x0), s, xT, sampler=sampler, steps=8, eta=eta, generators=gens)
    assert torch.allclose(out, x0.expand(3, 1, 4, 4), atol=1e-5)


def _toy_net():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    return lambda x, t, c=None: conv(x) * (1 + t.view(-1, 1, 1, 1).float() / 1000)


def test_ddim_eta0_deterministic_and_ddpm_per_sample_seeds():
    s = NoiseSchedule(DiffusionConfig(num_timesteps=1000))
    net = _toy_net()
    xT = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample(net, s, xT, sampler="ddim", steps=10, eta=0.0)
    b = sample(net, s, xT, sampler="ddim", steps=10, eta=0.0)
    assert torch.equal(a, b)
    assert a.abs().max() <= 1.0
    gens = lambda seeds: [torch.Generator().manual_seed(k) for k in seeds]  # noqa: E731
    p = sample(net, s, xT, sampler="ddpm", steps=10, generators=gens([5, 6]))
    q = sample(net, s, xT, sampler="ddpm", steps=10, generators=gens([5, 6]))
    r = sample(net, s, xT, sampler="ddpm", steps=10, generators=gens([5, 7]))
    assert torch.equal(p, q)
    # sample 0 keeps its seed → (up to batched-kernel rounding) the same result; sample 1 changed seed
    assert torch.allclose(p[0], r[0], atol=1e-5)
    assert not torch.allclose(p[1], r[1], atol=1e-3)
    with pytest.raises(SynthpairError):
        sample(net, s, xT, sampler="ddpm", steps=10, generators=gens([1]))


# ------------------------------------------------------------------ min-SNR-gamma weighting, lognormal timesteps
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weighting_is_clipped_snr_times_the_x0_error(prediction):
    """Hang et al. 2023: whatever the network predicts, the weighted loss equals min(SNR, gamma) times the squared
    error of the implied x0 — the identity the per-prediction weights are derived from."""
    cfg = DiffusionConfig(num_timesteps=100, prediction=prediction, loss_weighting="min_snr", min_snr_gamma=5.0)
    s = NoiseSchedule(cfg)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1, torch.randn(4, 1, 3, 3, generator=g)
    t = torch.tensor([2, 20, 60, 95])  # SNR from >> 5 to << 1
    x_t = s.q_sample(x0, t, noise)
    out = s.target(x0, t, noise) + 0.1 * torch.randn(4, 1, 3, 3, generator=g)  # an imperfect network output
    x0_hat, _ = s.to_x0_eps(out, x_t, t)
    snr = (s.alphas_cumprod64 / (1 - s.alphas_cumprod64))[t]
    x0_err = (x0_hat - x0).pow(2).flatten(1).mean(1).double()
    expected = (torch.clamp(snr, max=5.0) * x0_err).mean()
    loss = diffusion_loss(lambda x, tt, c=None: out, s, x0, t, noise)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert snr[0] > 5 > snr[-1]  # both sides of the clip are exercised


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_match_diffusers_reference(prediction):
    """The weights of diffusers' text-to-image training script: ``min(snr, gamma) / snr`` (epsilon) and
    ``/ (snr + 1)`` (v_prediction), on diffusers' own SNR of the same alphas_cumprod."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    s = NoiseSchedule(DiffusionConfig(num_timesteps=1000, schedule="linear", prediction=prediction,
                                      loss_weighting="min_snr", min_snr_gamma=5.0))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    t = torch.arange(0, 1000, 37)
    snr = compute_snr(ref, t)
    clipped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    expected = clipped / snr if prediction == "eps" else clipped / (snr + 1)
    assert torch.allclose(s.loss_weights(t), expected.float(), rtol=1e-3)  # diffusers computes SNR in float32


def test_uniform_weighting_and_sampling_are_the_old_draws_and_loss():
    """The defaults leave runs bit-identical to before the options: t from torch.randint, the plain MSE."""
    s = NoiseSchedule(DiffusionConfig(num_timesteps=50))
    assert s.loss_weights(torch.tensor([1, 2])) is None
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(s.sample_timesteps(64, a), torch.randint(0, 50, (64,), generator=b))


def test_lognormal_timesteps_follow_edm_sigma_distribution():
    """ln sigma_t of the drawn timesteps ~ N(-1.2, 1.2^2) where the schedule covers it (EDM Table 1), and each
    draw lands on the timestep nearest in ln sigma."""
    s = NoiseSchedule(DiffusionConfig(num_timesteps=1000, timestep_sampling="lognormal"))
    t = s.sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    log_sigma_t = 0.5 * torch.log((1 - s.alphas_cumprod64) / s.alphas_cumprod64)
    ls = log_sigma_t[t]
    assert float(ls.mean()) == pytest.approx(-1.2, abs=0.05) and float(ls.std()) == pytest.approx(1.2, abs=0.05)
    # nearest in log: re-drawing the same normals and rounding by brute force gives the same timesteps
    z = -1.2 + 1.2 * torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    brute = (log_sigma_t[None, :] - z[:, None]).abs().argmin(dim=1)
    assert torch.equal(t, brute)
    with pytest.raises(SynthpairError, match="lognormal_std"):
        DiffusionConfig(lognormal_std=0.0)
    with pytest.raises(SynthpairError, match="min_snr_gamma"):
        DiffusionConfig(min_snr_gamma=-1.0)
