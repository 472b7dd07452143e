"""``infvideo.ops.quadrature_attention`` (one kernel: Triton) against the reference quadrature.

Tolerance 1e-4 relative: float32 scores of size |aᵀψ| ~ 10² feed an exponential. Gradients (the
registered backward: the quadrature's softmax recomputed, the density output's gradient included)
against float64 reference gradients: 1e-4 relative in float32, conftest.GRAD_TOL for half types.
"""
from __future__ import annotations

import math

import pytest
import torch

import infvideo.ops as ops
from infvideo.config import MemoryConfig
from infvideo.reference import attention as ref_attention
from infvideo.reference import fit as ref_fit
from conftest import DTYPES, GRAD_TOL, OP_KERNELS, grads_of, kernel_cases, rel_err, split_heads

DEVICES = [device for device, backend in OP_KERNELS if backend == "triton"]
CASES = [param for param in kernel_cases([(2, 5, 24, 3, 12, 50)],
                                         gpu=[(16, 32, 768, 12, 256, 1000), (3, 9, 96, 3, 30, 777)])
         if param.values[1] == "triton"]


@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("device,backend,case", CASES)
def test_matches_reference(device, backend, case, preset):
    """Either preset's rule (Gauss–Legendre panels / trapezoid)."""
    streams, q_len, model, heads, n, points = case
    cfg = MemoryConfig(num_basis=n, basis="gaussian", quad_points=points, preset=preset)
    gen = torch.Generator().manual_seed(n)
    query = torch.randn(streams, q_len, model, generator=gen).to(device)
    keys = torch.randn(streams, n, model, generator=gen).to(device) * 0.1
    values = torch.randn(streams, n, model, generator=gen).to(device)
    quad = ops.quadrature_constants(cfg, device)
    nodes = quad.grid.numel()  # exact preset: 8·⌈T/8⌉
    context, density = ops.quadrature_attention(query, keys, values, heads, quad.mu, quad.sigma, quad.grid,
                                                quad.log_weight)
    const = ref_fit.on_device(ref_attention.attention_constants(cfg), device, torch.float64)
    a = (split_heads(query, heads) @ split_heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)).double()
    r, dens = ref_attention.quadrature_weights(a, const)
    expected = (r @ split_heads(values, heads).double()).transpose(1, 2).reshape(streams, q_len, model)
    assert rel_err(context, expected) < 1e-4
    assert rel_err(density.reshape(streams, heads, -1, nodes).sum(2), dens.sum(2)) < 1e-4


@pytest.mark.parametrize("device,backend,case", CASES)
def test_float32_within_1e5_of_float64_on_the_same_nodes(device, backend, case):
    """The kernels' own arithmetic (float32 scores, three-TF32 dots on a GPU) against float64 on the
    nodes, weights and basis they are given (float64 nodes and basis, float32 log-weights,
    upcast): within 1e-5, sharp densities included."""
    streams, q_len, model, heads, n, points = case
    quad = ops.quadrature_constants(MemoryConfig(num_basis=n, basis="gaussian", quad_points=points),
                                    torch.device(device))
    gen = torch.Generator().manual_seed(7)
    for scale in (0.05, 0.3):  # random and sharp densities
        query = torch.randn(streams, q_len, model, generator=gen).to(device)
        keys = torch.randn(streams, n, model, generator=gen).to(device) * scale
        values = torch.randn(streams, n, model, generator=gen).to(device)
        context, _ = ops.quadrature_attention(query, keys, values, heads, quad.mu, quad.sigma, quad.grid,
                                              quad.log_weight)
        assert rel_err(context, _same_nodes_context(query, keys, values, heads, quad)) < 1e-5, scale


def _same_nodes_context(query, keys, values, heads, quad):
    """The quadrature attention in float64 on the op's own constants (upcast) and inputs."""
    streams, q_len, model = query.shape
    mu, sigma, grid, log_weight = (x.double() for x in (quad.mu, quad.sigma, quad.grid, quad.log_weight))
    basis = torch.exp(-0.5 * ((grid[:, None] - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    a = split_heads(query, heads).double() @ split_heads(keys, heads).double().transpose(-1, -2)
    r, _ = ref_attention.quadrature_weights(a / math.sqrt(model // heads),
                                            ref_attention.Quadrature(basis, log_weight, None))
    return (r @ split_heads(values, heads).double()).transpose(1, 2).reshape(streams, q_len, model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device,backend,case", CASES)
def test_half_types_within_their_rounding(device, backend, case, dtype):
    """Half-type inputs: the context against float64 on the same (rounded) inputs within 1.5× the
    error of what torch gets at best in that dtype, the float32 quadrature with its output rounded
    to the dtype. (The table kernel takes the weights' product in single tf32 on a GPU: its
    error, ~5e-4 per term, stays below that rounding.)"""
    streams, q_len, model, heads, n, points = case
    quad = ops.quadrature_constants(MemoryConfig(num_basis=n, basis="gaussian", quad_points=points),
                                    torch.device(device))
    gen = torch.Generator().manual_seed(11)
    query = torch.randn(streams, q_len, model, generator=gen).to(device, dtype)
    keys = (torch.randn(streams, n, model, generator=gen) * 0.3).to(device, dtype)
    values = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    context, _ = ops.quadrature_attention(query, keys, values, heads, quad.mu, quad.sigma, quad.grid, quad.log_weight)
    expected = _same_nodes_context(query, keys, values, heads, quad)
    assert context.dtype == dtype
    # The CPU interpreter casts float32 to bfloat16 by truncation (twice round-to-nearest's error).
    slack = 3.0 if device == "cpu" else 1.5
    assert rel_err(context, expected) <= slack * rel_err(expected.to(dtype), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_table_kernel_takes_any_basis_order(device, monkeypatch):
    """The table kernel's bands assume nothing of the basis order: a shuffled basis (bands as wide
    as the basis) gives the sorted one's result, entry for entry permuted."""
    cfg = MemoryConfig(num_basis=24, basis="gaussian", quad_points=70)
    quad = ops.quadrature_constants(cfg, torch.device(device))
    gen = torch.Generator().manual_seed(4)
    query = torch.randn(2, 5, 12, generator=gen).to(device)
    keys = torch.randn(2, 24, 12, generator=gen).to(device) * 0.3
    values = torch.randn(2, 24, 12, generator=gen).to(device)
    order = torch.randperm(24, generator=gen).to(device)
    sorted_out = ops.quadrature_attention(query, keys, values, 2, quad.mu, quad.sigma, quad.grid, quad.log_weight)
    shuffled = ops.quadrature_attention(query, keys[:, order], values[:, order], 2, quad.mu[order],
                                        quad.sigma[order], quad.grid, quad.log_weight)
    for got, want in zip(shuffled, sorted_out):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_tiles_do_not_change_the_result(device, monkeypatch):
    """Tiles per program (a last program with fewer), rows per program, the combine's slices of
    the basis (one meeting no band of some tiles) and the band loads with or without a column
    mask give the default tiles' context and density."""
    from infvideo.kernels import quadrature_table
    cfg = MemoryConfig(num_basis=128, basis="gaussian", quad_points=300)
    quad = ops.quadrature_constants(cfg, torch.device(device))
    assert quadrature_table.basis_table(quad.mu, quad.sigma, quad.grid, 64)[2] < 128  # bands narrower than N
    gen = torch.Generator().manual_seed(5)
    query = torch.randn(3, 20, 24, generator=gen).to(device)
    keys = torch.randn(3, 128, 24, generator=gen).to(device) * 0.3
    values = torch.randn(3, 128, 24, generator=gen).to(device)

    def run():
        return ops.quadrature_attention(query, keys, values, 2, quad.mu, quad.sigma, quad.grid, quad.log_weight)
    want = run()
    for change in (dict(tiles_per_program=3, block_m=32), dict(combine_n=16, density_t=32),
                   dict(block_t=32, tiles_per_program=4), dict(vector_loads=True),
                   dict(vector_loads=True, block_t=32, density_t=16)):
        for key, value in change.items():
            monkeypatch.setitem(quadrature_table.CONFIG, key, value)
        for got, expected in zip(run(), want):
            assert rel_err(got, expected) < 1e-5, change


def test_table_bands_are_narrow_for_the_configurations():
    """The default Gaussian basis (N = 256, σ = 0.005 and 0.01) at T = 1,000: each tile of the
    table kernel's points needs a band of at most 64 of the 256 basis functions (CUTOFF·σ around
    the tile)."""
    from infvideo.kernels import quadrature_table
    from infvideo.kernels.quadrature_table import basis_table
    for preset in ("exact", "paper"):
        quad = ops.quadrature_constants(MemoryConfig(basis="gaussian", quad_points=1000, preset=preset),
                                        torch.device("cpu"))
        block_t = quadrature_table.CONFIG["block_t"]
        table, lo, band, align = basis_table(quad.mu, quad.sigma, quad.grid, block_t)
        tiles = -(-quad.grid.numel() // block_t)
        assert table.shape == (tiles * block_t, 256) and band <= 64
        assert not table[quad.grid.numel():].any()  # the last tile's rows past T are zeros
        assert lo.shape == (tiles,) and int(lo.min()) >= 0 and int(lo.max()) + band <= 256
        assert align == quadrature_table.LO_ALIGN and not (lo % align).any()  # 16-byte band loads


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    quad = ops.quadrature_constants(MemoryConfig(num_basis=8, basis="gaussian", quad_points=20), torch.device(device))
    keys = torch.randn(2, 8, 8, generator=gen).to(device)
    for q_len, density in ((3, True), (17, False)):
        query = torch.randn(2, q_len, 8, generator=gen).to(device)
        torch.library.opcheck(torch.ops.infvideo.quadrature_attention.default,
                              (query, keys, keys, 2, quad.mu, quad.sigma, quad.grid, quad.log_weight, density))


@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_step_on_the_kernel_matches_reference(device, preset, monkeypatch):
    """The fused step with its quadrature on this kernel (``ops.step.QUADRATURE_KERNEL``): context,
    coefficients and the sticky statistic (the rule's bins from the kernel's density) as the reference."""
    from torch import nn

    from infvideo import LongTermMemory
    from infvideo.ops import step as fused

    monkeypatch.setattr(fused, "QUADRATURE_KERNEL", True)
    torch.manual_seed(0)
    pk, pv = nn.Linear(24, 16).to(device), nn.Linear(24, 16).to(device)
    kwargs = dict(num_basis=12, past_samples=20, basis="gaussian", sigmas=(0.05, 0.1), quad_points=50, preset=preset)
    memories = [LongTermMemory(**kwargs, backend=name).to(device) for name in ("torch", "triton")]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for chunk in range(3):
            frames = torch.randn(2, 7, 24, generator=gen).to(device)
            query = torch.randn(2, 5, 16, generator=gen).to(device)
            outs = [m(frames, query, pk, pv, 4) for m in memories]
            assert rel_err(outs[1], outs[0]) < 1e-4, f"chunk {chunk}"
            assert rel_err(memories[1].coef, memories[0].coef) < 1e-4, f"chunk {chunk}"
            stats = [m.sticky_stats.sum(1) for m in memories]
            assert stats[1].shape[-1] == memories[0].config.sticky_bins
            assert rel_err(stats[1], stats[0]) < 1e-4, f"chunk {chunk}"


def _reference(query, keys, values, heads, const):
    """Context and grouped density in float64 from the reference quadrature."""
    streams, q_len, model = query.shape

    def split(x):
        return x.reshape(streams, x.shape[1], heads, model // heads).transpose(1, 2)

    a = split(query) @ split(keys).transpose(-1, -2) / math.sqrt(model // heads)
    r, dens = ref_attention.quadrature_weights(a, const)
    context = (r @ split(values)).transpose(1, 2).reshape(streams, q_len, model)
    groups = -(-q_len // 16)
    dens = torch.nn.functional.pad(dens, (0, 0, 0, groups * 16 - q_len))
    return context, dens.reshape(streams, heads, groups, 16, -1).sum(3).reshape(streams, heads * groups, -1)


GRAD_CASES = [param for param in kernel_cases([(2, 5, 24, 3, 12, 50), (1, 19, 16, 2, 8, 33)],
                                              gpu=[(16, 32, 768, 12, 256, 1000), (3, 9, 96, 3, 30, 777)])
              if param.values[1] == "triton"]


@pytest.mark.parametrize("device,backend,case", GRAD_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_matches_reference(device, backend, case, dtype):
    streams, q_len, model, heads, n, points = case
    cfg = MemoryConfig(num_basis=n, basis="gaussian", quad_points=points)
    gen = torch.Generator().manual_seed(n + 1)
    inputs = [(torch.randn(streams, rows, model, generator=gen) * scale).to(device, dtype)
              for rows, scale in ((q_len, 1.0), (n, 0.1), (n, 1.0))]
    quad = ops.quadrature_constants(cfg, device)
    # The rule's nodes: the exact preset's Gauss-Legendre panels may hold a few more than asked.
    cotangents = [torch.randn(streams, q_len, model, generator=gen),
                  torch.randn(streams, heads * -(-q_len // 16), quad.grid.shape[0], generator=gen)]
    got = grads_of(lambda q, k, v: ops.quadrature_attention(q, k, v, heads, quad.mu, quad.sigma, quad.grid,
                                                            quad.log_weight), inputs, cotangents)
    const = ref_fit.on_device(ref_attention.attention_constants(cfg), device, torch.float64)
    want = grads_of(lambda q, k, v: _reference(q, k, v, heads, const), [x.double() for x in inputs], cotangents)
    for name, a, b in zip(("query", "keys", "values"), got, want):
        assert a.dtype == dtype, name
        assert rel_err(a, b) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("device", DEVICES)
def test_backward_opcheck(device):
    gen = torch.Generator().manual_seed(1)
    quad = ops.quadrature_constants(MemoryConfig(num_basis=8, basis="gaussian", quad_points=20), torch.device(device))
    for q_len, density in ((3, True), (17, False)):
        query, keys, values = (torch.randn(2, rows, 8, generator=gen).to(device).requires_grad_()
                               for rows in (q_len, 8, 8))
        torch.library.opcheck(torch.ops.infvideo.quadrature_attention.default,
                              (query, keys, values, 2, quad.mu, quad.sigma, quad.grid, quad.log_weight, density))
