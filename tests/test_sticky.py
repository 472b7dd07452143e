"""Sticky sampling (SPEC section 7): quantile, multinomial and the upstream sampler, and the statistic
they read for the Gaussian basis (the quadrature rule's bins)."""
from __future__ import annotations

import pytest
import torch

from infvideo import LongTermMemory
from infvideo.config import MemoryConfig
from infvideo.reference.attention import attention_constants, quadrature_weights
from infvideo.reference.sticky import multinomial_samples, quadrature_mass, quantile_bins, quantile_samples
from conftest import gaussian_basis_values, random_linear


def _mass(streams=3, bins=17, seed=0, groups=None):
    gen = torch.Generator().manual_seed(seed)
    shape = (streams, bins) if groups is None else (streams, groups, bins)
    return torch.rand(shape, generator=gen, dtype=torch.float64) ** 3


def _times(idx, frac):
    return idx.to(torch.float64) + frac


def _assert_sorted(idx, frac):
    t = _times(idx, frac)
    assert bool((t.diff(dim=-1) >= 0).all()), "samples must be sorted in time"


def test_quantile_samples_sorted_and_deterministic():
    mass = _mass()
    idx, frac = quantile_samples(mass, 101)
    assert idx.shape == frac.shape == (3, 101) and idx.dtype == torch.int64
    _assert_sorted(idx, frac)
    assert bool(((frac >= 0) & (frac <= 1)).all())
    again = quantile_samples(mass.clone(), 101)
    assert torch.equal(idx, again[0]) and torch.equal(frac, again[1])
    bins, _, _ = quantile_bins(mass, 101)
    assert torch.equal(bins, idx)


def test_quantile_inverts_the_piecewise_linear_cdf():
    mass = _mass(streams=2, bins=9, seed=3)
    count = 64
    idx, frac = quantile_samples(mass, count)
    cdf = torch.cat([torch.zeros(2, 1, dtype=torch.float64), (mass / mass.sum(-1, keepdim=True)).cumsum(-1)], -1)
    # F(u) at each sample, F piecewise linear between bin edges: must equal the level (i − ½)/M.
    at = cdf.gather(-1, idx) + frac * (cdf.gather(-1, idx + 1) - cdf.gather(-1, idx))
    levels = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    torch.testing.assert_close(at, levels.expand(2, count), rtol=0, atol=1e-12)


def test_quantile_follows_the_mass():
    mass = torch.zeros(2, 10, dtype=torch.float64)
    mass[0, 2], mass[0, 7] = 1.0, 3.0
    mass[1, 0], mass[1, 9] = 5.0, 5.0
    idx, frac = quantile_samples(mass, 400)
    assert set(idx[0].tolist()) == {2, 7}
    assert (idx[0] == 2).sum() == 100 and (idx[0] == 7).sum() == 300
    assert set(idx[1].tolist()) == {0, 9}
    assert (idx[1] == 0).sum() == 200 and (idx[1] == 9).sum() == 200
    # Inside a bin the samples spread evenly: fractions (k − ½)/count of that bin.
    inside = frac[0, idx[0] == 2]
    torch.testing.assert_close(inside, (torch.arange(100, dtype=torch.float64) + 0.5) / 100)


def test_groups_are_added_up():
    grouped = _mass(groups=4, seed=5)
    for a, b in zip(quantile_samples(grouped, 50), quantile_samples(grouped.sum(1), 50)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_multinomial_reproducible_sorted_and_seeded():
    mass = _mass()
    a = multinomial_samples(mass, 200, torch.Generator().manual_seed(7))
    b = multinomial_samples(mass, 200, torch.Generator().manual_seed(7))
    c = multinomial_samples(mass, 200, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(_times(*a), _times(*c))
    _assert_sorted(*a)
    _assert_sorted(*c)
    assert bool(((a[1] >= 0) & (a[1] < 1)).all())


def test_multinomial_draws_only_where_mass_is():
    mass = torch.zeros(1, 12, dtype=torch.float64)
    mass[0, 3], mass[0, 8] = 1.0, 1.0
    idx, _ = multinomial_samples(mass, 500, torch.Generator().manual_seed(0))
    assert set(idx[0].tolist()) == {3, 8}
    assert 150 < int((idx[0] == 3).sum()) < 350


def _memory_run(generator, sampling="multinomial", basis="rectangular", chunks=3):
    kwargs = dict(num_basis=16, past_samples=40, sampling=sampling, basis=basis)
    if basis == "gaussian":
        kwargs.update(sigmas=(0.05, 0.1), quad_points=100)
    memory = LongTermMemory(**kwargs, generator=generator)
    pk, pv = random_linear(10, 8, seed=1, scale=3.0), random_linear(10, 8, seed=2)
    gen = torch.Generator().manual_seed(3)
    outs = []
    with torch.no_grad():
        for _ in range(chunks):
            outs.append(memory(torch.randn(2, 5, 10, generator=gen), torch.randn(2, 4, 8, generator=gen), pk, pv, 2))
    return outs, memory


@pytest.mark.parametrize("basis", ["rectangular", "gaussian"])
def test_memory_multinomial_reproducible(basis):
    a, ma = _memory_run(torch.Generator().manual_seed(0), basis=basis)
    b, mb = _memory_run(torch.Generator().manual_seed(0), basis=basis)
    c, mc = _memory_run(torch.Generator().manual_seed(1), basis=basis)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert torch.equal(ma.coef, mb.coef)
    assert not torch.equal(ma.coef, mc.coef), "another seed should draw other samples"


@pytest.mark.parametrize("basis", ["rectangular", "gaussian"])
def test_memory_upstream_sampling_runs(basis):
    outs, memory = _memory_run(torch.Generator().manual_seed(0), sampling="upstream", basis=basis)
    for out in outs:
        assert out.shape == (2, 4, 8) and torch.isfinite(out).all()
    assert torch.isfinite(memory.coef).all()
    stats = memory.sticky_stats
    assert stats.shape[0] == 2 and stats.shape[-1] == 127
    hist = stats.reshape(2, -1)
    torch.testing.assert_close(hist.sum(-1).to(torch.float64), torch.ones(2, dtype=torch.float64))



def _published_draws(hist: torch.Tensor, count: int) -> None:
    """The published sampler's calls on the global generators, written out: b ~ Categorical(P of
    stream 0) on the histogram's device, then a within-bin offset from a one-category Categorical
    built on the CPU (M draws, always 0)."""
    torch.distributions.Categorical(hist[0, 0].to(torch.float32)).sample((count,))
    torch.distributions.Categorical(torch.ones(1)).sample((count, 1))


def _rng_states(device: torch.device) -> list[torch.Tensor]:
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def _set_rng_states(device: torch.device, states: list[torch.Tensor]) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


@pytest.mark.parametrize("seeded,device", [("generator", "cpu"), ("global", "cpu"), ("global", "cuda")])
def test_upstream_sampler_consumes_the_generator_as_published(seeded, device):
    """After each sticky step the generators are where the published sequence of draws leaves them:
    the memory's own CPU generator, or torch's global ones when the memory has none (on CUDA the
    bins come from the CUDA generator and the offsets from the CPU one, as in the published code)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device(device)
    count = 20
    own = torch.Generator().manual_seed(5) if seeded == "generator" else None
    replay = torch.Generator().manual_seed(5)
    memory = LongTermMemory(num_basis=16, past_samples=count, preset="paper", sampling="upstream",
                            generator=own).to(device)
    data = torch.Generator().manual_seed(1)
    pk, pv = random_linear(8, 12, seed=2).to(device), random_linear(8, 12, seed=3).to(device)
    torch.manual_seed(5)
    with torch.no_grad():
        for step in range(4):
            hist, before = memory.sticky_stats.clone(), _rng_states(device)
            frames, query = torch.randn(1, 9, 8, generator=data), torch.randn(1, 5, 12, generator=data)
            memory(frames.to(device), query.to(device), pk, pv, 3)
            after = _rng_states(device)
            if step == 0:  # the first chunk of a video samples nothing
                assert all(torch.equal(a, b) for a, b in zip(after, before))
                continue
            if seeded == "generator":
                torch.multinomial(hist[0, 0].double(), count, True, generator=replay)
                torch.multinomial(torch.ones(1, 1), count, True, generator=replay)
                assert torch.equal(own.get_state(), replay.get_state()), f"step {step}"
                assert torch.equal(after[0], before[0]), "the global generator is not the memory's"
            else:
                _set_rng_states(device, before)
                _published_draws(hist, count)
                assert all(torch.equal(a, b) for a, b in zip(after, _rng_states(device))), f"step {step}"


def _gaussian_density(preset: str, points: int, scale: float = 0.05, seed: int = 0):
    """(config, rule constants, slot scores a [2, 3, 5, 16], Σ_q p at the rule's nodes [2, 3, T])."""
    cfg = MemoryConfig(num_basis=16, basis="gaussian", sigmas=(0.05, 0.1), quad_points=points, preset=preset)
    const = attention_constants(cfg)
    a = torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return cfg, const, a, quadrature_weights(a, const)[1].sum(2)


@pytest.mark.parametrize("preset,points", [("exact", 1000), ("exact", 50), ("paper", 1000), ("paper", 37)])
def test_quadrature_mass_adds_up_to_the_density_total(preset, points):
    """K = sticky_bins masses per (stream, head) whose sum is the rule's Σ_j ω_j Σ_q p(t_j) = Q."""
    cfg, const, _, density = _gaussian_density(preset, points, scale=0.3)
    mass = quadrature_mass(density, const)
    assert mass.shape == (2, 3, cfg.sticky_bins) and mass.dtype == torch.float32 and bool((mass >= 0).all())
    total = (density * const.log_weight.exp()).sum(-1)
    torch.testing.assert_close(mass.sum(-1).double(), total, rtol=1e-6, atol=0)
    torch.testing.assert_close(total, torch.full_like(total, 5.0), rtol=1e-12, atol=0)


def test_panel_mass_is_the_integral_of_the_density_over_each_panel():
    """Exact preset: the mass of sticky bin k is ∫ p over [k/K, (k+1)/K] (a fine float64 integral here)."""
    cfg, const, a, density = _gaussian_density("exact", 200, scale=0.05, seed=4)
    panels = cfg.quad_panels
    fine_t = (torch.arange(panels * 400, dtype=torch.float64) + 0.5) / (panels * 400)  # midpoints
    s = a @ gaussian_basis_values(fine_t, 16, (0.05, 0.1)).T
    p = torch.exp(s - s.amax(-1, keepdim=True))
    p = p / p.mean(-1, keepdim=True)  # ∫₀¹ p = 1
    expected = (p.sum(2) / (panels * 400)).unflatten(-1, (panels, 400)).sum(-1)
    got = quadrature_mass(density, const).double()
    assert float((got - expected).abs().max() / expected.max()) <= 1e-5


def test_gaussian_memory_keeps_panel_masses():
    """A Gaussian memory under the exact preset keeps [S, G, ⌈T/8⌉] masses adding up to H·Q per stream."""
    memory = LongTermMemory(num_basis=16, past_samples=40, basis="gaussian", sigmas=(0.05, 0.1), quad_points=100)
    pk, pv = random_linear(10, 8, seed=1, scale=3.0), random_linear(10, 8, seed=2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(2):
            memory(torch.randn(2, 5, 10, generator=gen), torch.randn(2, 4, 8, generator=gen), pk, pv, 2)
    stats = memory.sticky_stats
    assert memory.config.sticky_bins == 13 and stats.shape[0] == 2 and stats.shape[-1] == 13
    torch.testing.assert_close(stats.double().sum(dim=(1, 2)), torch.full((2,), 8.0, dtype=torch.float64),
                               rtol=1e-5, atol=0)
