"""The quadrature rule of the Gibbs density over the Gaussian basis, and its sticky bins (SPEC 7, 8).

A rule is T nodes t_j ∈ [0, 1] with positive weights ω_j: ∫₀¹ f ≈ Σ_j ω_j f(t_j). Every backend reads
the same nodes and log-weights (``Quadrature``, ``QuadratureConstants``), so the rule is chosen here
only.
- exact preset: composite Gauss–Legendre, 8 nodes on each of K = ⌈T/8⌉ equal panels
  [k/K, (k+1)/K] (``MemoryConfig.quad_panels``), nodes and weights in float64. Sticky bins are the
  panels: the mass of panel k is the rule's own integral of p over it, Σ_{t_j in panel k} ω_j p(t_j).
  No node lies on a panel edge, so every node belongs to exactly one bin and the masses add up to
  the rule's total Σ_j ω_j p(t_j) (1 for the normalised density).
- paper preset: the published trapezoid on linspace(0, 1, T) (float32 grid). Sticky bins are the
  T − 1 intervals between grid points, mass ½(p_j + p_{j+1})(t_{j+1} − t_j), whose sum is again
  the rule's total.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..config import PANEL_NODES, MemoryConfig
from . import positions as pos


@dataclass(frozen=True)
class Rule:
    """Nodes [T] and weights [T] (float64), and the sticky map: the trapezoid's ``gaps`` [T-1] or
    the Gauss–Legendre ``panel_weight`` [K, 8] (the weights of each panel's nodes); the other is None."""

    nodes: torch.Tensor
    weight: torch.Tensor
    gaps: torch.Tensor | None
    panel_weight: torch.Tensor | None


@lru_cache(maxsize=64)
def gauss_legendre(panels: int, per_panel: int = PANEL_NODES) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss–Legendre on ``panels`` equal panels of [0, 1]: nodes and weights, float64 [K·n].

    Node i of panel k is (k + (x_i + 1)/2)/K and its weight w_i/(2K), (x_i, w_i) the Legendre rule
    on [−1, 1]; exact for polynomials of degree 2n − 1 on every panel.
    """
    x, w = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(per_panel))
    k = torch.arange(panels, dtype=torch.float64)[:, None]
    nodes = (k + (x + 1) / 2) / panels
    weight = (w / (2 * panels)).expand(panels, per_panel)
    return nodes.reshape(-1).contiguous(), weight.reshape(-1).contiguous()


@lru_cache(maxsize=64)
def gaussian_rule(cfg: MemoryConfig) -> Rule:
    """The rule of a Gaussian-basis configuration (Gibbs density), ``cfg.quad_points`` = T."""
    panels = cfg.quad_panels
    if panels is None:
        grid, weight = pos.quadrature_grid(cfg.quad_points, cfg.preset)
        return Rule(grid.values, weight, grid.values.diff(), None)
    nodes, weight = gauss_legendre(panels)
    return Rule(nodes, weight, None, weight.reshape(panels, PANEL_NODES))
