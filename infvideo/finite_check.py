"""The memory's asynchronous finiteness check: a step commits through a device flag.

A synchronous check reads the device after every step, which stalls the host and cannot be
captured in a CUDA graph. Here a step raises flags on the device when what it looked at holds NaN
or Inf, and commits its new state only while every flag is down; the host learns of a raised
flag from a pinned copy made after each step, without waiting, and raises at the next call (or
at ``synchronize()``, which waits). See ``LongTermMemory``'s docstring for the contract.
"""
from __future__ import annotations

import torch

from . import _checks
from .backends import triton_runs_on

# The flags, by what raised them: the new coefficients stand for the frames (a non-finite frame
# reaches them), and the context and sticky statistic for the step's outcome (finite inputs,
# non-finite result: a projection's parameters or overflowing scores).
FRAMES, QUERY, OUTCOME = 0, 1, 2
NAMES = ("frames", "query", None)


_MAPPED: dict = {}


def _maps_pinned_memory(device: torch.device) -> bool:
    """Whether the flags kernel on ``device`` can write pinned host memory through the device's
    mapping of it (CUDA's unified addressing), found once per device by trying it; not while a
    CUDA graph is being captured (the try waits for the device), when the copy is used instead."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MAPPED:
        if torch.cuda.is_current_stream_capturing():
            return False
        from .graphs import CAPTURE_LOCK
        from .kernels.finite import raise_flags
        flags = torch.zeros(1, dtype=torch.int32, device=torch.device("cuda", index))
        seen = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        with CAPTURE_LOCK:  # its synchronisation must not fall inside another thread's capture
            try:
                raise_flags(flags, [(0, torch.full((1,), float("nan"), device=flags.device))], seen)
                torch.cuda.synchronize(flags.device)
                _MAPPED[index] = int(seen[0]) == 1
            except (RuntimeError, ValueError):  # Triton refuses the host pointer: copy instead
                _MAPPED[index] = False
    return _MAPPED[index]


def _kernel_batches(pairs: list[tuple], on_kernel: bool) -> tuple[list[list[tuple]], list[tuple]]:
    """(the pairs the commit kernels of ``infvideo.kernels.finite`` take, in launches of two; the
    rest). The kernels take floating, contiguous tensors, where ``on_kernel`` says they run."""
    fused, rest = [], []
    for pair in pairs:
        kernel = on_kernel and pair[0].is_floating_point() and all(t.is_contiguous() for t in pair)
        (fused if kernel else rest).append(pair)
    return [fused[start:start + 2] for start in range(0, len(fused), 2)], rest


def copy_committed(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """For each (new, out) of ``pairs``: ``out`` = ``new``, a commit without the check. On CUDA,
    outside torch.compile, floating contiguous pairs go two at a launch
    (``infvideo.kernels.finite``): inside a CUDA graph torch's copies would take a node each."""
    device = pairs[0][0].device if pairs else None
    batches, rest = _kernel_batches(pairs, device is not None and device.type == "cuda"
                                    and not torch.compiler.is_compiling() and triton_runs_on(device))
    if batches:
        from .kernels.finite import copy_committed as launch
        for batch in batches:
            launch(batch)
    for new, out in rest:
        out.copy_(new)


class DeviceCheck:
    """The flags of one memory on one device, and their pinned host copy."""

    def __init__(self, device: torch.device):
        self.flags = torch.zeros(len(NAMES), dtype=torch.int32, device=device)
        self.seen = torch.zeros(len(NAMES), dtype=torch.int32, pin_memory=device.type == "cuda")
        self.seen_view = self.seen.numpy()
        # Two launches on CUDA (infvideo.kernels.finite); torch ops elsewhere (check_finite="async" on the CPU).
        self.fused = device.type == "cuda" and triton_runs_on(device)
        # The kernel writes `seen` itself where the device maps pinned host memory (unified
        # addressing); else a copy follows it.
        self.mapped = self.fused and _maps_pinned_memory(device)

    def raise_flags(self, named: list[tuple[int, torch.Tensor]]) -> None:
        """Raises flag i for each (i, tensor) holding NaN or Inf, then queues the copy to the host."""
        if self.fused:
            from .kernels.finite import raise_flags
            raise_flags(self.flags, named, self.seen if self.mapped else None)
            if self.mapped:
                return
        else:
            bad = _checks.nonfinite_flags([value for _, value in named]).to(torch.int32)
            for position, (index, _) in enumerate(named):
                self.flags[index].bitwise_or_(bad[position])
        self.seen.copy_(self.flags, non_blocking=True)

    def select(self, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """For each (new, old, out): ``out`` = ``new`` while every flag is down, else ``old``."""
        batches, rest = _kernel_batches(pairs, self.fused)
        if batches:
            from .kernels.finite import select_committed
            for batch in batches:
                select_committed(self.flags, batch)
        if rest:
            keep = self.flags.max() == 0
            for new, old, out in rest:
                torch.where(keep, new, old, out=out)

    def failed(self) -> int | None:
        """The flag the host has seen raised (its index in NAMES), clearing them all; else None.
        Waits for the device only once a raised flag has been seen, so that no copy still queued
        lands after the clear."""
        if not self.seen_view.any():
            return None
        if self.flags.is_cuda:
            torch.cuda.synchronize(self.flags.device)
        index = int(self.seen_view.argmax())
        self.flags.zero_()
        self.seen.zero_()
        return index
