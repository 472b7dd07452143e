"""Determinism, thread safety of the per-configuration caches, and stream isolation on reset.

- Quantile sampling is reproducible: two fresh memories fed the same chunks give bit-identical
  contexts, coefficients and statistics (torch and Triton backends, both bases, both presets).
- The constants cached per configuration (fits, plans, quadrature, step constants, their device
  copies) are safe to build and read from several threads at once: threads running memories of
  different configurations (never used before in the process, so the caches start cold) give
  bit-identical results to the same runs made one at a time (torch backend; Triton on CUDA only,
  its CPU interpreter is not thread-safe).
- ``reset(streams=[i])`` touches stream i only: the other streams' coefficients and statistics stay
  bit-identical, and their next outputs equal those of a memory that was never reset.
"""
from __future__ import annotations

import sys
import threading
import traceback

import pytest
import torch

from conftest import random_linear
from infvideo import LongTermMemory
from infvideo.backends import available_backends

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    "triton" not in available_backends(), reason="needs Triton (CUDA, or TRITON_INTERPRET=1)"))
S, E, D, H, Q = 3, 6, 8, 2, 4


def _chunks(lengths, seed=0, streams=S):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(streams, length, E, generator=gen).to(DEVICE),
             torch.randn(streams, Q, D, generator=gen).to(DEVICE)) for length in lengths]


@pytest.fixture(scope="module")
def projections():
    return random_linear(E, D, 1, scale=2.0).to(DEVICE), random_linear(E, D, 2).to(DEVICE)


def _run(memory, chunks, projections):
    outs = []
    with torch.no_grad():
        for frames, query in chunks:
            outs.append((memory(frames, query, *projections, H), memory.coef, memory.sticky_stats))
    return outs


def _assert_equal_runs(a, b, what=""):
    for step, (x, y) in enumerate(zip(a, b)):
        for name, u, v in zip(("context", "coef", "sticky_stats"), x, y):
            assert torch.equal(u, v), f"{what} chunk {step}: {name} differs"


CONFIGS = {
    "rect-exact": dict(num_basis=7, past_samples=11),
    "rect-paper": dict(num_basis=8, past_samples=10, preset="paper", tau=0.6),
    "gauss-exact": dict(num_basis=6, past_samples=9, basis="gaussian", sigmas=(0.05, 0.1), quad_points=40),
    "gauss-paper": dict(num_basis=6, past_samples=9, basis="gaussian", sigmas=(0.05, 0.1), quad_points=40,
                        preset="paper"),
}


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("name", CONFIGS)
def test_quantile_sampling_is_reproducible(name, backend, projections):
    chunks = _chunks([4, 4, 2, 5])
    runs = [_run(LongTermMemory(backend=backend, **CONFIGS[name]).to(DEVICE), chunks, projections) for _ in range(2)]
    _assert_equal_runs(*runs)


# Configurations no other test uses (odd τ), so the threads below find the caches cold.
THREAD_CONFIGS = [
    dict(num_basis=9, past_samples=13, tau=0.6125),
    dict(num_basis=11, past_samples=7, tau=0.5875, preset="paper"),
    dict(num_basis=8, past_samples=12, tau=0.6375, sticky=False),
    dict(num_basis=6, past_samples=10, tau=0.5625, basis="gaussian", sigmas=(0.05, 0.1), quad_points=37),
]


# Triton's CPU interpreter keeps the running launch (grid, program ids, the patched language) in
# process-wide state, so two threads interpreting kernels at once break each other inside Triton
# ("y >= grid_dim[1]"); compiled CUDA launches have no such state.
THREADED_TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not CUDA or "triton" not in available_backends(),
    reason="Triton's CPU interpreter is not thread-safe (process-wide launch state); needs CUDA"))


@pytest.mark.parametrize("backend", ["torch", THREADED_TRITON])
@pytest.mark.parametrize("round_", range(3))
def test_threads_with_different_configurations(round_, backend, projections):
    """Four configurations, each run by two threads at once (eight threads: different
    configurations side by side, and the same cold cache entry built twice at once), with the
    interpreter switching threads as often as it can."""
    interval = sys.getswitchinterval()
    lengths = [3, 5, 3, 1, 5, 2]  # several chunk lengths: several cache entries per configuration
    shift = 0.003125 * (1 + round_ + 3 * (backend == "triton"))  # new to every cache in each round
    configs = [dict(config, tau=config["tau"] + shift) for config in THREAD_CONFIGS]
    chunks = [_chunks(lengths, seed=k) for k in range(len(configs))]
    jobs = [k for k in range(len(configs)) for _ in range(2)]
    start = threading.Barrier(len(jobs))
    threaded: list = [None] * len(jobs)
    errors: list = []

    def work(j):
        try:
            memory = LongTermMemory(backend=backend, **configs[jobs[j]]).to(DEVICE)
            start.wait()
            threaded[j] = _run(memory, chunks[jobs[j]], projections)
        except BaseException:  # noqa: BLE001 - reported below, with the thread's traceback
            errors.append((jobs[j], traceback.format_exc()))

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(jobs))]
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert all(not thread.is_alive() for thread in threads)
    for j, k in enumerate(jobs):
        alone = _run(LongTermMemory(backend=backend, **configs[k]).to(DEVICE), chunks[k], projections)
        _assert_equal_runs(threaded[j], alone, f"config {k}, thread {j}:")


RESET_CONFIGS = {
    "quantile": dict(num_basis=7, past_samples=11),
    "uniform-paper": dict(num_basis=7, past_samples=11, sticky=False, preset="paper"),
    "gaussian": dict(num_basis=6, past_samples=9, basis="gaussian", sigmas=(0.05, 0.1), quad_points=40),
    "multinomial": dict(num_basis=7, past_samples=11, sampling="multinomial"),
    "upstream": dict(num_basis=7, past_samples=11, sampling="upstream"),
}


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("name", RESET_CONFIGS)
@pytest.mark.parametrize("stream", [0, 1])
def test_reset_one_stream_leaves_the_others(stream, name, backend, projections):
    config = RESET_CONFIGS[name]
    seeded = "sampling" in config
    memories = [LongTermMemory(backend=backend, **config, generator=torch.Generator(DEVICE).manual_seed(4)
                               if seeded else None).to(DEVICE) for _ in range(2)]
    chunks = _chunks([4, 3, 4, 2])
    for memory in memories:
        _run(memory, chunks[:2], projections)
    reset, twin = memories
    before = {name_: getattr(reset, name_).clone() for name_ in ("coef", "sticky_stats")}
    reset.reset(streams=[stream])
    others = [s for s in range(S) if s != stream]
    assert not bool(reset.filled[stream]) and bool(reset.filled[others].all())
    assert bool((reset.coef[stream] == 0).all()) and bool((reset.sticky_stats[stream] == 0).all())
    for name_, value in before.items():
        assert torch.equal(getattr(reset, name_)[others], value[others]), f"{name_} of the other streams changed"
    # The next chunks: stream `stream` starts a new video, the others go on as in the twin.
    # (upstream sampling draws every stream's samples from stream 0's histogram, by design
    # (SPEC section 7), so there an emptied stream 0 changes the others' next samples.)
    if name == "upstream" and stream == 0:
        return
    after, ref = _run(reset, chunks[2:], projections), _run(twin, chunks[2:], projections)
    for step, ((out, coef, stats), (out_ref, coef_ref, stats_ref)) in enumerate(zip(after, ref)):
        assert torch.equal(out[others], out_ref[others]), f"chunk {step}: context of the other streams"
        assert torch.equal(coef[others], coef_ref[others]), f"chunk {step}: coef of the other streams"
        assert torch.equal(stats[others], stats_ref[others]), f"chunk {step}: stats of the other streams"
