"""``kernels/projected_attention.py``: the slot attention with K and V projected inside its launch,
against float64 on the same rounded K/V, and the memory steps that take it against the reference."""
from __future__ import annotations

import math

import pytest
import torch

from infvideo import LongTermMemory, backends
from infvideo.config import MemoryConfig
from infvideo.ops import step as step_module
from infvideo.reference import attention as ref_attention
from infvideo.reference import fit as ref_fit
from conftest import CUDA, DTYPES, random_linear, rel_err, split_heads

DEVICES = [d for d in ("cpu", "cuda") if (d == "cpu" or CUDA) and backends.triton_runs_on(torch.device(d))]
# (streams, Q, D, H, N, e): slot tiles cut short (N = 45, 70), queries that leave a group of 16
# partly empty (7, 33), widths off the tile sizes; on the GPU the step's own sizes.
SMALL = [(2, 7, 36, 3, 45, 40), (1, 32, 48, 3, 64, 72), (3, 33, 48, 2, 70, 50), (4, 16, 24, 3, 13, 20)]
GPU = [(1, 32, 768, 12, 256, 768), (2, 64, 768, 12, 256, 768), (3, 5, 256, 2, 1000, 100)]
CASES = [pytest.param(device, case, id=f"{device}-{case}") for device in DEVICES
         for case in SMALL + (GPU if device == "cuda" else [])]


def kernel():
    return backends.triton_kernels()["projected_attention"]


@pytest.mark.parametrize("device,case", CASES)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64(device, case, preset, dtype):
    """Context and per-group mass against float64 attention over the same K and V (projected in
    float64, rounded to the projections' dtype as the kernel rounds them): 1e-5 for float32, the
    slot attention's 2e-2 for half types (queries and weights rounded to them)."""
    streams, q_len, model, heads, n, width = case
    gen = torch.Generator().manual_seed(n + q_len)
    query = torch.randn(streams, q_len, model, generator=gen).to(device)
    coef = torch.randn(streams, n, width, generator=gen).to(device, dtype)
    pk, pv = (random_linear(width, model, seed, dtype).to(device) for seed in (1, 2))
    const = ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset))
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    log_weight = None if const.log_weight is None else const.log_weight.to(device, torch.float32)
    context, mass = kernel().projected_slot_attention(query, coef, pk.weight, pk.bias, pv.weight, pv.bias, heads,
                                                      log_weight, null)
    keys, values = (torch.nn.functional.linear(coef.double(), p.weight.double(), p.bias.double()).to(dtype)
                    for p in (pk, pv))
    q, k, v = (split_heads(t, heads).double() for t in (query, keys, values))
    const64 = ref_fit.on_device(const, torch.device(device), torch.float64)
    r = ref_attention.slot_weights(q @ k.transpose(-1, -2) / math.sqrt(model // heads), const64)
    expected = (r @ v).transpose(1, 2).reshape(streams, q_len, model)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert context.dtype == query.dtype and context.shape == query.shape
    assert rel_err(context, expected) < tol
    groups = -(-q_len // 16)
    assert mass.shape == (streams, heads * groups, n)  # slot_attention's groups of 16 queries per head
    assert rel_err(mass.reshape(streams, heads, groups, n).sum(2), r.sum(2)) < tol


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_launches_reuse_nothing_stale(device):
    """Each launch starts its own done-counters: calls in a row (and on other inputs) agree with
    single calls."""
    gen = torch.Generator().manual_seed(3)
    pk, pv = (random_linear(40, 36, seed).to(device) for seed in (1, 2))
    inputs = [(torch.randn(2, 7, 36, generator=gen).to(device), torch.randn(2, 45, 40, generator=gen).to(device))
              for _ in range(2)]
    first = [kernel().projected_slot_attention(q, c, pk.weight, pk.bias, pv.weight, pv.bias, 3, None, None)
             for q, c in inputs]
    again = [kernel().projected_slot_attention(q, c, pk.weight, pk.bias, pv.weight, pv.bias, 3, None, None)
             for q, c in inputs]
    for (ctx_a, mass_a), (ctx_b, mass_b) in zip(first, again):
        assert torch.equal(ctx_a, ctx_b) and torch.equal(mass_a, mass_b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", [dict(), dict(preset="paper"), dict(sticky=False)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_memory_steps_take_it(monkeypatch, device, options, dtype):
    """A few-stream memory with half-precision projections takes the kernel on every step, and
    its steps stay with the reference memory's on the same projections: coefficients within 1e-5,
    context within the half types' 2e-2 (both sides round K and V to the projections' dtype)."""
    calls = []
    launch = kernel().projected_slot_attention
    monkeypatch.setattr(kernel(), "projected_slot_attention", lambda *a: calls.append(1) or launch(*a))
    pk, pv = random_linear(20, 18, 1, dtype).to(device), random_linear(20, 18, 2, dtype).to(device)
    fused, reference = (LongTermMemory(num_basis=15, past_samples=13, backend=backend, cuda_graphs=False,
                                       **options).to(device) for backend in ("triton", "torch"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(3):
            frames = torch.randn(3, 8, 4, 20, generator=gen).to(device)
            query = torch.randn(3, 7, 18, generator=gen).to(device)
            out, expected = fused(frames, query, pk, pv, 3), reference(frames, query, pk, pv, 3)
            assert rel_err(out, expected) < 2e-2  # K/V in the projections' dtype on both sides
            assert rel_err(fused.coef, reference.coef) < 1e-5
    assert len(calls) == 3


@pytest.mark.parametrize("device", DEVICES)
def test_many_streams_keep_the_product(monkeypatch, device):
    """Past PROJECTED_ATTENTION_STREAMS the step projects K and V by a product and runs the slot
    attention: the kernel is not called."""
    monkeypatch.setattr(step_module, "PROJECTED_ATTENTION_STREAMS", 2)
    calls = []
    monkeypatch.setattr(kernel(), "projected_slot_attention", lambda *a: calls.append(1))
    pk, pv = random_linear(20, 18, 1, torch.bfloat16).to(device), random_linear(20, 18, 2, torch.bfloat16).to(device)
    fused = LongTermMemory(num_basis=15, past_samples=13, backend="triton", cuda_graphs=False).to(device)
    with torch.no_grad():
        frames = torch.randn(3, 8, 4, 20).to(device)
        for _ in range(2):
            fused(frames, torch.randn(3, 7, 18).to(device), pk, pv, 3)
    assert not calls
