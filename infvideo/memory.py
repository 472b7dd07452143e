"""`LongTermMemory`: the ∞-Video continuous-time memory of S video streams as an nn.Module."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from . import _checks, state_checks
from ._lru import LRUCache
from .backends import FUSED, backend_for, resolve_backend
from .config import MemoryConfig
from .early_commit import EarlyCoefficientCommit, commits_early
from .finite_check import NAMES, OUTCOME, DeviceCheck, copy_committed
from .finite_check import FRAMES as FRAMES_FLAG
from .finite_check import QUERY as QUERY_FLAG
from .graphs import StepGraphs, traced
from .ops import fused_step, step_constants
from .ops.step import step_records_grad
from .reference.fit import SegmentedFit, consolidation_fit, first_fit
from .reference.pooling import pool_frames
from .reference.step import attend, consolidate_chunk


def _drops_frames(cfg: MemoryConfig, length: int, first: bool, later: bool) -> bool:
    """Whether a fit of this step leaves a frame out (paper preset: the frame placed at t = 1 lies in
    no bin), so that a non-finite value in it never reaches the new coefficients."""
    fits = ([first_fit(cfg, length)] if first else []) + ([consolidation_fit(cfg, length)] if later else [])
    return any(isinstance(fit, SegmentedFit) and fit.frame_keep is not None for fit in fits)


def _outcome_error(projections: tuple, when: str) -> None:
    """Raises for a step whose frames and query were finite but whose context or sticky statistic
    was not: names a projection parameter holding NaN or Inf (looked at only now, so a good step
    never reads them), else the overflowing scores."""
    _checks.parameters_finite(list(zip(("proj_key", "proj_value"), projections)))
    raise ValueError(f"frames and query are finite but the step's context or sticky statistics are not (NaN or "
                     f"Inf){when}: their values are too large and the attention scores overflow, or a projection "
                     "returns NaN or Inf; the memory is unchanged")


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
        quad_points: T ≥ 2, quadrature nodes for smooth bases: Gauss–Legendre, 8 on each of
            ⌈T/8⌉ equal panels (exact preset; T nodes when T is a multiple of 8, else the next
            multiple of 8), or the trapezoid on T points (paper preset, and the rectangular
            basis's paper grid).
        backend: a name of ``infvideo.backends`` (``"auto"``, ``"torch"``, ``"triton"``,
            ``"cuda"``, ``"cpu"``); ``"auto"`` picks per device (Triton on CUDA tensors, the C++
            kernels on CPU tensors where the extension is built, else the torch reference) and
            INFVIDEO_BACKEND overrides it. Every backend is differentiable: a step that autograd
            records (grad enabled and frames, query or a projection parameter requiring grad, the
            default for an nn.Module) runs the fused ops forward and their registered backward
            kernels. Float64 steps with gradients take the torch reference on a fused backend
            (its kernels take float32 / float16 / bfloat16); the memory warns once.
        density: ``"gibbs"`` (continuous softmax) or ``"gaussian"`` (𝒩(μ, σ²) fitted to the
            softmax moments; Gaussian basis only).
        generator: torch.Generator for ``multinomial`` / ``upstream`` sampling (without one they
            draw from torch's default generators). A step that raises leaves every generator it
            draws from as it was.
        check_finite: commit a step only when it is finite (below): ``True``, ``"async"`` (the
            device-flag form on every device, CPU included) or ``False``. Skipped under torch.compile.
        cuda_graphs: replay eager CUDA steps from CUDA graphs the memory captures itself
            (``infvideo.graphs``, the default), which removes most of a small step's host cost: an
            eager step that starts and ends with every stream filled is captured once at its
            signature (shapes, dtypes, device, projection weights), and later calls there copy the
            inputs into the graph, replay it and return a copy of its output. Used for fused
            backends, no autograd, every stream filled, a sampler without a host generator and
            chunks of at most 256 MiB (larger steps are bound by the GPU, and the input copy would
            cost more than it saves); other calls run eagerly. Each captured signature keeps its
            own input buffers (a copy of the chunk's size) and the step's intermediates.
        launch_plans: ignored, with a FutureWarning (the C++ launch plans it chose were removed).

    The finiteness check looks at the frames (through the new coefficients, which every frame a
    fit uses reaches), the query, and the step's outcome (context and sticky statistic), and
    commits nothing when one holds NaN or Inf. The error is a ``ValueError`` naming ``frames`` or
    ``query``; a non-finite outcome from finite inputs names a projection parameter that holds
    NaN or Inf, else says the scores overflowed.

    - Synchronous (CPU tensors, and every step that draws from a generator): the step raises
      before anything changes, generators included (one host synchronisation per step).
    - Asynchronous (other CUDA steps, and everywhere with ``check_finite="async"``): the step
      never waits for the device, so it can be replayed from a graph. It commits its
      coefficients, statistic and fill state through a device flag, so a step with a non-finite
      input, and every step after it until the error is raised, leaves the state as it was before
      that step; its context is returned as computed. The error is raised by the first call that
      finds the flag up (normally the next one: the device copies the flag to the host after
      each step) and by :meth:`synchronize`, which waits for the device; raising clears the flag,
      and the memory goes on from the state before the failed step. Call ``synchronize()`` where
      an error must surface at once (e.g. before saving a ``state_dict``).

    Compiling (``torch.compile(memory, fullgraph=True)``) and capturing a CUDA graph both need one
    eager step first (it puts the constants on the device), and then drive the memory only
    through the compiled function or the graph's replays; fused steps with rectangular bins and
    quantile or uniform sampling trace whole.

    Gradients: a step is differentiable with respect to its frames, query and the projections'
    weights and biases (``loss.backward()`` after ``memory(...)``); the memory's state is detached
    between steps, so gradients flow within a step and never into earlier chunks through the
    stored coefficients (truncated backpropagation through time, one chunk long). The sticky
    sample indices are not differentiable. A module that needs no gradients runs faster under
    ``torch.no_grad()`` / ``torch.inference_mode()`` (and only then replays CUDA graphs).

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
                 generator: torch.Generator | None = None, check_finite: bool | str = True,
                 cuda_graphs: bool = True, launch_plans=None):
        super().__init__()
        self.config = MemoryConfig(num_basis, tau, past_samples, ridge, basis, tuple(sigmas)
                                   if isinstance(sigmas, (list, tuple)) else sigmas, sticky,
                                   sampling, preset, quad_points, density)
        self.backend = resolve_backend(backend)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        if not (isinstance(check_finite, bool) or check_finite == "async"):
            raise ValueError(f"check_finite must be True, False or 'async', got {check_finite!r}")
        self.check_finite = check_finite
        if launch_plans is not None:
            warnings.warn("LongTermMemory(launch_plans=...) is ignored: the C++ launch plans were removed, and the "
                          "memory's own CUDA graphs (cuda_graphs=True, the default) take their place",
                          FutureWarning, stacklevel=2)
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be a bool, got {type(cuda_graphs).__name__}")
        self._graphs = StepGraphs() if cuda_graphs else None
        # Host-side mirror of `filled` ("empty", "full" or "mixed") so a step never reads the
        # device to know which streams hold a video.
        self._fill = "empty"
        # Per device: the backend a call there uses, the fused step's constants per chunk length,
        # and the asynchronous finiteness check. Filled by eager calls; a compiled or captured
        # step only reads them.
        self._backends: dict = {}
        self._step_constants = LRUCache(64)  # the 64 most recent (chunk length, device) keys
        self._device_checks: dict = {}
        # Whether a fit leaves frames out, per (chunk length, fill state): hashing the
        # configuration to ask the fits' caches costs more host time than a small step's kernels.
        self._drops_frames = LRUCache(64)
        self._warned: set[str] = set()  # reasons already warned about (_warn_once)
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

    @property
    def is_full(self) -> bool:
        """Every stream holds a video (known on the host, without reading the device)."""
        return self._fill == "full"

    def backend_on(self, device: torch.device) -> str:
        """The concrete backend of this memory's steps on ``device`` tensors (``infvideo.backends``)."""
        backend = self._backends.get(device)
        if backend is None:
            backend = self._backends[device] = backend_for(self.backend, device)
        return backend

    def _sync_fill(self) -> None:
        filled = self.filled
        self._fill = ("empty" if not bool(filled.any()) else "full" if bool(filled.all()) else "mixed")

    @property
    def checks_asynchronously(self) -> bool:
        """Some step's finiteness check ran on the device and may raise later (class docstring)."""
        return bool(self._device_checks)

    def synchronize(self) -> None:
        """Waits for this memory's CUDA steps and raises the error of one whose input was not finite."""
        for device in self._device_checks:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        self.raise_failed_check()

    def raise_failed_check(self, projections: tuple = ()) -> None:
        """Raises the error of an earlier asynchronously checked step that was not finite, as far
        as the host has seen it (without waiting: :meth:`synchronize` waits). ``projections``:
        (proj_key, proj_value), looked at when only that step's outcome was not finite."""
        for check in self._device_checks.values():
            flag = check.failed()
            if flag is not None:
                self._sync_fill()
                later = " (in a step since the last check; the memory kept its state from before that step)"
                if NAMES[flag] is not None:
                    raise ValueError(f"{NAMES[flag]} contains NaN or Inf{later}")
                _outcome_error(projections, later)

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

    def check(self, frames, query, proj_key, proj_value, num_heads):
        """Checks a step's inputs against each other and the memory (host metadata only), and raises
        the error of an earlier step whose input the device found non-finite; returns frames, query."""
        if self._device_checks and not torch.compiler.is_compiling():
            # A compiled step reads no host flag (nor does it check or commit through one).
            self.raise_failed_check((proj_key, proj_value))
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
        graphs = self._graphs
        if graphs is not None:  # a step captured at these inputs' signature (checked when captured)
            context = graphs.replay(self, frames, query, proj_key, proj_value, num_heads)
            if context is not None:
                return context
        was_full = self.is_full
        frames, query = self.check(frames, query, proj_key, proj_value, num_heads)
        # A rejected step leaves the samplers' generators as they were, so that the next good
        # step draws what it would have drawn without the bad call.
        draws = [(generator, generator.get_state()) for generator in self._sampling_generators(frames.device)]
        try:
            context, coef, stats = self.compute(frames, query, proj_key, proj_value, num_heads)
            self.commit(frames, query, context, coef, stats, (proj_key, proj_value), synchronous=bool(draws))
        except BaseException:
            for generator, state in draws:
                generator.set_state(state)
            raise
        if graphs is not None and was_full:
            # Captured after an eager step of the same kind (memory full before and after), so
            # that every kernel the graph records has been compiled and run once already.
            graphs.capture(self, frames, query, proj_key, proj_value, num_heads)
        return context if context.dtype == query.dtype else context.to(query.dtype)

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
                or traced(device):
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

    def compute(self, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value, num_heads: int):
        """(context, new coefficients, new statistic or None) of a step on checked inputs; changes nothing."""
        backend = self.backend_on(frames.device)
        dtype = torch.float64 if torch.float64 in (frames.dtype, query.dtype) else torch.float32
        past = None if self._fill == "empty" else self.coef
        filled = self.filled if self._fill == "mixed" else None
        stats = None if self._fill == "empty" else self.sticky_stats
        if (backend in FUSED and dtype == torch.float64
                and step_records_grad(frames, query, proj_key, proj_value)):
            self._warn_once("float64", f"a float64 step with gradients runs on the torch reference: the {backend!r} "
                            "kernels take float32, float16 and bfloat16 inputs (their backward accumulates in "
                            "float32)")
        fused = backend in FUSED and dtype == torch.float32
        if fused:
            key = (frames.shape[1], frames.device)
            consts = self._step_constants.get(key)
            if consts is None:
                consts = self._step_constants[key] = step_constants(self.config, *key)
            early = None
            if commits_early(self, frames, query, proj_key, proj_value):
                early = EarlyCoefficientCommit(self.coef)
            context, coef, stats = fused_step(self.config, consts, frames, query, proj_key, proj_value, num_heads, past,
                                              filled, stats, self.generator, keep_stats=self.config.sticky,
                                              backend=backend, on_coefficients=early,
                                              mass_out=None if early is None else self.sticky_stats)
            return context, coef if early is None else early.join(coef), stats
        coef = consolidate_chunk(self.config, pool_frames(frames, dtype), past, filled, stats, self.generator)
        context, stats = attend(self.config, coef, query.to(dtype), proj_key, proj_value, num_heads,
                                keep_stats=self.config.sticky)
        return context, coef, stats

    def _warn_once(self, reason: str, message: str) -> None:
        """Warns ``message`` the first time this memory meets ``reason`` (e.g. a step that must
        take the reference instead of its fused backend)."""
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(f"infvideo.LongTermMemory: {message}", RuntimeWarning, stacklevel=6)

    def commit(self, frames: torch.Tensor, query: torch.Tensor, context: torch.Tensor, coef: torch.Tensor,
               stats: torch.Tensor | None, projections: tuple = (), synchronous: bool = False) -> None:
        """Makes a computed step the memory's state, after the finiteness check (class docstring;
        ``projections``: (proj_key, proj_value), named when their parameters made the outcome
        non-finite; ``synchronous``: check on the host wherever ``check_finite`` is True).

        Eager steps swap the new tensors in; inside torch.compile or a CUDA graph capture they are
        copied into the existing buffers, so each replay updates the memory the next one reads."""
        # The state carries no autograd history into the next step (gradients flow within a step).
        # An early commit hands back the buffers themselves (infvideo.early_commit): nothing to copy.
        coef = coef.detach() if coef.requires_grad else coef
        stats = stats.detach() if stats is not None and stats.requires_grad else stats
        streams, device = coef.shape[0], coef.device
        in_place = traced(device)
        if stats is None and self.sticky_stats.shape[0] != streams:
            stats = torch.zeros(streams, 1, self.config.sticky_bins, device=device)
        # A full memory stays full whatever this step does: only a first (or partial) fill writes `filled`.
        filled = None if self._fill == "full" else torch.ones(streams, dtype=torch.bool, device=device)
        if self.check_finite and not torch.compiler.is_compiling():
            # Non-finite frames reach the new coefficients, so one small reduction covers them, the
            # query and the outcome; only frames that a fit leaves out (paper preset) need a look
            # of their own.
            named = [(FRAMES_FLAG, coef), (QUERY_FLAG, query)]
            drops_key = (frames.shape[1], self._fill)
            drops = self._drops_frames.get(drops_key)
            if drops is None:
                drops = self._drops_frames[drops_key] = _drops_frames(self.config, frames.shape[1], self._fill != "full",
                                                                      self._fill != "empty")
            if drops:
                named.append((FRAMES_FLAG, frames))
            named.append((OUTCOME, context))
            if stats is not None:
                named.append((OUTCOME, stats))
            if self.check_finite is True and (synchronous or device.type != "cuda") and not in_place:
                bad = _checks.nonfinite([value for _, value in named])
                if bad is not None:
                    if NAMES[named[bad][0]] is not None:
                        raise ValueError(f"{NAMES[named[bad][0]]} contains NaN or Inf")
                    _outcome_error(projections, "")
            else:
                coef, stats, filled = self._commit_if_finite(named, coef, stats, filled, in_place)
        self._store((("coef", coef), ("sticky_stats", stats), ("filled", filled)), in_place)
        if filled is not None:
            self._fill = "full"

    def _commit_if_finite(self, named, coef, stats, filled, in_place: bool):
        """The step's new state where everything the check looks at is finite, else the current one
        (a device select; ``in_place``: written into the current buffers)."""
        check = self._device_checks.get(coef.device)
        if check is None:
            check = self._device_checks[coef.device] = DeviceCheck(coef.device)
        check.raise_flags(named)
        pairs, chosen = [], []
        for name, new in (("coef", coef), ("sticky_stats", stats), ("filled", filled)):
            current = self._buffers[name]
            if new is None:
                chosen.append(None)
                continue
            if self._fill == "empty" or current.shape != new.shape or current.dtype != new.dtype:
                current = torch.zeros_like(new)  # nothing committed before
            out = current if in_place and current is self._buffers[name] else new
            pairs.append((new, current, out))
            chosen.append(out)
        check.select(pairs)
        return chosen

    def _store(self, values, in_place: bool) -> None:
        """Makes each value of ``values`` ((buffer name, tensor or None), ...) that buffer: swapped
        in, or ``in_place`` copied into it (``finite_check.copy_committed``)."""
        copies = []
        for name, value in values:
            # nn.Module.__setattr__ is bypassed: it costs more than the rest of a small step.
            current = self._buffers[name]
            if value is None or value is current:
                continue
            if in_place and current.shape == value.shape and current.dtype == value.dtype:
                copies.append((value, current))
            else:
                self._buffers[name] = value
        if copies:
            copy_committed(copies)

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
        from . import state_checks  # only state loading needs it
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
        from . import state_checks
        state_checks.stamp(destination, prefix, self.config)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Everything is checked first (infvideo.state_checks), so a state that does not fit leaves
        # the memory as it was.
        from . import state_checks
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
