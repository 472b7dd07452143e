"""``torch.ops.infvideo.slot_attention``: exact continuous softmax over rectangular bins."""
from __future__ import annotations

import functools
import math
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


def _triton_kernel(*args, mass_out=None):
    return backends.triton_kernels()["attention"].slot_attention(*args, mass_out=mass_out)


_library.select_kernels("slot_attention", _triton_kernel)


# The backward recomputes the probabilities r from q, K and the log-weights (flash-attention's
# way: nothing [S, H, Q, N] is saved), then with dr_n = dc·V_n (+ the mass gradient of the query's
# group) and δ = Σ_n r_n dr_n (the null slot, absent from both outputs, has dr = 0):
# ∂a_n = r_n (dr_n − δ), dq = Σ_n ∂a_n K_n / √d, dK_n = Σ_q ∂a_n q / √d, dV_n = Σ_q r_n dc.
def slot_attention_backward_torch(grad_context: Tensor, grad_mass: Tensor | None, query: Tensor, keys: Tensor,
                                  values: Tensor, num_heads: int, slot_log_weight: Tensor | None,
                                  null_log_weight: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """``infvideo::slot_attention_backward`` in plain torch (float32), on any device: dq, dK, dV in
    the dtypes of query, keys and values from grad_context [S, Q, D] and grad_mass [S, H·⌈Q/16⌉, N]
    or None. The op's kernel on the CUDA key (csrc has no CUDA backward yet).
    """
    _check_backward(grad_context, grad_mass, query, keys, values, num_heads, slot_log_weight, null_log_weight)
    s, q_len, model = query.shape
    n = keys.shape[1]
    d = model // num_heads
    scale = 1.0 / math.sqrt(d)

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], num_heads, d).transpose(1, 2).float()

    qh, kh, vh, go = heads(query), heads(keys), heads(values), heads(grad_context)
    logits = torch.matmul(qh * scale, kh.transpose(-1, -2))
    if slot_log_weight is not None:
        logits = logits + slot_log_weight.float()
    if null_log_weight is not None:
        logits = torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), null_log_weight)], dim=-1)
    r = torch.softmax(logits, dim=-1)[..., :n]
    dr = torch.matmul(go, vh.transpose(-1, -2))
    if grad_mass is not None:
        group = grad_mass.float().reshape(s, num_heads, -1, n)
        dr = dr + group.repeat_interleave(_library.QUERY_GROUP, dim=2)[:, :, :q_len]
    da = r * (dr - (r * dr).sum(-1, keepdim=True))

    def merge(x):
        return x.transpose(1, 2).reshape(s, x.shape[2], model)

    dq = merge(torch.matmul(da, kh) * scale).to(query.dtype)
    dk = merge(torch.matmul(da.transpose(-1, -2), qh) * scale).to(keys.dtype)
    dv = merge(torch.matmul(r.transpose(-1, -2), go)).to(values.dtype)
    return dq, dk, dv


@torch.library.custom_op("infvideo::slot_attention_backward", mutates_args=())
def _slot_attention_backward(grad_context: Tensor, grad_mass: Optional[Tensor], query: Tensor, keys: Tensor,
                             values: Tensor, num_heads: int, slot_log_weight: Optional[Tensor],
                             null_log_weight: Optional[float], backend: str = "auto"
                             ) -> tuple[Tensor, Tensor, Tensor]:
    return slot_attention_backward_torch(grad_context, grad_mass, query, keys, values, num_heads, slot_log_weight,
                                         null_log_weight)


@_slot_attention_backward.register_fake
def _(grad_context, grad_mass, query, keys, values, num_heads, slot_log_weight, null_log_weight, backend="auto"):
    return torch.empty_like(query), torch.empty_like(keys), torch.empty_like(values)


def _triton_backward(*args):
    return backends.triton_kernels()["attention"].slot_attention_backward(*args)


_library.select_kernels("slot_attention_backward", _triton_backward)


def _setup_context(ctx, inputs, output):
    query, keys, values, num_heads, slot_log_weight, null_log_weight, backend = inputs
    ctx.save_for_backward(query, keys, values, slot_log_weight)
    ctx.num_heads, ctx.null_log_weight, ctx.backend = num_heads, null_log_weight, backend


def _backward(ctx, grad_context, grad_mass):
    query, keys, values, slot_log_weight = ctx.saved_tensors
    if grad_context is None:
        grad_context = torch.zeros_like(query)
    dq, dk, dv = _library.launch(
        "slot_attention_backward", _triton_backward,
        (grad_context.contiguous(), None if grad_mass is None else grad_mass.contiguous(), query, keys, values,
         ctx.num_heads, slot_log_weight, ctx.null_log_weight), ctx.backend)
    need = ctx.needs_input_grad
    return dq if need[0] else None, dk if need[1] else None, dv if need[2] else None, None, None, None, None


# Gradients for query, keys and values; the log-weights and the null slot are constants of the
# configuration (the bins' widths, the paper grid's mass outside the bins), not differentiable.
_library.register_autograd("slot_attention", _triton_kernel, _backward, _setup_context)


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

    Differentiable with respect to query, keys and values (from the context and the mass): the
    backward, ``infvideo::slot_attention_backward``, recomputes r (null slot and log-weights
    included) instead of saving it, on the kernel ``backend`` picks, accumulating in float32.
    The log-weights and the null slot are constants (not differentiable).
    """
    _check(query, keys, values, num_heads, slot_log_weight, null_log_weight)
    return slot_attention_unchecked(query, keys, values, num_heads, slot_log_weight, null_log_weight, backend)


def slot_attention_unchecked(query: Tensor, keys: Tensor, values: Tensor, num_heads: int,
                             slot_log_weight: Tensor | None = None, null_log_weight: float | None = None,
                             backend: str = "auto", mass_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`slot_attention` without the input checks (for ``fused_step``, whose inputs are checked).
    ``mass_out``: where a direct Triton launch outside autograd may write the mass (a capturing
    memory's buffer: ``infvideo.early_commit``), when it fits; the mass returned is then that tensor."""
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
    # Only the direct launch outside autograd calls the kernel given here; the others ignore mass_out.
    kernel = _triton_kernel if mass_out is None else functools.partial(_triton_kernel, mass_out=mass_out)
    return _library.launch("slot_attention", kernel, args, backend, query, keys, values)


_OP = "infvideo.ops.slot_attention"


def _check(query, keys, values, num_heads, slot_log_weight, null_log_weight) -> None:
    _validate.attention_inputs(_OP, query, keys, values, num_heads, values_dtypes=None)
    if slot_log_weight is not None:
        _validate.tensor(_OP, "slot_log_weight", slot_log_weight, (1,), "[N]", dtypes=None)
        _validate.match(_OP, "slot_log_weight", slot_log_weight.shape[0], keys.shape[1], "slots (dim 0)",
                        "keys (dim 1)")
    if null_log_weight is not None:
        _validate.real(_OP, "null_log_weight", null_log_weight)


_BACKWARD_OP = "infvideo::slot_attention_backward"


def _check_backward(grad_context, grad_mass, query, keys, values, num_heads, slot_log_weight, null_log_weight):
    """The C++ backward's checks, for the plain-torch kernel (the forward's, and the cotangents' shapes)."""
    _check(query, keys, values, num_heads, slot_log_weight, null_log_weight)
    if grad_context.shape != query.shape:
        raise ValueError(f"{_BACKWARD_OP}: grad_context must have the query's shape {tuple(query.shape)}, "
                         f"got {tuple(grad_context.shape)}")
    if grad_mass is not None:
        s, q_len, _ = query.shape
        want = (s, _library.mass_groups(num_heads, q_len), keys.shape[1])
        if grad_mass.shape != want:
            raise ValueError(f"{_BACKWARD_OP}: grad_mass must have the mass's shape [S, H·⌈Q/16⌉, N] = {want}, "
                             f"got {tuple(grad_mass.shape)}")
