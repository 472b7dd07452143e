"""A float64 step computes in float64 throughout, whatever the dtype of the projections and query.

The shapes are those where K and V are materialised (N·e·D + N·D·Q < Q·D·e + N·e·H·Q), the path
that used to cast the coefficients down to float32 for a float32 projection.
"""
from __future__ import annotations

import copy

import pytest
import torch

from infvideo import LongTermMemory
from conftest import random_linear, rel_err

S, L, T, E, D, H, Q = 3, 24, 5, 40, 36, 4, 9
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(count: int, device: str):
    gen = torch.Generator().manual_seed(0)
    frames = [torch.randn(S, L, T, E, generator=gen).to(device, torch.float64) for _ in range(count)]
    queries = [torch.randn(S, Q, D, generator=gen).to(device) for _ in range(count)]  # float32
    return frames, queries


def _steps(memory, frames, queries, pk, pv):
    with torch.no_grad():
        return [memory(f, q, pk, pv, H) for f, q in zip(frames, queries)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", [dict(sticky=False), {}], ids=["uniform", "sticky"])
def test_float32_projections_in_a_float64_step_compute_in_float64(device, kwargs):
    """Float32 Linear layers in a float64 step give what their float64 copies give (≤ 1e-12)."""
    pk, pv = random_linear(E, D, seed=1).to(device), random_linear(E, D, seed=2).to(device)
    frames, queries = _inputs(4, device)
    narrow = LongTermMemory(num_basis=20, past_samples=30, check_finite=False, **kwargs).to(device)
    wide = copy.deepcopy(narrow)
    with torch.no_grad():
        for step, (f, q) in enumerate(zip(frames, queries)):
            q = q.double()  # a float64 context, so the contexts compare in float64 too
            a, b = narrow(f, q, pk, pv, H), wide(f, q, pk.double(), pv.double(), H)
            assert a.dtype == torch.float64
            assert rel_err(a, b) <= 1e-12, f"context, step {step}"
            assert rel_err(narrow.coef, wide.coef) <= 1e-12, f"coefficients, step {step}"


@pytest.mark.parametrize("device", DEVICES)
def test_two_float64_memories_agree(device):
    """Two memories given the same float64 inputs (float32 projections) agree to ≤ 1e-12."""
    pk, pv = random_linear(E, D, seed=1).to(device), random_linear(E, D, seed=2).to(device)
    frames, queries = _inputs(5, device)
    one, two = (LongTermMemory(num_basis=20, past_samples=30, check_finite=False, sticky=False).to(device)
                for _ in range(2))
    for a, b in zip(_steps(one, frames, [q.double() for q in queries], pk, pv),
                    _steps(two, frames, [q.double() for q in queries], pk, pv)):
        assert rel_err(a, b) <= 1e-12
    assert rel_err(one.coef, two.coef) <= 1e-12
