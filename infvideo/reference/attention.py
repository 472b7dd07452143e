"""Continuous attention over the memory (SPEC section 8).

Per stream s, head h, query q the score of time t is s(t) = aᵀψ(t), a = K q / √d with
K = proj_key(B). The Gibbs density p(t) ∝ exp s(t) is integrated against ψ to give slot weights
r_n = ∫ p ψ_n, and the context is c = Σ_n r_n V_n with V = proj_value(B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..config import MemoryConfig
from . import positions as pos
from .basis import gaussian_parameters, gaussian_values, rectangular_membership
from .quadrature import gaussian_rule


@dataclass(frozen=True)
class SlotWeights:
    """Rectangular bins: r = softmax over N slots with log-weights, plus an optional null slot.

    ``log_weight`` [N] (None: equal bins, r = softmax(a)); ``null_log_weight`` [1] or None, the
    log-mass of quadrature points lying in no bin, where s(t) = 0 (paper preset).
    """

    log_weight: torch.Tensor | None
    null_log_weight: torch.Tensor | None


@dataclass(frozen=True)
class Quadrature:
    """Smooth basis: ψ at the T nodes of the rule [T, N], its log-weights [T], and its sticky bins
    (``reference.quadrature``): trapezoid ``gaps`` [T-1] (paper preset) or Gauss–Legendre
    ``panel_weight`` [K, 8] (exact preset), the other None."""

    basis: torch.Tensor
    log_weight: torch.Tensor
    gaps: torch.Tensor | None
    panel_weight: torch.Tensor | None = None


@dataclass(frozen=True)
class GaussianDensity:
    """Basis centres μ [N] and variances σ² [N], for the Gaussian continuous-softmax mode."""

    mu: torch.Tensor
    var: torch.Tensor
    edges: torch.Tensor


@lru_cache(maxsize=64)
def attention_constants(cfg: MemoryConfig):
    """What the attention of a configuration needs, built once (float64, CPU)."""
    if cfg.basis == "rectangular":
        if cfg.preset == "exact":
            return SlotWeights(None, None)
        grid, weights = pos.quadrature_grid(cfg.quad_points, "paper")
        member = rectangular_membership(grid, cfg.num_basis).to(torch.float64)
        mass = weights @ member
        null = float(weights[member.sum(1) == 0].sum())
        return SlotWeights(mass.log(), torch.tensor([math.log(null)]) if null > 0 else None)
    mu, sigma = gaussian_parameters(cfg.num_basis, cfg.sigmas)
    if cfg.density == "gaussian":
        edges = torch.linspace(0, 1, cfg.quad_points, dtype=torch.float64)
        return GaussianDensity(mu, sigma * sigma, edges)
    rule = gaussian_rule(cfg)
    return Quadrature(gaussian_values(rule.nodes, mu, sigma), rule.weight.log(), rule.gaps, rule.panel_weight)


def _linear_parts(proj, dtype: torch.dtype):
    """(weight, bias) of a plain nn.Linear in the computation's dtype, else None."""
    if type(proj) is nn.Linear:
        return proj.weight.to(dtype), None if proj.bias is None else proj.bias.to(dtype)
    return None


def _apply(proj, coef: torch.Tensor) -> torch.Tensor:
    """proj(coef), returned in coef's dtype.

    A float64 step computes in float64 whatever the projection's dtype: its parameters are cast
    up for the call (casting coef down to float32 would round K and V to float32, and two float32
    products of the same inputs may differ in their last bits, e.g. cuBLAS picking another
    kernel). Other steps run the projection in its parameters' dtype.
    """
    param = next(iter(proj.parameters()), None) if isinstance(proj, nn.Module) else None
    if param is None or param.dtype == coef.dtype:
        return proj(coef)
    if coef.dtype == torch.float64:
        wide = {name: p.to(torch.float64) for name, p in proj.named_parameters()}
        return torch.func.functional_call(proj, wide, (coef,))
    return proj(coef.to(param.dtype)).to(coef.dtype)


def use_factored(num_basis: int, width: int, model: int, heads_queries: int, queries: int) -> bool:
    """Whether a = (W_kᵀ q)ᵀ B beats materialising K = B W_kᵀ (multiply-add count)."""
    direct = num_basis * width * model + num_basis * model * queries
    factored = queries * model * width + num_basis * width * heads_queries
    return factored < direct


def scores(coef: torch.Tensor, query: torch.Tensor, proj_key, num_heads: int) -> torch.Tensor:
    """Slot scores a [S, H, Q, N] = K q / √d, K = proj_key(coef) [S, N, D], query [S, Q, D]."""
    s, q_len, model = query.shape
    n, width = coef.shape[1], coef.shape[2]
    d = model // num_heads
    qh = query.reshape(s, q_len, num_heads, d).transpose(1, 2) / math.sqrt(d)  # [S, H, Q, d]
    parts = _linear_parts(proj_key, coef.dtype)
    if parts is not None and use_factored(n, width, model, num_heads * q_len, q_len):
        weight, bias = parts
        u = torch.matmul(qh, weight.reshape(num_heads, d, width))  # [S, H, Q, e]
        a = torch.matmul(u.reshape(s, -1, width), coef.transpose(1, 2)).reshape(s, num_heads, q_len, n)
        if bias is not None:
            a = a + torch.matmul(qh, bias.reshape(num_heads, d, 1))
        return a
    keys = _apply(proj_key, coef).reshape(s, n, num_heads, d).transpose(1, 2)  # [S, H, N, d]
    return torch.matmul(qh, keys.transpose(-1, -2))


def read_values(coef: torch.Tensor, weights: torch.Tensor, proj_value, num_heads: int) -> torch.Tensor:
    """Context c [S, Q, D] = Σ_n r_n V_n, V = proj_value(coef), weights r [S, H, Q, N]."""
    s, h, q_len, n = weights.shape
    width = coef.shape[2]
    parts = _linear_parts(proj_value, coef.dtype)
    if parts is not None and use_factored(n, width, parts[0].shape[0], h * q_len, q_len):
        weight, bias = parts
        model = weight.shape[0]
        d = model // h
        mixed = torch.matmul(weights.reshape(s, h * q_len, n), coef).reshape(s, h, q_len, width)
        ctx = torch.matmul(mixed, weight.reshape(h, d, width).transpose(1, 2))  # [S, H, Q, d]
        if bias is not None:
            ctx = ctx + weights.sum(-1, keepdim=True) * bias.reshape(h, 1, d)
        return ctx.transpose(1, 2).reshape(s, q_len, model)
    values = _apply(proj_value, coef)
    model = values.shape[-1]
    values = values.reshape(s, n, h, model // h).transpose(1, 2)  # [S, H, N, d]
    return torch.matmul(weights, values).transpose(1, 2).reshape(s, q_len, model)


def slot_weights(a: torch.Tensor, const: SlotWeights) -> torch.Tensor:
    """Exact integral for rectangular bins: r = softmax(a + log w) over N (+ null) slots."""
    if const.log_weight is None:
        return torch.softmax(a, dim=-1)
    logits = a + const.log_weight
    if const.null_log_weight is None:
        return torch.softmax(logits, dim=-1)
    null = const.null_log_weight.expand(*a.shape[:-1], 1)
    return torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1]


def quadrature_weights(a: torch.Tensor, const: Quadrature) -> tuple[torch.Tensor, torch.Tensor]:
    """r_n = Σ_j ω_j p(t_j) ψ_n(t_j) on the rule's nodes (smooth bases); returns r [..., N] and the
    density p at the nodes [..., T]."""
    # s(t_j) + log ω_j as one product with the log-weights added in its epilogue: a separate add
    # is one more pass over the [..., T] scores, the largest tensor here.
    logits = torch.addmm(const.log_weight, a.reshape(-1, a.shape[-1]), const.basis.T).view(*a.shape[:-1], -1)
    w = torch.softmax(logits, dim=-1)  # p(t_j) ω_j
    return torch.matmul(w, const.basis), w / const.log_weight.exp()


def gaussian_density_weights(a: torch.Tensor, const: GaussianDensity) -> tuple[torch.Tensor, ...]:
    """Gaussian continuous softmax: p = 𝒩(μ, σ²), μ, σ² the moments of the centres under softmax(a)."""
    probs = torch.softmax(a, dim=-1)
    mean = (probs * const.mu).sum(-1, keepdim=True)
    var = (probs * (const.mu - mean) ** 2).sum(-1, keepdim=True)
    total = var + const.var
    r = torch.exp(-0.5 * (const.mu - mean) ** 2 / total) / torch.sqrt(2 * math.pi * total)
    return r, mean, var
