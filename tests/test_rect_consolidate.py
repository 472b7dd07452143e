"""``infvideo.ops.rect_consolidate`` on every kernel present against the reference consolidation.

Tolerance 1e-5 relative for every input dtype: both sides pool and sum the same rounded values in
float32, in a different order. The cast copy is within one unit in the last place of its type
(the CPU interpreter truncates) and subnormals within its smallest normal (the GPU may flush them).
"""
from __future__ import annotations

import pytest
import torch

import infvideo.ops as ops
from infvideo.config import MemoryConfig
from infvideo.reference import consolidate as ref_consolidate
from infvideo.reference import fit as ref_fit
from infvideo.reference import sticky
from infvideo.reference.pooling import pool_frames
from conftest import DTYPES, OP_KERNELS, kernel_cases, kernel_id, rel_err, tokens_shape

# (streams, L, N, M, e, tokens per frame): odd sizes everywhere; the and larger ones where fast.
CASES = kernel_cases([(1, 9, 13, 17, 20, (5,)), (3, 7, 11, 6, 33, None), (2, 8, 16, 24, 40, (3, 3))],
                     large=[(2, 256, 256, 512, 768, (32,))],
                     gpu=[(4, 256, 256, 512, 768, (32,)), (3, 37, 61, 97, 1024, (196,)), (64, 64, 64, 512, 257, None)])


@pytest.mark.parametrize("device,backend,case", CASES)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, backend, case, preset, dtype):
    streams, length, n, samples, width, tokens = case
    cfg = MemoryConfig(num_basis=n, past_samples=samples, tau=0.7, preset=preset)
    gen = torch.Generator().manual_seed(n * length)
    frames = torch.randn(tokens_shape(streams, length, tokens, width), generator=gen).to(device, dtype)
    pooled = pool_frames(frames, torch.float32)
    past = torch.randn(streams, n, width, generator=gen).to(device)
    first, later = ref_fit.first_fit(cfg, length), ref_fit.consolidation_fit(cfg, length)
    first_dev = ref_fit.on_device(first, device, torch.float32)
    later_dev = ref_fit.on_device(later, device, torch.float32)
    later_plan = ops.plan_on(later, device)

    out, cast = ops.rect_consolidate(frames, None, ops.plan_on(first, device), cast_dtype=dtype, backend=backend)
    assert rel_err(out, ref_consolidate.consolidate_segmented(pooled, None, None, first_dev)) < 1e-5
    assert cast.dtype == dtype
    torch.testing.assert_close(cast.float(), out, rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).tiny)

    bins = torch.randint(-1, n, (streams, samples), generator=gen).to(device)
    out = ops.rect_consolidate(frames, past, later_plan, bins, backend=backend)
    assert rel_err(out, ref_consolidate.consolidate_segmented(pooled, past, bins, later_dev, False)) < 1e-5

    shared = bins[:1]  # one row of sample bins read by every stream
    out = ops.rect_consolidate(frames, past, later_plan, shared, backend=backend)
    expected = ref_consolidate.consolidate_segmented(pooled, past, shared.expand(streams, -1), later_dev, False)
    assert rel_err(out, expected) < 1e-5

    mass = torch.rand(streams, 3, n, generator=gen).to(device)
    sticky_bins = ops.quantile_bins(mass, samples, backend=backend)
    out = ops.rect_consolidate(frames, past, later_plan, sticky_bins, backend=backend)
    expected = ref_consolidate.consolidate_segmented(pooled, past, sticky.quantile_bins(mass, samples)[0], later_dev)
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_strided_inputs(device, backend):
    """Non-contiguous frames (a slice of a wider chunk) and an expanded past read like contiguous ones."""
    cfg = MemoryConfig(num_basis=10, past_samples=14, tau=0.6)
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(2, 12, 4, 30, generator=gen).to(device)
    frames = wide[:, ::2, 1:, ::3]  # [2, 6, 3, 10], no unit stride on the last dimension
    past = torch.randn(1, 10, 10, generator=gen).to(device).expand(2, -1, -1)
    later = ops.plan_on(ref_fit.consolidation_fit(cfg, 6), device)
    bins = torch.randint(0, 10, (2, 14), generator=gen).to(device)
    out = ops.rect_consolidate(frames, past, later, bins, backend=backend)
    expected = ops.rect_consolidate(frames.contiguous(), past.contiguous(), later, bins, backend=backend)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_opcheck(device, backend):
    """The one schema, its fake (shapes from the inputs alone) and the kernel ``backend`` picks."""
    gen = torch.Generator().manual_seed(0)
    plan = ops.plan_on(ref_fit.consolidation_fit(MemoryConfig(num_basis=7, past_samples=9, tau=0.6), 5), device)
    frames = torch.randn(2, 5, 3, 8, generator=gen).to(device)
    past = torch.randn(2, 7, 8, generator=gen).to(device)
    bins = torch.randint(-1, 7, (1, 9), generator=gen).to(device)
    maps = (plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale)
    op = torch.ops.infvideo.rect_consolidate.default
    torch.library.opcheck(op, (frames, past, bins, *maps), {"backend": backend})
    torch.library.opcheck(op, (frames, None, None, *maps), {"cast_dtype": torch.bfloat16, "backend": backend})
