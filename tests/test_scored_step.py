"""``kernels/scored_consolidate.py`` (the rectangular step with the projections folded into the
queries, ``ops.step.SCORED_STEP``) against the consolidation, K/V projection and slot attention
ops it replaces, and the memory's steps with it against the reference's.

Tolerances (relative): float32 projections 1e-5 (the same float32 values, summed in another order;
three-TF32 dots on a GPU keep float32 accuracy), the mass too; the new coefficients 1e-5 (the
fused consolidation's own arithmetic). Half-precision projections on a GPU take tensor-core dots in
their type where the K/V path rounds K and V to it instead: 2e-2, the slot attention's half tolerance.
Steps against the torch reference: 1e-4 (test_backends' Triton tolerance). The CPU runs the
interpreter on small shapes; a GPU adds the step's own.
"""
from __future__ import annotations

import pytest
import torch

import infvideo.ops as ops
from infvideo import LongTermMemory, backends
from infvideo.config import MemoryConfig
from infvideo.ops import step as step_module
from infvideo.ops.rect_consolidate import kernel_inputs
from conftest import CUDA, assert_steps_match, random_linear, rel_err, tokens_shape

DEVICES = [d for d in ("cpu", "cuda") if backends.triton_runs_on(torch.device(d)) and (d != "cuda" or CUDA)]
# (streams, L, tokens, e, N, M, Q, D, heads): odd sizes; Q = 17 leaves a block of 16 queries
# partly empty, Q = 40 three groups over two of pass 2's programs, N = 70 spans two of its slot tiles;
# tokens None: pooled frames [S, L, e].
SMALL = [(3, 10, (4,), 24, 13, 11, 5, 12, 3), (2, 9, None, 40, 70, 17, 17, 20, 5), (1, 6, (2, 3), 9, 7, 5, 40, 6, 2)]
GPU = [(4, 256, (32,), 768, 256, 512, 32, 768, 12), (5, 37, (7,), 100, 61, 97, 9, 96, 3)]


def cases():
    return [pytest.param(device, case, id=f"{device}-{case}") for device in DEVICES
            for case in SMALL + (GPU if device == "cuda" else [])]


def inputs(case, device, dtype=torch.float32, weights=torch.float32, seed=0):
    streams, length, tokens, width, n, samples, q_len, model, heads = case
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(tokens_shape(streams, length, tokens, width), generator=gen).to(device, dtype)
    past = torch.randn(streams, n, width, generator=gen).to(device)
    query = torch.randn(streams, q_len, model, generator=gen).to(device, dtype)
    pk = random_linear(width, model, seed + 1, dtype=weights).to(device)
    pv = random_linear(width, model, seed + 2, dtype=weights).to(device)
    return frames, past, query, pk, pv


def by_ops(frames, past, plan, bins, query, pk, pv, heads, consts):
    """The same step on the ops it replaces: consolidation, K/V, slot attention."""
    coef = ops.rect_consolidate(frames, past, plan, bins)
    keys, values = (p(coef.to(p.weight.dtype)) for p in (pk, pv))
    context, mass = ops.slot_attention(query, keys, values, heads, consts.slot_log_weight, consts.null_log_weight)
    return context, coef, mass


def scored(frames, past, plan, bins, query, pk, pv, heads, consts):
    frames, past, bins = kernel_inputs(frames, past, bins)
    return backends.triton_kernels()["scored_consolidate"].scored_step(
        frames, past, bins, plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale,
        plan.frames_in_order, plan.max_per_bin, query, pk.weight, pk.bias, pv.weight, pv.bias, heads,
        consts.slot_log_weight, consts.null_log_weight)


@pytest.mark.parametrize("device,case", cases())
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_the_ops_it_replaces(device, case, preset, dtype):
    """First chunk (no past), sticky quantile bins per stream, and one row of bins for every stream."""
    streams, length, _, _, n, samples, _, _, heads = case
    frames, past, query, pk, pv = inputs(case, device, dtype)
    consts = step_module.step_constants(MemoryConfig(num_basis=n, past_samples=samples, preset=preset), length,
                                        torch.device(device))
    gen = torch.Generator().manual_seed(3)
    sticky = ops.quantile_bins(torch.rand(streams, 2, n, generator=gen).to(device), samples)
    shared = torch.randint(-1, n, (1, samples), generator=gen).to(device)
    with torch.no_grad():
        for plan, old, bins in ((consts.first_plan, None, None), (consts.later_plan, past, sticky),
                                (consts.later_plan, past, shared)):
            got = scored(frames, old, plan, bins, query, pk, pv, heads, consts)
            want = by_ops(frames, old, plan, bins, query, pk, pv, heads, consts)
            tol = 1e-5 if dtype == torch.float32 else {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
            assert got[0].dtype == dtype and got[0].shape == want[0].shape
            assert rel_err(got[0], want[0]) < tol  # the context in the query's dtype
            assert rel_err(got[1], want[1]) < 1e-5
            assert got[2].shape == want[2].shape and rel_err(got[2], want[2]) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_projections(device, weights):
    """On a GPU the dots take the weights' type; in the interpreter, float32 (its bf16 dot is wrong)."""
    case = GPU[0] if device == "cuda" else SMALL[0]
    streams, length, _, _, n, samples, _, _, heads = case
    frames, past, query, pk, pv = inputs(case, device, weights=weights)
    consts = step_module.step_constants(MemoryConfig(num_basis=n, past_samples=samples), length, torch.device(device))
    bins = ops.quantile_bins(torch.rand(streams, 2, n, device=device), samples)
    with torch.no_grad():
        got = scored(frames, past, consts.later_plan, bins, query, pk, pv, heads, consts)
        want = by_ops(frames, past, consts.later_plan, bins, query, pk, pv, heads, consts)
    assert rel_err(got[0], want[0]) < 2e-2
    assert rel_err(got[1], want[1]) < 1e-5
    assert rel_err(got[2], want[2]) < 2e-2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", [dict(), dict(preset="paper"), dict(sticky=False)], ids=str)
def test_memory_steps_match_the_reference(monkeypatch, device, options):
    """``SCORED_STEP`` on: a Triton memory's steps (the first chunk, then full ones) against the torch
    reference's, and the scored pass was the one taken."""
    calls = []
    kernels = backends.triton_kernels()["scored_consolidate"]
    original = kernels.scored_step

    def spy(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(kernels, "scored_step", spy)
    monkeypatch.setattr(step_module, "SCORED_STEP", True)
    pk, pv = random_linear(20, 18, 1).to(device), random_linear(20, 18, 2).to(device)
    fused, reference = (LongTermMemory(num_basis=15, past_samples=13, backend=backend, cuda_graphs=False,
                                       **options).to(device) for backend in ("triton", "torch"))
    assert_steps_match(fused, reference, (3, 8, 4, 20), (3, 7, 18), pk, pv, 3, torch.Generator().manual_seed(5), device)
    assert len(calls) == 3


@pytest.mark.skipif(not CUDA or not backends.triton_runs_on(torch.device("cuda")), reason="needs CUDA and Triton")
def test_memory_graphs_replay_the_scored_step(monkeypatch):
    """The memory's own CUDA graphs capture and replay the scored step: the same outputs and state
    as the reference over steps that replay."""
    monkeypatch.setattr(step_module, "SCORED_STEP", True)
    pk, pv = random_linear(96, 96, 1).cuda(), random_linear(96, 96, 2).cuda()
    fused = LongTermMemory(num_basis=64, past_samples=128, backend="triton").cuda()
    reference = LongTermMemory(num_basis=64, past_samples=128, backend="torch").cuda()
    assert_steps_match(fused, reference, (4, 32, 8, 96), (4, 32, 96), pk, pv, 3, torch.Generator().manual_seed(6),
                       "cuda", chunks=5)
    assert len(fused._graphs.steps) == 1, "the later steps should have replayed one captured graph"
