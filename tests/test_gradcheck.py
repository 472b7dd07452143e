"""Gradients of a memory step: the reference (float64 gradcheck: consolidation, attention, a whole
step) and every fused backend against it over several chunks (their backward kernels, registered on
the ops). Tolerances: conftest.GRAD_TOL against the float32 reference at the same inputs (float16 /
bfloat16 tokens and projections: the reference reads the same rounded values)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from infvideo import LongTermMemory, backends
from infvideo.reference import attend, consolidate_chunk
from infvideo.reference.attention import use_factored
from conftest import GRAD_TOL, OP_KERNELS, kernel_id, parameter_grads, random_linear, rel_err

S, L, E, H, Q, M = 2, 5, 6, 2, 3, 6



CONFIGS = {
    "rect-exact": dict(num_basis=7, past_samples=M),
    "rect-paper": dict(num_basis=7, past_samples=M, preset="paper", sticky=False),
    "gaussian": dict(num_basis=8, past_samples=M, basis="gaussian", sigmas=(0.1, 0.2), quad_points=40),
}


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _holding_one_chunk(name, model=4):
    """A float64 memory that already holds one chunk, and its projections."""
    memory = LongTermMemory(**CONFIGS[name], backend="torch")  # float64: the reference
    pk = random_linear(E, model, seed=1, dtype=torch.float64, scale=2.0)
    pv = random_linear(E, model, seed=2, dtype=torch.float64)
    with torch.no_grad():
        memory(_randn(S, L, E, seed=3), _randn(S, Q, model, seed=4), pk, pv, H)
    return memory, pk, pv


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("name", CONFIGS)
def test_consolidate_chunk_gradient(name, partial):
    memory, _, _ = _holding_one_chunk(name)
    filled = memory.filled.clone()
    if partial:  # stream 1 starts a new video in this chunk
        filled[1] = False
    frames = _randn(S, L, E, seed=5).requires_grad_()

    def step(x):
        return consolidate_chunk(memory.config, x, memory.coef, filled, memory.sticky_stats)

    assert torch.autograd.gradcheck(step, (frames,))


def _linear_with(weight, bias):
    """An nn.Linear whose weight and bias are the given (differentiable) tensors."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
    del layer.weight, layer.bias
    layer.weight, layer.bias = weight, bias
    return layer


@pytest.mark.parametrize("model,factored", [(4, False), (8, True)])
@pytest.mark.parametrize("name", CONFIGS)
def test_attend_gradient(name, model, factored):
    memory, pk, pv = _holding_one_chunk(name, model)
    n = memory.config.num_basis
    assert use_factored(n, E, model, H * Q, Q) is factored, "shapes chosen to cover both score paths"
    inputs = (memory.coef.clone().requires_grad_(), _randn(S, Q, model, seed=6).requires_grad_(),
              pk.weight.detach().clone().requires_grad_(), pk.bias.detach().clone().requires_grad_(),
              pv.weight.detach().clone().requires_grad_(), pv.bias.detach().clone().requires_grad_())

    def read(coef, query, wk, bk, wv, bv):
        return attend(memory.config, coef, query, _linear_with(wk, bk), _linear_with(wv, bv), H)[0]

    assert torch.autograd.gradcheck(read, inputs)


@pytest.mark.parametrize("name", CONFIGS)
def test_memory_step_gradient(name):
    memory, pk, pv = _holding_one_chunk(name)
    frames = _randn(S, L, E, seed=7).requires_grad_()
    query = _randn(S, Q, 4, seed=8).requires_grad_()

    def step(x, q):
        return copy.deepcopy(memory)(x, q, pk, pv, H)

    assert torch.autograd.gradcheck(step, (frames, query))
    out = copy.deepcopy(memory)(frames, query, pk, pv, H)
    out.sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CONFIGS)
def test_backward_after_later_steps(name):
    # The state is stored between steps (possibly in place); a loss over several chunks must still
    # backpropagate into every chunk's frames (the previous coefficients carry no gradient).
    memory, pk, pv = _holding_one_chunk(name)
    chunks = [_randn(S, L, E, seed=20 + k).requires_grad_() for k in range(3)]
    loss = sum(memory(x, _randn(S, Q, 4, seed=30 + k), pk, pv, H).square().sum() for k, x in enumerate(chunks))
    loss.backward()
    for x in chunks:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


FUSED_CONFIGS = {
    "exact-sticky": dict(num_basis=11, past_samples=13),
    "exact-uniform": dict(num_basis=11, past_samples=13, sticky=False),
    "paper-sticky": dict(num_basis=11, past_samples=13, preset="paper"),
    "paper-uniform": dict(num_basis=11, past_samples=13, preset="paper", sticky=False),
}
# Odd shapes: 3 streams, 7 frames of 4 tokens, width 20 into 3 heads of 8, 19 queries (two groups).
FS, FL, FT, FE, FD, FH, FQ = 3, 7, 4, 20, 24, 3, 19


def _chunk_grads(backend: str, device: str, cfg: dict, dtype: torch.dtype, chunks: int = 3) -> list:
    """Per chunk: the gradients of ⟨context, w⟩ with respect to frames, query and each projection's
    parameters (weight and bias together), and the context, on a memory of ``backend``."""
    memory = LongTermMemory(**cfg, backend=backend).to(device)
    pk = random_linear(FE, FD, seed=1, scale=2.0).to(device, dtype)
    pv = random_linear(FE, FD, seed=2).to(device, dtype)
    gen = torch.Generator().manual_seed(3)
    out = []
    for chunk in range(chunks):
        if chunk == 2:
            memory.reset(streams=[1])  # a new video in stream 1: a step over a partly filled memory
        frames = torch.randn(FS, FL, FT, FE, generator=gen).to(device, dtype).requires_grad_()
        query = torch.randn(FS, FQ, FD, generator=gen).to(device, dtype).requires_grad_()
        context = memory(frames, query, pk, pv, FH)
        (context.float() * torch.randn(context.shape, generator=gen).to(device)).sum().backward()
        out.append([frames.grad, query.grad, parameter_grads(pk), parameter_grads(pv), context.detach()])
        pk.zero_grad()
        pv.zero_grad()
    return out


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
@pytest.mark.parametrize("name", FUSED_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fused_gradients_match_reference(device, backend, name, dtype):
    """A trainable step on a fused backend (projection weights requiring grad, as an nn.Module's
    do) gives the reference's gradients for frames, query and both projections, chunk after
    chunk (the state between chunks detached on both), the last over a partly filled memory."""
    fused = _chunk_grads(backend, device, FUSED_CONFIGS[name], dtype)
    reference = _chunk_grads("torch", device, FUSED_CONFIGS[name], dtype)
    names = ("frames", "query", "proj_key", "proj_value", "context")
    for chunk, (got, want) in enumerate(zip(fused, reference)):
        for what, a, b in zip(names, got, want):
            assert rel_err(a, b) < GRAD_TOL[dtype], f"chunk {chunk}: {what}"


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_grad_step_runs_the_fused_ops(device, backend):
    """torch.profiler sees the infvideo ops and their backward ops in a grad-enabled step."""
    memory = LongTermMemory(num_basis=11, past_samples=13, backend=backend).to(device)
    pk, pv = random_linear(FE, FD, seed=1).to(device), random_linear(FE, FD, seed=2).to(device)
    gen = torch.Generator().manual_seed(5)
    chunk = [torch.randn(FS, FL, FE, generator=gen).to(device).requires_grad_(),
             torch.randn(FS, FQ, FD, generator=gen).to(device)]
    memory(*chunk, pk, pv, FH).sum().backward()  # the first chunk fills the memory
    with torch.profiler.profile() as prof:
        memory(*chunk, pk, pv, FH).sum().backward()
    seen = {event.name for event in prof.events()}
    for op in ("rect_consolidate", "slot_attention", "quantile_bins", "rect_consolidate_backward",
               "slot_attention_backward"):
        assert f"infvideo::{op}" in seen, op
    assert pk.weight.grad is not None and pv.bias.grad is not None


def test_float64_grad_step_warns_once():
    """A float64 step with gradients takes the reference on a fused backend, and says so once."""
    memory = LongTermMemory(num_basis=7, past_samples=6, backend="cpu" if "cpu" in backends.built() else "auto")
    if memory.backend_on(torch.device("cpu")) == "torch":
        pytest.skip("no fused backend on CPU tensors here")
    pk = random_linear(E, 4, seed=1, dtype=torch.float64)
    pv = random_linear(E, 4, seed=2, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="float64 step with gradients runs on the torch reference"):
        memory(_randn(S, L, E, seed=1), _randn(S, Q, 4, seed=2), pk, pv, H)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory(_randn(S, L, E, seed=3), _randn(S, Q, 4, seed=4), pk, pv, H).sum().backward()
        with torch.no_grad():
            memory(_randn(S, L, E, seed=3), _randn(S, Q, 4, seed=4), pk, pv, H)


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_compiled_grad_step_matches_reference(device, backend):
    """torch.compile(fullgraph=True) traces a grad-enabled fused step whole, the ops' registered
    backward included (AOT autograd: aot_eager on the CPU, inductor on CUDA), with the
    reference's gradients."""
    pk, pv = random_linear(FE, FD, seed=1).to(device), random_linear(FE, FD, seed=2).to(device)
    fused = LongTermMemory(num_basis=11, past_samples=13, backend=backend, cuda_graphs=False).to(device)
    reference = LongTermMemory(num_basis=11, past_samples=13, backend="torch").to(device)
    gen = torch.Generator().manual_seed(6)
    query = torch.randn(FS, FQ, FD, generator=gen).to(device)
    first = torch.randn(FS, FL, FT, FE, generator=gen).to(device)
    with torch.no_grad():  # the eager step that puts the constants on the device
        fused(first, query, pk, pv, FH)
        reference(first, query, pk, pv, FH)
    step = torch.compile(fused, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    for _ in range(2):
        frames = torch.randn(FS, FL, FT, FE, generator=gen).to(device)
        grads = []
        for memory in (step, reference):
            x = frames.clone().requires_grad_()
            pk.zero_grad()
            memory(x, query, pk, pv, FH).square().sum().backward()
            grads.append((x.grad, parameter_grads(pk)))
        for got, want in zip(*grads):
            assert rel_err(got, want) < 1e-4
        assert rel_err(fused.coef, reference.coef) < 1e-4
