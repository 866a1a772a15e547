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


@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "edm"])
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
    # and back: the output whose implied eps is eps (how classifier guidance hands its eps shift back)
    assert torch.allclose(s.output_for_eps(eps, xt, t), s.target(x0, t, eps), atol=1e-3)


def test_edm_preconditioning_by_hand():
    """EDM (Karras et al. 2022, Table 1) on the VP schedule: at abar = 0.72 (a = sqrt(.72), s = sqrt(.28)) with
    sigma_d = 0.5, r = sqrt(.28 + .72 * .25) = sqrt(.46); x0 = 1, eps = 2 → F = (s - a * .25 * 2) / (r * .5); and
    D = c_skip x + c_out F with EDM's own sigma = s / a, x = x_t / a reproduces x0."""
    s = NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=3, beta_start=0.1, beta_end=0.3,
                                      prediction="edm", sigma_data=0.5))
    x0, eps, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([1])
    a, sd = math.sqrt(0.72), math.sqrt(0.28)
    r = math.sqrt(0.28 + 0.72 * 0.25)
    f = s.target(x0, t, eps).item()
    assert f == pytest.approx((sd * 1 - a * 0.25 * 2) / (r * 0.5), rel=1e-6)
    sigma, x = sd / a, (a * 1 + sd * 2) / a
    c_skip, c_out = 0.25 / (sigma ** 2 + 0.25), sigma * 0.5 / math.sqrt(sigma ** 2 + 0.25)
    assert c_skip * x + c_out * f == pytest.approx(1.0, rel=1e-6)


def test_edm_with_unit_sigma_data_is_minus_v_and_its_target_has_unit_variance():
    """sigma_d = 1: F = -v exactly (v-prediction is EDM's preconditioning of unit-variance data); for data of std
    sigma_d the target F has unit variance at every t (EDM's 'unit training target' requirement, sec. 5)."""
    v = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="v"))
    e1 = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="edm", sigma_data=1.0))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    t = torch.tensor([0, 5, 20, 40, 60, 80, 95, 99])
    assert torch.allclose(e1.target(x0, t, eps), -v.target(x0, t, eps), atol=1e-6)
    e = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="edm", sigma_data=0.5))
    x0, eps = 0.5 * torch.randn(3, 20000, generator=g), torch.randn(3, 20000, generator=g)
    for tt in (0, 50, 99):
        f = e.target(x0, torch.full((3,), tt), eps)
        assert f.var().item() == pytest.approx(1.0, abs=0.03)


def test_per_channel_sigma_data_is_the_scalar_schedule_channel_by_channel():
    """channel_sigma_data (0.5, 1): channel 0 behaves as sigma_d = 0.5, channel 1 as sigma_d = 1 (= -v) — in the
    target, in to_x0_eps (a round trip) and in output_for_eps; a tensor of another channel count is refused."""
    from synthpair.diffusion.schedule import joint_channel_sigma_data
    from synthpair.errors import SynthpairError

    per = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="edm", channel_sigma_data=(0.5, 1.0)))
    half = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="edm", sigma_data=0.5))
    v = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="v"))
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 2, 4, 4, generator=g), torch.randn(5, 2, 4, 4, generator=g)
    t = torch.tensor([0, 10, 50, 90, 99])
    f = per.target(x0, t, eps)
    assert torch.allclose(f[:, :1], half.target(x0[:, :1], t, eps[:, :1]), atol=1e-6)
    assert torch.allclose(f[:, 1:], -v.target(x0[:, 1:], t, eps[:, 1:]), atol=1e-6)
    x_t = per.q_sample(x0, t, eps)
    x0_hat, eps_hat = per.to_x0_eps(f, x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)
    out = per.output_for_eps(eps, x_t, t)
    assert torch.allclose(out[:, :1], half.output_for_eps(eps[:, :1], x_t[:, :1], t), atol=1e-6)
    assert torch.allclose(out[:, 1:], -v.output_for_eps(eps[:, 1:], x_t[:, 1:], t), atol=1e-5)
    with pytest.raises(SynthpairError, match="2 values but the tensor has 3 channels"):
        per.target(torch.zeros(1, 3, 2, 2), torch.tensor([1]), torch.zeros(1, 3, 2, 2))
    # the trainer's fill for a joint state: images sigma_data, masks mask_sigma_data; only under edm
    cfg = joint_channel_sigma_data(DiffusionConfig(), image_channels=3, mask_channels=2)
    assert cfg.channel_sigma_data == (0.5, 0.5, 0.5, 1.0, 1.0)
    assert joint_channel_sigma_data(DiffusionConfig(prediction="v"), 1, 1).channel_sigma_data == ()
    assert joint_channel_sigma_data(DiffusionConfig(mask_sigma_data=None), 1, 1).channel_sigma_data == ()
    with pytest.raises(SynthpairError, match="min_snr"):
        DiffusionConfig(channel_sigma_data=(0.5, 1.0), loss_weighting="min_snr")


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


@pytest.mark.parametrize("prediction", ["eps", "v", "edm"])
def test_sampler_with_an_exact_network_of_any_prediction_type_recovers_x0(prediction):
    """The oracle's x0 handed to the loop in the network's own output type (via ``output_for_eps`` of the eps that
    x_t and x0 imply): DDIM must land on x0 whatever the parameterisation."""
    s = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction=prediction))
    x0 = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)

    def net(x, t, c=None):
        a, sd = s.sqrt_ab[t].view(-1, 1, 1, 1), s.sqrt_1mab[t].view(-1, 1, 1, 1)
        return s.output_for_eps((x - a * x0) / sd, x, t)

    xT = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = sample(net, s, xT, sampler="ddim", steps=8, eta=0.0)
    assert torch.allclose(out, x0.expand(3, 1, 4, 4), atol=1e-4)


def test_an_unknown_prediction_type_is_refused_in_one_line():
    with pytest.raises(SynthpairError, match="diffusion.prediction='sample': choose eps, v, x0 or edm"):
        DiffusionConfig(prediction="sample")  # type: ignore[arg-type]
    with pytest.raises(SynthpairError, match="diffusion.sigma_data=0"):
        DiffusionConfig(prediction="edm", sigma_data=0)


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
@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "edm"])
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
