"""``LongTermMemory(cuda_graphs=True)``: steps replayed from captured graphs equal eager steps."""
from __future__ import annotations

import pytest
import torch

from infvideo import LongTermMemory
from conftest import random_linear

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
S, L, T, E, D, H, Q = 3, 24, 4, 40, 32, 4, 8


def _inputs(count, dtype=torch.float32, device="cuda", seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = [torch.randn(S, L, T, E, generator=gen).to(device, dtype) for _ in range(count)]
    queries = [torch.randn(S, Q, D, generator=gen).to(device, dtype) for _ in range(count)]
    return frames, queries


def _pair(**kwargs):
    plain = LongTermMemory(num_basis=20, past_samples=30, check_finite=False, **kwargs).cuda()
    graphed = LongTermMemory(num_basis=20, past_samples=30, check_finite=False, cuda_graphs=True, **kwargs).cuda()
    return plain, graphed


def _assert_same(plain, graphed, a, b):
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(graphed.coef, plain.coef, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(graphed.sticky_stats, plain.sticky_stats, rtol=1e-6, atol=1e-6)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, dict(sticky=False), dict(preset="paper")], ids=["sticky", "uniform", "paper"])
def test_replays_equal_eager_steps(dtype, kwargs):
    pk, pv = random_linear(E, D, seed=1).cuda().to(dtype), random_linear(E, D, seed=2).cuda().to(dtype)
    plain, graphed = _pair(**kwargs)
    frames, queries = _inputs(6, dtype)
    with torch.no_grad():
        for f, q in zip(frames, queries):
            _assert_same(plain, graphed, plain(f, q, pk, pv, H), graphed(f, q, pk, pv, H))
    assert len(graphed._graphs.steps) == 1, "steps 3-6 should have replayed one captured graph"


@cuda
def test_graph_is_dropped_when_state_or_weights_change():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    plain, graphed = _pair()
    frames, queries = _inputs(12)
    with torch.no_grad():
        for i, (f, q) in enumerate(zip(frames, queries)):
            if i == 4:
                for memory in (plain, graphed):
                    memory.reset(streams=[1])
            if i == 7:
                pk.weight.mul_(1.5)  # in place: the stacked K|V weight in the graph is stale
            if i == 9:
                saved = {k: v.clone() for k, v in plain.state_dict().items()}
                for memory in (plain, graphed):
                    memory.load_state_dict(saved)
            _assert_same(plain, graphed, plain(f, q, pk, pv, H), graphed(f, q, pk, pv, H))


@cuda
def test_replayed_output_is_a_copy():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    _, graphed = _pair()
    frames, queries = _inputs(5)
    with torch.no_grad():
        outs = [graphed(f, q, pk, pv, H) for f, q in zip(frames, queries)]
    kept = outs[3].clone()
    assert torch.equal(outs[3], kept) and not torch.equal(outs[3], outs[4])


def test_cpu_steps_run_eagerly_and_flag_is_checked():
    pk, pv = random_linear(E, D, seed=1), random_linear(E, D, seed=2)
    plain = LongTermMemory(num_basis=20, past_samples=30, backend="torch")
    graphed = LongTermMemory(num_basis=20, past_samples=30, backend="torch", cuda_graphs=True)
    frames, queries = _inputs(4, device="cpu")
    with torch.no_grad():
        for f, q in zip(frames, queries):
            assert torch.equal(plain(f, q, pk, pv, H), graphed(f, q, pk, pv, H))
    assert not graphed._graphs.steps
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        LongTermMemory(cuda_graphs="yes")
