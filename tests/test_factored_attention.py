"""``infvideo.ops.factored_attention`` (the C++ CPU kernel, Triton: the interpreter on the CPU, CUDA
tensors on a GPU) against the float64 reference, against each other, and the step that takes it.

Tolerances (relative): float32 1e-5 against float64 on every kernel (the Triton kernel's GPU dots
are three-TF32 products, which keep float32 accuracy); half-precision queries 2e-3 (float16) and
1e-2 (bfloat16), the rounding of the context to the query's dtype. The folded step against the
reference step: 1e-5 in the interpreter, 1e-4 on the GPU (test_backends' Triton tolerance: the
consolidation kernels sum in another order there).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from infvideo import LongTermMemory, backends
from infvideo.ops import factored_attention, step as step_module
from infvideo.reference import attention as ref_attention
from conftest import OP_KERNELS, assert_compiled_steps_match, kernel_id, random_linear, rel_err

# No C++ CUDA kernel: the GPU's is Triton's.
KERNELS = [k for k in OP_KERNELS if k[1] != "cuda"]
# (streams, Q, D, heads, N, e): odd sizes; N = 1,100 takes the Triton kernel's two-pass softmax.
SMALL = [(2, 5, 12, 3, 7, 10), (3, 17, 20, 5, 37, 24), (1, 3, 6, 2, 1100, 9)]
GPU = [(4, 32, 768, 12, 256, 768), (5, 32, 96, 3, 1030, 40)]
CASES = [pytest.param(device, backend, case, id=f"{device}-{backend}-{'x'.join(map(str, case))}")
         for device, backend in KERNELS for case in SMALL + (GPU if device == "cuda" else [])]
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_inputs(case, device, seed=0, dtype=torch.float32, log_weights=True, bias=True):
    streams, q_len, model, heads, n, width = case
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(streams, q_len, model, generator=gen).to(device, dtype)
    coef = torch.randn(streams, n, width, generator=gen).to(device)
    proj_key = random_linear(width, model, seed + 1, bias=bias).to(device)
    proj_value = random_linear(width, model, seed + 2, bias=bias).to(device)
    logw = torch.randn(n, generator=gen).to(device) if log_weights else None
    return query, coef, proj_key, proj_value, heads, logw


def float64_reference(query, coef, proj_key, proj_value, heads, logw):
    """Context [S, Q, D] and mass [S, ⌈H·Q/16⌉, N] in float64 from the reference's K/V attention."""
    cpu64 = dict(device="cpu", dtype=torch.float64)
    pk = nn.Linear(proj_key.in_features, proj_key.out_features, bias=proj_key.bias is not None, **cpu64)
    pv = nn.Linear(proj_value.in_features, proj_value.out_features, bias=proj_value.bias is not None, **cpu64)
    with torch.no_grad():
        for dst, src in ((pk, proj_key), (pv, proj_value)):
            dst.weight.copy_(src.weight)
            if src.bias is not None:
                dst.bias.copy_(src.bias)
        q, b = query.to(**cpu64), coef.to(**cpu64)
        a = ref_attention.scores(b, q, pk, heads)
        r = torch.softmax(a if logw is None else a + logw.to(**cpu64), -1)
        context = ref_attention.read_values(b, r, pv, heads)
    streams, _, q_len, n = r.shape
    rows = heads * q_len
    padded = torch.zeros(streams, -(-rows // 16) * 16, n, **cpu64)
    padded[:, :rows] = r.reshape(streams, rows, n)
    return context, padded.reshape(streams, -1, 16, n).sum(2)


def run(backend, query, coef, proj_key, proj_value, heads, logw):
    with torch.no_grad():
        return factored_attention.factored_slot_attention(query, coef, proj_key, proj_value, heads, logw, backend)


@pytest.mark.parametrize("device,backend,case", CASES)
@pytest.mark.parametrize("log_weights,bias", [(True, True), (False, False)], ids=["logw-bias", "plain"])
def test_float32_matches_float64_reference(device, backend, case, log_weights, bias):
    x = make_inputs(case, device, log_weights=log_weights, bias=bias)
    context, mass = run(backend, *x)
    expected_context, expected_mass = float64_reference(*x)
    assert context.dtype == torch.float32 and mass.dtype == torch.float32
    assert context.shape == expected_context.shape and mass.shape == expected_mass.shape
    assert rel_err(context, expected_context) < 1e-5
    assert rel_err(mass, expected_mass) < 1e-5


@pytest.mark.parametrize("device", sorted({d for d, b in KERNELS if b == "triton"}))
@pytest.mark.skipif("cpu" not in backends.built(), reason="the C++ extension is not built")
def test_triton_matches_cpp_kernel(device):
    """The two kernels on the same inputs (the C++ one on CPU copies), several stream counts."""
    for streams in (1, 2, 5):
        x = make_inputs((streams, 7, 18, 3, 45, 14), device, seed=streams)
        context, mass = run("triton", *x)
        cpu = [t.cpu() if isinstance(t, torch.Tensor) else copy.deepcopy(t).cpu() if isinstance(t, nn.Module) else t
               for t in x]
        cpp_context, cpp_mass = run("cpu", *cpu)
        assert rel_err(context, cpp_context) < 1e-5, streams
        assert rel_err(mass, cpp_mass) < 1e-5, streams


@pytest.mark.parametrize("device,backend", KERNELS, ids=kernel_id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_queries(device, backend, dtype):
    """Half-precision queries with float32 projections: the context comes back in the query's dtype."""
    x = make_inputs((2, 9, 12, 2, 21, 10), device, dtype=dtype)
    context, mass = run(backend, *x)
    expected_context, expected_mass = float64_reference(*x)
    assert context.dtype == dtype and mass.dtype == torch.float32
    assert rel_err(context, expected_context) < HALF_TOL[dtype]
    assert rel_err(mass, expected_mass) < 1e-5  # the weights are float32 whatever the query's dtype


@pytest.mark.parametrize("device,backend", KERNELS, ids=kernel_id)
def test_expanded_and_strided_inputs(device, backend):
    """Coefficients shared by the streams (stride 0), a query and weights without unit last strides,
    float64 log weights: the same numbers as their contiguous copies."""
    query, coef, pk, pv, heads, logw = make_inputs((3, 6, 12, 2, 19, 10), device)
    shared = coef[:1].expand_as(coef)
    expected = run(backend, query, shared.contiguous(), pk, pv, heads, logw)
    strided = query.transpose(1, 2).contiguous().transpose(1, 2)
    op = torch.ops.infvideo.factored_slot_attention
    w_key = pk.weight.t().contiguous().t()
    with torch.no_grad():
        got = op(strided, shared, w_key, pv.weight, pv.bias, heads, logw.double(), backend=backend)
    for a, b in zip(got, expected):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("device,backend", KERNELS, ids=kernel_id)
def test_opcheck(device, backend):
    """With and without a value bias and log weights."""
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 5, 8, generator=gen).to(device)
    coef = torch.randn(2, 7, 6, generator=gen).to(device)
    w_key, w_value = torch.randn(8, 6, generator=gen).to(device), torch.randn(8, 6, generator=gen).to(device)
    logw = torch.randn(7, generator=gen).to(device)
    bias = torch.randn(8, generator=gen).to(device)
    op = torch.ops.infvideo.factored_slot_attention.default
    torch.library.opcheck(op, (query, coef, w_key, w_value, bias, 2, logw, backend))
    torch.library.opcheck(op, (query, coef, w_key, w_value, None, 2, None, backend))


@pytest.mark.parametrize("device,backend", KERNELS, ids=kernel_id)
def test_direct_calls_reject_bad_input_naming_the_argument(device, backend):
    query, coef = torch.randn(2, 5, 8, device=device), torch.randn(2, 7, 6, device=device)
    w, bias, logw = torch.randn(8, 6, device=device), torch.randn(8, device=device), torch.randn(7, device=device)
    op = torch.ops.infvideo.factored_slot_attention
    bad = {"w_key": (query, coef, w[:, :5], w, bias, 2, logw), "coef": (query, coef[:1], w, w, bias, 2, logw),
           "num_heads": (query, coef, w, w, bias, 3, logw), "slot_log_weight": (query, coef, w, w, bias, 2, logw[:6]),
           "b_value": (query, coef, w, w, bias[:7], 2, logw)}
    for name, args in bad.items():
        with pytest.raises((ValueError, RuntimeError), match=name):
            op(*args, backend=backend)


def test_applies_to_the_issue_sizes():
    """N = 256, e = D = 768, 12 heads, 32 queries: folding needs fewer multiply-adds."""
    pk, pv = nn.Linear(768, 768, device="meta"), nn.Linear(768, 768, device="meta")
    assert factored_attention.applies(pk, pv, 256, 768, torch.empty(1, 32, 768, device="meta"), 12, None)
    assert not factored_attention.applies(pk, pv, 256, 768, torch.empty(1, 32, 768, device="meta"), 12, math.log(0.5))


@pytest.mark.parametrize("device", sorted({d for d, b in KERNELS if b == "triton"}))
@pytest.mark.parametrize("config", [dict(), dict(sticky=False)], ids=["sticky", "uniform"])
def test_triton_step_folds_float32_projections(monkeypatch, device, config):
    """FACTORED_ON_GPU: the Triton step takes the folded attention for float32 projections (here
    told that its streams fill the GPU) and matches the reference step over several chunks;
    bfloat16 projections keep K and V, and so do streams that leave most of a GPU idle."""
    monkeypatch.setattr(step_module, "FACTORED_ON_GPU", True)
    kernels = backends.triton_kernels()["factored_attention"]
    fills_device = kernels.fills_device
    monkeypatch.setattr(kernels, "fills_device", lambda streams, rows, device: True)
    calls = []
    folded = factored_attention.factored_slot_attention

    def spy(*args, **kwargs):
        calls.append(args[-1])
        return folded(*args, **kwargs)

    monkeypatch.setattr(factored_attention, "factored_slot_attention", spy)
    streams, length, width, model, heads, n, samples = 2, 6, 16, 12, 2, 40, 30
    torch.manual_seed(0)
    pk, pv = nn.Linear(width, model).to(device), nn.Linear(width, model).to(device)
    memories = [LongTermMemory(num_basis=n, past_samples=samples, backend=name,
                               generator=torch.Generator(device).manual_seed(3), **config).to(device)
                for name in ("torch", "triton")]
    gen = torch.Generator().manual_seed(1)
    tol = 1e-5 if device == "cpu" else 1e-4
    with torch.no_grad():
        for chunk in range(4):
            frames = torch.randn(streams, length, 3, width, generator=gen).to(device)
            query = torch.randn(streams, 4, model, generator=gen).to(device)
            assert factored_attention.applies(pk, pv, n, width, query, heads, None)
            outs = [m(frames, query, pk, pv, heads) for m in memories]
            assert rel_err(outs[1], outs[0]) < tol, f"chunk {chunk}"
            assert rel_err(memories[1].coef, memories[0].coef) < tol, f"chunk {chunk}"
            if config.get("sticky", True):  # the samplers read the groups' sum
                stats = [m.sticky_stats.sum(1) for m in memories]
                assert rel_err(stats[1], stats[0]) < tol, f"chunk {chunk}"
        assert calls and set(calls) == {"triton"}
        calls.clear()
        half = LongTermMemory(num_basis=n, past_samples=samples, backend="triton", **config).to(device)
        half(frames, query, pk.to(torch.bfloat16), pv.to(torch.bfloat16), heads)
        assert not calls
        if device == "cuda":  # 2 streams of 8 folded rows: one softmax program each
            monkeypatch.setattr(kernels, "fills_device", fills_device)
            eager = LongTermMemory(num_basis=n, past_samples=samples, backend="triton", cuda_graphs=False,
                                   **config).to(device)
            eager(frames, query, pk, pv, heads)
            assert not calls


@pytest.mark.parametrize("device", sorted({d for d, b in KERNELS if b == "triton"}))
def test_fills_device(device):
    """The folded attention's softmax programs (streams × ⌈rows / CONFIG["rows"]⌉) against the
    GPU's multiprocessors; always true off CUDA."""
    kernels = backends.triton_kernels()["factored_attention"]
    dev = torch.device(device)
    if dev.type != "cuda":
        assert kernels.fills_device(1, 1, dev)
        return
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    per_stream = -(-384 // kernels.CONFIG["rows"])  # 12 heads × 32 queries
    enough = -(-sms // per_stream)
    assert kernels.fills_device(enough, 384, dev)
    assert not kernels.fills_device(enough - 1, 384, dev)


@pytest.mark.parametrize("device", sorted({d for d, b in KERNELS if b == "triton"}))
def test_compiled_folded_step_fullgraph(monkeypatch, device):
    """torch.compile(fullgraph=True) traces the folded step whole (inductor on CUDA; dynamo alone on the CPU)."""
    monkeypatch.setattr(step_module, "FACTORED_ON_GPU", True)
    torch.manual_seed(0)
    pk, pv = nn.Linear(16, 12).to(device), nn.Linear(16, 12).to(device)
    fused = LongTermMemory(num_basis=40, past_samples=30, backend="triton", cuda_graphs=False).to(device)
    reference = LongTermMemory(num_basis=40, past_samples=30, backend="torch").to(device)
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(2, 4, 12, generator=gen).to(device)
    assert factored_attention.applies(pk, pv, 40, 16, query, 2, None)
    assert_compiled_steps_match(fused, reference, (2, 6, 3, 16), query, pk, pv, 2, gen, device)
