"""Programmatic dependent launches (``kernels/_launch.py``): off where they cannot run; a step's
results the same with them on and off; the consolidation reads frames before waiting only when the
sampler's launch came just before it and no copy of the frames was made in between."""
from __future__ import annotations

import pytest
import torch

from infvideo import LongTermMemory, backends
from infvideo.kernels import _launch
from infvideo.ops import _library
from conftest import random_linear

hopper = pytest.mark.skipif(not torch.cuda.is_available() or not _launch.programmatic(torch.device("cuda")),
                            reason="programmatic launches need a GPU of compute capability 9.0 or later")


def test_off_on_the_cpu():
    assert not _launch.programmatic(torch.device("cpu"))


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def consolidation_flags(monkeypatch):
    """The ``after_sampler`` of every Triton consolidation launch, with launches taken as direct
    (as on a GPU) so that the step's choice is made under the CPU interpreter too."""
    if DEVICE == "cpu" and not backends.interpreting():
        pytest.skip("the Triton kernels need a GPU or TRITON_INTERPRET=1")
    flags = []
    kernels = backends.triton_kernels()["consolidate"]
    launch = kernels.rect_consolidate

    def recorded(*args, after_sampler=False):
        flags.append(after_sampler)
        return launch(*args, after_sampler=after_sampler)

    monkeypatch.setattr(kernels, "rect_consolidate", recorded)
    monkeypatch.setattr(_library, "direct_triton", lambda first, backend: backend == "triton")
    return flags


def _steps(frames_of, steps=3, **config):
    memory = LongTermMemory(num_basis=12, past_samples=20, backend="triton", cuda_graphs=False, check_finite=False,
                            **config).to(DEVICE)
    pk, pv = random_linear(16, 24, seed=1).to(DEVICE), random_linear(16, 24, seed=2).to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            memory(frames_of(gen).to(DEVICE), torch.randn(2, 5, 24, generator=gen).to(DEVICE), pk, pv, 3)


def test_frames_first_after_the_sampler(consolidation_flags):
    _steps(lambda gen: torch.randn(2, 10, 3, 16, generator=gen))
    # The first step has no past (no sampler); each later one consolidates right after it.
    assert consolidation_flags == [False, True, True]


def test_not_after_a_copy_of_the_frames(consolidation_flags):
    # [S, L, h, w, e] tokens whose (h, w) cannot be flattened in place: the op copies them.
    _steps(lambda gen: torch.randn(2, 10, 2, 3, 16, generator=gen).transpose(2, 3))
    assert consolidation_flags == [False, False, False]


def test_not_without_the_sampler(consolidation_flags):
    for config in (dict(sticky=False), dict(sampling="multinomial")):
        _steps(lambda gen: torch.randn(2, 10, 3, 16, generator=gen), **config)
    assert consolidation_flags and not any(consolidation_flags)


@hopper
@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("dtype,weights", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                                           (torch.bfloat16, torch.float32)], ids=["bf16", "fp32", "bf16-fp32 weights"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_same_results_on_and_off(monkeypatch, streams, dtype, weights, graphs):
    pk = random_linear(40, 48, seed=1).cuda().to(weights)
    pv = random_linear(40, 48, seed=2).cuda().to(weights)
    gen = torch.Generator().manual_seed(3)
    frames = [torch.randn(streams, 23, 5, 40, generator=gen).to("cuda", dtype) for _ in range(4)]
    queries = [torch.randn(streams, 7, 48, generator=gen).to("cuda", dtype) for _ in range(4)]
    results = []
    for on in (True, False):
        monkeypatch.setattr(_launch, "PROGRAMMATIC_LAUNCH", on)
        memory = LongTermMemory(num_basis=17, past_samples=29, backend="triton", cuda_graphs=graphs).cuda()
        with torch.no_grad():
            contexts = [memory(f, q, pk, pv, 4).clone() for f, q in zip(frames, queries)]
        torch.cuda.synchronize()
        results.append((contexts, memory.coef.clone(), memory.sticky_stats.clone()))
    (on_contexts, on_coef, on_stats), (off_contexts, off_coef, off_stats) = results
    for a, b in zip(on_contexts, off_contexts):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(on_coef, off_coef, rtol=0, atol=0)
    torch.testing.assert_close(on_stats, off_stats, rtol=0, atol=0)
