"""Exact resume: state_dict() → a new LongTermMemory → load_state_dict() → go on, bit for bit.

For every sampling mode (quantile, multinomial and upstream with a torch.Generator, sticky=False)
and both bases, on the torch backend and on Triton (the CPU interpreter here, tiny shapes): the
resumed memory's contexts, coefficients and sticky statistics equal the original's with
``torch.equal`` on every later chunk. The random samplers' generator state is part of the saved
state (nn.Module extra state), so a resumed memory draws what the original draws, whether it had
no generator (one is created on the saved device), or one in another state.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch

from conftest import random_linear
from infvideo import LongTermMemory
from infvideo.backends import available_backends

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
S, E, D, H, Q = 2, 6, 8, 2, 3
LENGTHS = [3, 2, 4, 3, 1]  # chunks before the save: 2, after: 3
SAVED_AFTER = 2

MODES = {
    "quantile": dict(),
    "multinomial": dict(sampling="multinomial"),
    "upstream": dict(sampling="upstream"),
    "uniform": dict(sticky=False),
}
BASES = {
    "rectangular": dict(num_basis=6, past_samples=9),
    "gaussian": dict(num_basis=6, past_samples=9, basis="gaussian", sigmas=(0.05, 0.1), quad_points=33),
}
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    "triton" not in available_backends(), reason="needs Triton (CUDA, or TRITON_INTERPRET=1)"))]
RANDOM = ("multinomial", "upstream")


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(S, length, E, generator=gen).to(DEVICE), torch.randn(S, Q, D, generator=gen).to(DEVICE))
            for length in LENGTHS]


@pytest.fixture(scope="module")
def projections():
    return random_linear(E, D, 1, scale=2.0).to(DEVICE), random_linear(E, D, 2).to(DEVICE)


def _memory(mode, basis, backend, seed=None):
    generator = None if seed is None else torch.Generator(DEVICE).manual_seed(seed)
    return LongTermMemory(backend=backend, generator=generator, **MODES[mode], **BASES[basis]).to(DEVICE)


def _step(memory, chunk, projections):
    frames, query = chunk
    with torch.no_grad():
        return memory(frames, query, *projections, H)


def _through_bytes(state):
    """The state as torch.save / torch.load(weights_only=True) give it back."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_same(a: LongTermMemory, b: LongTermMemory, what: str):
    for name in ("coef", "filled", "sticky_stats"):
        assert torch.equal(getattr(a, name), getattr(b, name)), f"{what}: {name} differs"
    if a.generator is not None:
        assert torch.equal(a.generator.get_state(), b.generator.get_state()), f"{what}: generator state differs"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("mode", MODES)
def test_resume_is_bit_identical(mode, basis, backend, projections):
    chunks = _inputs()
    seeded = mode in RANDOM
    original = _memory(mode, basis, backend, seed=3 if seeded else None)
    for chunk in chunks[:SAVED_AFTER]:
        _step(original, chunk, projections)
    state = _through_bytes(original.state_dict())
    expected_keys = {"coef", "filled", "sticky_stats"} | ({"_extra_state"} if seeded else set())
    assert set(state) == expected_keys
    # Resumed into a memory without a generator, and into one whose generator is elsewhere.
    resumed = [_memory(mode, basis, backend), _memory(mode, basis, backend, seed=99 if seeded else None)]
    for memory in resumed:
        memory.load_state_dict(copy.deepcopy(state))
        _assert_same(original, memory, "right after loading")
        if seeded:
            assert memory.generator is not None and memory.generator.device == original.generator.device
    for step, chunk in enumerate(chunks[SAVED_AFTER:], start=SAVED_AFTER):
        expected = _step(original, chunk, projections)
        for which, memory in enumerate(resumed):
            assert torch.equal(_step(memory, chunk, projections), expected), f"resumed #{which}, chunk {step}"
            _assert_same(original, memory, f"resumed #{which}, chunk {step}")


@pytest.mark.parametrize("mode", RANDOM)
def test_generator_state_is_a_snapshot(mode, projections):
    """The saved generator state does not move when the original goes on drawing."""
    chunks = _inputs()
    original = _memory(mode, "rectangular", "torch", seed=3)
    _step(original, chunks[0], projections)
    state = original.state_dict()
    saved = state["_extra_state"]["generator_state"].clone()
    _step(original, chunks[1], projections)
    assert torch.equal(state["_extra_state"]["generator_state"], saved)
    assert not torch.equal(original.generator.get_state(), saved)


@pytest.mark.parametrize("seeded", [False, True], ids=["no-generator", "generator"])
def test_state_dicts_without_extra_state_still_load(seeded, projections):
    """A state dict of the three buffers alone (saved before the extra state existed, or by a
    memory without a generator) loads strictly and keeps the loading memory's own generator."""
    chunks = _inputs()
    source = _memory("multinomial", "rectangular", "torch", seed=3)
    for chunk in chunks[:SAVED_AFTER]:
        _step(source, chunk, projections)
    legacy = {key: value.clone() for key, value in source.state_dict().items() if key != "_extra_state"}
    target = _memory("multinomial", "rectangular", "torch", seed=7 if seeded else None)
    before = None if target.generator is None else target.generator.get_state()
    target.load_state_dict(legacy)  # strict
    assert torch.equal(target.coef, source.coef) and torch.equal(target.sticky_stats, source.sticky_stats)
    if seeded:
        assert torch.equal(target.generator.get_state(), before)
    else:
        assert target.generator is None
    _step(target, chunks[SAVED_AFTER], projections)  # and it runs on


def test_memory_without_generator_saves_only_its_buffers():
    memory = _memory("multinomial", "rectangular", "torch")
    assert set(memory.state_dict()) == {"coef", "filled", "sticky_stats"}
    assert memory.get_extra_state() == {}
