"""``infvideo.kernels.gaussian_fit.sample_mix``: G_pastᵀ Ψ(u) with ψ evaluated inside the product,
against float64 on the same inputs.

Tolerance: 1e-6 relative (Frobenius) for sorted sample times spread over [0, 1], concentrated in a
narrow window (most tiles loop over no sample or all), with ties, and packed just outside a tile's
centres. The products are three-TF32 on a GPU (float32 accuracy, about 3e-7), exact float32 dots in
the interpreter; the samples left out are below e^-32 of ψ's peak.
"""
from __future__ import annotations

import pytest
import torch

from infvideo import backends
from infvideo.config import MemoryConfig
from infvideo.reference.basis import gaussian_parameters, gaussian_values
from infvideo.ops import gaussian_consolidation
from infvideo.reference.fit import consolidation_fit
from conftest import CUDA, rel_err

DEVICES = [d for d in ("cpu", "cuda") if backends.triton_runs_on(torch.device(d)) and (d != "cuda" or CUDA)]
# (streams, num_basis, sigmas, samples M): odd sizes, tiles cut at the edges.
CASES = [(3, 12, (0.05, 0.1), 17), (2, 96, (0.005, 0.01), 37), (1, 30, (0.02,), 64)]
GPU_CASES = [(64, 256, (0.005, 0.01), 512), (5, 258, (0.005, 0.01, 0.02), 1000)]
LAYOUTS = ["spread", "narrow", "ties"]


def cases():
    return [pytest.param(device, case, id=f"{device}-{case}") for device in DEVICES
            for case in CASES + (GPU_CASES if device == "cuda" else [])]


def sample_times(layout: str, streams: int, samples: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.rand(streams, samples, generator=gen, dtype=torch.float64)
    if layout == "narrow":
        t = 0.6 + 0.02 * t
    if layout == "ties":  # a quantile sampler's bin without mass puts several samples at its edge
        t = (t * 7).floor() / 7
    return t.sort(-1).values


def constants(num_basis, sigmas, device):
    return gaussian_consolidation.sample_constants(num_basis, sigmas, torch.device(device))


@pytest.mark.parametrize("device,case", cases())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sample_mix_matches_float64(device, case, layout):
    streams, num_basis, sigmas, samples = case
    gen = torch.Generator().manual_seed(num_basis + samples)
    # Stored transposed: the kernel reads G by strides.
    past_g = torch.randn(num_basis, samples, generator=gen).T
    t = sample_times(layout, streams, samples, gen)
    mu, sigma = gaussian_parameters(num_basis, sigmas)
    want = past_g.double().T @ gaussian_values(t, mu, sigma)
    kernels = backends.triton_kernels()
    got = kernels["gaussian_fit"].sample_mix(past_g.to(device), t.to(device), *constants(num_basis, sigmas, device),
                                            kernels["products"].precision(torch.device(device)))
    assert got.dtype == torch.float32 and got.shape == (streams, num_basis, num_basis)
    assert rel_err(got.cpu(), want) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_sample_mix_on_the_fit(device):
    """The exact preset's own fit rows (large, alternating signs) at quantile-like sorted times."""
    cfg = MemoryConfig(num_basis=64, basis="gaussian", past_samples=96)
    past_g = consolidation_fit(cfg, 40).past_g
    t = sample_times("spread", 2, cfg.past_samples, torch.Generator().manual_seed(0))
    mu, sigma = gaussian_parameters(cfg.num_basis, cfg.sigmas)
    want = past_g.T @ gaussian_values(t, mu, sigma)
    kernels = backends.triton_kernels()
    got = kernels["gaussian_fit"].sample_mix(past_g.to(device, torch.float32), t.to(device),
                                            *constants(cfg.num_basis, cfg.sigmas, device),
                                            kernels["products"].precision(torch.device(device)))
    assert rel_err(got.cpu(), want) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["below", "above"])
def test_sample_mix_keeps_times_near_a_tile(device, side):
    """Times packed just outside a column tile's centres (within 1 to 3 of its widths) still reach
    it: the band test widens each tile by the cutoff on both sides."""
    kernels = backends.triton_kernels()
    num_basis, sigmas, samples = 256, (0.005, 0.01), 64
    block_n = kernels["gaussian_fit"].TILES[1]
    mu, sigma = gaussian_parameters(num_basis, sigmas)
    offset = 0.01 + 0.02 * torch.rand(2, samples, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = (mu[block_n] - offset if side == "below" else mu[2 * block_n - 1] + offset).sort(-1).values
    past_g = torch.randn(samples, num_basis, generator=torch.Generator().manual_seed(2))
    want = past_g.double().T @ gaussian_values(t, mu, sigma)
    got = kernels["gaussian_fit"].sample_mix(past_g.to(device), t.to(device), *constants(num_basis, sigmas, device),
                                            kernels["products"].precision(torch.device(device)))
    assert rel_err(got.cpu(), want) < 1e-6
