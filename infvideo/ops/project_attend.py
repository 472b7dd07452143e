"""For few streams, the step's K|V product and slot attention in one launch (``kernels/project_attend.py``).

At one stream the K|V product (cuBLAS) and the slot attention are two launches of a few
microseconds each, the second waiting for the whole first. In one grid the attending programs
wait only for the product's tiles (bench/README.md, "Issue 22, tenth session", has what the two
phases took inside a larger kernel). ``fused_step`` takes it for at most ``MAX_STREAMS`` streams
where it applies: the "triton" backend on a CUDA device (an eager call outside autograd, tracing
and dispatch modes), rectangular bins without the upstream sampler, the slot attention, and K and
V from two plain ``nn.Linear`` of the query's width in float16 or bfloat16.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import backends
from . import _library

# The most streams for which the one launch is taken. 0, off, until it is timed in the step on a
# GPU (bench/project_attend_gpu.py): in this form it has run on the CPU interpreter only.
MAX_STREAMS = 0


def applies(coef: torch.Tensor, projected: torch.Tensor, query: torch.Tensor, proj_key, proj_value,
            backend: str) -> bool:
    """Whether ``fused_step`` takes the one launch for these coefficients (float32, and ``projected``
    in the projections' dtype), query and projections (the module docstring's conditions; the
    caller has checked the basis, the sampler and the attention)."""
    if (coef.shape[0] > MAX_STREAMS or backend != "triton" or not _library.direct_triton(coef, backend)
            or backends.interpreting()):
        return False
    return (type(proj_key) is nn.Linear and type(proj_value) is nn.Linear
            and proj_key.weight.dtype == proj_value.weight.dtype == projected.dtype
            and proj_key.weight.device == proj_value.weight.device == coef.device
            and proj_key.in_features == proj_value.in_features == projected.shape[-1]
            and projected.dtype in (torch.float16, torch.bfloat16)
            and (proj_key.bias is None) == (proj_value.bias is None)
            and proj_key.out_features == proj_value.out_features == query.shape[-1]
            and projected.is_contiguous() and query.stride(-1) == 1)


def project_attend_unchecked(coef: torch.Tensor, projected: torch.Tensor, stacked: tuple, query: torch.Tensor,
                             num_heads: int, slot_log_weight: torch.Tensor | None, null_log_weight: float | None,
                             mass_out: torch.Tensor | None, coef_out: torch.Tensor | None,
                             counters: torch.Tensor | None):
    """(context, mass, whether ``coef`` was copied into ``coef_out``) of the slot attention on
    K|V = projected Wᵀ + b, one launch, where :func:`applies`; ``stacked``: ([W_k; W_v], [b_k; b_v]
    or None). ``mass_out``: where the mass may be written; ``coef_out``: a buffer (the memory's)
    that the launch copies ``coef`` into where both are contiguous and alike; ``counters``: the
    launch's int32 [3] zeros. Nothing is checked here beyond :func:`applies`."""
    weight, bias = stacked
    copies = (coef_out is not None and coef_out.shape == coef.shape and coef_out.dtype == coef.dtype == torch.float32
              and coef_out.device == coef.device and coef_out.is_contiguous() and coef.is_contiguous())
    kernel = backends.triton_kernels()["project_attend"].project_attend
    context, mass = kernel(coef, projected, weight, bias, query, num_heads, slot_log_weight, null_log_weight,
                           mass_out=mass_out, coef_out=coef_out if copies else None, counters=counters)
    return context, mass, copies
