"""Bad inputs raise TypeError/ValueError naming the argument, and leave the memory untouched."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from infvideo import LongTermMemory
from conftest import assert_unchanged, random_linear, snapshot

S, L, E, D, H, Q = 2, 4, 6, 8, 2, 3


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _good():
    return dict(frames=_randn(S, L, E, seed=1), query=_randn(S, Q, D, seed=2),
                proj_key=random_linear(E, D, seed=3), proj_value=random_linear(E, D, seed=4), num_heads=H)


def _with_nan(x, value):
    x = x.clone()
    x.view(-1)[5] = value
    return x


BAD_CALLS = {  # name: (changes to the good call, argument named in the message)
    "nan-frames": (lambda g: dict(frames=_with_nan(g["frames"], math.nan)), "frames"),
    "inf-frames": (lambda g: dict(frames=_with_nan(g["frames"], math.inf)), "frames"),
    "-inf-token-frames": (lambda g: dict(frames=_with_nan(_randn(S, L, 32, E), -math.inf)), "frames"),
    "nan-last-frame": (lambda g: dict(frames=_with_nan(g["frames"], math.nan).flip(1)), "frames"),
    "nan-query": (lambda g: dict(query=_with_nan(g["query"], math.nan)), "query"),
    "inf-query": (lambda g: dict(query=_with_nan(g["query"], math.inf)), "query"),
    "frames-width-vs-proj_key": (lambda g: dict(frames=_randn(S, L, E + 1)), "frames"),
    "frames-2d": (lambda g: dict(frames=_randn(L, E)), "frames"),
    "frames-6d": (lambda g: dict(frames=_randn(S, L, 2, 2, 2, E)), "frames"),
    "frames-empty-chunk": (lambda g: dict(frames=_randn(S, 0, E)), "frames"),
    "frames-int": (lambda g: dict(frames=torch.ones(S, L, E, dtype=torch.int64)), "frames"),
    "frames-not-tensor": (lambda g: dict(frames=g["frames"].tolist()), "frames"),
    "query-2d": (lambda g: dict(query=_randn(Q, D)), "query"),
    "query-4d": (lambda g: dict(query=_randn(S, 1, Q, D)), "query"),
    "query-int": (lambda g: dict(query=torch.ones(S, Q, D, dtype=torch.int32)), "query"),
    "query-streams-vs-frames": (lambda g: dict(query=_randn(S + 1, Q, D)), "query"),
    "streams-vs-memory": (lambda g: dict(frames=_randn(S + 1, L, E), query=_randn(S + 1, Q, D)), "frames"),
    "frames-width-vs-memory": (lambda g: dict(frames=_randn(S, L, E + 2), proj_key=random_linear(E + 2, D, 5),
                                              proj_value=random_linear(E + 2, D, 6)), "frames"),
    "heads-not-dividing": (lambda g: dict(num_heads=3), "num_heads"),
    "heads-zero": (lambda g: dict(num_heads=0), "num_heads"),
    "heads-negative": (lambda g: dict(num_heads=-2), "num_heads"),
    "heads-float": (lambda g: dict(num_heads=2.0), "num_heads"),
    "heads-bool": (lambda g: dict(num_heads=True), "num_heads"),
    "proj_key-width-vs-query": (lambda g: dict(proj_key=random_linear(E, D + 2, 7)), "proj_key"),
    "proj_key-in-width": (lambda g: dict(proj_key=random_linear(E + 1, D, 7)), "proj_key"),
    "proj_key-not-callable": (lambda g: dict(proj_key=g["proj_key"].weight), "proj_key"),
    "proj_value-not-callable": (lambda g: dict(proj_value="linear"), "proj_value"),
    "proj_value-in-width": (lambda g: dict(proj_value=random_linear(E + 1, D, 8)), "proj_value"),
}



@pytest.fixture(params=["exact", "paper"])
def holding(request):
    """A memory that holds one chunk, and a twin that will never see a bad call.

    Under the paper preset a consolidation drops the last frame (placed at t = 1), so a NaN there
    never reaches the coefficients and must still be reported."""
    memory = LongTermMemory(num_basis=9, past_samples=11, preset=request.param)
    with torch.no_grad():
        memory(**_good())
    return memory, copy.deepcopy(memory)


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_call_raises_and_keeps_state(case, holding):
    memory, twin = holding
    change, name = BAD_CALLS[case]
    good = _good()
    before = snapshot(memory)
    with pytest.raises((TypeError, ValueError)) as info:
        with torch.no_grad():
            memory(**{**good, **change(good)})
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"
    assert_unchanged(memory, before)
    # The next good call works and matches a memory that never saw the bad call.
    nxt = dict(_good(), frames=_randn(S, L, E, seed=9))
    with torch.no_grad():
        out, ref = memory(**nxt), twin(**nxt)
    assert torch.equal(out, ref)
    assert torch.equal(memory.coef, twin.coef)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a second device")
def test_query_and_frames_on_different_devices(holding):
    memory, _ = holding
    good = _good()
    before = snapshot(memory)
    with pytest.raises((TypeError, ValueError)) as info:
        memory(**dict(good, query=good["query"].cuda()))
    assert "query" in str(info.value)
    assert_unchanged(memory, before)


def test_bad_call_on_empty_memory_leaves_it_empty():
    memory = LongTermMemory(num_basis=9, past_samples=11)
    good = _good()
    with pytest.raises(ValueError, match="frames"):
        memory(**dict(good, frames=_with_nan(good["frames"], math.nan)))
    assert memory.coefficients is None and memory.num_streams == 0


BAD_CONSTRUCTORS = [  # kwargs, argument named in the message
    (dict(tau=0), "tau"), (dict(tau=1), "tau"), (dict(tau=1.5), "tau"), (dict(tau=-0.2), "tau"),
    (dict(tau=math.nan), "tau"), (dict(tau=math.inf), "tau"), (dict(tau="0.5"), "tau"),
    (dict(num_basis=0), "num_basis"), (dict(num_basis=2.5), "num_basis"), (dict(num_basis=True), "num_basis"),
    (dict(past_samples=0), "past_samples"), (dict(past_samples=3.0), "past_samples"),
    (dict(ridge=-1), "ridge"), (dict(ridge=math.nan), "ridge"),
    (dict(basis="foo"), "basis"), (dict(sampling="foo"), "sampling"), (dict(preset="foo"), "preset"),
    (dict(backend="foo"), "backend"), (dict(density="foo"), "density"),
    (dict(quad_points=1), "quad_points"), (dict(quad_points=0), "quad_points"),
    (dict(sigmas=()), "sigmas"), (dict(sigmas=(-1,)), "sigmas"), (dict(sigmas=(0.01, 0.0)), "sigmas"),
    (dict(sigmas=("a",)), "sigmas"), (dict(sigmas=(math.nan,)), "sigmas"),
    (dict(basis="gaussian", num_basis=7, sigmas=(0.005, 0.01)), "num_basis"),
    (dict(density="gaussian"), "density"),
    (dict(sticky="yes"), "sticky"),
    (dict(generator=0), "generator"),
]


@pytest.mark.parametrize("kwargs,name", BAD_CONSTRUCTORS, ids=[repr(k) for k, _ in BAD_CONSTRUCTORS])
def test_bad_constructor(kwargs, name):
    with pytest.raises((TypeError, ValueError)) as info:
        LongTermMemory(**kwargs)
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


@pytest.mark.parametrize("streams,error", [([5], ValueError), ([-3], ValueError), ([0.5], TypeError),
                                           (torch.tensor([True, False, True]), ValueError)])
def test_bad_reset(streams, error, holding):
    memory, _ = holding
    before = snapshot(memory)
    with pytest.raises(error) as info:
        memory.reset(streams=streams)
    assert "streams" in str(info.value)
    assert_unchanged(memory, before)
