"""``torch.ops.infvideo.rect_consolidate``: pool + gather + segmented shrunk sum, one fused pass."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from ..reference.fit import SegmentedFit, on_device
from . import _triton


@dataclass(frozen=True)
class RectPlan:
    """CSR maps of a segmented fit: which past samples and frames land in each bin.

    past_idx [M'] / frame_idx [L'] (int32) list the positions in bin order, past_start /
    frame_start [N + 1] (int32) delimit each bin's range; scale [N] = 1 / (c_n + λ);
    frames_in_order: frame_idx is 0, 1, 2, … (each bin's frames are one run of the input);
    max_per_bin: the most past samples one bin receives.
    """

    past_idx: Tensor
    past_start: Tensor
    frame_idx: Tensor
    frame_start: Tensor
    scale: Tensor
    frames_in_order: bool = False
    max_per_bin: int = 1


def _csr(bins: Tensor | None, num_basis: int) -> tuple[Tensor, Tensor]:
    if bins is None:
        return torch.zeros(0, dtype=torch.int32), torch.zeros(num_basis + 1, dtype=torch.int32)
    keep = (bins >= 0).nonzero().flatten()
    order = keep[torch.argsort(bins[keep], stable=True)]
    counts = torch.bincount(bins[keep], minlength=num_basis)
    start = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return order.to(torch.int32), start.to(torch.int32)


@lru_cache(maxsize=256)
def rect_plan(fit: SegmentedFit) -> RectPlan:
    """The CSR form of a segmented fit (built once per fit, on the CPU)."""
    n = fit.scale.numel()
    past_idx, past_start = _csr(fit.past_bins, n)
    frame_idx, frame_start = _csr(fit.frame_bins, n)
    in_order = bool(torch.equal(frame_idx, torch.arange(frame_idx.numel(), dtype=torch.int32)))
    most = int(past_start.diff().max()) if past_start.numel() > 1 else 0
    return RectPlan(past_idx, past_start, frame_idx, frame_start, fit.scale.to(torch.float32), in_order, most)


def plan_on(fit: SegmentedFit, device: torch.device) -> RectPlan:
    return on_device(rect_plan(fit), device, torch.float32)


@torch.library.custom_op("infvideo::rect_consolidate", mutates_args=())
def _rect_consolidate(frames: Tensor, past: Optional[Tensor], sample_bins: Optional[Tensor], past_idx: Tensor,
                      past_start: Tensor, frame_idx: Tensor, frame_start: Tensor, scale: Tensor,
                      frames_in_order: bool = False, max_per_bin: int = 1,
                      cast_dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    mods = _triton.require("rect_consolidate", frames.device)
    return mods["consolidate"].rect_consolidate(frames, past, sample_bins, past_idx, past_start, frame_idx,
                                                frame_start, scale, frames_in_order, max_per_bin, cast_dtype)


@_rect_consolidate.register_fake
def _(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, frames_in_order=False,
      max_per_bin=1, cast_dtype=None):
    shape = (frames.shape[0], scale.shape[0], frames.shape[-1])
    cast = frames.new_empty(0 if cast_dtype is None else shape, dtype=cast_dtype or torch.float32)
    return frames.new_empty(shape, dtype=torch.float32), cast


def rect_consolidate(frames: Tensor, past: Tensor | None, plan: RectPlan, sample_bins: Tensor | None = None,
                     cast_dtype: torch.dtype | None = None):
    """New coefficients B [S, N, e] (float32) from a chunk, in one pass over its tokens.

    B_n = scale_n · (Σ_{past i → n} past[src_i] + Σ_{frame j → n} mean_t frames[j, t]).

    frames: [S, L, e] pooled or [S, L, *tokens, e]; past: [S, N, e] old coefficients, or None for
    a first chunk; plan: the fit's CSR maps (:func:`plan_on`); sample_bins [S or 1, M] (int32 or
    int64): the old bin src_i read by each past sample, -1 reading zeros (:func:`quantile_bins`
    gives the sticky ones). With ``cast_dtype`` (e.g. the projections' bf16) returns (B, B in that
    dtype), written by the same pass.
    """
    if frames.dim() == 3:
        frames = frames.unsqueeze(2)
    elif frames.dim() > 4:
        frames = frames.flatten(2, -2)
    if past is not None:
        if sample_bins is None:
            raise ValueError("rect_consolidate: sample_bins is required with past")
        past = past.to(torch.float32).contiguous()
        sample_bins = sample_bins.reshape(-1, sample_bins.shape[-1]).contiguous()
    extra = None if cast_dtype in (None, torch.float32) else cast_dtype
    args = (frames, past, sample_bins, plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start,
            plan.scale, plan.frames_in_order, plan.max_per_bin, extra)
    if _triton.direct_call_ok(frames):
        coef, cast = _triton.require("rect_consolidate", frames.device)["consolidate"].rect_consolidate(*args)
    else:
        coef, cast = torch.ops.infvideo.rect_consolidate(*args)
    if cast_dtype is None:
        return coef
    return coef, (coef if extra is None else cast)
