"""``torch.ops.infvideo.quadrature_attention``: Gibbs density over a Gaussian basis, by quadrature."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from .._lru import LRUCache
from ..config import MemoryConfig
from ..reference.basis import gaussian_parameters
from ..reference.fit import derived, on_device
from ..reference.quadrature import gaussian_rule
from .. import backends
from . import _library, _validate


@dataclass(frozen=True)
class QuadratureConstants:
    """Basis centres/widths [N], the rule's nodes ``grid`` and log-weights [T], and its sticky bins:
    trapezoid ``gaps`` [T-1] (paper preset) or Gauss–Legendre ``panel_weight`` [K, 8] (exact
    preset), the other None (``reference.quadrature``)."""

    mu: Tensor
    sigma: Tensor
    grid: Tensor
    log_weight: Tensor
    gaps: Tensor | None
    panel_weight: Tensor | None = None


@lru_cache(maxsize=64)
def quadrature_host_constants(cfg: MemoryConfig) -> QuadratureConstants:
    """The quadrature constants of a Gaussian-basis configuration, float64 on the CPU."""
    mu, sigma = gaussian_parameters(cfg.num_basis, cfg.sigmas)
    rule = gaussian_rule(cfg)
    return QuadratureConstants(mu, sigma, rule.nodes, rule.weight.log(), rule.gaps, rule.panel_weight)


def quadrature_constants(cfg: MemoryConfig, device: torch.device) -> QuadratureConstants:
    """The configuration's quadrature constants on ``device`` (built and moved once): float32, but
    for the basis and the nodes (mu, sigma, grid) in float64 (:func:`device_constants`)."""
    return device_constants(quadrature_host_constants(cfg), device)


_device_constants = LRUCache(256)


def _constants_on(host: QuadratureConstants, device: torch.device) -> QuadratureConstants:
    exact = on_device(host, device, torch.float64)
    return replace(on_device(host, device, torch.float32), mu=exact.mu, sigma=exact.sigma, grid=exact.grid)


def device_constants(host: QuadratureConstants, device: torch.device) -> QuadratureConstants:
    """``host`` on ``device``: float32, but for mu, sigma and grid in float64, from which the op
    builds its float32 table of basis values. Nodes rounded to float32 would move a narrow
    Gaussian's values by up to ~10⁻⁴ relative in its tails (|t − μ|/σ² times the rounding), and the
    sticky statistic with them."""
    return derived(_device_constants, host, (device,), _constants_on)


@torch.library.custom_op("infvideo::quadrature_attention", mutates_args=())
def _quadrature_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int, mu: Tensor,
                          sigma: Tensor, grid: Tensor, log_weight: Tensor, write_density: bool
                          ) -> tuple[Tensor, Tensor]:
    if not backends.triton_runs_on(query.device):
        raise RuntimeError(f"infvideo::quadrature_attention: its one kernel is Triton, which cannot run on {query.device} "
                           "tensors here (install Triton; CUDA tensors, or TRITON_INTERPRET=1 on the CPU)")
    return backends.triton_kernels()["quadrature"].quadrature_attention(query, keys, values, num_heads, mu, sigma, grid,
                                                                        log_weight, write_density)


@_quadrature_attention.register_fake
def _(query, keys, values, num_heads, mu, sigma, grid, log_weight, write_density):
    s, q_len, model = query.shape
    return (query.new_empty(s, q_len, model),
            query.new_empty(s, _library.mass_groups(num_heads, q_len), grid.shape[0] if write_density else 1,
                            dtype=torch.float32))


@torch.library.custom_op("infvideo::quadrature_attention_backward", mutates_args=())
def _quadrature_attention_backward(grad_context: Tensor, grad_density: Optional[Tensor], query: Tensor, keys: Tensor,
                                   values: Tensor, num_heads: int, mu: Tensor, sigma: Tensor, grid: Tensor,
                                   log_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if not backends.triton_runs_on(query.device):
        raise RuntimeError(f"infvideo::quadrature_attention_backward: its one kernel is Triton, which cannot run on "
                           f"{query.device} tensors here (install Triton; CUDA tensors, or TRITON_INTERPRET=1 on the CPU)")
    return backends.triton_kernels()["quadrature"].quadrature_attention_backward(
        grad_context, grad_density, query, keys, values, num_heads, mu, sigma, grid, log_weight)


@_quadrature_attention_backward.register_fake
def _(grad_context, grad_density, query, keys, values, num_heads, mu, sigma, grid, log_weight):
    return torch.empty_like(query), torch.empty_like(keys), torch.empty_like(values)


def _setup_context(ctx, inputs, output):
    query, keys, values, num_heads, mu, sigma, grid, log_weight, write_density = inputs
    ctx.save_for_backward(query, keys, values, mu, sigma, grid, log_weight)
    ctx.num_heads, ctx.write_density = num_heads, write_density


def _backward(ctx, grad_context, grad_density):
    query, keys, values, mu, sigma, grid, log_weight = ctx.saved_tensors
    if grad_context is None:
        grad_context = torch.zeros_like(query)
    # Without write_density the density output is a zero placeholder: nothing flows from it.
    grad_density = grad_density.contiguous() if ctx.write_density and grad_density is not None else None
    dq, dk, dv = torch.ops.infvideo.quadrature_attention_backward(
        grad_context.contiguous(), grad_density, query, keys, values, ctx.num_heads, mu, sigma, grid, log_weight)
    need = ctx.needs_input_grad
    return dq if need[0] else None, dk if need[1] else None, dv if need[2] else None, *(None,) * 6


# Gradients for query, keys and values (the Gibbs density's softmax over the quadrature points,
# recomputed flash-style, and the density output's gradient); the basis and the grid are
# constants of the configuration, not differentiable.
_quadrature_attention.register_autograd(_backward, setup_context=_setup_context)


def quadrature_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int, mu: Tensor, sigma: Tensor,
                         grid: Tensor, log_weight: Tensor, write_density: bool = True) -> tuple[Tensor, Tensor]:
    """Context of the Gibbs density p(t) ∝ exp(aᵀψ(t)) over Gaussian ψ_n = 𝒩(μ_n, σ_n²).

    r_n = Σ_j ω_j p(t_j) ψ_n(t_j), p(t_j) = exp s(t_j) / Σ_k ω_k exp s(t_k), on the nodes ``grid``
    [T] with log-weights ``log_weight`` [T] (any rule; :func:`quadrature_constants` gives a
    configuration's: Gauss–Legendre panels in the exact preset, the trapezoid in the paper one),
    a = q·K/√d, c = Σ_n r_n V_n. query [S, Q, D], keys/values [S, N, D], mu/sigma [N].
    Returns context [S, Q, D] and Σ_q p(t_j) per head and group of 16 queries, [S, G, T] (float32;
    [S, G, 1] zeros if not write_density).

    query / keys / values are float32, float16 or bfloat16 on one device, any strides; the
    constants any float dtype, moved to the query's device: the op's table of basis values is
    built from the basis and nodes in float64 and rounded once (give them in float64, as
    :func:`quadrature_constants` does, for nodes without float32 rounding), the log-weights are
    taken in float32.

    Differentiable with respect to query, keys and values (from the context and the density):
    ``infvideo::quadrature_attention_backward`` recomputes the quadrature's softmax tile by tile
    (its one kernel is Triton's, like the forward's). The basis and grid are constants.
    """
    _check(query, keys, values, num_heads, mu, sigma, grid, log_weight)
    return quadrature_attention_unchecked(query, keys, values, num_heads, mu, sigma, grid, log_weight, write_density)


def quadrature_attention_unchecked(query: Tensor, keys: Tensor, values: Tensor, num_heads: int, mu: Tensor, sigma: Tensor, grid: Tensor,
           log_weight: Tensor, write_density: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`quadrature_attention` without the input checks (for ``fused_step``, whose inputs are checked)."""
    unit = _library.rows_unit_stride

    def basis(x):  # kept in its dtype: a cast here would be a new tensor, and a new table, every call
        return x.to(device=query.device).contiguous()
    args = (unit(query), unit(keys), unit(values), num_heads, basis(mu), basis(sigma), basis(grid),
            log_weight.to(device=query.device, dtype=torch.float32).contiguous(), bool(write_density))
    # A call that nothing needs to see launches the kernel itself (_library.direct_triton): the
    # dispatcher's way there costs more host time than a small step's kernels take.
    if _library.direct_triton(query, "triton") and not _library.records_grad(query, keys, values):
        return backends.triton_kernels()["quadrature"].quadrature_attention(*args)
    return torch.ops.infvideo.quadrature_attention(*args)


_OP = "infvideo.ops.quadrature_attention"


def _check(query, keys, values, num_heads, mu, sigma, grid, log_weight) -> None:
    _validate.attention_inputs(_OP, query, keys, values, num_heads)
    n = keys.shape[1]
    for name, value in (("mu", mu), ("sigma", sigma)):
        _validate.tensor(_OP, name, value, (1,), "[N]", dtypes=None)
        _validate.match(_OP, name, value.shape[0], n, "entries", "keys (dim 1)")
    _validate.tensor(_OP, "grid", grid, (1,), "[T]", dtypes=None)
    _validate.tensor(_OP, "log_weight", log_weight, (1,), "[T]", dtypes=None)
    _validate.match(_OP, "log_weight", log_weight.shape[0], grid.shape[0], "points", "grid")
