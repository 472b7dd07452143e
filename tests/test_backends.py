"""Whole memory steps on every fused backend present (cpu, Triton in the interpreter, cuda and Triton
on a GPU) against the torch reference, the backend registry, and the ops' own input errors.

Tolerances (relative): float32 steps 1e-5 on the C++ kernels and 1e-4 on Triton (its quadrature and
slot dots sum in another order); half-precision steps 3e-2, each compared from the same state
(sticky sampling turns half-precision rounding into different sample bins over a few chunks).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import infvideo.ops as ops
from infvideo import LongTermMemory, backends
from infvideo.backends import available_backends, backend_for, info
from infvideo.config import MemoryConfig
from infvideo.ops import factored_attention
from infvideo.reference import fit as ref_fit
from conftest import CUDA, DTYPES, OP_KERNELS, assert_compiled_steps_match, config_id, kernel_id, rel_err

MEMORY_CONFIGS = [dict(), dict(preset="paper"), dict(sticky=False), dict(sticky=False, preset="paper"),
                  dict(sampling="multinomial"), dict(sampling="upstream"), dict(basis="gaussian"),
                  dict(basis="gaussian", preset="paper"), dict(basis="gaussian", density="gaussian")]
# (streams, L, tokens, e, D, H, N, M): "wide" takes the CPU step's factored attention.
SIZES = {"small": (3, 7, 5, 24, 16, 4, 12, 20), "wide": (2, 16, 4, 128, 128, 2, 128, 96)}


# The wide sizes run in float32 on the C++ and GPU kernels (not the slow interpreter).
STEP_CASES = [pytest.param(device, backend, size, dtype, id=f"{device}-{backend}-{size}-{str(dtype)[6:]}")
              for device, backend in OP_KERNELS for size, dtype in [("small", d) for d in DTYPES] + [
                  ("wide", torch.float32)] if size == "small" or (device, backend) != ("cpu", "triton")]


@pytest.mark.parametrize("device,backend,size,dtype", STEP_CASES)
@pytest.mark.parametrize("config", MEMORY_CONFIGS, ids=config_id)
def test_memory_matches_torch(device, backend, size, dtype, config):
    streams, length, tokens, width, model, heads, n, samples = SIZES[size]
    torch.manual_seed(0)
    pk, pv = nn.Linear(width, model).to(device, dtype), nn.Linear(width, model).to(device, dtype)
    memories = [LongTermMemory(num_basis=n, past_samples=samples, quad_points=50, backend=name,
                               generator=torch.Generator(device).manual_seed(3), **config).to(device)
                for name in ("torch", backend)]
    gen = torch.Generator().manual_seed(1)
    tol = (1e-4 if backend == "triton" else 1e-5) if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        for chunk in range(4):
            if dtype != torch.float32:
                memories[1].load_state_dict(memories[0].state_dict())
            frames = torch.randn(streams, length, tokens, width, generator=gen).to(device, dtype)
            query = torch.randn(streams, 32, model, generator=gen).to(device, dtype)
            outs = [m(frames, query, pk, pv, heads) for m in memories]
            assert outs[1].dtype == dtype
            assert rel_err(outs[1], outs[0]) < tol, f"chunk {chunk}"
            assert rel_err(memories[1].coef, memories[0].coef) < tol, f"chunk {chunk}"


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_mixed_streams_after_partial_reset(device, backend):
    torch.manual_seed(0)
    pk, pv = nn.Linear(24, 16).to(device), nn.Linear(24, 16).to(device)
    memories = [LongTermMemory(num_basis=12, past_samples=20, backend=b).to(device) for b in ("torch", backend)]
    with torch.no_grad():
        for _ in range(3):
            frames, query = torch.randn(3, 7, 24, device=device), torch.randn(3, 5, 16, device=device)
            outs = [m(frames, query, pk, pv, 4) for m in memories]
            assert rel_err(outs[1], outs[0]) < 1e-4
            for m in memories:
                m.reset(streams=[1])


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_deterministic(device, backend):
    """No atomics anywhere: two runs of a step give the same bits."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(96, 96).to(device), nn.Linear(96, 96).to(device)
    frames = torch.randn(3, 16, 4, 96, device=device)
    query = torch.randn(3, 32, 96, device=device)
    outs = []
    for _ in range(2):
        memory = LongTermMemory(num_basis=64, past_samples=48, backend=backend).to(device)
        with torch.no_grad():
            for _ in range(3):
                out = memory(frames, query, pk, pv, 3)
        outs.append((out, memory.coef, memory.sticky_stats))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device,backend", [k for k in OP_KERNELS if k[1] == "triton"], ids=kernel_id)
@pytest.mark.parametrize("config", [dict(), dict(preset="paper"), dict(sticky=False), dict(check_finite="async")],
                         ids=config_id)
def test_compiled_step_fullgraph_matches_reference(device, backend, config):
    """torch.compile(fullgraph=True) traces the fused step whole (inductor on CUDA; dynamo alone on the CPU)."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(24, 16).to(device), nn.Linear(24, 16).to(device)
    fused = LongTermMemory(num_basis=12, past_samples=20, backend=backend, cuda_graphs=False, **config).to(device)
    reference = LongTermMemory(num_basis=12, past_samples=20, backend="torch",
                               **{**config, "check_finite": True}).to(device)
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(2, 5, 16, generator=gen).to(device)
    assert_compiled_steps_match(fused, reference, (2, 7, 5, 24), query, pk, pv, 4, gen, device)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("backend", [b for d, b in OP_KERNELS if d == "cuda"])
@pytest.mark.parametrize("check", [True, False], ids=["checked", "unchecked"])
def test_user_cuda_graph_matches_eager(backend, check):
    """A caller's own graph of a memory step (the memory's graphs stand aside while it captures),
    with the finiteness check and without (then the step's new state is copied into the buffers)."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(768, 768).cuda(), nn.Linear(768, 768).cuda()
    frames = torch.randn(2, 64, 32, 768, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(2, 32, 768, device="cuda")
    eager = LongTermMemory(num_basis=64, backend=backend, cuda_graphs=False, check_finite=check).cuda()
    graphed = LongTermMemory(num_basis=64, backend=backend, check_finite=check).cuda()
    with torch.no_grad():
        for memory in (eager, graphed):
            memory(frames, query, pk, pv, 12)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = graphed(frames, query, pk, pv, 12)
        for _ in range(3):
            expected = eager(frames, query, pk, pv, 12)
            graph.replay()
            assert rel_err(out, expected) < 1e-6
            assert rel_err(graphed.coef, eager.coef) < 1e-6
            assert rel_err(graphed.sticky_stats, eager.sticky_stats) < 1e-6


def test_registry():
    """One table: auto takes the C++ kernels on CPU tensors where built; names are checked once."""
    assert available_backends()[-1] == "torch"
    assert info()["auto"]["cpu"] == backend_for("auto", torch.device("cpu"))
    if "cpu" in backends.built():
        assert backend_for("auto", torch.device("cpu")) == "cpu" and "cpu" in available_backends()
    with pytest.raises(ValueError, match="backend='cuda' runs on cuda tensors"):
        backend_for("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.quantile_bins(torch.rand(2, 7), 3, backend="torch")  # the ops have no reference kernel
    with pytest.raises(ValueError, match="backend must be one of"):
        LongTermMemory(backend="fast")


@pytest.mark.skipif("cpu" not in backends.built(), reason="the C++ extension is not built")
def test_grad_steps_run_on_the_fused_kernels():
    """At shapes where the CPU step folds the projections into the queries (factored attention,
    which has no backward), a step that autograd records projects K and V and runs the slot
    attention's backward instead, with the reference's gradients."""
    query = torch.randn(2, 32, 128)
    pk, pv = nn.Linear(128, 128), nn.Linear(128, 128)
    assert factored_attention.applies(pk, pv, 128, 128, query, 2, None)
    grads = []
    for backend in ("cpu", "torch"):
        memory = LongTermMemory(num_basis=128, past_samples=20, backend=backend)
        frames = torch.randn(2, 7, 128, generator=torch.Generator().manual_seed(0), requires_grad=True)
        pk.zero_grad()
        memory(frames, query, pk, pv, 2).sum().backward()
        grads.append((frames.grad, pk.weight.grad.clone()))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device,backend", [k for k in OP_KERNELS if k[1] != "triton"], ids=kernel_id)
def test_csrc_kernels_reject_bad_input_naming_the_argument(device, backend):
    """Direct calls of the ops reach the C++ checks (no Python wrapper in between)."""
    frames = torch.randn(2, 5, 8, device=device)
    plan = ops.plan_on(ref_fit.consolidation_fit(MemoryConfig(num_basis=7, past_samples=9), 5), device)
    maps = (plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale)

    def consolidate(*args):
        return torch.ops.infvideo.rect_consolidate(*args, backend=backend)

    def zeros(*shape, **kw):
        return torch.zeros(*shape, device=device, **kw)

    with pytest.raises(RuntimeError, match="past must have shape"):
        consolidate(frames, zeros(2, 6, 8), zeros(1, 9, dtype=torch.int32), *maps)
    if device == "cpu":  # the CUDA kernel does not read the bins on the host
        with pytest.raises(RuntimeError, match="sample_bins holds 7"):
            consolidate(frames, zeros(2, 7, 8), torch.full((1, 9), 7), *maps)
    with pytest.raises(RuntimeError, match="sample_bins must have dtype int32 or int64"):
        consolidate(frames, zeros(2, 7, 8), zeros(1, 9), *maps)
    with pytest.raises(RuntimeError, match="past and sample_bins must be given together"):
        consolidate(frames, zeros(2, 7, 8), None, *maps)
    with pytest.raises(RuntimeError, match="frames must have 3 or 4 or 5 dimensions"):
        consolidate(zeros(5, 8), None, None, *maps)
    with pytest.raises(RuntimeError, match="frame_start must have N \\+ 1"):
        consolidate(frames, None, None, plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start[:-1],
                    plan.scale)
    with pytest.raises(RuntimeError, match="mass must have 2 or 3 dimensions"):
        torch.ops.infvideo.quantile_bins(zeros(2, 2, 2, 2), 3, backend)
    with pytest.raises(RuntimeError, match="num_samples must be >= 1"):
        torch.ops.infvideo.quantile_bins(torch.rand(2, 7, device=device), 0, backend)
    query, keys = torch.randn(2, 3, 8, device=device), torch.randn(2, 7, 8, device=device)

    def attention(*args):
        return torch.ops.infvideo.slot_attention(*args, backend)

    with pytest.raises(RuntimeError, match="num_heads \\(3\\) must be >= 1 and divide the query width 8"):
        attention(query, keys, keys, 3, None, None)
    with pytest.raises(RuntimeError, match="values must have the keys' shape"):
        attention(query, keys, keys[:, :6], 2, None, None)
    with pytest.raises(RuntimeError, match="keys must have dtype float32, float16 or bfloat16"):
        attention(query, keys.double(), keys, 2, None, None)
    with pytest.raises(RuntimeError, match="slot_log_weight has 6 slots"):
        attention(query, keys, keys, 2, zeros(6), None)
