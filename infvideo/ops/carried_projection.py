"""Projections of the new coefficients, carried over from the previous step's (CPU step).

Projections are linear, and a consolidation builds each new bin from old rows and frames:
B_n = scale_n (Σ_{past i → n} B_old[src_i] + Σ_{frame j → n} x_j). So with K = B W_kᵀ + b_k,

    (B W_kᵀ)_n = scale_n Σ_{past i → n} (B_old W_kᵀ)[src_i]        for a bin that receives no frame,

and likewise for W_v: the bins filled by the past need only a segmented sum of the old
projections (the consolidation kernel, run on [B W_kᵀ | B W_vᵀ] with the fit's past maps), and
only the bins that
receive frames (about (1 − τ)·N of them) go through the projection. At N = 256, τ = 0.75,
e = D = 768 that is 64 instead of 256 rows, and the step's products drop from 189 M
multiply-adds (the projections folded into the queries, SPEC section 8) to 88 M. The keys and
values are kept beside the coefficients they were computed from, keyed by that tensor; a memory
whose coefficients were changed in place (reset of some streams, a loaded state) or whose
projections changed projects in full once. Rounding: the same sums in a different order, so the
carried keys follow fresh ones to float32 rounding (tests: 1e-5 after many steps).
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from .rect_consolidate import RectPlan
from .rect_consolidate import launch as rect_consolidate

# coefficients → (weight signature, their version then, [B W_kᵀ | B W_vᵀ] [S, N, 2D] float32)
_carried = WeakTensorKeyDictionary()


@lru_cache(maxsize=64)
def _past_only(plan: RectPlan) -> tuple[RectPlan, slice | torch.Tensor]:
    """The plan's past maps with no frames, and the bins that receive frames: a slice when they
    are one run (frames are placed in order at the end of [0, 1]), else an int64 index [N_f]."""
    starts = plan.frame_start
    no_frames = torch.zeros_like(starts)
    past = dataclasses.replace(plan, frame_idx=plan.frame_idx[:0], frame_start=no_frames, frames_in_order=False,
                               num_frames=-1)
    rows = (starts[1:] > starts[:-1]).nonzero().flatten()
    if rows.numel() == 0:  # e.g. the paper preset's one frame of a chunk of one lies at t = 1, in no bin
        return past, slice(0, 0)
    first, last = int(rows[0]), int(rows[-1])
    return past, slice(first, last + 1) if last - first + 1 == rows.numel() else rows


def _signature(weight: torch.Tensor) -> tuple:
    return weight.data_ptr(), weight._version, weight.dtype


def projected(coef: torch.Tensor, past: torch.Tensor | None, sample_bins: torch.Tensor | None, plan: RectPlan,
              weight: torch.Tensor, backend: str) -> torch.Tensor:
    """coef Wᵀ [S, N, 2D] float32 (no bias) of the new coefficients ``coef`` [S, N, e] (float32).

    ``past`` / ``sample_bins`` / ``plan``: the old coefficients, the old bin each past sample read
    and the fit's CSR maps this step consolidated with (None for a first chunk or a mix of new and
    continued streams: then every row is projected). ``weight`` [2D, e]: the stacked key and value
    weights; ``backend`` runs the consolidation kernel. Without the bias, the carried rows are a
    plain segmented sum of old rows (a sample reading zeros adds nothing, as in B).
    """
    signature = _signature(weight)
    weight = weight.to(torch.float32)
    hit = _carried.get(past) if past is not None and sample_bins is not None else None
    if hit is None or hit[0] != signature or hit[1] != past._version:
        result = torch.matmul(coef, weight.t())
    else:
        past_plan, frame_bins = _past_only(plan)
        # No frames in this plan: the "frames" argument only fixes the width and is never read.
        result = rect_consolidate(hit[2][:, :1], hit[2], past_plan, sample_bins, backend=backend)
        result[:, frame_bins] = torch.matmul(coef[:, frame_bins], weight.t())
    _carried[coef] = (signature, coef._version, result)
    return result
