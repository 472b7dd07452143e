"""``torch.ops.infvideo.slot_attention``: exact continuous softmax over rectangular bins."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _library, _validate


@torch.library.custom_op("infvideo::slot_attention", mutates_args=())
def _slot_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int, slot_log_weight: Optional[Tensor],
                    null_log_weight: Optional[float], backend: str = "auto") -> tuple[Tensor, Tensor]:
    return _library.no_default_kernel()


@_slot_attention.register_fake
def _(query, keys, values, num_heads, slot_log_weight, null_log_weight, backend="auto"):
    s, q_len, model = query.shape
    return (query.new_empty(s, q_len, model),
            query.new_empty(s, _library.mass_groups(num_heads, q_len), keys.shape[1], dtype=torch.float32))


def _triton_kernel(*args):
    return backends.triton_kernels()["attention"].slot_attention(*args)


_library.select_kernels("slot_attention", _triton_kernel)


def slot_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int,
                   slot_log_weight: Tensor | None = None, null_log_weight: float | None = None,
                   backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Context and bin masses of the Gibbs density over N rectangular bins.

    r_{s,h,q,n} = softmax_n(q·K_n/√d + log w_n ; null slot log m_∅), c = Σ_n r_n V_n.
    query [S, Q, D], keys / values [S, N, D] (K = proj_key(B), V = proj_value(B)); slot_log_weight
    [N] (None: equal bins), null_log_weight: the paper preset's null slot (None: no slot).
    Returns context [S, Q, D] (query dtype) and mass [S, G, N] = Σ_q r over each head's groups of
    16 queries, G = H·⌈Q/16⌉ (float32; the sticky samplers add the groups up).

    query and keys are float32, float16 or bfloat16 (values any float: cast to the keys' dtype),
    all on one device; any strides (stride-0 / expanded inputs included: they are only read).
    ``backend``: ``"triton"``, ``"cpu"`` / ``"cuda"`` (the csrc kernels) or ``"auto"``
    (``infvideo.backends``).
    """
    _check(query, keys, values, num_heads, slot_log_weight, null_log_weight)
    return slot_attention_unchecked(query, keys, values, num_heads, slot_log_weight, null_log_weight, backend)


def slot_attention_unchecked(query: Tensor, keys: Tensor, values: Tensor, num_heads: int,
                             slot_log_weight: Tensor | None = None, null_log_weight: float | None = None,
                             backend: str = "auto") -> tuple[Tensor, Tensor]:
    """:func:`slot_attention` without the input checks (for ``fused_step``, whose inputs are checked)."""
    if keys.dtype == torch.float64:
        # float64 projections: the kernels' dots take fp32 / fp16 / bf16, and the step computes in
        # float32 anyway.
        keys = keys.float()
    keys = _library.rows_unit_stride(keys)
    values = _library.rows_unit_stride(_library.cast(values, keys.dtype))
    query = _library.rows_unit_stride(query)
    if slot_log_weight is not None and not (slot_log_weight.dtype == torch.float32 and slot_log_weight.is_contiguous()
                                            and slot_log_weight.device == query.device):
        slot_log_weight = slot_log_weight.to(device=query.device, dtype=torch.float32).contiguous()
    args = (query, keys, values, num_heads, slot_log_weight, None if null_log_weight is None else float(null_log_weight))
    if _library.direct_triton(query, backend):
        return _triton_kernel(*args)
    return torch.ops.infvideo.slot_attention(*args, backend)


_OP = "infvideo.ops.slot_attention"


def _check(query, keys, values, num_heads, slot_log_weight, null_log_weight) -> None:
    _validate.attention_inputs(_OP, query, keys, values, num_heads, values_dtypes=None)
    if slot_log_weight is not None:
        _validate.tensor(_OP, "slot_log_weight", slot_log_weight, (1,), "[N]", dtypes=None)
        _validate.match(_OP, "slot_log_weight", slot_log_weight.shape[0], keys.shape[1], "slots (dim 0)",
                        "keys (dim 1)")
    if null_log_weight is not None:
        _validate.real(_OP, "null_log_weight", null_log_weight)
