"""`LongTermMemory`: the ∞-Video continuous-time memory of S video streams as an nn.Module."""
from __future__ import annotations

import functools

import torch
from torch import nn

from . import _checks, state_checks
from ._lru import LRUCache
from .backends import backend_for, resolve_backend
from .config import MemoryConfig
from .graphs import StepGraphs, signature
from .graphs import capturing as _capturing
from .graphs import eligible as graphs_eligible
from .graphs import traced as _traced
from .launch_plans import StepPlans
from .ops import fused_step, step_constants
from .reference.fit import SegmentedFit, consolidation_fit, first_fit
from .reference.pooling import pool_frames
from .reference.step import attend, consolidate_chunk


# Backends whose steps run on fused ops (infvideo.ops.fused_step); "torch" is the reference.
FUSED_BACKENDS = ("triton", "cuda", "cpu")


def _needs_grad(*inputs) -> bool:
    """Whether autograd must see this step (the fused ops are forward-only; the reference is not)."""
    if not torch.is_grad_enabled():
        return False
    for item in inputs:
        if isinstance(item, torch.Tensor):
            if item.requires_grad:
                return True
        elif isinstance(item, nn.Module) and any(p.requires_grad for p in item.parameters()):
            return True
    return False


def _drops_frames(cfg: MemoryConfig, length: int, first: bool, later: bool) -> bool:
    """Whether a fit of this step leaves a frame out (paper preset: the frame placed at t = 1 lies in
    no bin), so that a non-finite value in it never reaches the new coefficients."""
    fits = ([first_fit(cfg, length)] if first else []) + ([consolidation_fit(cfg, length)] if later else [])
    return any(isinstance(fit, SegmentedFit) and fit.frame_keep is not None for fit in fits)


def _store(buffers: dict, name: str, value: torch.Tensor, traced: bool) -> None:
    current = buffers[name]
    if value is current:
        return
    if traced and current.shape == value.shape and current.dtype == value.dtype:
        current.copy_(value)
    else:
        buffers[name] = value


class LongTermMemory(nn.Module):
    """Continuous-time long-term memory for a video Q-former's cross-attention.

    Each call consolidates a chunk of frames into N basis coefficients per stream (ridge fit of
    M samples of the old signal squeezed into [0, τ] and the L new frames in [τ, 1]) and reads the
    memory with a continuous softmax over time.

    Args:
        num_basis: N, basis functions per stream.
        tau: τ ∈ (0, 1), the share of [0, 1] given to the past at each consolidation.
        past_samples: M ≥ 1, samples of the old signal per consolidation.
        ridge: λ ≥ 0, ridge penalty of the fit.
        basis: ``"rectangular"`` (∞-Video) or ``"gaussian"`` (∞-former).
        sigmas: widths of the Gaussian basis (N must be a multiple of their count).
        sticky: sample the past where attention was high (else uniformly).
        sampling: ``"quantile"`` (deterministic), ``"multinomial"`` or ``"upstream"`` (the
            published sampler, for reproduction).
        preset: ``"exact"`` (exact integrals and positions) or ``"paper"`` (bit-level behaviour of
            the published code: trapezoid on its grid, float32 positions and bin bounds).
        quad_points: T ≥ 2, trapezoid points for smooth bases (and the paper preset's grid).
        backend: ``"auto"`` (Triton on CUDA tensors, the C++ kernels on CPU tensors where the
            extension is built, else the torch reference), ``"torch"``, ``"triton"``, ``"cuda"``
            or ``"cpu"`` (the csrc kernels); INFVIDEO_BACKEND overrides ``"auto"``. The fused
            backends are forward-only: a step that autograd must see (grad enabled and an input or
            projection that requires grad) runs on the differentiable reference.
        density: ``"gibbs"`` (continuous softmax) or ``"gaussian"`` (𝒩(μ, σ²) fitted to the
            softmax moments; Gaussian basis only).
        generator: torch.Generator for ``multinomial`` / ``upstream`` sampling (without one they
            draw from torch's default generators). A step that raises leaves every generator it
            draws from as it was.
        check_finite: commit a step only when it is finite: raise on NaN/Inf in frames, query
            or a projection's parameters (named as such), and on a context or sticky statistic
            that overflows from finite inputs, leaving the memory as it was (one host
            synchronisation per step; skipped under torch.compile and while a CUDA graph is
            captured). Turn off to keep the host asynchronous.
        cuda_graphs: replay eager CUDA steps from CUDA graphs the memory captures itself
            (``infvideo.graphs``): after two eager steps at a signature (shapes, dtypes, device,
            projection weights), later calls there copy the inputs into the graph, replay it and
            return a copy of its output, which removes most of a small step's host cost. Used
            for fused backends, with ``check_finite=False``, no autograd, every stream filled and
            chunks of at most 64 MiB (a few streams: larger steps are bound by the GPU, and the
            input copy would cost more than it saves); other calls run eagerly.
        launch_plans: launch eager CUDA steps from C++ (``infvideo.launch_plans``): at the second
            full step of a signature the memory records the step's kernel launches and K/V
            product, and later calls there launch the same kernels with the new tensors from C++,
            without Python per kernel (bit-identical results, no copies, any size). Used for the
            Triton backend with rectangular bins, the exact preset and the quantile or uniform
            sampler, no autograd and every stream filled, where the extension is built with
            CUDA; other calls run from Python.

    Compiling (``torch.compile(memory, fullgraph=True)``) and capturing a CUDA graph both need one
    eager step first (it puts the constants on the device), and then drive the memory only
    through the compiled function or the graph's replays; fused steps with rectangular bins and
    quantile or uniform sampling trace whole.

    State (buffers, saved by ``state_dict()``): ``coef`` [S, N, e], ``filled`` [S] (streams holding
    a video), ``sticky_stats`` [S, G, K] (attention mass per bin from the last step, per group).
    ``load_state_dict`` checks all of it first (``infvideo.state_checks``: shapes against the
    configuration, finite values, non-negative statistics with mass in every filled stream, the
    basis it was saved with) and raises naming the key, leaving the memory unchanged.

    Ranges (checked at construction; beyond them the arithmetic breaks or the constants do not
    fit in memory): 1 ≤ N ≤ 4,096; 1 ≤ M ≤ 65,536; 2 ≤ T ≤ 65,536; τ ∈ (0, 1); λ = 0 (a
    pseudo-inverse) or λ ≥ 1e-6 (smaller ones leave the fit ill-conditioned in float32); every
    σ ≥ 1e-4 (narrower Gaussians overflow float32); ``sticky`` and ``cuda_graphs`` are bools.

    Threads: one memory holds one state, so it must not be stepped, reset or loaded from two
    threads at once (a step reads the state and replaces it; two at once lose one of them without
    an error). Different memories, and the cached constants they share, may be used from
    different threads.
    """

    def __init__(self, num_basis: int = 256, tau: float = 0.75, past_samples: int = 512,
                 ridge: float = 0.5, basis: str = "rectangular", sigmas=(0.005, 0.01),
                 sticky: bool = True, sampling: str = "quantile", preset: str = "exact",
                 quad_points: int = 1000, backend: str = "auto", *, density: str = "gibbs",
                 generator: torch.Generator | None = None, check_finite: bool = True, cuda_graphs: bool = False,
                 launch_plans: bool = True):
        super().__init__()
        self.config = MemoryConfig(num_basis, tau, past_samples, ridge, basis, tuple(sigmas)
                                   if isinstance(sigmas, (list, tuple)) else sigmas, sticky,
                                   sampling, preset, quad_points, density)
        self.backend = resolve_backend(backend)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
        self.check_finite = check_finite
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be a bool, got {type(cuda_graphs).__name__}")
        self._graphs = StepGraphs() if cuda_graphs else None
        if not isinstance(launch_plans, bool):
            raise TypeError(f"launch_plans must be a bool, got {type(launch_plans).__name__}")
        # Only steps of rectangular bins with the exact preset and a deterministic sampler run
        # the fused kernels alone (the recorder would refuse the others); other memories skip
        # the plans' per-call signature.
        plannable = (self.config.basis == "rectangular" and self.config.preset == "exact"
                     and (not self.config.sticky or self.config.sampling == "quantile"))
        self._plans = StepPlans() if launch_plans and plannable else None
        # Host-side mirror of `filled` ("empty", "full" or "mixed") so a step never reads the
        # device to know which streams hold a video.
        self._fill = "empty"
        # Per device: the backend a call there uses, and the fused step's constants per chunk
        # length. Filled by eager calls; a compiled or captured step only reads them.
        self._backends: dict = {}
        self._step_constants = LRUCache(64)  # the 64 most recent (chunk length, device) keys
        self.register_buffer("coef", torch.zeros(0, num_basis, 0))
        self.register_buffer("filled", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("sticky_stats", torch.zeros(0, 1, self.config.sticky_bins))

    def extra_repr(self) -> str:
        c = self.config
        return (f"num_basis={c.num_basis}, tau={c.tau}, past_samples={c.past_samples}, ridge={c.ridge}, "
                f"basis={c.basis!r}, sticky={c.sticky}, sampling={c.sampling!r}, preset={c.preset!r}, "
                f"backend={self.backend!r}, streams={self.num_streams}")

    @property
    def num_streams(self) -> int:
        """S, the streams this memory holds (0 before the first call)."""
        return self.filled.numel()

    @property
    def coefficients(self) -> torch.Tensor | None:
        """The current coefficients B [S, N, e] (rows of empty streams are zero); None while empty."""
        return None if self._fill == "empty" else self.coef

    def _sync_fill(self) -> None:
        filled = self.filled
        self._fill = ("empty" if not bool(filled.any()) else "full" if bool(filled.all()) else "mixed")

    def reset(self, streams=None) -> None:
        """Empty the memory (a new video); ``streams`` (indices or a bool mask) empties only those."""
        if streams is None:
            self.filled.zero_()
            self.coef.zero_()
            self.sticky_stats.zero_()
            self._fill = "empty"
            return
        try:
            index = torch.as_tensor(streams, device=self.filled.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"streams must be integer indices or a bool mask, got {streams!r}") from None
        if index.numel() == 0:
            return  # no stream named: nothing to empty
        if index.dtype == torch.bool:
            if index.shape != self.filled.shape:
                raise ValueError(f"streams: a mask must have shape {tuple(self.filled.shape)}, got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        elif index.is_floating_point() or index.is_complex():
            raise TypeError("streams must be integer indices or a bool mask")
        index = index.flatten().long()
        if index.numel() and (int(index.min()) < -self.num_streams or int(index.max()) >= self.num_streams):
            raise ValueError(f"streams: indices must lie in [0, {self.num_streams}), got {index.tolist()}")
        self.filled[index] = False
        self.coef[index] = 0
        self.sticky_stats[index] = 0
        self._sync_fill()

    def _check(self, frames, query, proj_key, proj_value, num_heads):
        frames = _checks.tensor("frames", frames, (3, 4, 5))
        query = _checks.tensor("query", query, (3,))
        if query.device != frames.device:
            raise ValueError(f"query is on {query.device}, frames are on {frames.device}")
        if query.shape[0] != frames.shape[0]:
            raise ValueError(f"query has {query.shape[0]} streams, frames have {frames.shape[0]}")
        streams, width, model = frames.shape[0], frames.shape[-1], query.shape[-1]
        _checks.heads(num_heads, model)
        key_width = _checks.projection("proj_key", proj_key, width, frames.device)
        if key_width is not None and key_width != model:
            raise ValueError(f"proj_key produces width {key_width}, but query has width {model}")
        value_width = _checks.projection("proj_value", proj_value, width, frames.device)
        if value_width is not None and value_width != model:
            raise ValueError(f"proj_value produces width {value_width}, but query has width {model} "
                             "(the context is [S, Q, D], D the query's width)")
        _checks.projection_dtypes(proj_key, proj_value)
        if self._fill != "empty":
            if self.coef.device != frames.device:
                raise ValueError(f"frames are on {frames.device}, but the memory holds its streams on "
                                 f"{self.coef.device}; move it with .to({str(frames.device)!r}) first")
            if streams != self.num_streams:
                raise ValueError(f"frames carry {streams} streams but the memory holds {self.num_streams}; "
                                 "call reset() before changing the stream count")
            if width != self.coef.shape[-1]:
                raise ValueError(f"frames have width {width} but the memory holds width {self.coef.shape[-1]}")
        return frames, query

    def forward(self, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value, num_heads: int) -> torch.Tensor:
        """Consolidate a chunk and read the memory.

        frames: [S, L, e] pooled frame vectors, or [S, L, tokens, e] / [S, L, 14, 14, e] tokens
        (pooled here); query: [S, Q, D] (through the Q-former's query Linear); proj_key,
        proj_value: the Q-former's key/value Linear layers (e → D); num_heads: H, D % H == 0.
        Returns the LTM context [S, Q, D] in the query's dtype.
        """
        graphs, plans = self._graphs, self._plans
        key = plan_key = None
        if isinstance(frames, torch.Tensor) and isinstance(query, torch.Tensor):
            if graphs is not None:
                key = signature(frames, query, proj_key, proj_value, num_heads)
                context = graphs.replay(self, key, frames, query)
                if context is not None:
                    return context
            if plans is not None and frames.is_cuda and not torch.compiler.is_compiling():
                plan_key = (key or signature(frames, query, proj_key, proj_value, num_heads),
                            frames.data_ptr() & 15, query.data_ptr() & 15)
                context = plans.run(self, plan_key, frames, query, (proj_key, proj_value))
                if context is not None:
                    return context
        was_full = self._fill == "full"
        frames, query = self._check(frames, query, proj_key, proj_value, num_heads)
        # A rejected step leaves the samplers' generators as they were, so that the next good
        # step draws what it would have drawn without the bad call.
        draws = [(generator, generator.get_state()) for generator in self._sampling_generators(frames.device)]
        try:
            if plan_key is not None and was_full and plans.wants(self, plan_key, frames):
                step = functools.partial(self._compute, frames, query, proj_key, proj_value, num_heads)
                context = plans.record(self, plan_key, step, frames, query, (proj_key, proj_value))
            else:
                context = self._step(frames, query, proj_key, proj_value, num_heads)
        except BaseException:
            for generator, state in draws:
                generator.set_state(state)
            raise
        # Captured after an eager step of the same kind (memory full before and after), so that
        # every kernel the graph records has been compiled and run once already.
        if graphs is not None and was_full and graphs_eligible(self, frames, proj_key, proj_value):
            graphs.capture(self, key, frames, query, proj_key, proj_value, num_heads)
        return context

    def _step(self, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value, num_heads: int) -> torch.Tensor:
        """One step on checked inputs (the body of ``forward``, and what a captured graph records)."""
        fill = self._fill
        context, coef, stats = self._compute(frames, query, proj_key, proj_value, num_heads)
        return self._finish(frames, query, context, coef, stats, fill, _traced(frames.device), (proj_key, proj_value))

    def snapshot(self) -> tuple:
        """A copy of everything a step changes (the buffers, the fill state and the generators the
        sampler draws from), for :meth:`restore`: a caller that runs several steps as one (a
        patched model's layers) can put every memory back when a later one fails."""
        buffers = {name: self._buffers[name].clone() for name in state_checks.BUFFERS}
        generators = [(generator, generator.get_state()) for generator in self._sampling_generators(self.coef.device)]
        return buffers, self._fill, generators

    def restore(self, snapshot: tuple) -> None:
        """Puts back the state :meth:`snapshot` copied. Buffers are written in place where they
        keep their shape, so a step captured in a CUDA graph keeps reading the same ones."""
        buffers, fill, generators = snapshot
        for name, saved in buffers.items():
            current = self._buffers[name]
            if current.shape == saved.shape and current.dtype == saved.dtype and current.device == saved.device:
                current.copy_(saved)
            else:
                self._buffers[name] = saved
        self._fill = fill
        for generator, state in generators:
            generator.set_state(state)

    def _sampling_generators(self, device: torch.device) -> list[torch.Generator]:
        """The generators a step on ``device`` may draw from: none unless the memory holds a video
        and samples its past at random (outside torch.compile and CUDA graph captures, which do
        not replay such steps); else its own generator or torch's default one for ``device``, and
        for the upstream sampler also torch's default CPU generator (``sticky.upstream_samples``)."""
        cfg = self.config
        if not cfg.sticky or cfg.sampling not in ("multinomial", "upstream") or self._fill == "empty" \
                or _traced(device):
            return []
        own = self.generator
        if own is not None:
            used = [own]
        elif device.type == "cuda":
            used = [torch.cuda.default_generators[device.index if device.index is not None
                                                  else torch.cuda.current_device()]]
        else:
            used = [torch.default_generator]
        if cfg.sampling == "upstream" and (own is None or own.device.type != "cpu") \
                and torch.default_generator not in used:
            used.append(torch.default_generator)
        return used

    def _compute(self, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value, num_heads: int):
        """(context, new coefficients, new statistic) of a step on checked inputs; changes nothing
        (what a launch plan records)."""
        backend = self._backends.get(frames.device)
        if backend is None:
            backend = self._backends[frames.device] = backend_for(self.backend, frames.device)
        dtype = torch.float64 if torch.float64 in (frames.dtype, query.dtype) else torch.float32
        past = None if self._fill == "empty" else self.coef
        filled = self.filled if self._fill == "mixed" else None
        stats = None if self._fill == "empty" else self.sticky_stats
        if backend in FUSED_BACKENDS and dtype == torch.float32 and not _needs_grad(frames, query, proj_key, proj_value):
            key = (frames.shape[1], frames.device)
            consts = self._step_constants.get(key)
            if consts is None:
                consts = self._step_constants[key] = step_constants(self.config, *key)
            return fused_step(self.config, consts, frames, query, proj_key, proj_value, num_heads, past, filled, stats,
                              self.generator, keep_stats=self.config.sticky, stats_in_place=_capturing(frames.device),
                              backend=backend)
        coef = consolidate_chunk(self.config, pool_frames(frames, dtype), past, filled, stats, self.generator)
        context, stats = attend(self.config, coef, query.to(dtype), proj_key, proj_value, num_heads,
                                keep_stats=self.config.sticky)
        return context, coef, stats

    def _finish(self, frames: torch.Tensor, query: torch.Tensor, context: torch.Tensor, coef: torch.Tensor,
                stats: torch.Tensor | None, fill: str, traced: bool, projections: tuple = ()) -> torch.Tensor:
        """Checks a computed step (``fill``: the memory's fill state it started from; ``traced``:
        inside torch.compile or a capture; ``projections``: (proj_key, proj_value), named when
        their parameters are what made the step non-finite) and commits it; returns the context
        in the query's dtype."""
        if self.check_finite and not traced:
            # Non-finite frames reach the new coefficients, so one small reduction each (and one
            # host synchronisation for all) covers them, the query, and what the step commits or
            # returns besides the coefficients, before any state changes; only frames that a fit
            # leaves out (paper preset) need a look of their own.
            named = [("frames", coef), ("query", query)]
            if _drops_frames(self.config, frames.shape[1], fill != "full", fill != "empty"):
                named.append(("frames", frames))
            named.append((None, context))
            if stats is not None:
                named.append((None, stats))
            bad = _checks.nonfinite([value for _, value in named])
            if bad is not None:
                if named[bad][0] is not None:
                    raise ValueError(f"{named[bad][0]} contains NaN or Inf")
                # Finite inputs, non-finite outcome: a projection's parameters (looked at only
                # now, so a good step never reads them), else the scores overflowed.
                _checks.parameters_finite(list(zip(("proj_key", "proj_value"), projections)))
                raise ValueError("frames and query are finite but the step's context or sticky statistics are "
                                 "not (NaN or Inf): their values are too large and the attention scores overflow, "
                                 "or a projection returns NaN or Inf; the memory is unchanged")
        self._commit(coef.detach(), stats, traced)
        return context if context.dtype == query.dtype else context.to(query.dtype)

    def _commit(self, coef: torch.Tensor, stats: torch.Tensor | None, traced: bool) -> None:
        # Eager steps swap the new tensors in. Under capture or compilation (``traced``) they are
        # copied into the existing buffers instead, so each replay updates the memory the next
        # replay reads. nn.Module.__setattr__ is bypassed: it costs more than the rest of a small step.
        buffers = self._buffers
        _store(buffers, "coef", coef, traced)
        if self._fill != "full":
            buffers["filled"] = torch.ones(coef.shape[0], dtype=torch.bool, device=coef.device)
            self._fill = "full"
        if stats is not None:
            _store(buffers, "sticky_stats", stats, traced)
        elif buffers["sticky_stats"].shape[0] != coef.shape[0]:
            buffers["sticky_stats"] = torch.zeros(coef.shape[0], 1, self.config.sticky_bins, device=coef.device)

    # The multinomial / upstream samplers' generator travels with the buffers as nn.Module's extra
    # state, so that a resumed memory draws exactly what the original would have drawn. A memory
    # without a generator saves none (its state dict keeps just the three buffers), and state
    # dicts without extra state (older ones, or from such memories) still load, strict or not.

    def get_extra_state(self) -> dict:
        """``{"generator_state": uint8 tensor, "generator_device": str}`` of ``generator`` ({} without one)."""
        if self.generator is None:
            return {}
        return {"generator_state": self.generator.get_state(), "generator_device": str(self.generator.device)}

    def set_extra_state(self, state: dict) -> None:
        """Restores a generator saved by :meth:`get_extra_state` into ``generator``, creating one on
        the saved device when this memory has none (a generator's state is specific to its device type)."""
        problem = state_checks.extra_state_problem(state, self.generator)
        if problem is not None:
            raise ValueError(problem)
        if state:
            if self.generator is None:
                self.generator = torch.Generator(device=state["generator_device"])
            self.generator.set_state(state["generator_state"])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.generator is None:
            destination.pop(prefix + "_extra_state", None)
        state_checks.stamp(destination, prefix, self.config)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Everything is checked first (infvideo.state_checks), so a state that does not fit leaves
        # the memory as it was.
        names = state_checks.BUFFERS
        missing = [prefix + name for name in names if prefix + name not in state_dict]
        if strict and missing:
            missing_keys.extend(missing)
            return
        problems = state_checks.state_problems(self.config, self.generator, self._buffers, state_dict, prefix,
                                               local_metadata)
        if problems:
            error_msgs.extend(problems)
            return
        # The stream count and width are known only once a video arrives: take the saved shapes.
        for name in names:
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                self._buffers[name] = torch.empty_like(saved, device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "_extra_state" in missing_keys:
            missing_keys.remove(prefix + "_extra_state")  # saved without a generator: nothing to restore
        self._sync_fill()
