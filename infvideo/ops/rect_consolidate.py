"""``torch.ops.infvideo.rect_consolidate``: pool + gather + segmented shrunk sum, one fused pass."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from ..reference.fit import SegmentedFit, on_device
from .. import backends
from . import _library, _validate


@dataclass(frozen=True)
class RectPlan:
    """CSR maps of a segmented fit: which past samples and frames land in each bin.

    past_idx [M'] / frame_idx [L'] (int32) list the positions in bin order, past_start /
    frame_start [N + 1] (int32) delimit each bin's range; scale [N] = 1 / (c_n + λ);
    frames_in_order: frame_idx is 0, 1, 2, … (each bin's frames are one run of the input);
    max_per_bin: the most past samples one bin receives; num_frames / num_past: the chunk length L
    and past samples M the fit was built for (-1: unknown, not checked).
    """

    past_idx: Tensor
    past_start: Tensor
    frame_idx: Tensor
    frame_start: Tensor
    scale: Tensor
    frames_in_order: bool = False
    max_per_bin: int = 1
    num_frames: int = -1
    num_past: int = -1


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
    return RectPlan(past_idx, past_start, frame_idx, frame_start, fit.scale.to(torch.float32), in_order, most,
                    fit.frame_bins.numel(), 0 if fit.past_bins is None else fit.past_bins.numel())


def plan_on(fit: SegmentedFit, device: torch.device) -> RectPlan:
    return on_device(rect_plan(fit), device, torch.float32)


@torch.library.custom_op("infvideo::rect_consolidate", mutates_args=())
def _rect_consolidate(frames: Tensor, past: Optional[Tensor], sample_bins: Optional[Tensor], past_idx: Tensor,
                      past_start: Tensor, frame_idx: Tensor, frame_start: Tensor, scale: Tensor,
                      frames_in_order: bool = False, max_per_bin: int = 1,
                      cast_dtype: Optional[torch.dtype] = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    return _library.no_default_kernel()


@_rect_consolidate.register_fake
def _(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, frames_in_order=False,
      max_per_bin=1, cast_dtype=None, backend="auto"):
    shape = (frames.shape[0], scale.shape[0], frames.shape[-1])
    cast = frames.new_empty(0 if cast_dtype is None else shape, dtype=cast_dtype or torch.float32)
    return frames.new_empty(shape, dtype=torch.float32), cast


def _triton_kernel(*args, after_sampler: bool = False):
    return backends.triton_kernels()["consolidate"].rect_consolidate(*args, after_sampler=after_sampler)


_library.select_kernels("rect_consolidate", _triton_kernel)


_BACKWARD_OP = "infvideo::rect_consolidate_backward"


# The backward: B is linear in the pooled frames and the sampled old rows, so its gradient is the
# same CSR walk in reverse: each bin's scaled gradient row g_n = scale_n · ∂L/∂B_n is written to
# its frames (every token of frame j gets g_n / T) and added into the old rows its past samples read.
def rect_consolidate_backward_torch(grad: Tensor, sample_bins: Tensor | None, past_idx: Tensor, past_start: Tensor,
                                    frame_idx: Tensor, frame_start: Tensor, scale: Tensor, num_frames: int,
                                    tokens: int, frames_dtype: torch.dtype, with_past: bool) -> tuple[Tensor, Tensor]:
    """``infvideo::rect_consolidate_backward`` in plain torch, on any device: the gradient of each
    frame's tokens, one row per frame [S, L, e] in ``frames_dtype`` (g_n / T for frame j in bin n,
    g_n = scale_n · grad_n; zeros for frames in no bin), and of the old coefficients [S, N, e]
    float32 (Σ of g_n over the samples that read each old row; an empty tensor without
    ``with_past``). The op's kernel on the CUDA key (csrc has no CUDA backward yet).
    """
    _validate.tensor(_BACKWARD_OP, "grad", grad, (3,), "[S, N, e]", dtypes=None)
    _validate.match(_BACKWARD_OP, "grad", grad.shape[1], scale.shape[0], "bins (dim 1)", "scale")
    _validate.positive_int(_BACKWARD_OP, "num_frames", num_frames)
    _validate.positive_int(_BACKWARD_OP, "tokens", tokens)
    if with_past and sample_bins is None:
        raise ValueError(f"{_BACKWARD_OP}: sample_bins is required with with_past")
    streams, bins, width = grad.shape
    g = grad.float() * scale.float()[:, None]
    slots = torch.arange(bins, device=grad.device)
    frame_bin = torch.repeat_interleave(slots, frame_start.diff(), output_size=frame_idx.numel())
    grad_frames = g.new_zeros(streams, num_frames, width)
    grad_frames[:, frame_idx.long()] = g[:, frame_bin] / tokens
    if not with_past:
        return grad_frames.to(frames_dtype), g.new_empty(0)
    past_bin = torch.repeat_interleave(slots, past_start.diff(), output_size=past_idx.numel())
    src = sample_bins.reshape(-1, sample_bins.shape[-1]).expand(streams, -1)[:, past_idx.long()].long()
    rows = g[:, past_bin] * (src >= 0)[..., None]
    flat = src.clamp_min(0) + torch.arange(streams, device=grad.device)[:, None] * bins
    grad_past = g.new_zeros(streams * bins, width).index_add_(0, flat.reshape(-1), rows.reshape(-1, width))
    return grad_frames.to(frames_dtype), grad_past.view(streams, bins, width)


@torch.library.custom_op("infvideo::rect_consolidate_backward", mutates_args=())
def _rect_consolidate_backward(grad: Tensor, sample_bins: Optional[Tensor], past_idx: Tensor, past_start: Tensor,
                               frame_idx: Tensor, frame_start: Tensor, scale: Tensor, num_frames: int, tokens: int,
                               frames_dtype: torch.dtype, with_past: bool, backend: str = "auto"
                               ) -> tuple[Tensor, Tensor]:
    return rect_consolidate_backward_torch(grad, sample_bins, past_idx, past_start, frame_idx, frame_start, scale,
                                           num_frames, tokens, frames_dtype, with_past)


@_rect_consolidate_backward.register_fake
def _(grad, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, num_frames, tokens, frames_dtype,
      with_past, backend="auto"):
    streams, _, width = grad.shape
    return (grad.new_empty(streams, num_frames, width, dtype=frames_dtype),
            grad.new_empty(grad.shape if with_past else (0,), dtype=torch.float32))


def _triton_backward(*args):
    return backends.triton_kernels()["consolidate"].rect_consolidate_backward(*args)


_library.select_kernels("rect_consolidate_backward", _triton_backward)


def _setup_context(ctx, inputs, output):
    frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale = inputs[:8]
    ctx.save_for_backward(sample_bins, past_idx, past_start, frame_idx, frame_start, scale)
    ctx.frames_shape, ctx.frames_dtype = frames.shape, frames.dtype
    ctx.past_dtype = None if past is None else past.dtype
    ctx.backend = inputs[-1]


def _backward(ctx, grad_coef, grad_cast):
    sample_bins, past_idx, past_start, frame_idx, frame_start, scale = ctx.saved_tensors
    shape = ctx.frames_shape
    grad = grad_coef
    if grad_cast is not None and grad_cast.numel():
        grad = grad_cast.float() if grad is None else grad + grad_cast.float()
    nothing = (None,) * 10
    if grad is None:
        return None, None, *nothing
    need_frames, need_past = ctx.needs_input_grad[:2]
    with_past = need_past and ctx.past_dtype is not None
    tokens = math.prod(shape[2:-1])
    grad_frames, grad_past = _library.launch(
        "rect_consolidate_backward", _triton_backward,
        (grad.contiguous(), sample_bins if with_past else None, past_idx, past_start, frame_idx, frame_start, scale,
         shape[1], tokens, ctx.frames_dtype, with_past), ctx.backend)
    # Every token of a frame has the same gradient: a broadcast view over the token dimensions.
    grad_frames = grad_frames.view(shape[0], shape[1], *(1,) * (len(shape) - 3), shape[-1]).expand(shape)
    return (grad_frames if need_frames else None, grad_past.to(ctx.past_dtype) if with_past else None, *nothing)


# ∂B/∂frames and ∂B/∂past only: sample_bins and the plan (CSR maps, scale) are constants of the
# configuration and the sampler, not differentiable.
_library.register_autograd("rect_consolidate", _triton_kernel, _backward, _setup_context)


def rect_consolidate(frames: Tensor, past: Tensor | None, plan: RectPlan, sample_bins: Tensor | None = None,
                     cast_dtype: torch.dtype | None = None, backend: str = "auto"):
    """New coefficients B [S, N, e] (float32) from a chunk, in one pass over its tokens.

    B_n = scale_n · (Σ_{past i → n} past[src_i] + Σ_{frame j → n} mean_t frames[j, t]).

    frames: [S, L, e] pooled or [S, L, *tokens, e]; past: [S, N, e] old coefficients, or None for
    a first chunk; plan: the fit's CSR maps (:func:`plan_on`); sample_bins [S or 1, M] (int32 or
    int64): the old bin src_i read by each past sample, -1 reading zeros (:func:`quantile_bins`
    gives the sticky ones). With ``cast_dtype`` (e.g. the projections' bf16) returns (B, B in that
    dtype), written by the same pass.

    frames and past may have any float dtype and any strides (an expanded, stride-0 ``past`` or
    frames included: they are only read); frames, past, sample_bins and the plan share one device.
    The values of sample_bins must lie in [-1, N): not checked (that would read the device), except
    by the CPU kernel, which reads them anyway. ``backend``: ``"triton"``, ``"cpu"`` / ``"cuda"``
    (the csrc kernels) or ``"auto"`` (``infvideo.backends``).

    Differentiable with respect to frames and past (both outputs' gradients flow back): the
    backward, ``infvideo::rect_consolidate_backward``, walks the same CSR maps in reverse (each
    token of frame j receives scale_n · ∂L/∂B_n / T; each past sample adds its bin's scaled
    gradient into the old row it read), on the kernel ``backend`` picks. sample_bins and the plan
    are not differentiable. Triton sums the past's gradient with atomic adds, so its last bits may
    vary between runs on a GPU (a memory step never asks for it: its past is detached).
    """
    _check(frames, past, plan, sample_bins, cast_dtype)
    return rect_consolidate_unchecked(frames, past, plan, sample_bins, cast_dtype, backend)


def rect_consolidate_unchecked(frames: Tensor, past: Tensor | None, plan: RectPlan, sample_bins: Tensor | None = None,
                               cast_dtype: torch.dtype | None = None, backend: str = "auto",
                               after_sampler: bool = False):
    """:func:`rect_consolidate` without the input checks, for callers whose inputs are checked
    (``fused_step``: LongTermMemory's inputs and the step's own constants). ``after_sampler``: the
    caller's last launch was the Triton sampler that wrote ``sample_bins`` (its direct launch:
    ``_library.direct_triton``), so a direct launch here may read the frames while it runs."""
    given = frames.data_ptr()
    if frames.dim() == 3:
        frames = frames.unsqueeze(2)
    elif frames.dim() > 4:
        frames = frames.flatten(2, -2)
    # A copy of the frames made here would be a launch after the sampler's, written while read.
    after_sampler = after_sampler and frames.data_ptr() == given
    if past is not None:
        past = _library.cast(past, torch.float32).contiguous()
        if sample_bins.dim() != 2:
            sample_bins = sample_bins.reshape(-1, sample_bins.shape[-1])
        sample_bins = sample_bins.contiguous()
    # The kernel writes the rounded 16-bit copy itself; float32 is the output, and a wider type
    # (float64 projections) is a plain cast: the kernel's rounding store only narrows.
    extra = cast_dtype if cast_dtype in (torch.float16, torch.bfloat16) else None
    args = (frames, past, sample_bins, plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale,
            plan.frames_in_order, plan.max_per_bin, extra)
    if after_sampler and _library.direct_triton(frames, backend) and not _library.records_grad(frames, past):
        coef, cast = _triton_kernel(*args, after_sampler=True)
    else:
        coef, cast = _library.launch("rect_consolidate", _triton_kernel, args, backend, frames, past)
    if cast_dtype is None:
        return coef
    return coef, (coef.to(cast_dtype) if extra is None else cast)


_OP = "infvideo.ops.rect_consolidate"


def _check(frames, past, plan, sample_bins, cast_dtype) -> None:
    frames = _validate.tensor(_OP, "frames", frames, (3, 4, 5), "[S, L, e], [S, L, T, e] or [S, L, h, w, e]",
                              dtypes=None)
    if not isinstance(plan, RectPlan):
        raise TypeError(f"{_OP}: plan must be a RectPlan (infvideo.ops.plan_on), got {type(plan).__name__}")
    device = frames.device
    if plan.scale.device != device:
        raise ValueError(f"{_OP}: plan is on {plan.scale.device}, but frames are on {device} (use plan_on)")
    streams, width, bins = frames.shape[0], frames.shape[-1], plan.scale.shape[0]
    if plan.num_frames >= 0:
        _validate.match(_OP, "frames", frames.shape[1], plan.num_frames, "frames (dim 1)", "plan")
    if past is not None:
        _validate.tensor(_OP, "past", past, (3,), "[S, N, e]", dtypes=None, device=device, device_of="frames")
        if past.shape != (streams, bins, width):
            raise ValueError(f"{_OP}: past must have shape [S, N, e] = {(streams, bins, width)} (frames' S and e, "
                             f"the plan's N), got {tuple(past.shape)}")
        if sample_bins is None:
            raise ValueError(f"{_OP}: sample_bins is required with past")
        _validate.tensor(_OP, "sample_bins", sample_bins, (1, 2), "[M] or [S or 1, M]", _validate.INDEX_DTYPES,
                         device=device, device_of="frames")
        if sample_bins.dim() == 2 and sample_bins.shape[0] not in (1, streams):
            raise ValueError(f"{_OP}: sample_bins must have 1 or S = {streams} rows, got {sample_bins.shape[0]}")
        if plan.num_past >= 0:
            _validate.match(_OP, "sample_bins", sample_bins.shape[-1], plan.num_past, "samples (last dim)", "plan")
    if cast_dtype is not None and not (isinstance(cast_dtype, torch.dtype) and cast_dtype.is_floating_point):
        raise TypeError(f"{_OP}: cast_dtype must be None or a floating torch.dtype, got {cast_dtype!r}")
