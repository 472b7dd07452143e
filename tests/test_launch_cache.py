"""The cached Triton launch (kernels/_launch.py): its key must separate every specialisation Triton
compiles separately, and a launch reusing a compiled kernel must give what a fresh launch gives.

The key tests run everywhere; the reuse tests need a GPU (the interpreter has no compiled kernels).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import infvideo.ops as ops  # noqa: E402
from infvideo.kernels._launch import specialization_key  # noqa: E402

CUDA = torch.cuda.is_available()


def test_key_separates_dtype_and_alignment():
    base = torch.zeros(64)
    keys = {specialization_key((t,), {}) for t in (base, base[4:], base[1:], base.double(), base.half())}
    # base and base[4:] are both 16-byte aligned (4 floats): one key; the other three differ.
    assert len(keys) == 4
    assert specialization_key((base,), {}) == specialization_key((base[4:],), {})


def test_key_separates_other_arguments_by_value():
    # Triton tells apart integers equal to 1, divisible by 16 or beyond 32 bits: values are finer.
    for a, b in [(1, 2), (16, 17), (2**31 - 1, 2**31), (0.5, 2.0), (None, 0)]:
        assert specialization_key((a,), {}) != specialization_key((b,), {})
    assert specialization_key((torch.zeros(8), 32, 0.5), {}) == specialization_key((torch.ones(8), 32, 0.5), {})


def test_key_includes_constexprs_and_options():
    assert specialization_key((3,), {"BLOCK": 16}) != specialization_key((3,), {"BLOCK": 32})
    assert specialization_key((3,), {"num_warps": 4}) != specialization_key((3,), {"num_warps": 8})


@pytest.mark.skipif(not CUDA, reason="compiled kernels exist on a GPU only")
def test_reused_kernel_matches_reference_across_alignments_and_strides():
    # Aligned inputs first (the kernel compiles with 16-byte hints), then views that break the
    # alignment and the divisibility of a stride: each must compile its own kernel, not reuse one.
    gen = torch.Generator(device="cuda").manual_seed(0)
    heads, width, slots = 4, 64, 37
    big_q = torch.randn(3, 9, width + 8, device="cuda", generator=gen)
    big_k = torch.randn(3, slots + 1, width + 1, device="cuda", generator=gen)
    cases = [(big_q[..., :width], big_k[:, :slots, :width]),
             (big_q[..., 1:width + 1], big_k[:, 1:, 1:]),
             (big_q[..., :width], big_k[:, :slots, :width])]
    for query, keys in cases * 2:
        context, _ = ops.slot_attention(query, keys, keys, heads, backend="triton")
        assert torch.allclose(context, _plain_attention(query, keys, heads), rtol=1e-4, atol=1e-5)


def _plain_attention(query, keys, heads):
    """softmax(q·K/√d)·K per head (equal bins, no null slot), in float64."""
    s, q_len, model = query.shape
    d = model // heads
    qh = query.double().reshape(s, q_len, heads, d).transpose(1, 2)
    kh = keys.double().reshape(s, -1, heads, d).transpose(1, 2)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1)
    return (weights @ kh).transpose(1, 2).reshape(s, q_len, model).to(query.dtype)


@pytest.mark.skipif(not CUDA, reason="compiled kernels exist on a GPU only")
def test_second_launch_takes_the_cached_kernel():
    # The cache falls back to Triton's own path when the compiled kernel lacks the launcher API it
    # uses; a Triton release that changed that API would only show here, as a slower launch.
    from infvideo.kernels import attention
    query = torch.randn(2, 5, 24, device="cuda")
    keys = torch.randn(2, 7, 24, device="cuda")
    attention._launch_slot_attention.compiled.clear()
    first, _ = ops.slot_attention(query, keys, keys, 3, backend="triton")
    assert len(attention._launch_slot_attention.compiled) == 1
    second, _ = ops.slot_attention(query, keys, keys, 3, backend="triton")
    assert torch.equal(first, second)
