"""``infvideo.ops.slot_attention`` on every kernel present against the reference slot weights.

Tolerances (relative): 1e-5 with float32 keys/values (exact fp32 dots), 2e-2 with fp16/bf16 ones
(the reference sees the same rounded K/V in float32; the context is rounded to the query's dtype).
"""
from __future__ import annotations

import math

import pytest
import torch

import infvideo.ops as ops
from infvideo.config import MemoryConfig
from infvideo.reference import attention as ref_attention
from infvideo.reference import fit as ref_fit
from conftest import DTYPES, OP_KERNELS, kernel_cases, kernel_id, rel_err, split_heads

# (streams, Q, D, H, N). 16 streams take two blocks of queries per Triton program; Q = 33 leaves
# one group of 16 queries partly empty.
CASES = kernel_cases([(2, 5, 24, 3, 13), (1, 3, 8, 2, 40), (16, 33, 24, 3, 13)],
                     large=[(3, 17, 96, 3, 33), (1, 32, 768, 12, 256)],
                     gpu=[(5, 32, 768, 12, 64), (3, 7, 96, 3, 1000), (64, 32, 768, 12, 256), (2, 9, 600, 2, 31)])


@pytest.mark.parametrize("device,backend,case", CASES)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, backend, case, preset, dtype):
    streams, q_len, model, heads, n = case
    gen = torch.Generator().manual_seed(n + q_len)
    query = torch.randn(streams, q_len, model, generator=gen).to(device, dtype)
    keys = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    values = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    const = ref_fit.on_device(ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset)), device,
                              torch.float32)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    context, mass = ops.slot_attention(query, keys, values, heads, const.log_weight, null, backend=backend)
    a = split_heads(query, heads) @ split_heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)
    r = ref_attention.slot_weights(a, const)
    expected = (r @ split_heads(values, heads)).transpose(1, 2).reshape(streams, q_len, model)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert context.dtype == dtype
    assert rel_err(context, expected) < tol
    groups = -(-q_len // 16)
    assert mass.shape == (streams, heads * groups, n)  # the op's groups of 16 queries per head
    assert rel_err(mass.reshape(streams, heads, groups, n).sum(2), r.sum(2)) < tol


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_opcheck(device, backend):
    """The one schema, its fake (mass groups from Q alone) and the kernel ``backend`` picks."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 7, 8, generator=gen).to(device)
    logw = torch.randn(7, generator=gen).to(device)
    op = torch.ops.infvideo.slot_attention.default
    for q_len, log_weight, null in ((3, logw, -3.0), (17, None, None)):  # one and two groups of queries
        query = torch.randn(2, q_len, 8, generator=gen).to(device)
        torch.library.opcheck(op, (query, keys, keys, 2, log_weight, null, backend))
