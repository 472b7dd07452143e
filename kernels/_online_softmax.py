"""The online softmax's steps, shared by the attention and quadrature kernels, and the attention
kernels' per-group mass store (Triton device functions)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def running_max_sum(scores, mask_n, m_i, l_i):
    """The online softmax's row maximum and normaliser after one more tile of scores."""
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    return m_new, l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(scores - m_new[:, None]), axis=1)


@triton.jit
def softmax_start(null_logw, BLOCK: tl.constexpr, HAS_NULL: tl.constexpr):
    """The row maximum and normaliser before any slot: the null slot's (score log m_∅, its
    exponential counted once) where there is one, else nothing (−inf, 0)."""
    if HAS_NULL:
        m_i = tl.zeros([BLOCK], dtype=tl.float32) + null_logw
        l_i = tl.zeros([BLOCK], dtype=tl.float32) + 1.0
    else:
        m_i = tl.zeros([BLOCK], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
    return m_i, l_i


@triton.jit
def store_group_mass(mass_base, p, group_rows, group_valid, slots, mask_n, stride_mg,
                     GROUPS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    """Adds each GROUP consecutive rows of the weights p [GROUPS·GROUP, BLOCK_N] into one row of
    the mass output: rows ``group_rows`` [GROUPS] of ``mass_base`` (those of ``group_valid``),
    columns ``slots`` (those of ``mask_n``)."""
    per_group = tl.sum(tl.reshape(p, (GROUPS, GROUP, BLOCK_N)), axis=1)
    tl.store(mass_base + group_rows[:, None] * stride_mg + slots[None, :], per_group,
             mask=group_valid[:, None] & mask_n[None, :])
