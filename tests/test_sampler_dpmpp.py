"""DPM-Solver++(2M) in the one sampling loop (diffusion/sampling.py): coefficients by hand, accuracy on Gaussian
data (exact ODE solution known), agreement with diffusers' DPMSolverMultistepScheduler on the same MONAI U-Net, a
stored-number regression, RePaint's multistep restart after jumps, and ``synthpair generate --sampler dpm++2m`` for
joint, mask2image, dsdm (classifier-free guidance) and pig."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from synthpair.diffusion.repaint import jump_schedule, repaint, schedule_nfe
from synthpair.diffusion.sampling import respaced_timesteps, sample, step_coefficients
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from synthpair.errors import SynthpairError
from synthpair.networks import UNetConfig, build_unet

pytestmark = pytest.mark.usefixtures("one_thread")

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)


def _tiny_unet(seed: int = 0) -> torch.nn.Module:
    """The plain MONAI ``DiffusionModelUNet`` (2 → 2 channels) with every weight perturbed by seeded noise: MONAI
    zero-initialises the output convolution, which would make every prediction 0."""
    torch.manual_seed(seed)
    net = build_unet(NET, 2, 2).unet.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


# ----------------------------------------------------------------------------------- coefficient table
def test_coefficients_by_hand_and_first_order_consistency() -> None:
    s = NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=100))
    ts = respaced_timesteps(100, 7)
    assert ts == [99, 82, 66, 50, 33, 16, 0]
    dpm, ddim = step_coefficients(s, ts, "dpm++2m", 0.7), step_coefficients(s, ts, "ddim", 0.0)
    ab = [float(s.alphas_cumprod64[t]) for t in ts]
    alpha = [math.sqrt(a) for a in ab]
    sig = [math.sqrt(1 - a) for a in ab]
    lam = [math.log(a / b) for a, b in zip(alpha, sig)]
    # step i = 3 (t = 50 → 33), Algorithm 2: h_i, r_i = h_{i-1} / h_i, D_i = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
    h, h_last = lam[4] - lam[3], lam[3] - lam[2]
    r = h_last / h
    phi = -(math.exp(-h) - 1.0)
    by_hand = (alpha[4] * phi * (1 + 1 / (2 * r)), -alpha[4] * phi / (2 * r), sig[4] / sig[3], 0.0)
    assert dpm[3] == pytest.approx(by_hand, rel=1e-12)
    for i, (a, b) in enumerate(zip(dpm, ddim)):
        # DPM-Solver++1 (x0_prev = x0) is DDIM with eta = 0: c_x0 + c_x0_prev and c_xt equal DDIM's (eta ignored)
        assert a.c_x0 + a.c_x0_prev == pytest.approx(b.c_x0, rel=1e-10) and a.c_xt == pytest.approx(b.c_xt, rel=1e-10)
        assert a.sigma == 0.0
        second = 0 < i < len(ts) - 2   # first order: the first step, the step into t = 0 and the final x0 step
        assert (a.c_x0_prev < 0.0) if second else (a.c_x0_prev == 0.0)
    assert dpm[-1] == (1.0, 0.0, 0.0, 0.0)


def test_three_steps_or_fewer_are_ddim() -> None:
    s = NoiseSchedule(DiffusionConfig(num_timesteps=100))
    net = _tiny_unet()
    x_T = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    for steps in (1, 2, 3):
        a = sample(lambda x, t, c=None: net(x, t), s, x_T, sampler="dpm++2m", steps=steps)
        b = sample(lambda x, t, c=None: net(x, t), s, x_T, sampler="ddim", steps=steps, eta=0.0)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------- accuracy on Gaussian data
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("c2", [0.25, 0.04])
def test_more_accurate_than_ddim_on_gaussian_data(schedule: str, c2: float) -> None:
    """Data x0 ~ N(0, c2 I): the exact denoiser is ``E[x0 | x_t] = sqrt(abar) c2 x_t / v_t``, ``v_t = abar c2 + 1 -
    abar``, and the probability-flow ODE maps x_T to ``x_t = sqrt(v_t / v_T) x_T`` exactly. The loop's output
    (x0_hat at t = 0 of the ODE solution) is then known in closed form; DPM-Solver++(2M) must be closer to it than
    DDIM at the same number of network evaluations."""
    s = NoiseSchedule(DiffusionConfig(schedule=schedule, prediction="x0"))
    ab = s.alphas_cumprod64

    def v(a: float) -> float:
        return a * c2 + 1 - a

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        a = ab[t].view(-1, 1, 1, 1)
        return (a.sqrt() * c2 / (a * c2 + 1 - a)).float() * x

    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a_T, a_0 = float(ab[-1]), float(ab[0])
    exact = math.sqrt(a_0) * c2 / v(a_0) * math.sqrt(v(a_0) / v(a_T)) * x_T
    for steps in (10, 15, 20, 25):
        err = {smp: (sample(denoiser, s, x_T, sampler=smp, steps=steps, clip=False) - exact).abs().max().item()
               for smp in ("ddim", "dpm++2m")}
        assert err["dpm++2m"] < err["ddim"], (steps, err)


# ----------------------------------------------------------------------------------- reference implementation
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def diffusers_dpmpp2m(model: Any, schedule: NoiseSchedule, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """The same sampler run by diffusers' ``DPMSolverMultistepScheduler`` (no clipping, no thresholding).

    Our loop's timesteps end at t = 0 and its last step is the x0 prediction there; the ODE part is the first
    ``n - 1`` steps. diffusers gets those timesteps explicitly (``set_timesteps(timesteps=...)``), ends them at
    ``sigma_min`` = the sigma of t = 0 (``final_sigmas_type="sigma_min"``) with a first-order last step
    (``euler_at_final=True``: our "lower order final"), and the final x0 prediction at t = 0 is diffusers' own
    ``convert_model_output`` of one more network call. The betas are ours (``trained_betas``)."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is a test-only dependency: pip install -e '.[test]'")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.T, trained_betas=schedule.betas64.numpy(),
        prediction_type=DIFFUSERS_PREDICTION[schedule.prediction], algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=True, euler_at_final=True, final_sigmas_type="sigma_min",
        thresholding=False)
    ts = respaced_timesteps(schedule.T, steps)
    sched.set_timesteps(timesteps=ts[:-1])
    assert sched.timesteps.tolist() == ts[:-1]
    x = x_T.clone()
    with torch.inference_mode():
        for t in sched.timesteps:
            x = sched.step(model(x, torch.full((x.shape[0],), int(t))), t, x).prev_sample
        return sched.convert_model_output(model(x, torch.full((x.shape[0],), ts[-1])), sample=x)


def _reference_model(schedule: NoiseSchedule, seed: int = 0) -> Any:
    """``model(x_t, t, cond)`` around the tiny U-Net. For eps-prediction the U-Net is a residual (x 0.1) on the exact
    eps of N(0, 0.25 I) data: a random eps network alone never denoises, so its ODE path grows like
    ``1/sqrt(abar_T)`` (~160, linear schedule) and float32 rounding alone exceeds 1e-4 in the comparison."""
    net = _tiny_unet(seed)
    if schedule.prediction != "eps":
        return lambda x, t, c=None: net(x, t)

    def model(x: torch.Tensor, t: torch.Tensor, c: Any = None) -> torch.Tensor:
        a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (0.25 * a + 1 - a) + 0.1 * net(x, t)

    return model


@pytest.mark.parametrize("schedule,prediction", [("cosine", "v"), ("linear", "v"), ("cosine", "x0"),
                                                 ("linear", "x0"), ("linear", "eps")])
@pytest.mark.parametrize("steps", [4, 10, 20])
def test_matches_diffusers_dpm_solver_multistep(schedule: str, prediction: str, steps: int) -> None:
    """Same network, betas, prediction type and timesteps; both unclipped; fp32. (cosine + eps is left out: there
    x0 = (x_t - sigma eps) / alpha with alpha_{T-1} = 4.9e-5, and diffusers' float32 ``cumprod`` of the betas is
    off by 1.3e-5 relative at t = T-1 — a reference-side rounding amplified to ~1e-3 in the result.)"""
    s = NoiseSchedule(DiffusionConfig(schedule=schedule, prediction=prediction))  # type: ignore[arg-type]
    model = _reference_model(s)
    x_T = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    ours = sample(model, s, x_T, sampler="dpm++2m", steps=steps, clip=False)
    ref = diffusers_dpmpp2m(model, s, x_T, steps)
    assert ours.abs().max() > 0.05  # not a trivial output
    assert (ours - ref).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------------- stored numbers
def test_stored_regression_values() -> None:
    """A seeded tiny U-Net, v-prediction, cosine, 10 steps, clipping on (the defaults): a refactor of the loop or of
    the coefficient table must not change these numbers."""
    s = NoiseSchedule(DiffusionConfig(prediction="v"))
    net = _tiny_unet(seed=7)
    x_T = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(11))
    out = sample(lambda x, t, c=None: net(x, t), s, x_T, sampler="dpm++2m", steps=10)
    got = torch.stack([out[0, 0, 0, :4], out[1, 1, 8, 4:8]]).flatten().tolist() + [out.mean().item(), out.std().item()]
    expected = [-0.421138, 0.877662, -0.466529, -0.119575, 0.878777, 0.616142, -1.0, -0.089093,  # pixels
                0.085741, 0.732225]                                                            # mean, sd
    assert got == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------------- RePaint
def _x0_net(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    """A per-sample stand-in network for prediction='x0' (bounded, depends on x and t)."""
    return torch.tanh(0.8 * x + 0.01 * t.view(-1, 1, 1, 1).float())


SCHED_X0 = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="x0"))


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_repaint_without_jumps_is_the_plain_sampler() -> None:
    x = torch.zeros(2, 1, 6, 6)
    m = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    res = repaint(_x0_net, SCHED_X0, x, m, steps=10, jump_length=1, resample=1, sampler="dpm++2m",
                  generators=_gens([5, 6]))
    g = _gens([5, 6])
    a = float(SCHED_X0.alphas_cumprod64[respaced_timesteps(100, 10)[0]])
    x_T = torch.stack([math.sqrt(1 - a) * torch.randn((1, 6, 6), generator=gi) for gi in g])

    def discard_known_noise(x_prev: torch.Tensor, i: int, t_prev: int) -> torch.Tensor:
        for gi in g:  # repaint draws the known-region noise once per state
            torch.randn((1, 6, 6), generator=gi)
        return x_prev

    discard_known_noise(x_T, -1, -1)  # the top state's draw
    ref = sample(_x0_net, SCHED_X0, x_T, sampler="dpm++2m", steps=10, generators=g, hook=discard_known_noise)
    assert torch.allclose(res.x0, ref, atol=1e-6)


def test_repaint_restarts_the_multistep_history_after_every_jump() -> None:
    """Record every network call: a down step that follows a down step uses the 2M coefficients with the previous
    call's x0_hat; the first down step after a jump (and the first of the chain) is first order."""
    n, L, r = 9, 3, 3
    calls: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    def spy(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        out = _x0_net(x, t)
        calls.append((x.clone(), int(t[0]), out.clone()))
        return out

    x = torch.rand(2, 1, 6, 6) * 2 - 1
    m = torch.zeros(2, 1, 6, 6, dtype=torch.bool)  # nothing known: the state after a down step is x_unknown
    res = repaint(spy, SCHED_X0, x, m, steps=n, jump_length=L, resample=r, sampler="dpm++2m", generators=_gens([1, 2]))
    assert res.nfe == len(calls) == schedule_nfe(n, L, r)
    ts = respaced_timesteps(100, n)           # descending; table row i ↔ timestep ts[i]
    coefs = step_coefficients(SCHED_X0, ts, "dpm++2m", 0.0)
    order = jump_schedule(n, L, r)
    downs = [(k, a < k) for k, a in zip(order[:-1], order[1:])]  # (state, is a down step)
    down_states = [k for k, d in downs if d]
    after_jump = [i == 0 or not downs[i - 1][1] for i, (k, d) in enumerate(downs) if d]  # history broken?
    assert sum(after_jump) == 1 + len(range(0, n - L, L)) * (r - 1)
    checked = 0
    for j in range(len(calls) - 1):
        k = down_states[j]
        if down_states[j + 1] != k - 1 or k - 1 < 0:
            continue  # a jump follows: the next call's input is re-noised
        x_k, t_k, x0 = calls[j]
        assert t_k == ts[n - 1 - k]
        c = coefs[n - 1 - k]
        prev = x0 if after_jump[j] else calls[j - 1][2]
        torch.testing.assert_close(calls[j + 1][0], c.c_x0 * x0 + c.c_x0_prev * prev + c.c_xt * x_k, atol=1e-6, rtol=0)
        checked += 1
    # some restart falls on a second-order row, so the rule is actually exercised
    assert checked >= 10 and any(after_jump[j] and coefs[n - 1 - down_states[j]].c_x0_prev != 0
                                 for j in range(len(calls)))


def test_repaint_dpmpp_keeps_the_known_region() -> None:
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    m = torch.ones(3, 1, 8, 8, dtype=torch.bool)
    res = repaint(_x0_net, SCHED_X0, x, m, steps=10, jump_length=2, resample=3, sampler="dpm++2m",
                  generators=_gens([0, 1, 2]))
    assert torch.equal(res.x0, x)
    m[:, :, 2:6, 2:6] = False
    res = repaint(_x0_net, SCHED_X0, x, m, steps=10, jump_length=2, resample=3, sampler="dpm++2m",
                  generators=_gens([0, 1, 2]))
    mm = m.expand_as(x)
    assert torch.equal(res.x0[mm], x[mm]) and res.x0.abs().max() <= 1.0


# ----------------------------------------------------------------------------------- generate via the CLI
TINY = ["--set", "net.channels=[8,16]", "--set", "net.attention_levels=[false,false]", "--set",
        "net.norm_num_groups=8", "--set", "net.num_head_channels=8", "--set", "batch_size=4", "--set",
        "preview_every=0", "--set", "checkpoint_every=0", "--set", "amp=off", "--set", "preview_n=0", "--no-progress"]
DSDM = ["--set", "cond.ref_width=8", "--set", "cond.ref_embed=32", "--set", "cond.ref_dim=16", "--set",
        "cond.ref_tokens=2", "--set", "cond.spade_hidden=8", "--set", "cond.encoder_steps=2", "--set",
        "cond.encoder_batch=4"]


@pytest.mark.parametrize("method", ["joint", "mask2image", "dsdm", "pig"])
def test_generate_cli_with_dpmpp2m(method: str, tmp_path: Path) -> None:
    from conftest import write_tiny_prepared
    from synthpair.cli.main import main
    from synthpair.synthesis.generate import read_manifest, verify_pair

    data = write_tiny_prepared(tmp_path / "data", n=9)
    run, syn = tmp_path / "run", tmp_path / "syn"
    extra = DSDM if method == "dsdm" else []
    assert main(["train", str(data), "--method", method, "--out", str(run), "--steps", "1", *TINY, *extra]) == 0
    guidance = ["--guidance", "2"] if method == "dsdm" else []  # dsdm trains with CFG (drop_prob 0.1)
    masks = ["--segmenter", "off"] if method in ("mask2image", "dsdm") else []
    assert main(["generate", str(run), "--n", "2", "--out", str(syn), "--sampler", "dpm++2m", "--steps", "10",
                 "--min-area", "0", "--keep-empty", "--batch", "2", "--set", "amp=off", "--set", "min_component=1",
                 *guidance, *masks]) == 0
    lines = read_manifest(syn)
    assert len(lines) == 2 and all(ln["sampler"] == "dpm++2m" and ln["steps"] == 10 for ln in lines)
    if method == "dsdm":
        assert lines[0]["guidance"] == 2.0
    assert verify_pair(syn, lines[1]["id"])  # replayed from the manifest bit for bit


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [2, 5, 10, 20, 50, 200])
def test_timestep_grids(schedule: str, steps: int) -> None:
    """Every spacing gives exactly ``steps`` distinct timesteps from T-1 down to 0; logsnr's inner points are
    evenly spaced in log sigma (up to the rounding to integer timesteps), karras' follow EDM's eq. 5."""
    import math

    from synthpair.diffusion.sampling import SIGMA_MAX, timestep_grid

    s = NoiseSchedule(DiffusionConfig(num_timesteps=1000, schedule=schedule))
    ab = s.alphas_cumprod64
    log_sigma = 0.5 * torch.log((1 - ab) / ab)
    for spacing in ("uniform", "logsnr", "karras"):
        ts = timestep_grid(s, steps, spacing)
        assert len(ts) == steps == len(set(ts)) and ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
    if 5 <= steps <= 20:  # no collisions at these counts: every inner point is the timestep nearest its target
        hi, lo = min(float(log_sigma[-1]), math.log(SIGMA_MAX)), float(log_sigma[0])
        targets = {"logsnr": [hi + k / (steps - 1) * (lo - hi) for k in range(steps)],
                   "karras": [7 * math.log(math.exp(hi / 7) + k / (steps - 1) * (math.exp(lo / 7) - math.exp(hi / 7)))
                              for k in range(steps)]}
        for spacing, tg in targets.items():
            ts = timestep_grid(s, steps, spacing)
            for k in range(1, steps):
                assert ts[k] == int((log_sigma - tg[k]).abs().argmin()), (spacing, k)
    assert timestep_grid(s, steps, "uniform") == respaced_timesteps(1000, steps)
    with pytest.raises(SynthpairError, match="spacing"):
        timestep_grid(s, steps, "cubic")  # type: ignore[arg-type]
