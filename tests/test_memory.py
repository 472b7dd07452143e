"""LongTermMemory as a module: streams, reset, state_dict, token layouts, dtypes (SPEC sections 3, 10)."""
from __future__ import annotations

import pytest
import torch

from infvideo import LongTermMemory
from conftest import random_linear, rel_err

S, L, E, D, H, Q = 3, 6, 12, 8, 2, 5

CONFIGS = {
    "rect-exact-quantile": dict(num_basis=16, past_samples=20),
    "rect-exact-uniform": dict(num_basis=16, past_samples=20, sticky=False),
    "rect-paper-uniform": dict(num_basis=16, past_samples=20, sticky=False, preset="paper"),
    "rect-paper-quantile": dict(num_basis=13, past_samples=21, preset="paper", tau=0.6),
    "gauss-exact-quantile": dict(num_basis=16, past_samples=20, basis="gaussian", sigmas=(0.05, 0.1),
                                 quad_points=200),
    "gauss-paper-uniform": dict(num_basis=16, past_samples=20, basis="gaussian", sigmas=(0.05, 0.1),
                                quad_points=200, sticky=False, preset="paper"),
}


def _chunks(count, streams=S, length=L, width=E, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(streams, length, width, generator=gen).to(dtype) for _ in range(count)]


def _queries(count, streams=S, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(streams, Q, D, generator=gen).to(dtype) for _ in range(count)]


@pytest.fixture(scope="module")
def proj():
    return random_linear(E, D, seed=10, scale=2.0), random_linear(E, D, seed=11)


def _run(memory, frames, queries, proj):
    with torch.no_grad():
        return [memory(f, q, *proj, H) for f, q in zip(frames, queries)]


@pytest.mark.parametrize("name", CONFIGS)
def test_streams_together_equal_streams_alone(name, proj):
    frames, queries = _chunks(3), _queries(3)
    together = LongTermMemory(**CONFIGS[name])
    joint = _run(together, frames, queries, proj)
    for s in range(S):
        alone = LongTermMemory(**CONFIGS[name])
        single = _run(alone, [f[s:s + 1] for f in frames], [q[s:s + 1] for q in queries], proj)
        for step, (a, b) in enumerate(zip(joint, single)):
            assert rel_err(a[s:s + 1], b) <= 1e-5, f"stream {s}, chunk {step}"
        assert rel_err(together.coefficients[s:s + 1], alone.coefficients) <= 1e-5


def test_coefficients_none_until_first_call(proj):
    memory = LongTermMemory(num_basis=16, past_samples=20)
    assert memory.coefficients is None and memory.num_streams == 0
    _run(memory, _chunks(1), _queries(1), proj)
    assert memory.coefficients.shape == (S, 16, E)
    assert memory.num_streams == S


@pytest.mark.parametrize("name", ["rect-exact-quantile", "rect-paper-uniform", "gauss-exact-quantile"])
def test_reset_behaves_like_a_fresh_memory(name, proj):
    frames, queries = _chunks(4), _queries(4)
    used = LongTermMemory(**CONFIGS[name])
    _run(used, frames[:3], queries[:3], proj)
    used.reset()
    assert used.coefficients is None
    fresh = LongTermMemory(**CONFIGS[name])
    after_reset = _run(used, frames[3:], queries[3:], proj)[0]
    first = _run(fresh, frames[3:], queries[3:], proj)[0]
    assert torch.equal(after_reset, first)
    assert torch.equal(used.coefficients, fresh.coefficients)
    assert torch.equal(used.sticky_stats, fresh.sticky_stats)


@pytest.mark.parametrize("streams", [[1], torch.tensor([False, True, False])])
@pytest.mark.parametrize("name", ["rect-exact-quantile", "rect-paper-uniform", "gauss-exact-quantile"])
def test_reset_one_stream(name, streams, proj):
    frames, queries = _chunks(4), _queries(4)
    partial, untouched = LongTermMemory(**CONFIGS[name]), LongTermMemory(**CONFIGS[name])
    _run(partial, frames[:3], queries[:3], proj)
    _run(untouched, frames[:3], queries[:3], proj)
    partial.reset(streams=streams)
    assert partial.filled.tolist() == [True, False, True]
    assert not partial.coef[1].any()
    out = _run(partial, frames[3:], queries[3:], proj)[0]
    ref = _run(untouched, frames[3:], queries[3:], proj)[0]
    for s in (0, 2):
        assert torch.equal(out[s], ref[s]), f"stream {s} changed by resetting stream 1"
        assert torch.equal(partial.coef[s], untouched.coef[s])
    fresh = LongTermMemory(**CONFIGS[name])
    alone = _run(fresh, [frames[3][1:2]], [queries[3][1:2]], proj)[0]
    assert rel_err(out[1:2], alone) <= 1e-5
    assert rel_err(partial.coef[1:2], fresh.coef) <= 1e-5


@pytest.mark.parametrize("name", ["rect-exact-quantile", "rect-paper-quantile", "gauss-exact-quantile"])
def test_state_dict_round_trip(name, proj):
    frames, queries = _chunks(3), _queries(3)
    original = LongTermMemory(**CONFIGS[name])
    _run(original, frames[:2], queries[:2], proj)
    saved = {k: v.clone() for k, v in original.state_dict().items()}
    assert set(saved) == {"coef", "filled", "sticky_stats"}
    resumed = LongTermMemory(**CONFIGS[name])
    resumed.load_state_dict(saved)
    for key, value in saved.items():
        assert torch.equal(resumed.state_dict()[key], value)
    a = _run(original, frames[2:], queries[2:], proj)[0]
    b = _run(resumed, frames[2:], queries[2:], proj)[0]
    assert torch.equal(a, b)
    assert torch.equal(original.coef, resumed.coef)
    assert torch.equal(original.sticky_stats, resumed.sticky_stats)


@pytest.mark.parametrize("layout", [(32,), (14, 14), (196,)])
def test_token_layouts_equal_pooled_frames(layout, proj):
    gen = torch.Generator().manual_seed(5)
    tokens = [torch.randn(S, 4, *layout, E, generator=gen) for _ in range(2)]
    queries = _queries(2)
    pooled = [t.reshape(S, 4, -1, E).to(torch.float64).mean(2).float() for t in tokens]
    raw, ref = LongTermMemory(num_basis=16, past_samples=20), LongTermMemory(num_basis=16, past_samples=20)
    out_raw = _run(raw, tokens, queries, proj)
    out_ref = _run(ref, pooled, queries, proj)
    for a, b in zip(out_raw, out_ref):
        assert rel_err(a, b) <= 1e-5
    assert rel_err(raw.coefficients, ref.coefficients) <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("name", ["rect-exact-quantile", "rect-exact-uniform", "gauss-exact-quantile",
                                  "gauss-paper-uniform"])
def test_half_precision_inputs(name, dtype, tol, proj):
    frames, queries = _chunks(3), _queries(3)
    low = LongTermMemory(**CONFIGS[name])
    same = LongTermMemory(**CONFIGS[name])  # fp32 on the same rounded inputs
    full = LongTermMemory(**CONFIGS[name])  # fp32 on the original inputs
    out_low = _run(low, [f.to(dtype) for f in frames], [q.to(dtype) for q in queries], proj)
    out_same = _run(same, [f.to(dtype).float() for f in frames], [q.to(dtype).float() for q in queries], proj)
    out_full = _run(full, frames, queries, proj)
    # Sticky sampling is discontinuous in the attention mass (a quantile may cross a bin edge), so
    # after the first chunk only runs on the same rounded inputs are comparable.
    comparable = 1 if CONFIGS[name].get("sticky", True) else len(frames)
    for step, (a, b, c) in enumerate(zip(out_low, out_same, out_full)):
        assert a.dtype == dtype and torch.isfinite(a).all()
        assert rel_err(a, b) <= tol  # only the output rounding differs
        if step < comparable:
            assert rel_err(a, c) <= 2 * tol
    assert low.coefficients.dtype == torch.float32
    assert rel_err(low.coefficients, same.coefficients) <= 1e-5  # the state is kept in float32
    if comparable == len(frames):
        assert rel_err(low.coefficients, full.coefficients) <= tol


@pytest.mark.parametrize("kwargs", [dict(basis="gaussian", num_basis=16, past_samples=20),
                                    dict(basis="gaussian", num_basis=16, past_samples=20, density="gaussian"),
                                    dict(basis="gaussian", num_basis=18, sigmas=(0.02, 0.05, 0.1),
                                         past_samples=20, density="gaussian", sticky=False)])
def test_gaussian_modes_run(kwargs, proj):
    memory = LongTermMemory(**kwargs)
    outs = _run(memory, _chunks(3), _queries(3), proj)
    for out in outs:
        assert out.shape == (S, Q, D) and torch.isfinite(out).all()
    assert memory.coefficients.shape == (S, kwargs["num_basis"], E)
    assert torch.isfinite(memory.coefficients).all()
    assert torch.isfinite(memory.sticky_stats).all()
    assert not torch.equal(outs[1], outs[2])


@pytest.mark.parametrize("stream", [0, 1])
@pytest.mark.parametrize("kwargs", [dict(sampling="multinomial"), dict(sampling="upstream"),
                                    dict(sampling="multinomial", basis="gaussian", sigmas=(0.05, 0.1),
                                         quad_points=100)])
def test_reset_one_stream_with_random_sampling(kwargs, stream, proj):
    # A reset stream has a zero sticky statistic; drawing from it must not fail (SPEC 7 samplers).
    frames, queries = _chunks(3), _queries(3)
    memory = LongTermMemory(num_basis=16, past_samples=20, generator=torch.Generator().manual_seed(0), **kwargs)
    _run(memory, frames[:2], queries[:2], proj)
    memory.reset(streams=[stream])
    out = _run(memory, frames[2:], queries[2:], proj)[0]
    assert torch.isfinite(out).all() and torch.isfinite(memory.coef).all()
    fresh = LongTermMemory(num_basis=16, past_samples=20, **kwargs)
    alone = _run(fresh, [frames[2][stream:stream + 1]], [queries[2][stream:stream + 1]], proj)[0]
    assert rel_err(out[stream:stream + 1], alone) <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("name", ["rect-exact-uniform", "gauss-paper-uniform"])
def test_half_precision_projections(name, dtype, tol, proj):
    # A Q-former run in half precision hands over half-precision Linear layers too.
    frames, queries = _chunks(3), _queries(3)
    low_proj = tuple(random_linear(E, D, seed=s, scale=c, dtype=dtype) for s, c in ((10, 2.0), (11, 1.0)))
    rounded_proj = tuple(random_linear(E, D, seed=s, scale=c, dtype=dtype).float() for s, c in ((10, 2.0), (11, 1.0)))
    low, same = LongTermMemory(**CONFIGS[name]), LongTermMemory(**CONFIGS[name])
    out_low = _run(low, [f.to(dtype) for f in frames], [q.to(dtype) for q in queries], low_proj)
    out_same = _run(same, [f.to(dtype).float() for f in frames], [q.to(dtype).float() for q in queries], rounded_proj)
    for a, b in zip(out_low, out_same):
        assert a.dtype == dtype and torch.isfinite(a).all()
        assert rel_err(a, b) <= tol
    assert rel_err(low.coefficients, same.coefficients) <= 1e-5


def test_tau_enters_the_exact_positions_as_written(proj):
    """τ = 0.7 means 7/10: with L = 24 and N = 64, frame j = 2 of a later chunk sits at
    7/10 + (3/10)(3/2)/24 = 46/64 exactly, so it belongs to bin 46 (the double nearest 0.7 would put it
    just below, in bin 45)."""
    from fractions import Fraction

    from infvideo.reference import positions

    past, length, bins = 8, 24, 64
    points = positions.consolidation(past, length, 0.7, "exact")
    assert points.fractions[past + 1] == Fraction(46, 64)
    memory = LongTermMemory(num_basis=bins, tau=0.7, past_samples=past, sticky=False)
    zeros = torch.zeros(1, length, E)
    frames = zeros.clone()
    frames[0, 1] = 1.0  # frame j = 2 (SPEC counts frames from 1): the only non-zero value
    query = torch.randn(1, Q, D, generator=torch.Generator().manual_seed(3))
    _run(memory, [zeros, frames], [query, query], proj)
    holding = (memory.coefficients[0] != 0).any(1).nonzero().flatten().tolist()
    assert holding == [46]
