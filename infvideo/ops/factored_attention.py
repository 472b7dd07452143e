"""Slot attention with the projections folded into the queries (SPEC section 8's algebra).

With K = B W_kᵀ + b_k and V = B W_vᵀ + b_v (plain Linear layers, B the coefficients [S, N, e]),
per head h and query q the scores are a_n = ũ_{h,q}·B_n / √d + c_{h,q} with ũ = W_k,hᵀ q_h, and
the context is c_{h,q} = W_v,h (Σ_n r_n B_n) + (Σ_n r_n) b_v,h. Without a null slot the softmax
over the N slots ignores the constant c_{h,q} and Σ_n r_n = 1, so the attention is the slot
attention of the H·Q vectors ũ over one "head" of width e with keys = values = B, between two
small products. That costs H·Q·N·e twice instead of the N·e·D twice of forming K and V, which
wins when N is large against H·Q (the reference's own rule, ``use_factored``): the CPU step
(N = 256, H·Q = 384, e = D = 768) spends 40 % fewer multiply-adds than with K and V.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import backends
from ..reference.attention import use_factored
from . import _library, _validate


def applies(proj_key, proj_value, num_basis: int, width: int, query: torch.Tensor, num_heads: int,
            null_log_weight: float | None) -> bool:
    """Whether :func:`factored_slot_attention` computes this attention (N = ``num_basis`` slots of
    width e = ``width``), and with fewer multiply-adds than forming K and V."""
    if type(proj_key) is not nn.Linear or type(proj_value) is not nn.Linear or null_log_weight is not None:
        return False
    _, q_len, model = query.shape
    return use_factored(num_basis, width, model, num_heads * q_len, q_len)


@torch.library.custom_op("infvideo::factored_slot_attention", mutates_args=())
def _factored_slot_attention(query: Tensor, coef: Tensor, w_key: Tensor, w_value: Tensor, b_value: Optional[Tensor],
                             num_heads: int, slot_log_weight: Optional[Tensor],
                             backend: str = "auto") -> tuple[Tensor, Tensor]:
    return _library.no_default_kernel()


@_factored_slot_attention.register_fake
def _(query, coef, w_key, w_value, b_value, num_heads, slot_log_weight, backend="auto"):
    s, q_len, model = query.shape
    groups = -(-num_heads * q_len // _library.QUERY_GROUP)
    return query.new_empty(s, q_len, model), query.new_empty(s, groups, coef.shape[1], dtype=torch.float32)


def _triton_kernel(*args):
    return backends.triton_kernels()["factored_attention"].factored_slot_attention(*args)


def _checked_triton_kernel(*args):
    # Direct callers of torch.ops.infvideo.factored_slot_attention get the C++ kernel's checks
    # (csrc/attention/factored_attention_cpu.cpp) before a launch could read out of bounds.
    _check(*args)
    return _triton_kernel(*args)


_library.select_kernels("factored_slot_attention", _checked_triton_kernel)


def factored_slot_attention(query: Tensor, coef: Tensor, proj_key: nn.Linear, proj_value: nn.Linear,
                            num_heads: int, slot_log_weight: Tensor | None, backend: str = "auto"
                            ) -> tuple[Tensor, Tensor]:
    """Context [S, Q, D] (query's dtype) and bin masses [S, ⌈H·Q/16⌉, N] (float32) of the slot attention
    of ``query`` [S, Q, D] over K = proj_key(coef), V = proj_value(coef), coef [S, N, e] float32.

    r = softmax_n(ũ·B_n/√d + log w_n) with ũ = W_k,hᵀ q_h, context_h = W_v,h (Σ_n r_n B_n) + b_v,h.
    Only where :func:`applies` holds (plain Linear layers, no null slot). The mass groups are blocks
    of 16 of the H·Q (head-major) queries: for Q a multiple of 16 the groups of ``slot_attention``.
    Every product is float32 (on the GPU, three-TF32 tensor-core dots). ``backend``: ``"cpu"`` (the
    C++ kernel, ``csrc/attention/factored_attention_cpu.cpp``: the four products and the softmax
    in one parallel pass), ``"triton"`` (``kernels/factored_attention.py``) or ``"auto"``
    (``infvideo.backends``); there is no C++ CUDA kernel. Forward-only: a step that autograd
    records projects K and V and runs ``slot_attention``, whose backward is registered.
    """
    if slot_log_weight is not None and not (slot_log_weight.dtype == torch.float32 and slot_log_weight.is_contiguous()
                                            and slot_log_weight.device == query.device):
        slot_log_weight = slot_log_weight.to(device=query.device, dtype=torch.float32).contiguous()
    args = (query, coef, proj_key.weight, proj_value.weight, proj_value.bias, num_heads, slot_log_weight)
    return _library.launch("factored_slot_attention", _triton_kernel, args, backend, query)


_OP = "infvideo::factored_slot_attention"


def _check(query, coef, w_key, w_value, b_value, num_heads, slot_log_weight) -> None:
    """Shapes, dtypes and devices, as the C++ kernel checks them."""
    query = _validate.tensor(_OP, "query", query, (3,), "[S, Q, D]")
    device, (streams, _, model) = query.device, query.shape
    coef = _validate.tensor(_OP, "coef", coef, (3,), "[S, N, e]", None, device, "query")
    _validate.match(_OP, "coef", coef.shape[0], streams, "streams (dim 0)", "query")
    width = coef.shape[2]
    for name, weight in (("w_key", w_key), ("w_value", w_value)):
        _validate.tensor(_OP, name, weight, (2,), "[D, e]", None, device, "query")
        if tuple(weight.shape) != (model, width):
            raise ValueError(f"{_OP}: {name} must have shape [D, e] = [{model}, {width}] (query's D, coef's e), "
                             f"got {tuple(weight.shape)}")
    if b_value is not None:
        _validate.tensor(_OP, "b_value", b_value, (1,), "[D]", None, device, "query")
        _validate.match(_OP, "b_value", b_value.shape[0], model, "entries", "query's D")
    _validate.heads(_OP, num_heads, model)
    if slot_log_weight is not None:
        _validate.tensor(_OP, "slot_log_weight", slot_log_weight, (1,), "[N]", None, device, "query")
        _validate.match(_OP, "slot_log_weight", slot_log_weight.shape[0], coef.shape[1], "slots (dim 0)", "coef")
