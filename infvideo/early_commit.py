"""Inside a CUDA graph capture, a step's new state committed beside its attention, and by it.

An eager step swaps its new tensors in as the memory's state; a captured one copies them into the
memory's buffers, so that every replay updates what the next one reads (``LongTermMemory.commit``).
The coefficients are final once the consolidation has written them, and nothing in the step reads
the old ones after the K/V product. So their copy, the step's largest after the tokens (50 MB at
64 streams), runs from there on a second CUDA stream, beside the attention, rather than after it.
(Started right after the consolidation, the copy held the multiprocessors that the K/V product
then waited for: bench/README.md, "Issue 22, ninth session".) The new sticky mass needs no copy
at all: the memory hands its buffer to the step (``fused_step``'s ``mass_out``), and the slot
attention writes the mass there, since nothing reads the old one after the sampler.
"""
from __future__ import annotations

import threading

import torch

from .ops.step import step_records_grad

# Off to compare: the coefficients and the mass are then copied after the attention
# (bench/bench_many_streams_gpu.py --compare committed).
EARLY_COMMIT = True

# One second stream per thread and device: a stream takes part in one capture at a time, and two
# threads may capture at once.
_SIDE_STREAMS = threading.local()


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    streams = getattr(_SIDE_STREAMS, "by_device", None)
    if streams is None:
        streams = _SIDE_STREAMS.by_device = {}
    if index not in streams:
        streams[index] = torch.cuda.Stream(device=torch.device("cuda", index))
    return streams[index]


def commits_early(memory, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value) -> bool:
    """Whether ``memory``'s step commits its coefficients and mass early: inside a CUDA graph
    capture (not torch.compile), a full memory, no finiteness check (the check's select must see
    the step's outcome before it writes anything) and no autograd record (a backward could read
    the old coefficients). The cheap conditions come first: eager steps ask too."""
    return (EARLY_COMMIT and frames.is_cuda and not memory.check_finite and memory.is_full
            and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing()
            and not step_records_grad(frames, query, proj_key, proj_value))


class EarlyCoefficientCommit:
    """Copies the step's new coefficients into ``buffer`` on a second CUDA stream.

    ``ops.fused_step`` calls it (``on_coefficients``) with the new coefficients before the
    attention; :meth:`join` then makes the current stream wait for the copy and returns what the
    memory should commit: ``buffer`` itself, which needs no copy, or the coefficients as they came
    where they could not be copied (another shape, dtype or device).
    """

    def __init__(self, buffer: torch.Tensor):
        self.buffer = buffer
        self.stream: torch.cuda.Stream | None = None

    def __call__(self, coef: torch.Tensor) -> None:
        if coef.shape != self.buffer.shape or coef.dtype != self.buffer.dtype or coef.device != self.buffer.device:
            return
        main = torch.cuda.current_stream(coef.device)
        self.stream = _side_stream(coef.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            self.buffer.copy_(coef)

    def join(self, coef: torch.Tensor) -> torch.Tensor:
        """The coefficients to commit (see the class docstring)."""
        if self.stream is None:
            return coef
        # The copy's source was allocated on the current stream, which from here on is ordered
        # after the copy: the allocator may hand its memory out again with no further record.
        torch.cuda.current_stream(coef.device).wait_stream(self.stream)
        self.stream = None
        return self.buffer
