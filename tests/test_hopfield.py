"""infvideo.hopfield: the continuous and discrete Hopfield updates against float64 closed forms."""
from __future__ import annotations

import pytest
import torch

import infvideo
from conftest import gaussian_basis_values, rel_err
from infvideo.backends import available_backends
from infvideo.hopfield import ContinuousHopfield, DiscreteHopfield

KERNEL_BACKENDS = [b for b in ("cpu", "triton") if b in available_backends()]
BACKENDS = ["torch", *KERNEL_BACKENDS]
# float32 kernels against a float64 closed form.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _dtype(backend: str) -> torch.dtype:
    return torch.float64 if backend == "torch" else torch.float32


def _device(backend: str) -> torch.device:
    """Triton runs on CUDA tensors where there is a GPU (else in its interpreter, on the CPU)."""
    return torch.device("cuda" if backend == "triton" and torch.cuda.is_available() else "cpu")


def _rect_fit(x: torch.Tensor, n: int, ridge: float) -> torch.Tensor:
    """B_n = Σ_{j: ⌊(j + ½)N/L⌋ = n} X_j / (c_n + λ), written by hand in float64: [S, N, d]."""
    length = x.shape[1]
    coef = torch.zeros(x.shape[0], n, x.shape[2], dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.float64)
    for j in range(length):
        b = min((2 * j + 1) * n // (2 * length), n - 1)
        coef[:, b] += x[:, j]
        counts[b] += 1
    return coef / (counts + ridge)[:, None]


def _rect_update(q: torch.Tensor, coef: torch.Tensor, beta: float, iterations: int) -> torch.Tensor:
    """Equal bins, exact integral: r = softmax_n(β qᵀB_n + log(1/N)), q ← Bᵀr (float64)."""
    n = coef.shape[1]
    for _ in range(iterations):
        logits = beta * q @ coef.transpose(1, 2) + torch.log(torch.tensor(1.0 / n, dtype=torch.float64))
        q = torch.softmax(logits, dim=-1) @ coef
    return q


def _patterns(s: int, length: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(s, length, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length,n,iterations", [(12, 5, 1), (7, 7, 2), (5, 16, 3)])
def test_rectangular_update_matches_closed_form(backend, length, n, iterations):
    x = _patterns(3, length, 6, seed=length + n)
    q = _patterns(3, 4, 6, seed=99)
    beta, ridge = 0.7, 0.25
    dtype, device = _dtype(backend), _device(backend)
    memory = ContinuousHopfield(n, beta=beta, iterations=iterations, ridge=ridge, backend=backend)
    memory.store(x.to(device, dtype))
    coef = _rect_fit(x, n, ridge)
    assert rel_err(memory.coefficients, coef) < TOL[dtype]
    out = memory.retrieve(q.to(device, dtype))
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_err(out, _rect_update(q, coef, beta, iterations)) < TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_and_shared_memory(backend):
    x = _patterns(1, 9, 5, seed=3)
    q = _patterns(4, 2, 5, seed=4)
    dtype, device = _dtype(backend), _device(backend)
    memory = ContinuousHopfield(4, beta=2.0, backend=backend)
    memory.store(x[0].to(device, dtype))  # [L, d]: one memory, shared by every batch of queries
    expected = _rect_update(q, _rect_fit(x, 4, 1e-3), 2.0, 1)
    assert rel_err(memory.retrieve(q.to(device, dtype)), expected) < TOL[dtype]
    single = memory.retrieve(q[1].to(device, dtype))  # [Q, d] in, [Q, d] out
    assert single.shape == (2, 5) and rel_err(single, expected[1]) < TOL[dtype]


def test_gaussian_update_matches_quadrature():
    """Gaussian basis: B = Gᵀ X of the padded ridge fit, r = trapezoid of p(t) ψ(t) on a fine grid."""
    x = _patterns(2, 10, 4, seed=5)
    q = _patterns(2, 3, 4, seed=6) * 0.1
    sigmas, n, ridge, beta = (0.05, 0.1), 8, 0.5, 0.3
    memory = ContinuousHopfield(n, basis="gaussian", beta=beta, ridge=ridge, sigmas=sigmas,
                                quad_points=4001, backend="torch")
    memory.store(x)
    # The fit, from SPEC section 5: B = (ΨᵀΨ + Ψ_padᵀΨ_pad + λI)⁻¹ Ψᵀ X, zero-valued pads continuing
    # the grid's spacing out to [-0.5, 1.5].
    t = (torch.arange(10, dtype=torch.float64) + 0.5) / 10
    pads = torch.cat([t[0] - 0.1 * torch.arange(5, 0, -1), t[-1] + 0.1 * torch.arange(1, 6)])
    psi, psi_pad = gaussian_basis_values(t, n, sigmas), gaussian_basis_values(pads, n, sigmas)
    system = psi.T @ psi + psi_pad.T @ psi_pad + ridge * torch.eye(n, dtype=torch.float64)
    coef = torch.linalg.solve(system, psi.T @ x)
    assert rel_err(memory.coefficients, coef) < 1e-6
    grid = torch.linspace(0, 1, 4001, dtype=torch.float64)
    w = torch.full_like(grid, 1.0 / 4000)
    w[[0, -1]] /= 2
    basis = gaussian_basis_values(grid, n, sigmas)
    density = torch.softmax(beta * q @ coef.transpose(1, 2) @ basis.T + w.log(), dim=-1)
    assert rel_err(memory.retrieve(q), density @ basis @ coef) < 1e-6
    if "triton" in available_backends():
        kernel = ContinuousHopfield(n, basis="gaussian", beta=beta, ridge=ridge, sigmas=sigmas,
                                    quad_points=4001, backend="triton")
        device = _device("triton")
        kernel.store(x.to(device, torch.float32))
        assert rel_err(kernel.retrieve(q.to(device, torch.float32)), density @ basis @ coef) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_point_on_separated_patterns(backend):
    """±1 patterns of width 64, N ≥ L (each its own bin), β = 1, λ = 0: a query with a quarter of
    its signs flipped lands on its pattern in one update and stays there (2 updates = 3)."""
    gen = torch.Generator().manual_seed(11)
    length, d = 8, 64
    x = torch.randint(0, 2, (length, d), generator=gen).to(torch.float64) * 2 - 1
    flip = torch.ones(length, d, dtype=torch.float64)
    flip[:, : d // 4] = -1
    dtype, device = _dtype(backend), _device(backend)
    for n in (length, 2 * length):
        retrieved = {}
        for iterations in (1, 2, 3):
            memory = ContinuousHopfield(n, beta=1.0, iterations=iterations, ridge=0.0, backend=backend)
            memory.store(x.to(device, dtype))
            retrieved[iterations] = memory.retrieve((x * flip).to(device, dtype))
        assert rel_err(retrieved[1], x) < 1e-6
        assert rel_err(retrieved[2], retrieved[3]) < TOL[dtype]


def test_discrete_matches_closed_form():
    x = _patterns(2, 6, 5, seed=7)
    q = _patterns(2, 3, 5, seed=8)
    beta = 0.8
    memory = DiscreteHopfield(beta=beta, iterations=2)
    memory.store(x)
    expected = q
    for _ in range(2):
        scores = torch.einsum("sqd,sld->sql", expected, x) * beta
        expected = torch.einsum("sql,sld->sqd", scores.exp() / scores.exp().sum(-1, keepdim=True), x)
    assert rel_err(memory.retrieve(q), expected) < 1e-12
    memory.store(x[1])  # [L, d] and [Q, d]
    assert rel_err(memory.retrieve(q[1]), expected[1]) < 1e-12


@pytest.mark.parametrize("make,message", [
    (lambda: ContinuousHopfield(0), "num_basis"),
    (lambda: ContinuousHopfield(4, basis="box"), "basis"),
    (lambda: ContinuousHopfield(4, beta=-1.0), "beta"),
    (lambda: ContinuousHopfield(4, beta=float("nan")), "beta"),
    (lambda: ContinuousHopfield(4, iterations=0), "iterations"),
    (lambda: ContinuousHopfield(4, ridge=-1.0), "ridge"),
    (lambda: ContinuousHopfield(4, backend="gpu"), "backend"),
    (lambda: DiscreteHopfield(beta="1"), "beta"),
    (lambda: DiscreteHopfield(iterations=1.5), "iterations"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


@pytest.mark.parametrize("cls", [lambda: ContinuousHopfield(4, backend="torch"), DiscreteHopfield])
def test_bad_tensors_are_named(cls):
    memory = cls()
    with pytest.raises(RuntimeError, match="store"):
        memory.retrieve(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="patterns"):
        memory.store(torch.zeros(3))
    with pytest.raises(TypeError, match="patterns"):
        memory.store(torch.zeros(3, 2, dtype=torch.int64))
    memory.store(torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match="width"):
        memory.retrieve(torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="batches"):
        memory.retrieve(torch.ones(3, 4, 3))
    with pytest.raises(TypeError, match="queries"):
        memory.retrieve(torch.ones(2, 4, 3, dtype=torch.float64))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernel_backends_refuse_float64(backend):
    memory = ContinuousHopfield(4, backend=backend)
    device = _device(backend)
    memory.store(torch.ones(5, 3, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="float32"):
        memory.retrieve(torch.ones(2, 3, dtype=torch.float64, device=device))


def test_exported_lazily():
    assert infvideo.ContinuousHopfield is ContinuousHopfield and infvideo.DiscreteHopfield is DiscreteHopfield
    assert {"ContinuousHopfield", "DiscreteHopfield", "LongTermMemory"} <= set(infvideo.__all__)
