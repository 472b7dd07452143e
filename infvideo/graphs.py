"""Eager CUDA steps replayed from CUDA graphs that the memory captures itself (``cuda_graphs=True``).

A one-stream step is a handful of small kernels; launched from Python each costs more host time
than GPU time. Once an eager step has run at a given signature (shapes, dtypes, devices, weights),
the memory captures that step once into a CUDA graph whose inputs are static buffers, and later
calls at the same signature copy their frames and query in, replay the graph and return a copy of
its output. The state stays in the memory's own buffers, which the graph reads and updates in
place, so replays and eager steps interleave freely; a graph is dropped when it would go stale
(the buffers were replaced by ``reset``, ``load_state_dict``, ``.to()`` or a step of another
signature, or the projections' weights were replaced or changed in place).

Only the memory's public surface is used: ``check`` / ``compute`` / ``commit`` (what a graph
records), ``is_full``, ``backend_on``, ``raise_failed_check`` and the buffers
``coef`` and ``sticky_stats``.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from dataclasses import dataclass

import torch
from torch import nn

from .ops.step import step_records_grad


def _weight_versions(*layers) -> tuple:
    """Pointer and version counter of each weight and bias: they change when a weight is replaced
    or written in place, either of which a graph (holding the stacked K|V weight) must not miss."""
    out = []
    for layer in layers:
        # A module's parameters straight from its dict: nn.Module.__getattr__ costs a lookup per
        # name, on every step of a signature.
        params = getattr(layer, "_parameters", None) if isinstance(layer, nn.Module) else None
        for name in ("weight", "bias"):
            p = params[name] if params is not None and name in params else getattr(layer, name, None)
            out.append(None if p is None else (p.data_ptr(), p._version))
    return tuple(out)


def signature(frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value, num_heads: int) -> tuple:
    """What a captured step is specific to."""
    return (frames.shape, frames.stride(), frames.dtype, frames.device, query.shape, query.stride(), query.dtype,
            id(proj_key), id(proj_value), num_heads, _weight_versions(proj_key, proj_value))


def traced(device: torch.device) -> bool:
    """Inside torch.compile or a CUDA graph capture: no host synchronisation, state updated in place."""
    return torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


@contextlib.contextmanager
def _no_cyclic_gc():
    """Python's cyclic garbage collector paused for the block. A collection inside a capture can
    free an unreachable object that owns a CUDA graph (an earlier memory's), and destroying a graph
    while this thread captures invalidates the capture (CUDA: "operation not permitted when stream
    is capturing"); torch.cuda.graph no longer collects before it captures."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class CapturedStep:
    graph: torch.cuda.CUDAGraph
    frames: torch.Tensor
    query: torch.Tensor
    context: torch.Tensor
    coef: torch.Tensor
    stats: torch.Tensor


# Beyond this many bytes of frames, copying them into the graph's input buffer (a read and a write
# of the chunk) costs more GPU time than the host time a replay saves. Measured on an H200 with bf16
# tokens [S, 256, 32, 768]: at 16 streams (201 MB) a replay with its copy took a third of the
# Python-launched step (rectangular basis) or two thirds (Gaussian); at 64 streams (805 MB), where
# the GPU's work outweighs the launches, the copy made the step 1.2-1.3x slower.
MAX_INPUT_BYTES = 256 * 2**20

# One capture at a time in the process: captures begun together in two threads clash over the CUDA
# generator's graph state. Each records in "thread_local" mode, so that memories stepped eagerly by
# other threads meanwhile (allowed: one memory per thread) do not invalidate it. Work that must not
# overlap another thread's capture (a device-wide synchronisation) takes the lock too.
CAPTURE_LOCK = threading.Lock()


def eligible(memory, frames: torch.Tensor, proj_key, proj_value) -> bool:
    """Steps worth capturing: CUDA, a fused backend, inputs of at most MAX_INPUT_BYTES, no
    autograd, a full memory (every stream holds a video), a sampler that draws nothing on the host
    (multinomial sampling may use a host generator; the upstream sampler always draws from the CPU
    generator, as the published code does, which a replay would skip), and not already inside a
    compile or capture."""
    return (frames.device.type == "cuda" and frames.numel() * frames.element_size() <= MAX_INPUT_BYTES
            and memory.is_full and memory.backend_on(frames.device) in ("triton", "cuda")
            and not (memory.config.sticky and memory.config.sampling in ("multinomial", "upstream"))
            and not torch.is_grad_enabled()
            and not traced(frames.device) and isinstance(proj_key, nn.Module) and isinstance(proj_value, nn.Module))


class StepGraphs:
    """The captured steps of one memory, one per signature (the few a model uses)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self.steps: dict[tuple, CapturedStep] = {}

    def replay(self, memory, frames, query, proj_key, proj_value, num_heads: int):
        """The step's context from its graph, or None when there is no valid graph for these inputs
        (or autograd must record the step: a graph's replay is invisible to it)."""
        if not self.steps or not isinstance(frames, torch.Tensor) or not isinstance(query, torch.Tensor):
            return None
        if step_records_grad(frames, query, proj_key, proj_value):
            return None
        key = signature(frames, query, proj_key, proj_value, num_heads)
        step = self.steps.get(key)
        if step is None:
            return None
        if not memory.is_full or memory.coef is not step.coef or memory.sticky_stats is not step.stats:
            del self.steps[key]
            return None
        memory.raise_failed_check((proj_key, proj_value))
        step.frames.copy_(frames)
        step.query.copy_(query)
        step.graph.replay()
        return step.context.clone()

    def capture(self, memory, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value,
                num_heads: int) -> None:
        """Records one step at this signature where :func:`eligible` (recording runs nothing: the
        state is unchanged)."""
        if not eligible(memory, frames, proj_key, proj_value):
            return
        if len(self.steps) >= self.limit:
            self.steps.pop(next(iter(self.steps)))
        static_frames, static_query = frames.clone(), query.clone()
        graph = torch.cuda.CUDAGraph()
        with CAPTURE_LOCK, _no_cyclic_gc(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            context, coef, stats = memory.compute(static_frames, static_query, proj_key, proj_value, num_heads)
            memory.commit(static_frames, static_query, context, coef, stats)
            context = context if context.dtype == query.dtype else context.to(query.dtype)
        self.steps[signature(frames, query, proj_key, proj_value, num_heads)] = CapturedStep(
            graph, static_frames, static_query, context, memory.coef, memory.sticky_stats)
