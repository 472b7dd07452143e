"""The K|V product and slot attention in one launch (``kernels/project_attend.py``,
``ops.project_attend``) against the reference.

Tolerances (relative): context and mass 2e-2, as for the slot attention on 16-bit K/V (the
launch rounds K and V to the projections' dtype, the float32 reference does not); the copied
coefficients exactly. Under the CPU interpreter each phase is a launch of its own; on a GPU the
one grid orders them with its counters, which the launch leaves zero for the next one.
"""
from __future__ import annotations

import math

import pytest
import torch

from infvideo import LongTermMemory
from infvideo.config import MemoryConfig
from infvideo.kernels import project_attend as kernel
from infvideo.ops import project_attend
from infvideo.ops.step import _stacked
from infvideo.reference import attention as ref_attention
from infvideo.reference import fit as ref_fit
from conftest import random_linear, rel_err, split_heads

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (streams, e, D, heads, queries, N): odd sizes, a query group left partly empty, more attending
# programs than tiles, and on a GPU the benchmarks' widths and a grid of several waves.
CASES = [(1, 40, 24, 3, 5, 13), (2, 24, 16, 2, 33, 6), (3, 48, 32, 4, 7, 70)]
if DEVICE == "cuda":
    CASES += [(1, 768, 768, 12, 32, 256), (4, 200, 96, 3, 17, 29), (16, 768, 768, 12, 32, 256)]


def _inputs(case, dtype, query_dtype, seed=0):
    streams, e, d, heads, queries, n = case
    gen = torch.Generator().manual_seed(seed)
    coef = torch.randn(streams, n, e, generator=gen).to(DEVICE)
    query = torch.randn(streams, queries, d, generator=gen).to(DEVICE, query_dtype)
    pk = random_linear(e, d, seed=seed + 1, dtype=dtype).to(DEVICE)
    pv = random_linear(e, d, seed=seed + 2, dtype=dtype).to(DEVICE)
    return coef, query, pk, pv


def _constants(case, preset):
    return ref_fit.on_device(ref_attention.attention_constants(MemoryConfig(num_basis=case[5], preset=preset)),
                             DEVICE, torch.float32)


def _launch(case, preset, coef, query, pk, pv, cast=None, **outs):
    const = _constants(case, preset)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    weight, bias = _stacked(pk, pv)
    with torch.no_grad():
        return kernel.project_attend(coef, coef.to(weight.dtype) if cast is None else cast, weight, bias, query,
                                     case[3], const.log_weight, null, **outs), const


def _expected(case, coef, query, pk, pv, const):
    """(context, mass summed over each head's query groups [S, H, N]) of the float32 reference on
    the coefficients rounded to the projections' dtype."""
    streams, _, d, heads, queries, _ = case
    cast = coef.to(pk.weight.dtype).float()
    keys = cast @ pk.weight.float().T + (0.0 if pk.bias is None else pk.bias.float())
    values = cast @ pv.weight.float().T + (0.0 if pv.bias is None else pv.bias.float())
    a = split_heads(query.float(), heads) @ split_heads(keys, heads).transpose(-1, -2) / math.sqrt(d // heads)
    r = ref_attention.slot_weights(a, const)
    return (r @ split_heads(values, heads)).transpose(1, 2).reshape(streams, queries, d), r.sum(2)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype,query_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)],
                         ids=["bf16", "fp16-fp32query"])
def test_matches_reference(case, preset, dtype, query_dtype):
    streams, _, _, heads, queries, n = case
    coef, query, pk, pv = _inputs(case, dtype, query_dtype)
    (context, mass), const = _launch(case, preset, coef, query, pk, pv)
    expected, expected_mass = _expected(case, coef, query, pk, pv, const)
    assert context.dtype == query_dtype
    assert rel_err(context, expected) < 2e-2
    groups = -(-queries // 16)
    assert mass.shape == (streams, heads * groups, n)
    assert rel_err(mass.reshape(streams, heads, groups, n).sum(2), expected_mass) < 2e-2


@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_without_bias_and_slot_weights(case):
    """Projections without bias, and no per-slot log-weight or null slot: a plain softmax."""
    coef, query, pk, pv = _inputs(case, torch.bfloat16, torch.bfloat16)
    pk.bias, pv.bias = None, None
    weight, bias = _stacked(pk, pv)
    assert bias is None
    with torch.no_grad():
        context, mass = kernel.project_attend(coef, coef.to(weight.dtype), weight, None, query, case[3], None, None)
    const = ref_attention.SlotWeights(None, None)
    expected, expected_mass = _expected(case, coef, query, pk, pv, const)
    assert rel_err(context, expected) < 2e-2
    assert rel_err(mass.reshape(case[0], case[3], -1, case[5]).sum(2), expected_mass) < 2e-2


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_writes_where_asked(case):
    """The mass goes into mass_out and the coefficients are copied into coef_out where given; the
    same results as into new tensors."""
    coef, query, pk, pv = _inputs(case, torch.bfloat16, torch.bfloat16)
    (context, mass), _ = _launch(case, "exact", coef, query, pk, pv)
    mass_buffer, coef_buffer = torch.zeros_like(mass), torch.zeros_like(coef)
    (context2, mass2), _ = _launch(case, "exact", coef, query, pk, pv, mass_out=mass_buffer, coef_out=coef_buffer)
    assert mass2 is mass_buffer
    assert torch.equal(mass2, mass) and torch.equal(context2, context) and torch.equal(coef_buffer, coef)


@cuda
@pytest.mark.parametrize("case", CASES[3::2], ids=str)  # one wave, several
def test_counters_are_left_for_the_next_launch(case):
    """Launches back to back on the same counters, each on new coefficients: each equals the same
    launch on counters of its own, and the counters are back at zero after them."""
    inputs = [_inputs(case, torch.bfloat16, torch.bfloat16, seed=seed) for seed in range(12)]
    casts = [coef.bfloat16() for coef, *_ in inputs]
    alone = [_launch(case, "exact", *args, cast=cast)[0] for args, cast in zip(inputs, casts)]
    counters = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    shared = [_launch(case, "exact", *args, cast=cast, counters=counters)[0] for args, cast in zip(inputs, casts)]
    for a, b in zip(alone, shared):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert counters.tolist() == [0, 0, 0]


@cuda
@pytest.mark.parametrize("streams", [1, 3, 6])
def test_memory_takes_it_where_it_applies(streams, monkeypatch):
    """With MAX_STREAMS = 4, a memory of bf16 projections takes the one launch up to 4 streams. Its
    eager steps equal the separate K|V product and attention (MAX_STREAMS = 0) to the rounding of
    K and V, and replays of a user's CUDA graph, whose launch copies the coefficients into the
    memory's buffer, equal its eager steps."""
    monkeypatch.setattr(project_attend, "MAX_STREAMS", 4)
    launches = []
    launch = kernel.project_attend
    monkeypatch.setattr(kernel, "project_attend", lambda *args, **kw: launches.append(1) or launch(*args, **kw))
    e, d, heads = 48, 32, 4
    pk = random_linear(e, d, seed=1, dtype=torch.bfloat16).cuda()
    pv = random_linear(e, d, seed=2, dtype=torch.bfloat16).cuda()
    gen = torch.Generator().manual_seed(3)
    frames = [torch.randn(streams, 12, 3, e, generator=gen).cuda().bfloat16() for _ in range(5)]
    queries = [torch.randn(streams, 7, d, generator=gen).cuda().bfloat16() for _ in range(5)]
    memories = [LongTermMemory(num_basis=16, past_samples=24, backend="triton", cuda_graphs=False,
                               check_finite=False).cuda() for _ in range(3)]
    applies = streams <= project_attend.MAX_STREAMS
    saved = project_attend.MAX_STREAMS
    with torch.no_grad():
        for f, q in zip(frames[:2], queries[:2]):
            for memory in memories:
                memory(f, q, pk, pv, heads)
        static_frames, static_query = frames[2].clone(), queries[2].clone()
        graph = torch.cuda.CUDAGraph()
        graphed = memories[2]
        with torch.cuda.graph(graph):
            context, coef, stats = graphed.compute(static_frames, static_query, pk, pv, heads)
            assert coef is graphed.coef and stats is graphed.sticky_stats
            graphed.commit(static_frames, static_query, context, coef, stats)
        for f, q in zip(frames[2:], queries[2:]):
            one = memories[0](f, q, pk, pv, heads)
            project_attend.MAX_STREAMS = 0
            try:
                separate = memories[1](f, q, pk, pv, heads)
            finally:
                project_attend.MAX_STREAMS = saved
            static_frames.copy_(f)
            static_query.copy_(q)
            graph.replay()
            assert rel_err(one, separate) < (2e-2 if applies else 1e-12)
            assert torch.equal(context, one)
            assert torch.equal(graphed.coef, memories[0].coef)
            assert torch.equal(graphed.sticky_stats, memories[0].sticky_stats)
    assert bool(launches) == applies
