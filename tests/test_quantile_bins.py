"""``infvideo.ops.quantile_bins`` on every kernel present: bit-identical to the reference sampler.
A smooth basis's sample times (``kernels.sampling.quantile_points``: the same search, then the
place inside each bin): within float64 rounding of the reference's."""
from __future__ import annotations

import pytest
import torch

import infvideo.ops as ops
from infvideo import backends
from infvideo.reference import sticky
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
# (streams, groups, bins K, samples M): odd counts, more bins than one search block.
POINT_CASES = [(3, 2, 13, 17), (2, 5, 250, 37), (1, 24, 30, 64)]
GPU_POINT_CASES = [(64, 24, 250, 512), (5, 3, 1000, 1000)]


def point_cases():
    return [pytest.param(device, case, id=f"{device}-{case}") for device in TRITON_DEVICES
            for case in POINT_CASES + (GPU_POINT_CASES if device == "cuda" else [])]


@pytest.mark.parametrize("device,case", point_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantile_points_match_reference(device, case, dtype):
    """The sample times of a smooth basis: the reference's bins and, within float64 rounding, its
    fractions inside them (sorted, in [0, 1])."""
    streams, groups, bins, samples = case
    gen = torch.Generator().manual_seed(bins + samples)
    mass = (torch.rand(streams, groups, bins, generator=gen) ** 4).to(dtype)
    mass[:, :, bins // 3: bins // 2] = 0
    mass[0] = 0  # a stream emptied by reset(streams=...): every sample reads the last bin
    want = sticky.sample_points(*sticky.quantile_samples(mass, samples), bins)
    got = backends.triton_kernels()["sampling"].quantile_points(mass.to(device), samples)
    assert got.dtype == torch.float64 and got.shape == (streams, samples)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-14, atol=1e-15)
    assert bool((got.diff(dim=-1) >= 0).all())
