"""The online softmax's steps, shared by the attention and quadrature kernels (Triton device functions)."""
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
def store_group_density(dens_ptr, p, real, points, mask_t, pid, R, stride_dg, GROUP: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr):
    """Σ of the density p [BLOCK_M, BLOCK_T] over each group of GROUP rows of program ``pid``'s
    block, rows outside ``real`` left out, stored at [group, point]."""
    p = tl.where(real[:, None] & mask_t[None, :], p, 0.0)
    groups = pid * (BLOCK_M // GROUP) + tl.arange(0, BLOCK_M // GROUP)
    per_group = tl.sum(tl.reshape(p, (BLOCK_M // GROUP, GROUP, BLOCK_T)), axis=1)
    tl.store(dens_ptr + groups[:, None] * stride_dg + points[None, :], per_group,
             mask=(groups * GROUP < R)[:, None] & mask_t[None, :])
