"""One memory step on the fused ops: consolidate (one pass over the tokens), K/V projections on
cuBLAS, attention with the sticky statistic in the same pass."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import nn

from .. import backends
from .._lru import LRUCache
from ..config import MemoryConfig
from ..reference import sticky
from ..reference.attention import Quadrature, SlotWeights, attention_constants
from ..reference.consolidate import consolidate_dense
from ..reference.fit import SegmentedFit, consolidation_fit, derived, first_fit, on_device
from ..reference.pooling import pool_frames
from ..reference.step import (attend, consolidate_chunk, past_samples, uniform_sample_basis, upstream_statistic,
                              where_filled)
from . import _library, _validate, factored_attention
from .gaussian_consolidation import dense_fit_products, gaussian_consolidation
from .quadrature_attention import (QuadratureConstants, device_constants, quadrature_attention_unchecked,
                                   quadrature_host_constants)
from .quantile_bins import quantile_bins_unchecked
from .rect_consolidate import RectPlan, rect_consolidate_unchecked, rect_plan
from .slot_attention import slot_attention_unchecked


@dataclass(frozen=True)
class StepConstants:
    """Everything a fused step of one configuration and chunk length reads besides its inputs.

    first_plan / later_plan: CSR maps of the rectangular fits (None: the step falls back to the
    reference consolidation, e.g. Gaussian basis); uniform_bins [M]: the old bin of each past
    sample when sampling is uniform; slot_log_weight [N] / null_log_weight (a Python float, so no
    step reads it back from the device); quad: the Gaussian basis's quadrature constants.
    """

    first_plan: RectPlan | None
    later_plan: RectPlan | None
    uniform_bins: torch.Tensor | None
    uniform_in_bins: bool
    slot_log_weight: torch.Tensor | None
    null_log_weight: float | None
    quad: QuadratureConstants | None


@lru_cache(maxsize=256)
def _host_constants(cfg: MemoryConfig, length: int) -> StepConstants:
    first, later = first_fit(cfg, length), consolidation_fit(cfg, length)
    segmented = isinstance(first, SegmentedFit) and isinstance(later, SegmentedFit)
    uniform = uniform_sample_basis(cfg) if segmented and not cfg.sticky else None
    const = attention_constants(cfg)
    slot = const if isinstance(const, SlotWeights) else None
    return StepConstants(
        rect_plan(first) if segmented else None, rect_plan(later) if segmented else None,
        None if uniform is None else uniform.bins, True if uniform is None else uniform.in_bins,
        None if slot is None else slot.log_weight,
        None if slot is None or slot.null_log_weight is None else float(slot.null_log_weight),
        quadrature_host_constants(cfg) if isinstance(const, Quadrature) else None)


_step_constants = LRUCache(1024)


def _step_constants_on(host: StepConstants, device: torch.device) -> StepConstants:
    moved = on_device(host, device, torch.float32)
    return moved if host.quad is None else replace(moved, quad=device_constants(host.quad, device))


def step_constants(cfg: MemoryConfig, length: int, device: torch.device) -> StepConstants:
    """The step's constants on ``device`` (float32; the quadrature's basis and nodes float64:
    ``device_constants``), built once per configuration, length and device."""
    return derived(_step_constants, _host_constants(cfg, length), (device,), _step_constants_on)


def _fused_consolidation(cfg: MemoryConfig, consts: StepConstants, frames, past, filled, stats, generator,
                         cast_dtype, backend: str):
    """(B fp32, B in cast_dtype) from the fused kernels of ``backend``, or None where they do not apply."""
    if consts.first_plan is None or (past is not None and not cfg.sticky and consts.uniform_bins is None):
        return None
    start = None  # a new video's coefficients, for the streams that need them
    if past is None or filled is not None:
        start = rect_consolidate_unchecked(frames, None, consts.first_plan, cast_dtype=cast_dtype, backend=backend)
        if past is None:
            return start
    quantile = cfg.sticky and cfg.sampling == "quantile"
    if not cfg.sticky:
        bins = consts.uniform_bins
    elif quantile:
        bins = quantile_bins_unchecked(stats, cfg.past_samples, backend)
    else:
        bins = past_samples(cfg, stats, torch.float32, frames.device, generator).bins
        if bins is None:
            return None
    # The sampler's launch is the last one before the consolidation's when both launch directly.
    after_sampler = quantile and _library.direct_triton(stats, backend)
    later = rect_consolidate_unchecked(frames, past, consts.later_plan, bins, cast_dtype=cast_dtype, backend=backend,
                                       after_sampler=after_sampler)
    return where_filled(filled, later, start)


_fused_weights: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def _stacked(proj_key: nn.Linear, proj_value: nn.Linear, parts: str | None = None):
    """[W_k; W_v] and [b_k; b_v], rebuilt only when a parameter changes (its version counter);
    with ``parts`` the weight as the parts a product reads: "bf16", ``products.split_weight``'s;
    "tf32", ``products.tf32_parts``'."""
    params = [proj_key.weight, proj_value.weight, proj_key.bias, proj_value.bias]
    key = (id(proj_value), parts, *(None if p is None else (p.data_ptr(), p._version) for p in params))
    hit = _fused_weights.get(proj_key)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            weight = torch.cat([proj_key.weight, proj_value.weight])
            if parts is not None:
                products = backends.triton_kernels()["products"]
                weight = (products.split_weight if parts == "bf16" else products.tf32_parts)(weight)
            bias = None
            if proj_key.bias is not None and proj_value.bias is not None:
                bias = torch.cat([proj_key.bias, proj_value.bias])
        hit = (key, weight, bias)
        _fused_weights[proj_key] = hit
    return hit[1], hit[2]


def _project_pair(proj_key, proj_value, coef: torch.Tensor, grad: bool = False,
                  backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """K = proj_key(B), V = proj_value(B): one product over stacked weights for two plain Linears.
    ``grad``: autograd records the step, so the weights are stacked afresh (the cache holds
    detached copies, through which no gradient reaches the layers). Float32 weights on the
    ``"triton"`` backend take tensor-core products outside autograd (``FLOAT32_PROJECTION``)."""
    # The stacked-weight cache keys on storage pointers and version counters, which a compiled
    # graph cannot guard on: there the two products stay separate.
    if (not torch.compiler.is_compiling() and type(proj_key) is nn.Linear and type(proj_value) is nn.Linear
            and proj_key.weight.dtype == proj_value.weight.dtype
            and (proj_key.bias is None) == (proj_value.bias is None)):
        products = backends.triton_kernels()["products"] if backend == "triton" else None
        tensor_cores = (not grad and products is not None and proj_key.weight.dtype == torch.float32
                        and _library.eager_cuda(coef))
        if tensor_cores and FLOAT32_PROJECTION == "split-bf16":
            weight, bias = _stacked(proj_key, proj_value, parts="bf16")
            both = products.split_linear(coef, weight, bias)
        # Three TF32 products need TF32 tensor cores: an older GPU keeps cuBLAS's float32 product.
        elif tensor_cores and FLOAT32_PROJECTION == "tf32x3" and products.split_precision(coef.device) == "tf32":
            weight, bias = _stacked(proj_key, proj_value, parts="tf32")
            both = products.linear(coef, weight, bias)
        else:
            if grad:
                weight = torch.cat([proj_key.weight, proj_value.weight])
                bias = None if proj_key.bias is None else torch.cat([proj_key.bias, proj_value.bias])
            else:
                weight, bias = _stacked(proj_key, proj_value)
            both = torch.nn.functional.linear(_library.cast(coef, weight.dtype), weight, bias)
        return both.split([proj_key.out_features, proj_value.out_features], dim=-1)
    weight = getattr(proj_key, "weight", None)
    if weight is not None:
        coef = _library.cast(coef, weight.dtype)
    return proj_key(coef), proj_value(coef)


# The Gaussian basis's attention on the fused quadrature op (ops.quadrature_attention: banded
# tile products, no [S, H, Q, T] tensor) rather than the reference's two products over all points
# and basis functions; off only to compare the two (bench/bench_quadrature_gpu.py).
QUADRATURE_KERNEL = True

# The GPU step's float32 K/V projection (eager, outside autograd, backend "triton"), where cuBLAS's
# float32 product runs without tensor cores: "tf32x3", one three-TF32 Triton product (products.linear
# on the stacked weight's cached TF32 parts, as accurate as float32); "split-bf16", one cuBLAS
# product of bfloat16 parts (products.split_linear: about 20 times the float32 error, which a sharp
# attention carries past 1e-5 of float64: bench/split_products_accuracy.py); "cublas", cuBLAS in
# float32. bench/bench_projections_gpu.py times all three in the step (bench/README.md, "Many
# streams ... issue 22, second session").
FLOAT32_PROJECTION = "tf32x3"

# The step with float32 projections on the "triton" backend takes the folded attention where it
# needs fewer multiply-adds (factored_attention.applies) and its streams fill the GPU
# (kernels.factored_attention.fills_device): no K and V, split TF32 tensor-core products. On an
# H200 it beat the three-TF32 K/V product and the slot attention at 64 streams (bench/README.md,
# "Issue 22, seventh session"). Off to compare.
FACTORED_ON_GPU = True


def _folds_projections(cfg: MemoryConfig, consts: StepConstants, frames, query, proj_key, proj_value,
                       num_heads: int, backend: str) -> bool:
    """Whether the step's attention takes the projections folded into the queries."""
    if cfg.basis != "rectangular" or cfg.sampling == "upstream":
        return False
    if backend == "triton":
        if not FACTORED_ON_GPU or any(getattr(p, "weight", None) is None or p.weight.dtype != torch.float32
                                      for p in (proj_key, proj_value)):
            return False
        # Under torch.compile the folded attention is taken at any stream count: the check reads
        # the device's properties through cached host functions that a trace should not enter.
        if query.is_cuda and not torch.compiler.is_compiling() and not backends.triton_kernels()[
                "factored_attention"].fills_device(query.shape[0], num_heads * query.shape[1], query.device):
            return False
    elif backend != "cpu":
        return False
    return factored_attention.applies(proj_key, proj_value, cfg.num_basis, frames.shape[-1], query, num_heads,
                                      consts.null_log_weight)


def fused_step(cfg: MemoryConfig, consts: StepConstants, frames: torch.Tensor, query: torch.Tensor, proj_key,
               proj_value, num_heads: int, past: torch.Tensor | None, filled: torch.Tensor | None,
               stats: torch.Tensor | None, generator: torch.Generator | None = None, keep_stats: bool = True,
               backend: str = "triton", on_coefficients=None, mass_out: torch.Tensor | None = None):
    """(context [S, Q, D], coefficients [S, N, e] fp32, sticky statistic [S, G, K] or None).

    consts: :func:`step_constants` for this chunk length and device; frames are the raw chunk
    ([S, L, e] or tokens); past / filled / stats as for ``reference.consolidate_chunk``; inputs are
    checked by LongTermMemory (here only what a wrong call would turn into an out-of-bounds read:
    the configuration, its constants against the chunk, the stream count and device of frames,
    query and past; the ops inside run unchecked). With rectangular bins and quantile or uniform
    sampling the step makes no host synchronisation and traces whole under torch.compile.
    Differentiable within the step with respect to frames, query and the projections' parameters
    (and past): every op it calls has its backward registered (``torch.library.register_autograd``);
    an eager step records the same backward around the Triton kernels without the dispatcher
    (``_library.launch``), a traced or profiled one through ``torch.ops.infvideo.*``.
    ``backend``: the ops'
    kernels, ``"triton"``, ``"cuda"`` or ``"cpu"`` (csrc); on the CPU the slot attention takes the
    projections folded into the queries (``factored_attention``) where that needs fewer
    multiply-adds, and with ``"triton"`` too for float32 projections when ``FACTORED_ON_GPU`` (on)
    and the streams fill the GPU (``kernels.factored_attention.fills_device``).
    ``on_coefficients``: called with the new coefficients before the attention, once nothing in the
    step reads the old ones (a capturing memory starts their commit there: ``infvideo.early_commit``);
    ``mass_out``: where the slot attention may write the new sticky mass when it fits (that
    memory's buffer, which nothing reads after the sampler), returned as the statistic then.
    """
    _check(cfg, consts, frames, query, past)
    weight = getattr(proj_key, "weight", None)
    grad = step_records_grad(frames, query, proj_key, proj_value)
    # The factored attention has no backward: a step that autograd records projects K and V.
    factored = not grad and _folds_projections(cfg, consts, frames, query, proj_key, proj_value, num_heads, backend)
    cast_dtype = weight.dtype if isinstance(weight, torch.Tensor) and not factored else torch.float32
    fused = _fused_consolidation(cfg, consts, frames, past, filled, stats, generator, cast_dtype, backend)
    if fused is None:
        # Dense fits on direct kernel launches: eager, outside autograd.
        kernels = backend == "triton" and not grad and _library.eager(frames)
        if kernels and cfg.basis == "gaussian":
            coef, projected = gaussian_consolidation(cfg, frames, past, filled, stats, generator, cast_dtype)
        else:
            coef = consolidate_chunk(cfg, pool_frames(frames, torch.float32), past, filled, stats, generator,
                                     dense_fit_products if kernels else consolidate_dense)
            projected = coef
    else:
        coef, projected = fused
    # The hook runs where nothing reads the old coefficients any more: after the K/V product where
    # the step makes one, whose tiles fill the GPU, so that what it starts runs beside the attention.
    if cfg.basis != "rectangular" and (consts.quad is None or not QUADRATURE_KERNEL or backend != "triton"):
        _call(on_coefficients, coef)
        context, new_stats = attend(cfg, coef, query.to(torch.float32), proj_key, proj_value, num_heads, keep_stats)
        return context.to(query.dtype), coef, new_stats
    want_mass = keep_stats and cfg.sampling != "upstream"
    if factored:
        _call(on_coefficients, coef)
        context, mass = factored_attention.factored_slot_attention(query, coef, proj_key, proj_value, num_heads,
                                                                   consts.slot_log_weight, backend)
        return context, coef, mass if want_mass else None
    keys, values = _project_pair(proj_key, proj_value, projected, grad, backend)
    _call(on_coefficients, coef)
    if consts.quad is not None:
        quad = consts.quad
        context, density = quadrature_attention_unchecked(query, keys, values, num_heads, quad.mu, quad.sigma, quad.grid,
                                                quad.log_weight, write_density=want_mass)
        new_stats = sticky.quadrature_mass(density, quad) if want_mass else None
    else:
        context, mass = slot_attention_unchecked(query, keys, values, num_heads, consts.slot_log_weight,
                                                 consts.null_log_weight, backend, mass_out if want_mass else None)
        new_stats = mass if want_mass else None
    if keep_stats and cfg.sampling == "upstream":
        d = query.shape[-1] // num_heads
        qh = query.reshape(query.shape[0], query.shape[1], num_heads, d).transpose(1, 2).to(torch.float32)
        kh = keys.reshape(keys.shape[0], keys.shape[1], num_heads, d).transpose(1, 2).to(torch.float32)
        new_stats = upstream_statistic(cfg, torch.matmul(qh, kh.transpose(-1, -2)) / d ** 0.5)
    return context, coef, new_stats


def _call(hook, coef: torch.Tensor) -> None:
    if hook is not None:
        hook(coef)


def step_records_grad(frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value) -> bool:
    """Whether autograd records a memory step: grad mode is on and frames, query or a parameter of
    the projections requires grad (the default for an nn.Module's parameters)."""
    if not torch.is_grad_enabled():  # inference: nothing to look at
        return False
    params = [p for proj in (proj_key, proj_value) if isinstance(proj, nn.Module) for p in proj.parameters()]
    return _library.records_grad(frames, query, *params)


_OP = "infvideo.ops.fused_step"


def _check(cfg, consts, frames, query, past) -> None:
    """What a wrong direct call would turn into an out-of-bounds read: the configuration and its
    constants against the chunk, and the stream count, width and device of frames, query and past.
    (LongTermMemory has checked the rest: ranks, dtypes, heads, projections.)"""
    if not isinstance(cfg, MemoryConfig):
        raise TypeError(f"{_OP}: cfg must be a MemoryConfig, got {type(cfg).__name__}")
    if not isinstance(consts, StepConstants):
        raise TypeError(f"{_OP}: consts must be StepConstants (infvideo.ops.step_constants), "
                        f"got {type(consts).__name__}")
    if not isinstance(frames, torch.Tensor) or frames.ndim < 3:
        _validate.tensor(_OP, "frames", frames, (3, 4, 5), "[S, L, e] or tokens [S, L, T, e]", dtypes=None)
    if not isinstance(query, torch.Tensor) or query.ndim != 3:
        _validate.tensor(_OP, "query", query, (3,), "[S, Q, D]", dtypes=None)
    shape, device = frames.shape, frames.device
    if query.shape[0] != shape[0] or query.device != device:
        _validate.match(_OP, "query", query.shape[0], shape[0], "streams (dim 0)", "frames")
        raise ValueError(f"{_OP}: query is on {query.device}, but frames are on {device}")
    plan = consts.first_plan
    if plan is not None and (plan.num_frames != shape[1] or plan.scale.device != device):
        _validate.match(_OP, "frames", shape[1], plan.num_frames, "frames (dim 1)",
                        "consts (step_constants was called with that length)")
        raise ValueError(f"{_OP}: consts are on {plan.scale.device}, but frames are on {device}")
    if past is not None and (past.shape != (shape[0], cfg.num_basis, shape[-1]) or past.device != device):
        want = (shape[0], cfg.num_basis, shape[-1])
        if past.shape != want:
            raise ValueError(f"{_OP}: past must have shape [S, N, e] = {want}, got {tuple(past.shape)}")
        raise ValueError(f"{_OP}: past is on {past.device}, but frames are on {device}")
