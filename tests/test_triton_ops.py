"""Triton ops against the torch reference: CPU via TRITON_INTERPRET=1 (small shapes), full sweep on CUDA.

Tolerances (‖out − ref‖ / ‖ref‖): consolidation 1e-5 for every input dtype (both sides pool and
sum the same rounded values in float32; only the order differs); slot attention 1e-5 with float32
K/V (IEEE dots), 2e-2 with fp16/bf16 K/V (the reference sees the same rounded K/V in float32);
quadrature attention 1e-4 (float32 scores of size |aᵀψ| ~ 10² feed an exponential); the whole
memory step 1e-4.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

CUDA = torch.cuda.is_available()  # without it, conftest.py has set TRITON_INTERPRET=1
pytest.importorskip("triton")

import infvideo.ops as ops  # noqa: E402
from infvideo import LongTermMemory  # noqa: E402
from infvideo.config import MemoryConfig  # noqa: E402
from infvideo.reference import attention as ref_attention  # noqa: E402
from infvideo.reference import consolidate as ref_consolidate  # noqa: E402
from infvideo.reference import fit as ref_fit  # noqa: E402
from infvideo.reference import sticky  # noqa: E402
from infvideo.reference.pooling import pool_frames  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def tokens_shape(streams, length, tokens, width):
    return (streams, length, *tokens, width) if tokens else (streams, length, width)


# Small shapes on the CPU interpreter, the sizes on the GPU.
CONSOLIDATE_CASES = [(1, 9, 13, 17, 20, (5,)), (3, 7, 11, 6, 33, None), (2, 8, 16, 24, 40, (3, 3))]
if CUDA:
    CONSOLIDATE_CASES += [(4, 256, 256, 512, 768, (32,)), (3, 37, 61, 97, 1024, (196,)), (2, 64, 64, 512, 768, None)]


@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("case", CONSOLIDATE_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rect_consolidate_matches_reference(preset, case, dtype):
    streams, length, n, samples, width, tokens = case
    cfg = MemoryConfig(num_basis=n, past_samples=samples, tau=0.7, preset=preset)
    gen = torch.Generator().manual_seed(n * length)
    frames = torch.randn(tokens_shape(streams, length, tokens, width), generator=gen).to(DEVICE, dtype)
    pooled = pool_frames(frames, torch.float32)
    past = torch.randn(streams, n, width, generator=gen).to(DEVICE)
    first, later = ref_fit.first_fit(cfg, length), ref_fit.consolidation_fit(cfg, length)
    first_dev = ref_fit.on_device(first, DEVICE, torch.float32)
    later_dev = ref_fit.on_device(later, DEVICE, torch.float32)

    out, cast = ops.rect_consolidate(frames, None, ops.plan_on(first, DEVICE), cast_dtype=dtype)
    assert rel(out, ref_consolidate.consolidate_segmented(pooled, None, None, first_dev)) < 1e-5
    # Within one unit in the last place of the cast type (the CPU interpreter truncates), and
    # subnormals of the cast type within its smallest normal (the GPU may flush them).
    assert cast.dtype == dtype
    torch.testing.assert_close(cast.float(), out, rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).tiny)

    bins = torch.randint(-1, n, (streams, samples), generator=gen).to(DEVICE)
    out = ops.rect_consolidate(frames, past, ops.plan_on(later, DEVICE), bins)
    assert rel(out, ref_consolidate.consolidate_segmented(pooled, past, bins, later_dev, False)) < 1e-5

    mass = torch.rand(streams, 3, n, generator=gen).to(DEVICE)
    sticky_bins = ops.quantile_bins(mass, samples)
    assert torch.equal(sticky_bins.long(), sticky.quantile_bins(mass, samples)[0])
    out = ops.rect_consolidate(frames, past, ops.plan_on(later, DEVICE), sticky_bins)
    expected = ref_consolidate.consolidate_segmented(pooled, past, sticky_bins.long(), later_dev)
    assert rel(out, expected) < 1e-5


def _heads(x, heads):
    s, rows, model = x.shape
    return x.reshape(s, rows, heads, model // heads).transpose(1, 2).float()


# (16, 33, …): 16 streams take two blocks of queries per program, 3 blocks leave one program half empty.
ATTENTION_CASES = [(2, 5, 24, 3, 13), (1, 3, 8, 2, 40), (16, 33, 24, 3, 13)]
if CUDA:
    ATTENTION_CASES += [(1, 32, 768, 12, 256), (5, 32, 768, 12, 64), (3, 7, 96, 3, 1000)]


@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_slot_attention_matches_reference(preset, case, dtype):
    streams, q_len, model, heads, n = case
    gen = torch.Generator().manual_seed(n + q_len)
    query = torch.randn(streams, q_len, model, generator=gen).to(DEVICE, dtype)
    keys = torch.randn(streams, n, model, generator=gen).to(DEVICE, dtype)
    values = torch.randn(streams, n, model, generator=gen).to(DEVICE, dtype)
    const = ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset))
    const = ref_fit.on_device(const, DEVICE, torch.float32)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    context, mass = ops.slot_attention(query, keys, values, heads, const.log_weight, null)
    a = _heads(query, heads) @ _heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)
    r = ref_attention.slot_weights(a, const)
    expected = (r @ _heads(values, heads)).transpose(1, 2).reshape(streams, q_len, model)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert context.dtype == dtype
    assert rel(context, expected) < tol
    assert rel(mass.reshape(streams, heads, -1, n).sum(2), r.sum(2)) < tol


QUADRATURE_CASES = [(2, 5, 24, 3, 12, 50)]
if CUDA:
    QUADRATURE_CASES += [(16, 32, 768, 12, 256, 1000), (3, 9, 96, 3, 30, 777)]


@pytest.mark.parametrize("case", QUADRATURE_CASES, ids=str)
def test_quadrature_attention_matches_reference(case):
    streams, q_len, model, heads, n, points = case
    cfg = MemoryConfig(num_basis=n, basis="gaussian", quad_points=points)
    gen = torch.Generator().manual_seed(n)
    query = torch.randn(streams, q_len, model, generator=gen).to(DEVICE)
    keys = torch.randn(streams, n, model, generator=gen).to(DEVICE) * 0.1
    values = torch.randn(streams, n, model, generator=gen).to(DEVICE)
    quad = ops.quadrature_constants(cfg, DEVICE)
    context, density = ops.quadrature_attention(query, keys, values, heads, quad.mu, quad.sigma, quad.grid,
                                                quad.log_weight)
    const = ref_fit.on_device(ref_attention.attention_constants(cfg), DEVICE, torch.float64)
    a = (_heads(query, heads) @ _heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)).double()
    r, dens = ref_attention.quadrature_weights(a, const)
    expected = (r @ _heads(values, heads).double()).transpose(1, 2).reshape(streams, q_len, model)
    assert rel(context, expected) < 1e-4
    assert rel(density.reshape(streams, heads, -1, points).sum(2), dens.sum(2)) < 1e-4


MEMORY_CONFIGS = [dict(), dict(preset="paper"), dict(sticky=False), dict(sticky=False, preset="paper"),
                  dict(sampling="multinomial"), dict(sampling="upstream"), dict(basis="gaussian"),
                  dict(basis="gaussian", density="gaussian")]


@pytest.mark.parametrize("config", MEMORY_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_memory_triton_matches_torch(config, dtype):
    streams, length, tokens, width, model, heads = 3, 7, 5, 24, 16, 4
    torch.manual_seed(0)
    pk, pv = nn.Linear(width, model).to(DEVICE, dtype), nn.Linear(width, model).to(DEVICE, dtype)
    memories = [LongTermMemory(num_basis=12, past_samples=20, quad_points=50, backend=backend,
                               generator=torch.Generator(DEVICE).manual_seed(3), **config).to(DEVICE)
                for backend in ("torch", "triton")]
    gen = torch.Generator().manual_seed(1)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        for chunk in range(4):
            if dtype != torch.float32:
                # Sticky sampling turns half-precision rounding into different sample bins over
                # a few chunks; each step is therefore compared from the same state.
                memories[1].load_state_dict(memories[0].state_dict())
            frames = torch.randn(streams, length, tokens, width, generator=gen).to(DEVICE, dtype)
            query = torch.randn(streams, 5, model, generator=gen).to(DEVICE, dtype)
            outs = [m(frames, query, pk, pv, heads) for m in memories]
            assert outs[1].dtype == dtype
            assert rel(outs[1], outs[0]) < tol, f"chunk {chunk}"
            assert rel(memories[1].coef, memories[0].coef) < tol, f"chunk {chunk}"


def test_mixed_streams_after_partial_reset():
    torch.manual_seed(0)
    pk, pv = nn.Linear(24, 16).to(DEVICE), nn.Linear(24, 16).to(DEVICE)
    memories = [LongTermMemory(num_basis=12, past_samples=20, backend=b).to(DEVICE) for b in ("torch", "triton")]
    with torch.no_grad():
        for chunk in range(3):
            frames, query = torch.randn(3, 7, 24, device=DEVICE), torch.randn(3, 5, 16, device=DEVICE)
            outs = [m(frames, query, pk, pv, 4) for m in memories]
            assert rel(outs[1], outs[0]) < 1e-4
            for m in memories:
                m.reset(streams=[1])


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    cfg = MemoryConfig(num_basis=7, past_samples=9, tau=0.6)
    later = ref_fit.consolidation_fit(cfg, 5)
    plan = ops.plan_on(later, DEVICE)
    frames = torch.randn(2, 5, 3, 8, generator=gen).to(DEVICE)
    past = torch.randn(2, 7, 8, generator=gen).to(DEVICE)
    mass = torch.rand(2, 2, 7, generator=gen).to(DEVICE)
    bins = torch.randint(-1, 7, (1, 9), generator=gen).to(DEVICE)
    torch.library.opcheck(torch.ops.infvideo.rect_consolidate.default,
                          (frames, past, bins, plan.past_idx, plan.past_start, plan.frame_idx,
                           plan.frame_start, plan.scale))
    torch.library.opcheck(torch.ops.infvideo.rect_consolidate.default,
                          (frames, None, None, plan.past_idx, plan.past_start, plan.frame_idx,
                           plan.frame_start, plan.scale))
    torch.library.opcheck(torch.ops.infvideo.quantile_bins.default, (mass, 9))
    query = torch.randn(2, 3, 8, generator=gen).to(DEVICE)
    keys = torch.randn(2, 7, 8, generator=gen).to(DEVICE)
    values = torch.randn(2, 7, 8, generator=gen).to(DEVICE)
    logw = torch.randn(7, generator=gen).to(DEVICE)
    torch.library.opcheck(torch.ops.infvideo.slot_attention.default, (query, keys, values, 2, logw, -3.0))
    torch.library.opcheck(torch.ops.infvideo.slot_attention.default, (query, keys, values, 2, None, None))
    quad = ops.quadrature_constants(MemoryConfig(num_basis=8, basis="gaussian", quad_points=20), DEVICE)
    keys8 = torch.randn(2, 8, 8, generator=gen).to(DEVICE)
    torch.library.opcheck(torch.ops.infvideo.quadrature_attention.default,
                          (query, keys8, keys8, 2, quad.mu, quad.sigma, quad.grid, quad.log_weight, True))


@pytest.mark.skipif(not CUDA, reason="CUDA graphs and compiled GPU kernels need a GPU")
def test_cuda_graph_and_compile_match_eager():
    torch.manual_seed(0)
    pk, pv = nn.Linear(768, 768).cuda(), nn.Linear(768, 768).cuda()
    frames = torch.randn(2, 64, 32, 768, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(2, 32, 768, device="cuda")
    eager = LongTermMemory(num_basis=64, backend="triton").cuda()
    graphed = LongTermMemory(num_basis=64, backend="triton").cuda()
    with torch.no_grad():
        for memory in (eager, graphed):
            memory(frames, query, pk, pv, 12)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = graphed(frames, query, pk, pv, 12)
        for _ in range(3):
            expected = eager(frames, query, pk, pv, 12)
            graph.replay()
            assert rel(out, expected) < 1e-6
            assert rel(graphed.coef, eager.coef) < 1e-6


@pytest.mark.parametrize("config", [dict(), dict(preset="paper"), dict(sticky=False)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_compiled_step_fullgraph_matches_reference(config):
    """torch.compile(fullgraph=True) traces the fused step whole (inductor on CUDA; dynamo alone on the CPU)."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(24, 16).to(DEVICE), nn.Linear(24, 16).to(DEVICE)
    fused = LongTermMemory(num_basis=12, past_samples=20, backend="triton", **config).to(DEVICE)
    reference = LongTermMemory(num_basis=12, past_samples=20, backend="torch", **config).to(DEVICE)
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(2, 5, 16, generator=gen).to(DEVICE)
    with torch.no_grad():
        frames = torch.randn(2, 7, 5, 24, generator=gen).to(DEVICE)
        fused(frames, query, pk, pv, 4)
        reference(frames, query, pk, pv, 4)
        step = torch.compile(fused, fullgraph=True, backend="inductor" if CUDA else "eager")
        for _ in range(3):
            frames = torch.randn(2, 7, 5, 24, generator=gen).to(DEVICE)
            out = step(frames, query, pk, pv, 4)
            expected = reference(frames, query, pk, pv, 4)
            assert rel(out, expected) < 1e-4
            assert rel(fused.coef, reference.coef) < 1e-4


@pytest.mark.parametrize("streams, groups, bins, samples", [(100, 3, 256, 500), (70, 24, 64, 512), (300, 5, 13, 203), (1, 2, 256, 1000)])
def test_quantile_bins_many_streams(streams, groups, bins, samples):
    """Many streams: each program covers several blocks of samples (one CDF per program)."""
    gen = torch.Generator().manual_seed(streams)
    mass = torch.rand(streams, groups, bins, generator=gen)
    mass[0, :, : bins // 2] = 0  # an empty half: quantiles jump over it
    got = ops.quantile_bins(mass.to(DEVICE), samples).cpu()
    assert torch.equal(got.long(), sticky.quantile_bins(mass, samples)[0])
