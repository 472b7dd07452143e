"""``infvideo.ops.rect_consolidate`` on every kernel present against the reference consolidation.

Tolerance 1e-5 relative for every input dtype: both sides pool and sum the same rounded values in
float32, in a different order. The cast copy is within one unit in the last place of its type
(the CPU interpreter truncates) and subnormals within its smallest normal (the GPU may flush them).
Gradients (the registered backward) against float64 reference gradients: conftest.GRAD_TOL; and
since B is linear in frames and past, a float64 gradcheck of the op itself with a unit step
(central differences of a linear map are exact, so float32 outputs do not blur them).
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
from conftest import DTYPES, GRAD_TOL, OP_KERNELS, grads_of, kernel_cases, kernel_id, rel_err, tokens_shape

# (streams, L, N, M, e, tokens per frame): odd sizes everywhere; the and larger ones where fast.
# e = 300 spans several of the few-stream column blocks, so bins without frames take programs of
# several blocks (kernels.consolidate's past_blocks_few_streams), the last one partly past e.
CASES = kernel_cases([(1, 9, 13, 17, 20, (5,)), (3, 7, 11, 6, 33, None), (2, 8, 16, 24, 40, (3, 3)),
                      (2, 9, 13, 40, 300, (2,))],
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


TRITON_KERNELS = [pair for pair in OP_KERNELS if pair[1] == "triton"]


@pytest.mark.parametrize("device,backend", TRITON_KERNELS, ids=kernel_id)
@pytest.mark.parametrize("streams", [2, 16])
@pytest.mark.parametrize("bins,blocks", [(2, 1), (4, 2), (8, 16)])
@pytest.mark.parametrize("samples", [30, 1000])
def test_bins_without_frames_in_runs(device, backend, streams, bins, blocks, samples, monkeypatch):
    """The Triton kernel's programs for runs of bins without frames (CONFIG past_bins, past_blocks,
    and their few-stream values), runs cut by the frames' first bin and by N, against the reference;
    with 1,000 samples a bin holds more than a run's one load takes (and than one block of samples),
    so bins go one at a time, each in several blocks."""
    from infvideo.kernels import consolidate as kernel
    for key, value in (("past_bins", bins), ("past_bins_few_streams", bins), ("past_blocks", blocks),
                       ("past_blocks_few_streams", blocks)):
        monkeypatch.setitem(kernel.CONFIG, key, value)
    length, n, width = 7, 19, 150  # N odd: the last run is cut short
    cfg = MemoryConfig(num_basis=n, past_samples=samples, tau=0.7)
    gen = torch.Generator().manual_seed(bins * blocks)
    frames = torch.randn(streams, length, 3, width, generator=gen).to(device, torch.bfloat16)
    past = torch.randn(streams, n, width, generator=gen).to(device)
    later = ref_fit.consolidation_fit(cfg, length)
    bins_read = torch.randint(-1, n, (streams, samples), generator=gen).to(device)
    out, cast = ops.rect_consolidate(frames, past, ops.plan_on(later, device), bins_read, cast_dtype=torch.bfloat16,
                                     backend=backend)
    expected = ref_consolidate.consolidate_segmented(pool_frames(frames, torch.float32), past, bins_read,
                                                     ref_fit.on_device(later, device, torch.float32), False)
    assert rel_err(out, expected) < 1e-5
    torch.testing.assert_close(cast.float(), out, rtol=torch.finfo(torch.bfloat16).eps, atol=1e-30)


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


GRAD_CASES = kernel_cases([(1, 9, 13, 17, 20, (5,)), (3, 7, 11, 6, 33, None), (2, 8, 16, 24, 40, (3, 3))],
                          large=[(2, 64, 64, 512, 257, (32,))], gpu=[(4, 256, 256, 512, 768, (32,))])


@pytest.mark.parametrize("device,backend,case", GRAD_CASES)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("sampling", ["uniform", "sticky", "shared"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_matches_reference(device, backend, case, preset, sampling, dtype):
    """∂B/∂frames (every token's share) and ∂B/∂past of the registered backward against float64
    reference gradients, for a first chunk and for later chunks whose samples read old bins
    uniformly, by sticky quantiles (many samples per old bin) or through one shared row; the
    cast output's cotangent is added to B's."""
    streams, length, n, samples, width, tokens = case
    cfg = MemoryConfig(num_basis=n, past_samples=samples, tau=0.7, preset=preset)
    gen = torch.Generator().manual_seed(n * length + 1)
    frames = torch.randn(tokens_shape(streams, length, tokens, width), generator=gen).to(device, dtype)
    past = torch.randn(streams, n, width, generator=gen).to(device)
    first, later = ref_fit.first_fit(cfg, length), ref_fit.consolidation_fit(cfg, length)
    if sampling == "sticky":
        mass = torch.rand(streams, 2, n, generator=gen) ** 4  # peaked: old bins read many times
        bins = sticky.quantile_bins(mass, samples)[0].to(device)
    elif sampling == "shared":
        bins = torch.randint(-1, n, (1, samples), generator=gen).to(device)
    else:
        bins = torch.randint(-1, n, (streams, samples), generator=gen).to(device)
    w = [torch.randn(streams, n, width, generator=gen) for _ in range(2)]

    def reference(fit, x, old=None):
        fit = ref_fit.on_device(fit, device, torch.float64)
        return ref_consolidate.consolidate_segmented(pool_frames(x, torch.float64), old,
                                                     None if old is None else bins.expand(streams, -1), fit, False)

    plan = ops.plan_on(first, device)
    got = grads_of(lambda x: ops.rect_consolidate(x, None, plan, cast_dtype=torch.float32, backend=backend),
                   [frames], w)
    want = grads_of(lambda x: reference(first, x), [frames.double()], [w[0] + w[1]])
    assert got[0].dtype == dtype and rel_err(got[0], want[0]) < GRAD_TOL[dtype]

    plan = ops.plan_on(later, device)
    got = grads_of(lambda x, old: ops.rect_consolidate(x, old, plan, bins, backend=backend), [frames, past], w[:1])
    want = grads_of(lambda x, old: reference(later, x, old), [frames.double(), past.double()], w[:1])
    assert rel_err(got[0], want[0]) < GRAD_TOL[dtype]
    assert got[1].dtype == torch.float32 and rel_err(got[1], want[1]) < 1e-5


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_gradcheck_linear(device, backend):
    """gradcheck of the op itself in float64 (frames and past; the kernels read float64 frames):
    B is linear, so central differences with a unit step are exact up to B's float32 rounding."""
    cfg = MemoryConfig(num_basis=7, past_samples=9, tau=0.6, preset="paper")
    gen = torch.Generator().manual_seed(4)
    frames = torch.randn(2, 5, 3, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    past = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    bins = torch.tensor([[0, 0, 0, 2, -1, 3, 6, 6, 1]]).to(device)
    plan = ops.plan_on(ref_fit.consolidation_fit(cfg, 5), device)

    def step(x, old):
        return ops.rect_consolidate(x, old, plan, bins, backend=backend).double()

    assert torch.autograd.gradcheck(step, (frames, past), eps=1.0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_backward_opcheck(device, backend):
    """opcheck with frames and past requiring grad (the autograd registration on the op, its
    AOT-dispatch trace) and of the backward op's schema, fake and kernels."""
    gen = torch.Generator().manual_seed(0)
    plan = ops.plan_on(ref_fit.consolidation_fit(MemoryConfig(num_basis=7, past_samples=9, tau=0.6), 5), device)
    frames = torch.randn(2, 5, 3, 8, generator=gen).to(device).requires_grad_()
    past = torch.randn(2, 7, 8, generator=gen).to(device).requires_grad_()
    bins = torch.randint(-1, 7, (1, 9), generator=gen).to(device)
    maps = (plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale)
    op = torch.ops.infvideo.rect_consolidate.default
    torch.library.opcheck(op, (frames, past, bins, *maps), {"backend": backend})
    torch.library.opcheck(op, (frames, None, None, *maps), {"cast_dtype": torch.bfloat16, "backend": backend})
    grad = torch.randn(2, 7, 8, generator=gen).to(device)
    backward = torch.ops.infvideo.rect_consolidate_backward.default
    torch.library.opcheck(backward, (grad, bins, *maps, 5, 3, torch.bfloat16, True, backend))
    torch.library.opcheck(backward, (grad, None, *maps, 5, 3, torch.float32, False, backend))


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_backward_kernels_match_plain_torch(device, backend):
    """Each backward kernel against the plain-torch formulation (the CUDA key's kernel), with
    samples crowding shared old bins and frames in no bin (paper preset)."""
    from infvideo.ops.rect_consolidate import rect_consolidate_backward_torch

    gen = torch.Generator().manual_seed(8)
    plan = ops.plan_on(ref_fit.consolidation_fit(MemoryConfig(num_basis=9, past_samples=30, preset="paper"), 11),
                       device)
    maps = (plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale)
    grad = torch.randn(3, 9, 21, generator=gen).to(device)
    bins = torch.randint(-1, 3, (3, 30), generator=gen).to(device)
    for with_past in (True, False):
        args = (grad, bins if with_past else None, *maps, 11, 4, torch.bfloat16, with_past)
        got = torch.ops.infvideo.rect_consolidate_backward(*args, backend)
        want = rect_consolidate_backward_torch(*args)
        # Within one bfloat16 unit: the CPU interpreter truncates where the others round.
        assert got[0].dtype == torch.bfloat16
        torch.testing.assert_close(got[0].float(), want[0].float(), rtol=torch.finfo(torch.bfloat16).eps, atol=0)
        assert got[1].shape == want[1].shape and (not with_past or rel_err(got[1], want[1]) < 1e-6)
