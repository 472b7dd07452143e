"""Paper preset, sticky off, against the published code's outputs (SPEC section 11)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import infvideo.reference as ref
from infvideo import LongTermMemory
from conftest import OP_KERNELS, kernel_id, make_linear


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    expected = expected.to(actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()),
                               msg=lambda m: f"{what}: {m}")


def _per_stream(hist: torch.Tensor) -> torch.Tensor:
    """The statistic as one normalised histogram per stream [S, K] (groups [S, G, K] added up)."""
    if hist.dim() == 3:
        hist = hist.sum(1)
    return hist / hist.sum(-1, keepdim=True)


def test_golden_chunk_after_chunk(golden):
    g = golden
    memory = LongTermMemory(num_basis=g["N"], tau=g["tau"], past_samples=g["past_samples"], ridge=g["ridge"],
                            sticky=False, preset="paper", quad_points=g["quad_points"])
    proj_key = make_linear(g["w_key"], g["b_key"])
    proj_value = make_linear(g["w_value"], g["b_value"])
    upstream_cfg = dataclasses.replace(memory.config, sampling="upstream")
    assert len(g["frames"]) >= 2, "a golden case should hold several chunks"
    for chunk, (frames, query) in enumerate(zip(g["frames"], g["queries"])):
        assert frames.shape == (1, g["L"], g["e_in"])
        with torch.no_grad():
            context = memory(frames, query, proj_key, proj_value, g["heads"])
            coef = memory.coefficients
            a = ref.scores(coef, query, proj_key, g["heads"])
        _close(context, g["context"][chunk], f"context, chunk {chunk}")
        _close(coef, g["coef"][chunk], f"coef, chunk {chunk}")
        hist = _per_stream(ref.upstream_statistic(upstream_cfg, a))
        _close(hist, g["sticky_bin_probs"][chunk], f"sticky_bin_probs, chunk {chunk}")


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_golden_through_fused_backend(golden, device, backend):
    """The same cases through every fused backend present (the CPU interpreter takes N <= 64)."""
    g = golden
    if (device, backend) == ("cpu", "triton") and g["N"] > 64:
        pytest.skip("the CPU interpreter takes the cases with N <= 64; the other kernels take all")
    memory = LongTermMemory(num_basis=g["N"], tau=g["tau"], past_samples=g["past_samples"], ridge=g["ridge"],
                            sticky=False, preset="paper", quad_points=g["quad_points"], backend=backend).to(device)
    proj_key = make_linear(g["w_key"], g["b_key"]).to(device)
    proj_value = make_linear(g["w_value"], g["b_value"]).to(device)
    for chunk, (frames, query) in enumerate(zip(g["frames"], g["queries"])):
        with torch.no_grad():
            context = memory(frames.to(device), query.to(device), proj_key, proj_value, g["heads"])
        _close(context.cpu(), g["context"][chunk], f"context, chunk {chunk}")
        _close(memory.coefficients.cpu(), g["coef"][chunk], f"coef, chunk {chunk}")
