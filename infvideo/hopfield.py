"""Hopfield retrieval from a continuous-time memory, on the package's fit and attention ops.

Modern Hopfield networks with continuous-time memories (Santos et al., the same authors as ∞-Video)
compress L stored patterns x_1 … x_L ∈ R^d into N basis coefficients B ∈ R^{N×d} by the ridge fit
of SPEC section 5, with pattern j at position (j + ½)/L (the first chunk of SPEC section 6), so the
memory is the signal x̄(t) = Bᵀψ(t). A query is updated by the continuous attention of SPEC section 8
with identity projections and inverse temperature β:

    q ← Bᵀ r,   r_n = ∫₀¹ p(t) ψ_n(t) dt,   p(t) ∝ exp(β qᵀBᵀψ(t)),

repeated ``iterations`` times. For rectangular bins r = softmax_n(β qᵀB_n) (equal widths), exact;
for the Gaussian basis the integral is the package's quadrature. :class:`DiscreteHopfield` is the
modern Hopfield update over the L patterns themselves, q ← Xᵀ softmax(β X q), for comparison.
"""
from __future__ import annotations

import math

import torch

from . import _checks, ops
from .backends import backend_for, resolve_backend
from .config import MemoryConfig, _check_int, _check_real
from .reference import attention as ref_attention
from .reference import fit as ref_fit

__all__ = ["ContinuousHopfield", "DiscreteHopfield"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _beta(value) -> float:
    beta = _check_real("beta", value)
    if beta < 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return beta


def _batched(name: str, value) -> tuple[torch.Tensor, bool]:
    """``value`` as [S, rows, d] and whether it came without the leading S (a [rows, d] matrix)."""
    value = _checks.tensor(name, value, (2, 3))
    return (value[None], True) if value.dim() == 2 else (value, False)


class DiscreteHopfield:
    """Modern Hopfield retrieval over the stored patterns: q ← Xᵀ softmax(β X q).

    ``beta`` ≥ 0 is the inverse temperature, ``iterations`` ≥ 1 the number of updates.
    """

    def __init__(self, beta: float = 1.0, iterations: int = 1):
        self.beta = _beta(beta)
        self.iterations = _check_int("iterations", iterations, 1)
        self.patterns: torch.Tensor | None = None

    def store(self, patterns: torch.Tensor) -> None:
        """Keep the patterns X: [S, L, d] (S memories) or [L, d] (one)."""
        self.patterns = _batched("patterns", patterns)[0]

    def retrieve(self, queries: torch.Tensor) -> torch.Tensor:
        """Updated queries, same shape as ``queries`` ([S, Q, d] or [Q, d])."""
        memory = _stored(self.patterns)
        q, single = _matching(queries, memory)
        for _ in range(self.iterations):
            q = torch.softmax(self.beta * q @ memory.transpose(1, 2), dim=-1) @ memory
        return q[0] if single else q


class ContinuousHopfield:
    """Hopfield retrieval from L patterns compressed into N basis coefficients.

    ``store(X)`` fits B = GᵀX (X [S, L, d], pattern j at t = (j + ½)/L; rectangular bins: the
    segmented sum B_n = Σ_{j in bin n} X_j / (c_n + λ)); ``retrieve(q)`` applies
    q ← Bᵀ ∫ p(t) ψ(t) dt, p(t) ∝ exp(β qᵀBᵀψ(t)), ``iterations`` times.

    Args:
        num_basis: N, the number of basis functions (1 … 4096).
        basis: ``"rectangular"`` (N equal bins, exact attention) or ``"gaussian"`` (quadrature).
        beta: inverse temperature β ≥ 0.
        iterations: updates per ``retrieve`` (≥ 1).
        ridge: λ of the fit (0 allowed: empty bins read as zero, the Gaussian fit a pseudo-inverse).
        sigmas, quad_points: the Gaussian basis's widths and quadrature nodes (SPEC sections 4, 8).
        backend: ``"auto"``, ``"torch"`` (reference, any float dtype, differentiable), ``"cpu"`` /
            ``"cuda"`` (the C++/CUDA slot-attention kernels) or ``"triton"``. The kernels run the
            attention with keys = values = B, one head and the query scaled by β√d (the op divides
            by √d); they take float32 / float16 / bfloat16. The C++ kernels cover rectangular bins
            only: with the Gaussian basis ``"cpu"`` / ``"cuda"`` run the reference quadrature. The fit
            is the cached ridge constants of :mod:`infvideo.reference.fit` applied in torch on every
            backend (one product, done once per ``store``).
    """

    def __init__(self, num_basis: int, basis: str = "rectangular", beta: float = 1.0, iterations: int = 1,
                 ridge: float = 1e-3, sigmas: tuple = (0.005, 0.01), quad_points: int = 1000,
                 backend: str = "auto"):
        self.config = MemoryConfig(num_basis=num_basis, ridge=ridge, basis=basis, sigmas=sigmas,
                                   quad_points=quad_points)
        self.beta = _beta(beta)
        self.iterations = _check_int("iterations", iterations, 1)
        self.backend = resolve_backend(backend)
        self.coefficients: torch.Tensor | None = None

    def store(self, patterns: torch.Tensor) -> None:
        """Fit the coefficients B [S, N, d] to the patterns [S, L, d] (or [L, d]: S = 1)."""
        x = _batched("patterns", patterns)[0]
        constants = ref_fit.on_device(ref_fit.first_fit(self.config, x.shape[1]), x.device, x.dtype)
        if isinstance(constants, ref_fit.SegmentedFit):
            bins = constants.frame_bins
            if constants.frame_keep is not None:
                x, bins = x[:, constants.frame_keep], bins[constants.frame_keep]
            sums = x.new_zeros(x.shape[0], self.config.num_basis, x.shape[2]).index_add(1, bins, x)
            self.coefficients = sums * constants.scale[:, None]
        else:
            self.coefficients = torch.einsum("ln,sld->snd", constants.frame_g, x)

    def retrieve(self, queries: torch.Tensor) -> torch.Tensor:
        """Updated queries, same shape as ``queries`` ([S, Q, d] or [Q, d]; S matches the memory's,
        or the memory holds one set of patterns shared by every S)."""
        coef = _stored(self.coefficients)
        q, single = _matching(queries, coef)
        coef = coef.expand(q.shape[0], -1, -1)
        backend = backend_for(self.backend, q.device)
        if backend != "torch" and (q.dtype not in _KERNEL_DTYPES or coef.dtype not in _KERNEL_DTYPES):
            raise TypeError(f"backend={backend!r} takes float32, float16 or bfloat16 queries and patterns, got "
                            f"{q.dtype} and {coef.dtype} (backend='torch' takes any float dtype)")
        for _ in range(self.iterations):
            q = self._update(q, coef, backend)
        return q[0] if single else q

    def _update(self, q: torch.Tensor, coef: torch.Tensor, backend: str) -> torch.Tensor:
        """One step q ← Bᵀ r(β qᵀBᵀψ) on [S, Q, d] queries."""
        cfg = self.config
        if backend != "torch" and (cfg.basis == "rectangular" or backend == "triton"):
            scaled = q * (self.beta * math.sqrt(q.shape[-1]))  # the ops divide the scores by √d
            if cfg.basis == "rectangular":
                return ops.slot_attention(scaled, coef, coef, 1, backend=backend)[0]
            c = ops.quadrature_constants(cfg, q.device)
            return ops.quadrature_attention(scaled, coef, coef, 1, c.mu, c.sigma, c.grid, c.log_weight,
                                            write_density=False)[0]
        scores = self.beta * q @ coef.transpose(1, 2)  # a = β B q, [S, Q, N]
        constants = ref_fit.on_device(ref_attention.attention_constants(cfg), q.device, q.dtype)
        if cfg.basis == "rectangular":
            weights = ref_attention.slot_weights(scores, constants)
        else:
            weights = ref_attention.quadrature_weights(scores, constants)[0]
        return weights @ coef


def _stored(memory: torch.Tensor | None) -> torch.Tensor:
    if memory is None:
        raise RuntimeError("nothing stored: call store(patterns) before retrieve(queries)")
    return memory


def _matching(queries, memory: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Queries as [S, Q, d], checked against the stored memory [S' , ·, d] (S' = S or 1)."""
    q, single = _batched("queries", queries)
    if q.shape[-1] != memory.shape[-1]:
        raise ValueError(f"queries have width {q.shape[-1]}, the stored patterns {memory.shape[-1]}")
    if memory.shape[0] not in (1, q.shape[0]):
        raise ValueError(f"queries hold {q.shape[0]} batches, the memory {memory.shape[0]} (equal, or 1 shared)")
    if q.device != memory.device:
        raise ValueError(f"queries are on {q.device}, the stored patterns on {memory.device}")
    if q.dtype != memory.dtype:
        raise TypeError(f"queries are {q.dtype}, the stored patterns {memory.dtype}")
    return q, single
