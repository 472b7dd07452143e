"""``LongTermMemory(cuda_graphs=True)`` (the default): steps replayed from captured graphs equal eager
steps; the asynchronous finiteness check of CUDA steps (the memory's docstring)."""
from __future__ import annotations

import gc

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
    plain = LongTermMemory(num_basis=20, past_samples=30, cuda_graphs=False, **kwargs).cuda()
    graphed = LongTermMemory(num_basis=20, past_samples=30, **kwargs).cuda()
    return plain, graphed


def _assert_same(plain, graphed, a, b):
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(graphed.coef, plain.coef, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(graphed.sticky_stats, plain.sticky_stats, rtol=1e-6, atol=1e-6)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, dict(sticky=False), dict(preset="paper"), dict(basis="gaussian", quad_points=64),
                                    dict(check_finite=False)],
                         ids=["sticky", "uniform", "paper", "gaussian", "unchecked"])
def test_replays_equal_eager_steps(dtype, kwargs):
    """Unchecked, a captured step commits by copying its new state into the buffers (two at a launch)."""
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
@pytest.mark.parametrize("check", [False, True], ids=["unchecked", "checked"])
def test_captured_step_commits_its_state_early(check):
    """Unchecked, a full memory's captured step copies its new coefficients into the memory's
    buffer on a second stream beside the attention, and the attention writes the mass into the
    memory's own (``infvideo.early_commit``): ``compute`` hands back both buffers, and replays of
    the user's graph still equal eager steps; with the check nothing is written before its select.
    Eager steps swap new tensors in either way."""
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    eager = LongTermMemory(num_basis=20, past_samples=30, cuda_graphs=False, check_finite=check).cuda()
    graphed = LongTermMemory(num_basis=20, past_samples=30, cuda_graphs=False, check_finite=check).cuda()
    frames, queries = _inputs(6)
    with torch.no_grad():
        for f, q in zip(frames[:2], queries[:2]):
            for memory in (eager, graphed):
                memory(f, q, pk, pv, H)
        assert graphed.compute(frames[2], queries[2], pk, pv, H)[1] is not graphed.coef
        static_frames, static_query = frames[2].clone(), queries[2].clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            context, coef, stats = graphed.compute(static_frames, static_query, pk, pv, H)
            assert (coef is graphed.coef) == (stats is graphed.sticky_stats) == (not check)
            graphed.commit(static_frames, static_query, context, coef, stats)
        for f, q in zip(frames[2:], queries[2:]):
            static_frames.copy_(f)
            static_query.copy_(q)
            graph.replay()
            _assert_same(eager, graphed, eager(f, q, pk, pv, H), context)


@cuda
def test_replayed_output_is_a_copy():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    _, graphed = _pair()
    frames, queries = _inputs(5)
    with torch.no_grad():
        outs = [graphed(f, q, pk, pv, H) for f, q in zip(frames, queries)]
    kept = outs[3].clone()
    assert torch.equal(outs[3], kept) and not torch.equal(outs[3], outs[4])


def test_cpu_steps_run_eagerly_and_flags_are_checked():
    pk, pv = random_linear(E, D, seed=1), random_linear(E, D, seed=2)
    plain = LongTermMemory(num_basis=20, past_samples=30, backend="torch")
    graphed = LongTermMemory(num_basis=20, past_samples=30, backend="torch")
    frames, queries = _inputs(4, device="cpu")
    with torch.no_grad():
        for f, q in zip(frames, queries):
            assert torch.equal(plain(f, q, pk, pv, H), graphed(f, q, pk, pv, H))
    assert not graphed._graphs.steps
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        LongTermMemory(cuda_graphs="yes")
    with pytest.raises(ValueError, match="check_finite must be True, False or 'async'"):
        LongTermMemory(check_finite="later")
    with pytest.warns(FutureWarning, match="launch_plans"):  # the removed mechanism's switch
        LongTermMemory(launch_plans=True)


# CUDA steps check asynchronously by default; check_finite="async" runs the same device-flag
# commit on the CPU.
ASYNC_CASES = [("cpu", "async", False)] + ([("cuda", True, True), ("cuda", True, False)] if torch.cuda.is_available()
                                            else [])


@pytest.mark.parametrize("device,check,graphs", ASYNC_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("bad", ["frames", "query"])
def test_non_finite_input_is_never_committed_and_raised_later(device, check, graphs, bad):
    """A non-finite step (and the steps after it, until the error) leaves the state of before it;
    the error comes from a later call or synchronize(), and the memory then goes on from there."""
    pk, pv = random_linear(E, D, seed=1).to(device), random_linear(E, D, seed=2).to(device)
    plain = LongTermMemory(num_basis=20, past_samples=30, cuda_graphs=False).to(device)
    checked = LongTermMemory(num_basis=20, past_samples=30, check_finite=check, cuda_graphs=graphs).to(device)
    frames, queries = _inputs(8, device=device)
    with torch.no_grad():
        for f, q in zip(frames[:4], queries[:4]):  # graphs: the fourth step replays
            plain(f, q, pk, pv, H)
            checked(f, q, pk, pv, H)
        before = {name: value.clone() for name, value in checked.named_buffers()}
        broken = (frames[4].clone(), queries[4].clone())
        broken[0 if bad == "frames" else 1].view(-1)[7] = float("nan")
        error = None
        for f, q in (broken, (frames[5], queries[5])):  # the second may run before the host sees the flag
            try:
                checked(f, q, pk, pv, H)
            except ValueError as err:
                error = err
                break
        if error is None:
            with pytest.raises(ValueError) as caught:
                checked.synchronize()
            error = caught.value
        assert f"{bad} contains NaN or Inf" in str(error)
        for name, value in checked.named_buffers():
            assert torch.equal(value, before[name]), f"{name} changed by a non-finite step"
        checked.synchronize()  # the error was raised once
        for f, q in zip(frames[4:], queries[4:]):  # from the state before the failed step, as plain
            torch.testing.assert_close(checked(f, q, pk, pv, H), plain(f, q, pk, pv, H), rtol=1e-6, atol=1e-6)


@cuda
def test_capture_pauses_the_cyclic_collector(monkeypatch):
    """A memory captures its step with Python's cyclic collector paused (graphs._no_cyclic_gc): a
    collection inside the capture can free an unreachable earlier memory whose CUDA graph, destroyed
    there, invalidates the capture. Here such a memory is garbage while the collector runs at
    nearly every allocation; the capture must succeed and see the collector off, and after it the
    collector is on again."""
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    frames, queries = _inputs(4)
    old = LongTermMemory(num_basis=20, past_samples=30).cuda()
    with torch.no_grad():
        for f, q in zip(frames, queries):
            old(f, q, pk, pv, H)
    assert old._graphs.steps, "the old memory captured a step"
    old.__dict__["_cycle"] = {"memory": old}  # only the cyclic collector can free it
    del old
    memory = LongTermMemory(num_basis=20, past_samples=30).cuda()
    compute, collector_on = memory.compute, []

    def spied_compute(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            collector_on.append(gc.isenabled())
        return compute(*args, **kwargs)

    memory.compute = spied_compute
    enabled, threshold = gc.isenabled(), gc.get_threshold()
    gc.enable()
    gc.set_threshold(1, 1, 1)
    try:
        with torch.no_grad():
            for f, q in zip(frames, queries):
                memory(f, q, pk, pv, H)
        assert collector_on == [False], "one capture, with the collector paused"
        assert memory._graphs.steps and gc.isenabled()
    finally:
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()
