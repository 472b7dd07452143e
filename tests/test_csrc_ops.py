"""The C++/CUDA kernels of csrc/ (backend="cpu" / "cuda") against the torch reference.

Tolerances (‖out − ref‖ / ‖ref‖, float32): consolidation 1e-5 for every input dtype (both sides
pool and sum the same rounded values in float32, in a different order); quantile sampling
bit-identical bins; slot attention 1e-5 with float32 keys/values, 2e-2 with fp16/bf16 ones
(the reference sees the same rounded K/V in float32; the context is rounded to the query's
dtype); whole memory steps and the golden vectors 1e-5. The CUDA cases run where the extension
was built with CUDA and a GPU is present (skipped otherwise); they sweep larger shapes.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import infvideo.ops as ops
from infvideo import LongTermMemory
from infvideo.backends import available_backends, backend_for, info
from infvideo.config import MemoryConfig
from infvideo.ops import _csrc, factored_attention
from infvideo.reference import attention as ref_attention
from infvideo.reference import consolidate as ref_consolidate
from infvideo.reference import fit as ref_fit
from infvideo.reference import sticky
from infvideo.reference.pooling import pool_frames
from conftest import make_linear, rel_err

if not _csrc.built():
    pytest.skip("the C++ extension is not built (pip install --no-build-isolation -e .)", allow_module_level=True)

CUDA = torch.cuda.is_available() and _csrc.built_with_cuda()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tokens_shape(streams, length, tokens, width):
    return (streams, length, *tokens, width) if tokens else (streams, length, width)


# (streams, L, N, M, e, tokens per frame): odd sizes everywhere; the larger ones only on the GPU.
CONSOLIDATE_CASES = [(1, 9, 13, 17, 20, (5,)), (3, 7, 11, 6, 33, None), (2, 8, 16, 24, 40, (3, 3)),
                     (2, 256, 256, 512, 768, (32,))]
CUDA_CONSOLIDATE_CASES = [(4, 256, 256, 512, 768, (32,)), (3, 37, 61, 97, 1024, (196,)), (64, 64, 64, 512, 257, None)]




def _per_device(cases, cuda_cases):
    """(device, case) pairs: every case on the CPU, and the larger ones too on the GPU."""
    return [(device, case) for device in DEVICES for case in cases + (cuda_cases if device == "cuda" else [])]


@pytest.mark.parametrize("device,case", _per_device(CONSOLIDATE_CASES, CUDA_CONSOLIDATE_CASES), ids=str)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rect_consolidate_matches_reference(device, case, preset, dtype):
    streams, length, n, samples, width, tokens = case
    cfg = MemoryConfig(num_basis=n, past_samples=samples, tau=0.7, preset=preset)
    gen = torch.Generator().manual_seed(n * length)
    frames = torch.randn(tokens_shape(streams, length, tokens, width), generator=gen).to(device, dtype)
    pooled = pool_frames(frames, torch.float32)
    past = torch.randn(streams, n, width, generator=gen).to(device)
    first, later = ref_fit.first_fit(cfg, length), ref_fit.consolidation_fit(cfg, length)
    first_dev = ref_fit.on_device(first, device, torch.float32)
    later_dev = ref_fit.on_device(later, device, torch.float32)

    out, cast = ops.rect_consolidate(frames, None, ops.plan_on(first, device), cast_dtype=dtype, backend=device)
    assert rel_err(out, ref_consolidate.consolidate_segmented(pooled, None, None, first_dev)) < 1e-5
    assert cast.dtype == dtype and torch.equal(cast, out.to(dtype))  # the same rounding as a cast

    bins = torch.randint(-1, n, (streams, samples), generator=gen).to(device)
    out = ops.rect_consolidate(frames, past, ops.plan_on(later, device), bins, backend=device)
    assert rel_err(out, ref_consolidate.consolidate_segmented(pooled, past, bins, later_dev, False)) < 1e-5

    shared = bins[:1]  # one row of sample bins read by every stream
    out = ops.rect_consolidate(frames, past, ops.plan_on(later, device), shared, backend=device)
    expected = ref_consolidate.consolidate_segmented(pooled, past, shared.expand(streams, -1), later_dev, False)
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_rect_consolidate_strided_inputs(device):
    """Non-contiguous frames (a slice of a wider chunk) and an expanded past read like contiguous ones."""
    cfg = MemoryConfig(num_basis=10, past_samples=14, tau=0.6)
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(2, 12, 4, 30, generator=gen).to(device)
    frames = wide[:, ::2, 1:, ::3]  # [2, 6, 3, 10], no unit stride on the last dimension
    past = torch.randn(1, 10, 10, generator=gen).to(device).expand(2, -1, -1)
    later = ops.plan_on(ref_fit.consolidation_fit(cfg, 6), device)
    bins = torch.randint(0, 10, (2, 14), generator=gen).to(device)
    out = ops.rect_consolidate(frames, past, later, bins, backend=device)
    expected = ops.rect_consolidate(frames.contiguous(), past.contiguous(), later, bins, backend=device)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


# (streams, groups, bins K, samples M)
QUANTILE_CASES = [(1, 24, 256, 512), (3, 1, 13, 17), (2, 5, 7, 100), (4, 3, 999, 64), (5, 70, 40, 9)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", QUANTILE_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_quantile_bins_bit_identical(device, case, dtype):
    streams, groups, bins, samples = case
    gen = torch.Generator().manual_seed(bins + samples)
    mass = torch.rand(streams, groups, bins, generator=gen) ** 4  # peaked, with small bins
    mass[:, :, bins // 3: bins // 2] = 0  # bins without mass are never drawn
    mass = mass.to(device, dtype)
    got = ops.quantile_bins(mass, samples, backend=device)
    assert got.dtype == torch.int32 and got.shape == (streams, samples)
    assert torch.equal(got.long().cpu(), sticky.quantile_bins(mass.cpu(), samples)[0])
    flat = ops.quantile_bins(mass[:, 0], samples, backend=device)  # [S, K] input
    assert torch.equal(flat.long().cpu(), sticky.quantile_bins(mass[:, 0].cpu(), samples)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_quantile_bins_zero_mass_stream(device):
    """A stream emptied by reset(streams=...) has no mass: every sample reads the last bin, as in the reference."""
    mass = torch.zeros(2, 3, 8, device=device)
    mass[1] = torch.rand(3, 8)
    got = ops.quantile_bins(mass, 5, backend=device)
    assert torch.equal(got.long().cpu(), sticky.quantile_bins(mass.cpu(), 5)[0])


def _heads(x, heads):
    s, rows, model = x.shape
    return x.reshape(s, rows, heads, model // heads).transpose(1, 2).float()


# (streams, Q, D, H, N)
ATTENTION_CASES = [(2, 5, 24, 3, 13), (1, 3, 8, 2, 40), (3, 17, 96, 3, 33), (1, 32, 768, 12, 256)]
CUDA_ATTENTION_CASES = [(5, 32, 768, 12, 64), (3, 7, 96, 3, 1000), (64, 32, 768, 12, 256), (2, 9, 600, 2, 31)]


@pytest.mark.parametrize("device,case", _per_device(ATTENTION_CASES, CUDA_ATTENTION_CASES), ids=str)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_slot_attention_matches_reference(device, case, preset, dtype):
    streams, q_len, model, heads, n = case
    gen = torch.Generator().manual_seed(n + q_len)
    query = torch.randn(streams, q_len, model, generator=gen).to(device, dtype)
    keys = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    values = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    const = ref_fit.on_device(ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset)), device,
                              torch.float32)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    context, mass = ops.slot_attention(query, keys, values, heads, const.log_weight, null, backend=device)
    a = _heads(query, heads) @ _heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)
    r = ref_attention.slot_weights(a, const)
    expected = (r @ _heads(values, heads)).transpose(1, 2).reshape(streams, q_len, model)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert context.dtype == dtype
    assert rel_err(context, expected) < tol
    groups = -(-q_len // _csrc.QUERY_BLOCK)
    assert mass.shape == (streams, heads * groups, n)  # the Triton kernel's groups
    assert rel_err(mass.reshape(streams, heads, groups, n).sum(2), r.sum(2)) < tol


def test_factored_attention_matches_reference():
    """The CPU step's attention with the projections folded into the queries (no K, no V)."""
    streams, q_len, width, model, heads, n = 2, 32, 128, 128, 2, 128
    gen = torch.Generator().manual_seed(3)
    coef = torch.randn(streams, n, width, generator=gen)
    query = torch.randn(streams, q_len, model, generator=gen)
    proj_key, proj_value = nn.Linear(width, model), nn.Linear(width, model)
    assert factored_attention.applies(proj_key, proj_value, n, width, query, heads, None)
    with torch.no_grad():
        context, mass = factored_attention.factored_slot_attention(query, coef, proj_key, proj_value, heads, None, "cpu")
        a = ref_attention.scores(coef, query, proj_key, heads)
        r = torch.softmax(a, -1)
        expected = ref_attention.read_values(coef, r, proj_value, heads)
    assert rel_err(context, expected) < 1e-5
    assert rel_err(mass.reshape(streams, heads, -1, n).sum(2), r.sum(2)) < 1e-5


MEMORY_CONFIGS = [dict(), dict(preset="paper"), dict(sticky=False), dict(sticky=False, preset="paper"),
                  dict(sampling="multinomial"), dict(sampling="upstream"), dict(basis="gaussian")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", MEMORY_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("sizes", [(3, 7, 5, 24, 16, 4, 12, 20), (2, 16, 4, 128, 128, 2, 128, 96)],
                         ids=["small", "wide"])
def test_memory_csrc_matches_torch(device, config, sizes):
    """Whole steps, chunk after chunk; the wide sizes take the CPU step's factored attention."""
    streams, length, tokens, width, model, heads, n, samples = sizes
    torch.manual_seed(0)
    pk, pv = nn.Linear(width, model).to(device), nn.Linear(width, model).to(device)
    memories = [LongTermMemory(num_basis=n, past_samples=samples, quad_points=50, backend=backend,
                               generator=torch.Generator(device).manual_seed(3), **config).to(device)
                for backend in ("torch", device)]
    assert factored_attention.applies(pk, pv, n, width, torch.empty(1, 32, model), heads, None) == (n == 128)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for chunk in range(4):
            frames = torch.randn(streams, length, tokens, width, generator=gen).to(device)
            query = torch.randn(streams, 32, model, generator=gen).to(device)
            outs = [m(frames, query, pk, pv, heads) for m in memories]
            assert rel_err(outs[1], outs[0]) < 1e-5, f"chunk {chunk}"
            assert rel_err(memories[1].coef, memories[0].coef) < 1e-5, f"chunk {chunk}"


@pytest.mark.parametrize("device", DEVICES)
def test_memory_csrc_half_projections(device):
    """bf16 projections and tokens: the step computes in float32 like the reference."""
    torch.manual_seed(0)
    pk = nn.Linear(96, 96).to(device, torch.bfloat16)
    pv = nn.Linear(96, 96).to(device, torch.bfloat16)
    memories = [LongTermMemory(num_basis=64, past_samples=48, backend=b).to(device) for b in ("torch", device)]
    with torch.no_grad():
        for _ in range(3):
            memories[1].load_state_dict(memories[0].state_dict())  # compare each step from the same state
            frames = torch.randn(2, 16, 4, 96, device=device, dtype=torch.bfloat16)
            query = torch.randn(2, 32, 96, device=device, dtype=torch.bfloat16)
            outs = [m(frames, query, pk, pv, 3) for m in memories]
            assert outs[1].dtype == torch.bfloat16
            assert rel_err(outs[1], outs[0]) < 3e-2


@pytest.mark.parametrize("device", DEVICES)
def test_golden_through_csrc(golden, device):
    """Paper preset, sticky off, against the published code's outputs (SPEC section 11), 1e-5."""
    g = golden
    memory = LongTermMemory(num_basis=g["N"], tau=g["tau"], past_samples=g["past_samples"], ridge=g["ridge"],
                            sticky=False, preset="paper", quad_points=g["quad_points"], backend=device).to(device)
    proj_key = make_linear(g["w_key"], g["b_key"]).to(device)
    proj_value = make_linear(g["w_value"], g["b_value"]).to(device)
    for chunk, (frames, query) in enumerate(zip(g["frames"], g["queries"])):
        with torch.no_grad():
            context = memory(frames.to(device), query.to(device), proj_key, proj_value, g["heads"])
        for name, got, want in (("context", context, g["context"][chunk]),
                                ("coef", memory.coefficients, g["coef"][chunk])):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()),
                                       msg=lambda m: f"{name}, chunk {chunk}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    cfg = MemoryConfig(num_basis=7, past_samples=9, tau=0.6)
    plan = ops.plan_on(ref_fit.consolidation_fit(cfg, 5), device)
    frames = torch.randn(2, 5, 3, 8, generator=gen).to(device)
    past = torch.randn(2, 7, 8, generator=gen).to(device)
    bins = torch.randint(-1, 7, (1, 9), generator=gen).to(device)
    maps = (plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale)
    torch.library.opcheck(torch.ops.infvideo.rect_consolidate_csrc.default, (frames, past, bins, *maps))
    torch.library.opcheck(torch.ops.infvideo.rect_consolidate_csrc.default, (frames, None, None, *maps),
                          {"cast_dtype": torch.bfloat16})
    mass = torch.rand(2, 2, 7, generator=gen).to(device)
    torch.library.opcheck(torch.ops.infvideo.quantile_bins_csrc.default, (mass, 9))
    query = torch.randn(2, 3, 8, generator=gen).to(device)
    keys = torch.randn(2, 7, 8, generator=gen).to(device)
    logw = torch.randn(7, generator=gen).to(device)
    torch.library.opcheck(torch.ops.infvideo.slot_attention_csrc.default, (query, keys, keys, 2, logw, -3.0))
    torch.library.opcheck(torch.ops.infvideo.slot_attention_csrc.default, (query, keys, keys, 2, None, None))


def test_opcheck_factored_attention():
    """The CPU step's factored attention op (CPU kernel only), with and without a value bias."""
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 5, 8, generator=gen)
    coef = torch.randn(2, 7, 6, generator=gen)
    w_key, w_value = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    logw = torch.randn(7, generator=gen)
    op = torch.ops.infvideo.factored_slot_attention_csrc.default
    torch.library.opcheck(op, (query, coef, w_key, w_value, torch.randn(8, generator=gen), 2, logw))
    torch.library.opcheck(op, (query, coef, w_key, w_value, None, 2, None))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    """No atomics anywhere: two runs of a step give the same bits."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(96, 96).to(device), nn.Linear(96, 96).to(device)
    frames = torch.randn(3, 16, 4, 96, device=device)
    query = torch.randn(3, 32, 96, device=device)
    outs = []
    for _ in range(2):
        memory = LongTermMemory(num_basis=64, past_samples=48, backend=device).to(device)
        with torch.no_grad():
            for _ in range(3):
                out = memory(frames, query, pk, pv, 3)
        outs.append((out, memory.coef, memory.sticky_stats))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# This once crashed the GPU machine's build: its CXX wrapper linked libstdc++ statically into the
# extension, whose errors then escaped torch's handlers. setup.py now refuses such a build.
@pytest.mark.skipif(not (torch.cuda.is_available() and _csrc.built_with_cuda()), reason="needs the CUDA kernels and a GPU")
def test_csrc_cuda_ops_raise_on_bad_input():
    with pytest.raises(RuntimeError, match="mass must have 2 or 3 dimensions"):
        torch.ops.infvideo.quantile_bins_csrc(torch.zeros(2, 2, 2, 2, device="cuda"), 3)
    with pytest.raises(RuntimeError, match="num_samples"):
        torch.ops.infvideo.quantile_bins_csrc(torch.ones(2, 1, 5, device="cuda"), 0)


def test_csrc_ops_reject_bad_input_naming_the_argument():
    frames = torch.randn(2, 5, 8)
    plan = ops.plan_on(ref_fit.consolidation_fit(MemoryConfig(num_basis=7, past_samples=9), 5), "cpu")
    maps = (plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale)
    consolidate = torch.ops.infvideo.rect_consolidate_csrc
    with pytest.raises(RuntimeError, match="past must have shape"):
        consolidate(frames, torch.randn(2, 6, 8), torch.zeros(1, 9, dtype=torch.int32), *maps)
    with pytest.raises(RuntimeError, match="sample_bins holds 7"):
        consolidate(frames, torch.randn(2, 7, 8), torch.full((1, 9), 7), *maps)
    with pytest.raises(RuntimeError, match="sample_bins must have dtype int32 or int64"):
        consolidate(frames, torch.randn(2, 7, 8), torch.zeros(1, 9), *maps)
    with pytest.raises(RuntimeError, match="past and sample_bins must be given together"):
        consolidate(frames, torch.randn(2, 7, 8), None, *maps)
    with pytest.raises(RuntimeError, match="frames must have 3 or 4 or 5 dimensions"):
        consolidate(torch.randn(5, 8), None, None, *maps)
    with pytest.raises(RuntimeError, match="frame_start must have N \\+ 1"):
        consolidate(frames, None, None, plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start[:-1],
                    plan.scale)
    with pytest.raises(RuntimeError, match="num_samples must be >= 1"):
        torch.ops.infvideo.quantile_bins_csrc(torch.rand(2, 7), 0)
    attention = torch.ops.infvideo.slot_attention_csrc
    query, keys = torch.randn(2, 3, 8), torch.randn(2, 7, 8)
    with pytest.raises(RuntimeError, match="num_heads \\(3\\) must be >= 1 and divide the query width 8"):
        attention(query, keys, keys, 3, None, None)
    with pytest.raises(RuntimeError, match="values must have the keys' shape"):
        attention(query, keys, keys[:, :6], 2, None, None)
    with pytest.raises(RuntimeError, match="keys must have dtype float32, float16 or bfloat16"):
        attention(query, keys.double(), keys, 2, None, None)
    with pytest.raises(RuntimeError, match="slot_log_weight has 6 slots"):
        attention(query, keys, keys, 2, torch.zeros(6), None)


def test_backend_choice():
    """auto takes the cpu kernels on CPU tensors; a step that autograd must see runs on the reference."""
    assert "cpu" in available_backends() and "cpu" in info()["built"]
    assert backend_for("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="backend='cuda' runs on cuda tensors"):
        backend_for("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend='cuda' runs on cuda tensors, got tensors on cpu"):
        ops.quantile_bins(torch.rand(2, 7), 3, backend="cuda") if CUDA else backend_for("cuda", torch.device("cpu"))
    memory = LongTermMemory(num_basis=12, past_samples=20)
    pk, pv = nn.Linear(24, 16), nn.Linear(24, 16)
    frames = torch.randn(2, 7, 24, requires_grad=True)
    out = memory(frames, torch.randn(2, 5, 16), pk, pv, 4)
    assert memory._backends[torch.device("cpu")] == "cpu"
    out.sum().backward()  # ran on the differentiable reference
    assert frames.grad is not None and torch.isfinite(frames.grad).all()
