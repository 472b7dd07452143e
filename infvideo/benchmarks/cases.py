"""The benchmark grid's cases and, per op, the providers that compute it.

Ops (one name per op, as in infvideo/ops):
  consolidate      sticky quantile sampling + refit of the memory from a chunk (frames → B)
  sticky_sampling  the quantile sampler alone (bin masses → M sample bins)
  attention        continuous attention over projected coefficients K, V with the sticky statistic
  step             one whole LongTermMemory call (consolidate, K/V projections, attention)
Providers: ``baseline`` (infvideo/benchmarks/published.py, float32 only: the published code's cost
structure), ``torch`` (the reference), ``torch.compile`` (the reference under torch.compile), and
every backend of ``infvideo.backends.available_backends()`` that runs on the case's device. Op
rows of backends other than ``triton`` appear once their op wrappers take a ``backend=`` argument;
their step rows appear as soon as ``LongTermMemory(backend=...)`` accepts them.
"""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..backends import available_backends
from ..config import MemoryConfig
from ..memory import LongTermMemory
from ..reference import sticky
from ..reference.attention import Quadrature, attention_constants, quadrature_weights, read_values, scores, \
    slot_weights
from ..reference.fit import consolidation_fit, on_device
from ..reference.pooling import pool_frames
from ..reference.step import consolidate_chunk
from .published import per_stream, published_attention, published_consolidate, published_step

WIDTH = MODEL = 768  # e = D (Video-LLaMA)
HEADS, QUERIES, PAST_SAMPLES, QUAD_POINTS = 12, 32, 512, 1000
OPS = ("consolidate", "sticky_sampling", "attention", "step")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    """One point of the grid: S streams, L frames a chunk, N basis functions, the basis and input dtype."""

    streams: int
    frames: int
    basis_count: int
    basis: str
    dtype: str
    device: torch.device

    @property
    def config(self) -> MemoryConfig:
        return MemoryConfig(num_basis=self.basis_count, past_samples=PAST_SAMPLES, basis=self.basis,
                            quad_points=QUAD_POINTS)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def memory(self, backend: str) -> LongTermMemory:
        # No per-step host synchronisation: the rows time the device work a serving loop would see.
        return LongTermMemory(num_basis=self.basis_count, past_samples=PAST_SAMPLES, basis=self.basis,
                              quad_points=QUAD_POINTS, backend=backend, check_finite=False).to(self.device)


@dataclass
class Provider:
    """A callable computing one op for one case; ``reference`` marks the output others are checked against."""

    name: str
    fn: object
    reference: bool = False
    comparable: bool = True  # its output is the reference's (the baseline computes the paper preset)


class Inputs:
    """Random inputs of a case, built once: frames [S, L, e], query [S, Q, D], projections, old
    coefficients [S, N, e] (float32 state), sticky masses [S, H, K], projected K, V [S, N, D]."""

    def __init__(self, case: Case, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        dev, dtype, s = case.device, case.torch_dtype, case.streams

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen) * scale).to(dev)

        self.frames = randn(s, case.frames, WIDTH).to(dtype)
        self.query = randn(s, QUERIES, MODEL).to(dtype)
        self.proj_key = nn.Linear(WIDTH, MODEL).to(dev, dtype)
        self.proj_value = nn.Linear(WIDTH, MODEL).to(dev, dtype)
        with torch.no_grad():
            for p in (*self.proj_key.parameters(), *self.proj_value.parameters()):
                p.copy_(randn(*p.shape, scale=1 / math.sqrt(WIDTH)))
        self.past = randn(s, case.basis_count, WIDTH)
        bins = case.config.sticky_bins
        self.stats = torch.rand(s, HEADS, bins, generator=gen).pow(4).to(dev)
        with torch.no_grad():
            self.keys = self.proj_key(self.past.to(dtype))
            self.values = self.proj_value(self.past.to(dtype))


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _backend_op(wrapper, backend: str, device: torch.device):
    """The op wrapper bound to ``backend``, or None when that backend has no op-level entry here
    (wrappers without a ``backend`` argument run Triton only)."""
    if "backend" in inspect.signature(wrapper).parameters:
        return lambda *a, **k: wrapper(*a, backend=backend, **k)
    return wrapper if backend == "triton" and device.type == "cuda" else None


def extra_backends(device: torch.device) -> list[str]:
    """Backends besides the reference that run on ``device``'s tensors; Triton on CPU tensors (its
    interpreter) is no speed contender, and the csrc ``cuda`` kernels take CUDA tensors only."""
    return [b for b in available_backends()
            if b != "torch" and not (b in ("triton", "cuda") and device.type != "cuda")]


def _compiled(fn):
    """``fn`` under torch.compile (graph breaks allowed: the reference reads cached constants).

    Dynamo's caches are reset first: a grid compiles many configurations of the same code, and past
    its recompile limit dynamo would silently run the function eagerly."""
    torch._dynamo.reset()
    # Dynamo warns that it traces through the lru_cache'd constant builders; they are pure.
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    return torch.compile(fn)


def consolidate_providers(case: Case, x: Inputs, compile_ref: bool) -> list[Provider]:
    cfg, f32 = case.config, torch.float32

    def reference():
        return consolidate_chunk(cfg, pool_frames(x.frames, f32), x.past, None, x.stats)

    out = [Provider("torch", reference, reference=True)]
    if compile_ref:
        out.append(Provider("torch.compile", _compiled(reference)))
    if case.dtype == "fp32":
        out.append(Provider("baseline", lambda: per_stream(
            lambda f, p: published_consolidate(f, p, case.basis_count, samples=PAST_SAMPLES, basis=case.basis),
            x.frames, x.past), comparable=False))
    if case.basis == "rectangular":
        plan = ops.plan_on(consolidation_fit(cfg, case.frames), case.device)
        for backend in extra_backends(case.device):
            sample, fit = _backend_op(ops.quantile_bins, backend, case.device), \
                _backend_op(ops.rect_consolidate, backend, case.device)
            if sample is not None and fit is not None:
                out.append(Provider(backend, lambda s=sample, c=fit: c(x.frames, x.past, plan,
                                                                       s(x.stats, PAST_SAMPLES))))
    return out


def sampling_providers(case: Case, x: Inputs, compile_ref: bool) -> list[Provider]:
    if case.basis == "rectangular":
        def reference():
            return sticky.quantile_bins(x.stats, PAST_SAMPLES)[0]
    else:
        def reference():
            return sticky.quantile_samples(x.stats, PAST_SAMPLES)
    out = [Provider("torch", reference, reference=True)]
    if compile_ref:
        out.append(Provider("torch.compile", _compiled(reference)))
    if case.basis == "rectangular":
        for backend in extra_backends(case.device):
            sample = _backend_op(ops.quantile_bins, backend, case.device)
            if sample is not None:
                out.append(Provider(backend, lambda s=sample: s(x.stats, PAST_SAMPLES)))
    return out


def attention_providers(case: Case, x: Inputs, compile_ref: bool) -> list[Provider]:
    cfg, f32, identity = case.config, torch.float32, nn.Identity()

    def reference():
        const = on_device(attention_constants(cfg), case.device, f32)
        a = scores(x.keys.to(f32), x.query.to(f32), identity, HEADS)  # K given: proj_key is the identity
        if isinstance(const, Quadrature):
            r, density = quadrature_weights(a, const)
            stats = sticky.quadrature_mass(density.sum(2), const)
        else:
            r = slot_weights(a, const)
            stats = sticky.bin_mass(r)
        return read_values(x.values.to(f32), r, identity, HEADS).to(x.query.dtype), stats

    out = [Provider("torch", reference, reference=True)]
    if compile_ref:
        out.append(Provider("torch.compile", _compiled(reference)))
    if case.dtype == "fp32":
        # Trapezoid on 1000 points, not the exact integral: its output is not the reference's.
        out.append(Provider("baseline", lambda: per_stream(
            lambda q, k, v: published_attention(q, k, v, HEADS, QUAD_POINTS, case.basis), x.query, x.keys, x.values),
            comparable=False))
    for backend in extra_backends(case.device):
        if case.basis == "rectangular":
            op = _backend_op(ops.slot_attention, backend, case.device)
            if op is not None:
                out.append(Provider(backend, lambda op=op: op(x.query, x.keys, x.values, HEADS)))
        else:
            op = _backend_op(ops.quadrature_attention, backend, case.device)
            if op is not None:
                quad = ops.quadrature_constants(cfg, case.device)
                out.append(Provider(backend, lambda op=op, q=quad: op(x.query, x.keys, x.values, HEADS, q.mu, q.sigma,
                                                                      q.grid, q.log_weight)))
    return out


def step_providers(case: Case, x: Inputs, compile_ref: bool) -> list[Provider]:
    """Each memory provider is returned warm: one call has filled its memory (later calls consolidate)."""
    def memory_call(memory):
        with torch.no_grad():
            memory(x.frames, x.query, x.proj_key, x.proj_value, HEADS)  # fills the memory, builds the constants
        return lambda: memory(x.frames, x.query, x.proj_key, x.proj_value, HEADS)

    out = [Provider("torch", memory_call(case.memory("torch")), reference=True)]
    if compile_ref:
        memory = case.memory("torch")
        memory_call(memory)
        compiled = _compiled(memory)
        out.append(Provider("torch.compile", lambda: compiled(x.frames, x.query, x.proj_key, x.proj_value, HEADS)))
    if case.dtype == "fp32":
        out.append(Provider("baseline", lambda: published_step(
            x.frames, x.past, x.query, x.proj_key, x.proj_value, HEADS, case.basis_count, samples=PAST_SAMPLES,
            points=QUAD_POINTS, basis=case.basis), comparable=False))
    for backend in extra_backends(case.device):
        try:
            out.append(Provider(backend, memory_call(case.memory(backend))))
        except (ValueError, RuntimeError) as err:  # a backend that cannot run this case: reported, not fatal
            print(f"  step {backend}: skipped ({err})", flush=True)
    return out


PROVIDERS = {"consolidate": consolidate_providers, "sticky_sampling": sampling_providers,
             "attention": attention_providers, "step": step_providers}


def floor_bytes(op: str, case: Case, x: Inputs) -> int:
    """Bytes an op must read and write at least once (inputs, state and outputs)."""
    s, n = case.streams, case.basis_count
    coef = s * n * WIDTH * 4
    stats = nbytes(x.stats)
    bins = s * PAST_SAMPLES * 4
    context = nbytes(x.query)
    if op == "consolidate":
        return nbytes(x.frames) + stats + 2 * coef
    if op == "sticky_sampling":
        return stats + bins
    if op == "attention":
        return nbytes(x.query, x.keys, x.values) + context + stats
    weights = nbytes(*x.proj_key.parameters(), *x.proj_value.parameters())
    return nbytes(x.frames, x.query) + weights + 2 * coef + 2 * stats + context


def first_tensor(out) -> torch.Tensor:
    """The primary output of a provider (the context for attention and step, B for consolidate)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def relative_error(out, ref) -> float | None:
    """Relative RMS error of the primary outputs (exact mismatch rate for integer outputs)."""
    a, b = first_tensor(out), first_tensor(ref)
    if a is None or b is None or a.shape != b.shape:
        return None
    if not a.is_floating_point():
        return float((a.long() != b.long()).double().mean())
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
