"""Consolidation (SPEC section 6): old coefficients + a chunk of frames → new coefficients."""
from __future__ import annotations

import torch

from .fit import DenseFit, SegmentedFit


def consolidate_segmented(frames: torch.Tensor, past: torch.Tensor | None,
                          sample_bins: torch.Tensor | None, fit: SegmentedFit) -> torch.Tensor:
    """Rectangular consolidation as a segmented, shrunk sum (no [M+L, e] matrix is formed).

    frames [S, L, e] pooled frames; past [S, N, e] old coefficients (None for a first chunk);
    sample_bins [S, M] or [M] int64, the old bin read by each past sample (-1 reads zeros).
    Returns B [S, N, e]: B_n = scale_n (Σ_{past i → n} past[sample_bins_i] + Σ_{frame j → n} x_j).
    """
    s, _, e = frames.shape
    n = fit.scale.numel()
    acc = torch.zeros(s, n, e, dtype=frames.dtype, device=frames.device)
    keep = fit.frame_bins >= 0
    if bool(keep.all()):
        acc = acc.index_add(1, fit.frame_bins, frames)
    else:
        acc = acc.index_add(1, fit.frame_bins[keep], frames[:, keep])
    if past is not None:
        src = sample_bins.expand(s, -1)
        dst = fit.past_bins.expand(s, -1)
        valid = (src >= 0) & (dst >= 0)
        rows = past.gather(1, src.clamp_min(0)[..., None].expand(-1, -1, e))
        rows = rows * valid[..., None].to(rows.dtype)
        acc = acc.scatter_add(1, dst.clamp_min(0)[..., None].expand(-1, -1, e), rows)
    return acc * fit.scale[:, None]


def consolidate_dense(frames: torch.Tensor, past: torch.Tensor | None,
                      sample_basis: torch.Tensor | None, fit: DenseFit) -> torch.Tensor:
    """General consolidation B = G_pastᵀ (Ψ_u B_past) + G_framesᵀ X.

    sample_basis: ψ at the past sample points, [M, N] or [S, M, N].
    """
    coef = torch.einsum("ln,sle->sne", fit.frame_g, frames)
    if past is not None:
        samples = torch.matmul(sample_basis, past)
        coef = coef + torch.einsum("mn,sme->sne", fit.past_g, samples)
    return coef
