"""``infvideo.ops.quantile_bins`` on every kernel present: bit-identical to the reference sampler.
The Gaussian basis's sample basis (``kernels.sampling.quantile_basis``: the same search, then ψ at
the sample points in float64): within float32 rounding of the reference's past samples."""
from __future__ import annotations

import pytest
import torch

import infvideo.ops as ops
from infvideo import backends
from infvideo.config import MemoryConfig
from infvideo.reference import sticky
from infvideo.reference.basis import gaussian_basis
from infvideo.reference.step import past_samples
from conftest import CUDA, OP_KERNELS, kernel_cases, kernel_id

# (streams, groups, bins K, samples M); the large ones cover programs holding several blocks of samples.
CASES = kernel_cases([(3, 1, 13, 17), (2, 5, 7, 100), (5, 70, 40, 9), (1, 24, 256, 512)],
                     large=[(4, 3, 999, 64), (100, 3, 256, 500), (70, 24, 64, 512), (300, 5, 13, 203),
                            (1, 2, 256, 1000)])


@pytest.mark.parametrize("device,backend,case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_bit_identical(device, backend, case, dtype):
    streams, groups, bins, samples = case
    gen = torch.Generator().manual_seed(bins + samples)
    mass = torch.rand(streams, groups, bins, generator=gen) ** 4  # peaked, with small bins
    mass[:, :, bins // 3: bins // 2] = 0  # bins without mass are never drawn
    mass[0, :, : bins // 2] = 0  # an empty half: quantiles jump over it
    mass = mass.to(device, dtype)
    got = ops.quantile_bins(mass, samples, backend=backend)
    assert got.dtype == torch.int32 and got.shape == (streams, samples)
    assert torch.equal(got.long().cpu(), sticky.quantile_bins(mass.cpu(), samples)[0])
    flat = ops.quantile_bins(mass[:, 0], samples, backend=backend)  # [S, K] input
    assert torch.equal(flat.long().cpu(), sticky.quantile_bins(mass[:, 0].cpu(), samples)[0])


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_zero_mass_stream(device, backend):
    """A stream emptied by reset(streams=...) has no mass: every sample reads the last bin, as in the reference."""
    mass = torch.zeros(2, 3, 8, device=device)
    mass[1] = torch.rand(3, 8)
    got = ops.quantile_bins(mass, 5, backend=backend)
    assert torch.equal(got.long().cpu(), sticky.quantile_bins(mass.cpu(), 5)[0])


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_opcheck(device, backend):
    mass = torch.rand(2, 2, 7, generator=torch.Generator().manual_seed(0)).to(device)
    torch.library.opcheck(torch.ops.infvideo.quantile_bins.default, (mass, 9, backend))


TRITON_DEVICES = [d for d in ("cpu", "cuda") if backends.triton_runs_on(torch.device(d)) and (d != "cuda" or CUDA)]
# (streams, groups, num_basis, sigmas, samples M, quad_points): odd sample counts, more bins than
# one search block, basis counts off the column tile.
BASIS_CASES = [(3, 2, 12, (0.05, 0.1), 17, 40), (2, 5, 96, (0.005, 0.01), 37, 1000), (1, 24, 30, (0.02,), 64, 300)]
GPU_BASIS_CASES = [(64, 24, 256, (0.005, 0.01), 512, 1000), (5, 3, 258, (0.005, 0.01, 0.02), 1000, 4000)]


def basis_cases():
    return [pytest.param(device, case, id=f"{device}-{case}") for device in TRITON_DEVICES
            for case in BASIS_CASES + (GPU_BASIS_CASES if device == "cuda" else [])]


@pytest.mark.parametrize("device,case", basis_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_quantile_basis_matches_reference(device, case, dtype):
    """Same bins as the reference search, ψ within float32 rounding (float64: 1e-12 relative)."""
    streams, groups, num_basis, sigmas, samples, points = case
    cfg = MemoryConfig(num_basis=num_basis, basis="gaussian", sigmas=sigmas, past_samples=samples, quad_points=points)
    gen = torch.Generator().manual_seed(num_basis + samples)
    mass = torch.rand(streams, groups, cfg.sticky_bins, generator=gen) ** 4
    mass[:, :, cfg.sticky_bins // 3: cfg.sticky_bins // 2] = 0
    mass[0] = 0  # a stream emptied by reset(streams=...): every sample reads the last bin
    want = past_samples(cfg, mass, torch.float64, torch.device("cpu")).dense
    basis = gaussian_basis(num_basis, sigmas)
    got = backends.triton_kernels()["sampling"].quantile_basis(
        mass.to(device), samples, basis.mu.to(device), basis.sigma.to(device), dtype)
    assert got.dtype == dtype and got.shape == (streams, samples, num_basis)
    tol = 1e-12 if dtype == torch.float64 else 2 ** -23
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol * float(want.abs().max()))
