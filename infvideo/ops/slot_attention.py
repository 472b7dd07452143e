"""``torch.ops.infvideo.slot_attention``: exact continuous softmax over rectangular bins."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _csrc, _dispatch, _triton, _validate


@torch.library.custom_op("infvideo::slot_attention", mutates_args=())
def _slot_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int,
                    slot_log_weight: Optional[Tensor], null_log_weight: Optional[float]) -> tuple[Tensor, Tensor]:
    mods = _triton.require("slot_attention", query.device)
    return mods["attention"].slot_attention(query, keys, values, num_heads, slot_log_weight, null_log_weight)


def _fake_with_block(query_block):
    def fake(query, keys, values, num_heads, slot_log_weight, null_log_weight):
        s, q_len, model = query.shape
        groups = num_heads * -(-q_len // query_block(q_len))
        return (query.new_empty(s, q_len, model),
                query.new_empty(s, groups, keys.shape[1], dtype=torch.float32))
    return fake


_slot_attention.register_fake(_fake_with_block(lambda q_len: _triton.kernels()["attention"].query_block(q_len)))
_csrc.register_fake("slot_attention", _fake_with_block(lambda q_len: _csrc.QUERY_BLOCK))


def slot_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int,
                   slot_log_weight: Tensor | None = None, null_log_weight: float | None = None,
                   backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Context and bin masses of the Gibbs density over N rectangular bins.

    r_{s,h,q,n} = softmax_n(q·K_n/√d + log w_n ; null slot log m_∅), c = Σ_n r_n V_n.
    query [S, Q, D], keys / values [S, N, D] (K = proj_key(B), V = proj_value(B)); slot_log_weight
    [N] (None: equal bins), null_log_weight: the paper preset's null slot (None: no slot).
    Returns context [S, Q, D] (query dtype) and mass [S, G, N] = Σ_q r over each head's blocks of
    queries, G = H·⌈Q/16⌉ (float32; the sticky samplers add the groups up).

    query and keys are float32, float16 or bfloat16 (values any float: cast to the keys' dtype),
    all on one device; any strides (stride-0 / expanded inputs included: they are only read).
    ``backend``: ``"triton"``, ``"cpu"`` / ``"cuda"`` (the csrc kernels) or ``"auto"`` (Triton where
    it runs, else csrc).
    """
    _check(query, keys, values, num_heads, slot_log_weight, null_log_weight)
    return launch(query, keys, values, num_heads, slot_log_weight, null_log_weight,
                  backend=_dispatch.op_backend(_OP, backend, query.device))


def launch(query: Tensor, keys: Tensor, values: Tensor, num_heads: int, slot_log_weight: Tensor | None = None,
           null_log_weight: float | None = None, mass_out: Tensor | None = None, backend: str = "triton"
           ) -> tuple[Tensor, Tensor]:
    """:func:`slot_attention` without the input checks (for ``fused_step``, whose inputs are checked);
    ``backend`` is concrete.

    ``mass_out``: a [S, H·QB, N] float32 tensor the mass may be written into (direct launches only;
    the registered op, which torch.compile sees, returns a new tensor)."""
    if keys.dtype == torch.float64:
        # float64 projections: the kernel's dots take fp32 / fp16 / bf16 (the compiled kernel
        # rejects float64), and the step computes in float32 anyway.
        keys = keys.float()
    keys = _triton.rows_unit_stride(keys)
    values = _triton.rows_unit_stride(_triton.cast(values, keys.dtype))
    query = _triton.rows_unit_stride(query)
    if slot_log_weight is not None and not (slot_log_weight.dtype == torch.float32 and slot_log_weight.is_contiguous()
                                            and slot_log_weight.device == query.device):
        slot_log_weight = slot_log_weight.to(device=query.device, dtype=torch.float32).contiguous()
    args = (query, keys, values, num_heads, slot_log_weight, None if null_log_weight is None else float(null_log_weight))
    if backend in _dispatch.CSRC_BACKENDS:
        return torch.ops.infvideo.slot_attention_csrc(*args)
    if _triton.direct_call_ok(query):
        return _triton.require("slot_attention", query.device)["attention"].slot_attention(*args, mass_out)
    return torch.ops.infvideo.slot_attention(*args)


_OP = "infvideo.ops.slot_attention"


def _check(query, keys, values, num_heads, slot_log_weight, null_log_weight) -> None:
    _validate.attention_inputs(_OP, query, keys, values, num_heads, values_dtypes=None)
    if slot_log_weight is not None:
        _validate.tensor(_OP, "slot_log_weight", slot_log_weight, (1,), "[N]", dtypes=None)
        _validate.match(_OP, "slot_log_weight", slot_log_weight.shape[0], keys.shape[1], "slots (dim 0)",
                        "keys (dim 1)")
    if null_log_weight is not None:
        _validate.real(_OP, "null_log_weight", null_log_weight)
