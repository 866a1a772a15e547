"""RePaint maths (diffusion/repaint.py): jump schedule, known-region exactness, NFE, per-pair determinism."""
from __future__ import annotations

import math

import pytest
import torch

from synthpair.diffusion.repaint import counting, jump_schedule, repaint, schedule_nfe, truncated_timesteps
from synthpair.diffusion.sampling import respaced_timesteps, sample
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from synthpair.errors import SynthpairError

SCHED = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="eps"))


def eps_net(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    """A deterministic stand-in network (eps prediction), per-sample (no batch coupling)."""
    return 0.3 * torch.tanh(x) + 0.01 * t.view(-1, 1, 1, 1).float() / 100


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_jump_schedule_hand_worked() -> None:
    # n=5, L=2, r=2: jump points {0, 2} (range(0, 5 - 2, 2)), each revisited once
    assert jump_schedule(5, 2, 2) == [4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    # n=6, L=3, r=3: jump points {0} only (range(0, 3, 3)); two jumps of 3 at state 0
    assert jump_schedule(6, 3, 3) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, -1]
    # no resampling: the plain chain
    assert jump_schedule(4, 2, 1) == [3, 2, 1, 0, -1]
    # jump length >= n: no jump point
    assert jump_schedule(3, 5, 4) == [2, 1, 0, -1]


@pytest.mark.parametrize("n,L,r", [(250, 10, 10), (50, 5, 3), (25, 1, 5), (7, 3, 2)])
def test_jump_schedule_structure_and_nfe(n: int, L: int, r: int) -> None:
    s = jump_schedule(n, L, r)
    assert s[0] == n - 1 and s[-1] == -1 and min(s) == -1 and max(s) == n - 1
    assert all(abs(a - b) == 1 for a, b in zip(s, s[1:]))
    downs = sum(b < a for a, b in zip(s, s[1:]))
    assert downs == schedule_nfe(n, L, r)
    # each jump point j is left upwards exactly r - 1 times
    for j in range(0, n - L, L):
        assert sum(a == j and b == j + 1 for a, b in zip(s, s[1:])) == r - 1
    assert schedule_nfe(250, 10, 10) == 2410  # the reference RePaint cost


def test_all_known_mask_returns_input_exactly() -> None:
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    m = torch.ones(3, 1, 8, 8, dtype=torch.bool)
    for sampler in ("ddpm", "ddim"):
        res = repaint(eps_net, SCHED, x, m, steps=10, jump_length=2, resample=3, sampler=sampler, eta=0.5,
                      generators=_gens([0, 1, 2]))
        assert torch.equal(res.x0, x)


def test_known_region_kept_and_unknown_changes() -> None:
    x = torch.rand(2, 2, 8, 8) * 2 - 1
    m = torch.ones(2, 2, 8, 8, dtype=torch.bool)
    m[:, :, 2:6, 2:6] = False
    res = repaint(eps_net, SCHED, x, m, steps=8, jump_length=2, resample=2, generators=_gens([3, 4]))
    assert torch.equal(res.x0[m], x[m])
    assert (res.x0[~m] - x[~m]).abs().mean() > 0.05
    assert res.x0.abs().max() <= 1.0


def test_nfe_counts_network_calls() -> None:
    x = torch.zeros(2, 1, 4, 4)
    m = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    for n, L, r in [(10, 2, 3), (12, 3, 1), (9, 4, 4)]:
        net = counting(eps_net)
        res = repaint(net, SCHED, x, m, steps=n, jump_length=L, resample=r, sampler="ddim", generators=_gens([0, 1]))
        assert res.nfe == net.calls == schedule_nfe(n, L, r)


def test_unknown_everywhere_without_resampling_is_the_plain_sampler() -> None:
    # with nothing known and r = 1, RePaint is ancestral DDPM sampling from x_T = sqrt(abar_T) * 0 + ... noise:
    # start from the same first noise draw and compare with sample()
    x = torch.zeros(2, 1, 6, 6)
    m = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    res = repaint(eps_net, SCHED, x, m, steps=10, jump_length=1, resample=1, sampler="ddpm", generators=_gens([5, 6]))
    g = _gens([5, 6])
    top = respaced_timesteps(SCHED.T, 10)[0]
    a = float(SCHED.alphas_cumprod64[top])
    x_T = torch.stack([math.sqrt(1 - a) * torch.randn((1, 6, 6), generator=gi) for gi in g])
    for gi in g:  # repaint also draws the (unused) known-region noise at the top state
        torch.randn((1, 6, 6), generator=gi)

    def discard_known_noise(x_prev: torch.Tensor, i: int, t_prev: int) -> torch.Tensor:
        for gi in g:  # repaint draws the known-region noise after each step's ancestral noise
            torch.randn((1, 6, 6), generator=gi)
        return x_prev

    ref = sample(eps_net, SCHED, x_T, sampler="ddpm", steps=10, generators=g, hook=discard_known_noise)
    assert torch.allclose(res.x0, ref, atol=1e-6)


def test_per_pair_determinism_independent_of_batch() -> None:
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    m = torch.ones(3, 1, 8, 8, dtype=torch.bool)
    m[:, :, 1:5, 3:7] = False
    kw = dict(steps=8, jump_length=2, resample=2, sampler="ddim", eta=1.0)
    full = repaint(eps_net, SCHED, x, m, generators=_gens([10, 11, 12]), **kw).x0
    alone = repaint(eps_net, SCHED, x[1:2], m[1:2], generators=_gens([11]), **kw).x0
    swapped = repaint(eps_net, SCHED, x[[2, 1]], m[[2, 1]], generators=_gens([12, 11]), **kw).x0
    assert torch.equal(full[1], alone[0]) and torch.equal(full[1], swapped[1]) and torch.equal(full[2], swapped[0])
    other = repaint(eps_net, SCHED, x[1:2], m[1:2], generators=_gens([99]), **kw).x0
    assert not torch.equal(other[0], alone[0])


def test_partial_chain_strength() -> None:
    x = torch.rand(2, 2, 8, 8) * 2 - 1
    init = torch.rand(2, 2, 8, 8) * 2 - 1
    m = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    m[:, 1] = True
    res0 = repaint(eps_net, SCHED, x, m, steps=20, strength=0.0, init=init, generators=_gens([0, 1]))
    assert res0.nfe == 0 and torch.equal(res0.x0, torch.where(m, x, init))
    assert truncated_timesteps(100, 20, 0.3) == [t for t in respaced_timesteps(100, 20) if t < 30]
    res = repaint(eps_net, SCHED, x, m, steps=20, strength=0.3, init=init, sampler="ddim", eta=0.0,
                  generators=_gens([0, 1]))
    assert res.nfe == len(truncated_timesteps(100, 20, 0.3))
    assert torch.equal(res.x0[:, 1], x[:, 1])  # known channel kept exactly


def test_bad_inputs() -> None:
    x = torch.zeros(2, 2, 4, 4)
    with pytest.raises(SynthpairError, match="generators"):
        repaint(eps_net, SCHED, x, torch.ones(2, 1, 4, 4, dtype=torch.bool), steps=3, generators=None)
    with pytest.raises(SynthpairError, match="known_mask"):
        repaint(eps_net, SCHED, x, torch.ones(2, 3, 4, 4, dtype=torch.bool), steps=3, generators=_gens([0, 1]))
    with pytest.raises(SynthpairError, match="strength"):
        truncated_timesteps(100, 10, 1.5)
    with pytest.raises(SynthpairError):
        jump_schedule(0, 1, 1)
