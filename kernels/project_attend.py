"""K|V = B Wᵀ + b and the slot attention on it in one launch, for few streams.

At one stream the step's K|V product (cuBLAS) and its slot attention are a few microseconds of
launch and latency each, one after the other; cuBLAS cannot start as a programmatic dependent
either (bench/README.md, "Issue 22"). Here one grid does both, its two phases ordered through
counters in global memory instead of a kernel boundary. Each program first takes a ticket
(counter 2), which gives it its role, so that roles follow the order in which programs start
(CUDA promises no order among a grid's programs):

1. tickets 0 … TILES − 1 each compute one [TILE_R, TILE_C] tile of K|V [S·N, 2D] from the
   coefficients in the projections' dtype and count themselves done on counter 0; with a commit
   buffer, each then copies a share of the float32 coefficients into it;
2. the later tickets, once counter 0 holds every tile, run the slot attention
   (``attention.attend_query_block``) on that K|V: context and sticky mass.

A program that waits has started after every tile program, so what it waits for never needs a
place it holds, even when the grid is larger than one wave. The counters are put back to zero
for the next launch on them: each attending program counts itself on counter 1 once it has seen
counter 0 complete, and the last of them zeroes all three. Every program touches the counters
only after ``gdc_wait``, so a launch overlaps the one before it on its stream only before that
point; launches that share counters on different streams must not run at once.

Under the CPU interpreter, whose programs run one after another, a waiting program would wait for
ever: there each phase is a launch of its own (``BARRIERS`` off) and the counters are not used.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, compiled_on, gdc_launch_dependents, gdc_wait, next_power_of_2, \
    programmatic_options
from .attention import QUERY_GROUP, attend_query_block, mass_output


@triton.jit
def _count_done(counter_ptr):
    # Every thread's stores come before the one release that counts the program.
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _wait_until(counter_ptr, target):
    # Plain polling reads while waiting, then one acquire, so that the reads after it see what
    # the counted programs stored.
    seen = tl.load(counter_ptr, volatile=True)
    while seen < target:
        seen = tl.load(counter_ptr, volatile=True)
    tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _project_attend_kernel(
    coef_ptr, cast_ptr, w_ptr, bias_ptr, kv_ptr, q_ptr, logw_ptr, ctx_ptr, mass_ptr, commit_ptr, counters_ptr,
    ROWS, E, D2, N, Q, HEAD_DIM, null_logw, sm_scale,
    stride_qs, stride_qq, stride_cs, stride_cq, stride_ms, stride_mg,
    TILES, ATTEND_PROGRAMS,
    PROJECT: tl.constexpr, ATTEND: tl.constexpr, BARRIERS: tl.constexpr, COMMIT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LOGW: tl.constexpr, HAS_NULL: tl.constexpr,
    TILE_R: tl.constexpr, TILE_C: tl.constexpr, TILE_K: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ONE_TILE: tl.constexpr, PREFETCH_V: tl.constexpr, GROUP: tl.constexpr,
    COPY_BLOCK: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    # Tickets 0 … TILES − 1 take a tile each, the ATTEND_PROGRAMS after them attend.
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py)
        gdc_wait()
        gdc_launch_dependents()
    if BARRIERS:
        ticket = tl.atomic_add(counters_ptr + 2, 1, sem="relaxed", scope="gpu")
    else:
        ticket = tl.program_id(0)

    if PROJECT:
        if ticket < TILES:
            tiles_c = tl.cdiv(D2, TILE_C)
            offs_r = (ticket // tiles_c) * TILE_R + tl.arange(0, TILE_R)
            offs_c = (ticket % tiles_c) * TILE_C + tl.arange(0, TILE_C)
            mask_r = offs_r < ROWS
            mask_c = offs_c < D2
            offs_k = tl.arange(0, TILE_K)
            acc = tl.zeros([TILE_R, TILE_C], dtype=tl.float32)
            for k0 in range(0, E, TILE_K):
                mask_k = k0 + offs_k < E
                a = tl.load(cast_ptr + offs_r[:, None].to(tl.int64) * E + (k0 + offs_k)[None, :],
                            mask=mask_r[:, None] & mask_k[None, :], other=0.0)
                w = tl.load(w_ptr + offs_c[:, None] * E + (k0 + offs_k)[None, :],
                            mask=mask_c[:, None] & mask_k[None, :], other=0.0)
                if IEEE:  # the CPU interpreter, whose 16-bit dots are wrong
                    acc += tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
                else:
                    acc += tl.dot(a, tl.trans(w))
            if HAS_BIAS:
                acc += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
            tl.store(kv_ptr + offs_r[:, None].to(tl.int64) * D2 + offs_c[None, :],
                     acc.to(kv_ptr.dtype.element_ty), mask=mask_r[:, None] & mask_c[None, :])
            if BARRIERS:
                _count_done(counters_ptr)
            if COMMIT:
                # Nothing reads the old coefficients any more: the memory's buffer takes the new ones.
                total = ROWS * E
                share = tl.cdiv(tl.cdiv(total, TILES), COPY_BLOCK) * COPY_BLOCK
                first = ticket * share
                for c0 in range(first, tl.minimum(first + share, total), COPY_BLOCK):
                    offs = c0 + tl.arange(0, COPY_BLOCK)
                    tl.store(commit_ptr + offs, tl.load(coef_ptr + offs, mask=offs < total), mask=offs < total)

    if ATTEND:
        unit = ticket - TILES
        if unit >= 0:
            if BARRIERS:
                _wait_until(counters_ptr, TILES)
                # Every attending program counts itself past the wait; the last one (its count's
                # old value) zeroes the counters for the next launch, once no one waits on them.
                passed = tl.atomic_add(counters_ptr + 1, 1, sem="relaxed", scope="gpu")
            q_blocks = tl.cdiv(Q, GROUP)
            heads = D2 // 2 // HEAD_DIM
            s = (unit // (heads * q_blocks)).to(tl.int64)
            h = (unit // q_blocks) % heads
            attend_query_block(q_ptr, kv_ptr, kv_ptr + D2 // 2, logw_ptr, ctx_ptr, mass_ptr, s, h,
                               unit % q_blocks, Q, N, HEAD_DIM, null_logw, sm_scale,
                               stride_qs, stride_qq, N * D2, D2, N * D2, D2, stride_cs, stride_cq, stride_ms, stride_mg,
                               HAS_LOGW, HAS_NULL, IEEE, False, "ieee", ONE_TILE, GROUP, 1, BLOCK_N, BLOCK_D,
                               PREFETCH_V)
            if BARRIERS:
                if passed == ATTEND_PROGRAMS - 1:  # every ticket is taken, every wait is over
                    tl.atomic_xchg(counters_ptr, 0, sem="relaxed", scope="gpu")
                    tl.atomic_xchg(counters_ptr + 1, 0, sem="relaxed", scope="gpu")
                    tl.atomic_xchg(counters_ptr + 2, 0, sem="relaxed", scope="gpu")


_launch_project_attend = CachedLaunch(_project_attend_kernel)

# The K|V product's (rows, columns, inner) tile, the grid's warps and pipeline stages, and the
# elements per step of the coefficients' copy.
CONFIG = {"tile": (64, 64, 64), "num_warps": 4, "num_stages": 2, "copy_block": 1024}


@on_input_device
def project_attend(coef: torch.Tensor, cast: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   query: torch.Tensor, num_heads: int, slot_log_weight: torch.Tensor | None,
                   null_log_weight: float | None, mass_out: torch.Tensor | None = None,
                   coef_out: torch.Tensor | None = None, counters: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """K|V = cast Wᵀ + b and the slot attention on it, one launch; inputs are checked by the caller.

    cast [S, N, e] contiguous: the coefficients in the projections' dtype (float16 or bfloat16),
    weight [2D, e] contiguous in that dtype ([W_k; W_v]), bias [2D] or None; query [S, Q, D]
    (last stride 1); slot_log_weight [N] float32 or None, null_log_weight: as for
    ``attention.slot_attention``. Returns (context [S, Q, D] in the query's dtype, mass
    [S, H·⌈Q/16⌉, N] float32), the mass written into ``mass_out`` where that is a contiguous
    float32 tensor of that shape. ``coef_out``: a contiguous float32 [S, N, e] buffer (the memory's
    coefficients) into which the launch copies ``coef`` [S, N, e] (contiguous float32 too) beside
    the attention, or None. ``counters``: int32 [3] zeros that the launch leaves zero (a new tensor
    each call when None); launches on different streams must not share them at once.
    """
    s, n, e = cast.shape
    d2 = weight.shape[0]
    _, q_len, model = query.shape
    head_dim = model // num_heads
    device = query.device
    groups = num_heads * cdiv(q_len, QUERY_GROUP)
    kv = torch.empty(s * n, d2, device=device, dtype=weight.dtype)
    ctx = torch.empty(s, q_len, model, device=device, dtype=query.dtype)
    mass = mass_output(mass_out, (s, groups, n), device)
    if counters is None:
        counters = torch.zeros(3, device=device, dtype=torch.int32)

    tile_r, tile_c, tile_k = CONFIG["tile"]
    warps = CONFIG["num_warps"]
    tiles = cdiv(s * n, tile_r) * cdiv(d2, tile_c)
    attend_programs = s * groups
    # As in the slot attention: a score tile of at most 1024 float32 values per warp.
    block_n = max(16, min(next_power_of_2(n), 1024 * warps // QUERY_GROUP))
    interpreted = not compiled_on(device)
    args = (coef, cast, weight, bias if bias is not None else weight, kv, query,
            slot_log_weight if slot_log_weight is not None else mass, ctx, mass,
            coef if coef_out is None else coef_out, counters,
            s * n, e, d2, n, q_len, head_dim, 0.0 if null_log_weight is None else float(null_log_weight),
            1.0 / math.sqrt(head_dim), query.stride(0), query.stride(1), ctx.stride(0), ctx.stride(1),
            mass.stride(0), mass.stride(1), tiles, attend_programs)
    meta = dict(COMMIT=coef_out is not None, HAS_BIAS=bias is not None,
                HAS_LOGW=slot_log_weight is not None, HAS_NULL=null_log_weight is not None,
                TILE_R=tile_r, TILE_C=tile_c, TILE_K=tile_k, BLOCK_N=block_n,
                BLOCK_D=max(16, next_power_of_2(head_dim)), ONE_TILE=n <= block_n,
                PREFETCH_V=n <= block_n and not interpreted, GROUP=QUERY_GROUP, COPY_BLOCK=CONFIG["copy_block"],
                IEEE=interpreted,
                num_warps=warps, num_stages=CONFIG["num_stages"])
    grid = (tiles + attend_programs,)
    if interpreted:  # each phase a launch of its own: the interpreter runs programs one after another
        for phase in ("PROJECT", "ATTEND"):
            _launch_project_attend(grid, *args, PROJECT=phase == "PROJECT", ATTEND=phase == "ATTEND",
                                   BARRIERS=False, PDL=False, **meta)
    else:
        _launch_project_attend(grid, *args, PROJECT=True, ATTEND=True, BARRIERS=True, **programmatic_options(device),
                               **meta)
    return ctx, mass
