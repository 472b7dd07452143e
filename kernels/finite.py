"""The memory's asynchronous finiteness check in two launches (``infvideo.finite_check``).

``raise_flags`` looks at up to five tensors in one grid (each program one block of one tensor)
and sets ``flags[i]`` to 1 where its block holds NaN or Inf, ``i`` the tensor's flag; flags only
ever rise, so one launch covers every tensor of a step and the flags of earlier steps stay. It
also writes a pinned host copy of the flags through the device's mapping of that memory: a copy
node after the kernel costs a CUDA graph's replay more than the whole check.
``select_committed`` then writes, for up to two (new, old) pairs, ``new`` where every flag is 0
and ``old`` otherwise. Inside a CUDA graph the pair costs two nodes where reductions, a stack,
``isfinite`` and ``where`` per tensor cost about ten. Without flags it copies both pairs' ``new``
in one launch: a memory that does not check commits that way inside a CUDA graph capture, where
torch's copies would take a node each. Both launch as programmatic dependents where the GPU
allows (kernels/_launch.py): each waits for the kernel before it ahead of any load.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, gdc_launch_dependents, gdc_wait, next_power_of_2, programmatic_options

BLOCK = 4096
SLOTS = 5


@triton.jit
def _flag_block(ptr, n, block, flag_ptr, host_flag_ptr, BLOCK: tl.constexpr):
    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(ptr + offs, mask=offs < n, other=0.0)
    if x.dtype != tl.float64:  # half types widen exactly, NaN and Inf included
        x = x.to(tl.float32)
    # x - x is 0 for every finite x and NaN for NaN and ±Inf.
    bad = tl.sum(((x - x) != 0).to(tl.int32), axis=0)
    if bad > 0:
        tl.store(flag_ptr, 1)
        tl.store(host_flag_ptr, 1)


@triton.jit
def _raise_flags_kernel(flags_ptr, host_flags_ptr, p0, n0, f0, b0, p1, n1, f1, b1, p2, n2, f2, b2, p3, n3, f3, b3, p4, n4, f4,
                        BLOCK: tl.constexpr, PDL: tl.constexpr):
    # b0..b3: the first block of each later tensor in the grid.
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py)
        gdc_wait()
        gdc_launch_dependents()
    pid = tl.program_id(0)
    if pid < b0:
        _flag_block(p0, n0, pid, flags_ptr + f0, host_flags_ptr + f0, BLOCK)
    elif pid < b1:
        _flag_block(p1, n1, pid - b0, flags_ptr + f1, host_flags_ptr + f1, BLOCK)
    elif pid < b2:
        _flag_block(p2, n2, pid - b1, flags_ptr + f2, host_flags_ptr + f2, BLOCK)
    elif pid < b3:
        _flag_block(p3, n3, pid - b2, flags_ptr + f3, host_flags_ptr + f3, BLOCK)
    else:
        _flag_block(p4, n4, pid - b3, flags_ptr + f4, host_flags_ptr + f4, BLOCK)


@triton.jit
def _select_block(new_ptr, old_ptr, out_ptr, n, block, keep, BLOCK: tl.constexpr):
    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if keep:
        tl.store(out_ptr + offs, tl.load(new_ptr + offs, mask=mask), mask=mask)
    else:
        tl.store(out_ptr + offs, tl.load(old_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _select_committed_kernel(flags_ptr, num_flags, FLAG_BLOCK: tl.constexpr, new0, old0, out0, n0, b0, new1, old1, out1, n1,
                             HAS_FLAGS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py)
        gdc_wait()
        gdc_launch_dependents()
    if HAS_FLAGS:
        offs = tl.arange(0, FLAG_BLOCK)
        flags = tl.load(flags_ptr + offs, mask=offs < num_flags, other=0)
        keep = tl.max(flags, axis=0) == 0
    else:
        keep = True
    pid = tl.program_id(0)
    if pid < b0:
        _select_block(new0, old0, out0, n0, pid, keep, BLOCK)
    else:
        _select_block(new1, old1, out1, n1, pid - b0, keep, BLOCK)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_contiguous() else tensor.contiguous()


_launch_raise_flags = CachedLaunch(_raise_flags_kernel)

_launch_select_committed = CachedLaunch(_select_committed_kernel)

@on_input_device
def raise_flags(flags: torch.Tensor, named: list[tuple[int, torch.Tensor]],
                host_flags: torch.Tensor | None = None) -> None:
    """Sets ``flags[i]`` (int32) to 1 for each (i, tensor) of ``named`` (at most five) holding NaN
    or Inf, and ``host_flags[i]`` too when given: pinned host memory, which the kernel writes
    through its device mapping (no copy to queue after it)."""
    if not 0 < len(named) <= SLOTS:
        raise ValueError(f"raise_flags takes 1 to {SLOTS} tensors, got {len(named)}")
    slots, bounds, end = [], [], 0
    for index, tensor in named:
        tensor = _flat(tensor.detach())
        end += cdiv(tensor.numel(), BLOCK)
        slots.append((tensor, tensor.numel(), index))
        bounds.append(end)
    while len(slots) < SLOTS:  # empty slots: never reached, their bound is the grid's end
        slots.append((slots[0][0], 0, slots[0][2]))
        bounds.append(end)
    args = []
    for (tensor, numel, index), bound in zip(slots, bounds):
        args += [tensor, numel, index, bound]
    _launch_raise_flags((end,), flags, flags if host_flags is None else host_flags, *args[:-1], BLOCK=BLOCK,
                        **programmatic_options(flags.device))


def select_committed(flags: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """For each (new, old, out) of ``pairs`` (one or two, contiguous, same shape and dtype): ``out``
    = ``new`` where every flag is 0, else ``old`` (``out`` may be either of them)."""
    _check_pairs("select_committed", pairs)
    _select(flags, flags, pairs)


def copy_committed(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """For each (new, out) of ``pairs`` (one or two, contiguous, same shape and dtype): ``out`` = ``new``."""
    _check_pairs("copy_committed", pairs)
    _select(pairs[0][0], None, [(new, out, out) for new, out in pairs])


def _check_pairs(name: str, pairs: list) -> None:
    if not 0 < len(pairs) <= 2:
        raise ValueError(f"{name} takes 1 or 2 pairs, got {len(pairs)}")


@on_input_device
def _select(device_tensor: torch.Tensor, flags: torch.Tensor | None, pairs) -> None:
    first = pairs[0]
    second = pairs[1] if len(pairs) == 2 else (first[0], first[1], first[2])
    n0, n1 = first[0].numel(), second[0].numel() if len(pairs) == 2 else 0
    b0 = cdiv(n0, BLOCK)
    grid = (b0 + cdiv(n1, BLOCK),)
    _launch_select_committed(grid, device_tensor, 0 if flags is None else flags.numel(),
                             1 if flags is None else next_power_of_2(flags.numel()), *first, n0, b0, *second, n1,
                             HAS_FLAGS=flags is not None, BLOCK=BLOCK, **programmatic_options(device_tensor.device))
