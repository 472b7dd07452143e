"""Gradients of the reference (float64 gradcheck): consolidation, attention, and a whole memory step."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from infvideo import LongTermMemory
from infvideo.reference import attend, consolidate_chunk
from infvideo.reference.attention import use_factored
from conftest import random_linear

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
    memory = LongTermMemory(**CONFIGS[name])
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
