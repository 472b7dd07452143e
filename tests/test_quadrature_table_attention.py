"""The CUDA kernel of ``quadrature_attention``'s forward (``infvideo::quadrature_table_attention``)
and its table (``kernels.basis_tables.chunked_basis_table``).

The table's invariants run everywhere (plain torch). The kernel runs on a GPU with the extension
built with CUDA, against float64 on the op's own nodes and basis (float32 inputs: 1e-5; half
types: 1.5× torch's own float32 quadrature rounded to the dtype) and against Triton's kernels on
the same call: odd sizes (N, T, Q, head widths not multiples of the kernel's 16/64 tiles), head
widths over 64 (several passes over the head's columns), bands of several 64-wide chunks (a
shuffled basis, a rule coarser than the tile), strided inputs, several streams, the density on
and off. ``tests/test_quadrature_attention.py`` runs the op's own cases, which take this kernel
on such a GPU too.
"""
from __future__ import annotations

import math

import pytest
import torch

import infvideo.ops as ops
from infvideo import backends
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.kernels import basis_tables
from infvideo.ops import quadrature_table_attention as cuda_op
from infvideo.reference import attention as ref_attention
from conftest import rel_err, split_heads

needs_kernel = pytest.mark.skipif(not (torch.cuda.is_available() and "cuda" in backends.built()),
                                  reason="needs a GPU and the extension built with CUDA")


@pytest.mark.parametrize("n,points,shuffle", [(256, 1000, False), (30, 777, False), (70, 37, False),
                                              (300, 200, True), (12, 50, False)])
def test_chunked_table_covers_every_band(n, points, shuffle):
    """Band starts are multiples of 8; every band (start + chunks·64) lies inside the table; every
    basis function within CUTOFF·σ of a tile's points lies inside that tile's band; the table holds
    ψ on the nodes as TF32 high and low parts (within 2⁻²¹ of float32 ψ), zeros past N and past T."""
    quad = ops.quadrature_constants(MemoryConfig(num_basis=n, basis="gaussian", quad_points=points),
                                    torch.device("cpu"))
    mu, sigma = quad.mu, quad.sigma
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        mu, sigma = mu[order], sigma[order]
    table, start, chunks = basis_tables.chunked_basis_table(mu, sigma, quad.grid)
    t, tile = quad.grid.numel(), basis_tables.CHUNK
    tiles = -(-t // tile)
    width = table.shape[2]
    assert table.shape[:2] == (2, tiles * tile) and width % 8 == 0 and width >= -(-n // tile) * tile
    assert start.dtype == torch.int32 and start.shape == (tiles,)
    assert not (start % basis_tables.CHUNK_ALIGN).any() and int((start + chunks * tile).max()) <= width
    z = (quad.grid[:, None] - mu[None, :]) / sigma[None, :]
    psi = torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    high, low = table
    assert not (high.view(torch.int32) & 0x1FFF).any() and not (low.view(torch.int32) & 0x1FFF).any()  # TF32
    value = psi.float()
    error = (high[:t, :n].double() + low[:t, :n].double() - value.double()).abs()
    assert (error <= 2.0 ** -21 * value.double() + 2.0 ** -126).all()  # relative, but for float32's subnormals
    assert not table[:, t:].any() and not table[:, :, n:].any()
    index = torch.arange(n)
    for k in range(tiles):
        nodes = quad.grid[k * tile:(k + 1) * tile]
        near = ((mu - nodes.min()) <= basis_tables.CUTOFF * sigma) & ((nodes.max() - mu) <= basis_tables.CUTOFF * sigma)
        inside = (index >= int(start[k])) & (index < int(start[k]) + chunks * tile)
        assert bool(inside[near].all()), k
    if not shuffle and n >= 256 and points >= 1000:
        assert chunks == 1  # the configurations' sorted centres: one chunk per tile


def _inputs(streams, q_len, model, n, dtype, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(streams, q_len, model, generator=gen)
    keys = torch.randn(streams, n, model, generator=gen) * scale
    values = torch.randn(streams, n, model, generator=gen)
    return tuple(x.to("cuda", dtype) for x in (query, keys, values))


def _float64(query, keys, values, heads, mu, sigma, grid, log_weight):
    """(context, density per head summed over queries) of the quadrature attention in float64 on
    the op's own constants and (rounded) inputs."""
    streams, q_len, model = query.shape
    mu, sigma, grid, log_weight = (x.double() for x in (mu, sigma, grid, log_weight))
    basis = torch.exp(-0.5 * ((grid[:, None] - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    a = split_heads(query, heads).double() @ split_heads(keys, heads).double().transpose(-1, -2)
    r, density = ref_attention.quadrature_weights(a / math.sqrt(model // heads),
                                                  ref_attention.Quadrature(basis, log_weight, None))
    context = (r @ split_heads(values, heads).double()).transpose(1, 2).reshape(streams, q_len, model)
    return context, density.sum(2)


def _triton(*args):
    with harness.overrides([(cuda_op, "ENABLED", False)]):
        return ops.quadrature_attention(*args)


# (streams, queries, model width, heads, N, nodes, shuffled basis)
CASES = [(16, 32, 768, 12, 256, 1000, False), (3, 9, 96, 3, 30, 777, False), (2, 17, 192, 2, 70, 37, False),
         (1, 40, 264, 2, 130, 300, False), (2, 5, 48, 1, 300, 200, True), (5, 16, 120, 4, 258, 1000, False)]


@needs_kernel
@pytest.mark.parametrize("write_density", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_float32_within_1e5_of_float64(case, write_density):
    streams, q_len, model, heads, n, points, shuffle = case
    quad = ops.quadrature_constants(MemoryConfig(num_basis=n, basis="gaussian", quad_points=points),
                                    torch.device("cuda"))
    mu, sigma = quad.mu, quad.sigma
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).cuda()
        mu, sigma = mu[order], sigma[order]
    assert cuda_op.kernel_table(torch.empty(1, device="cuda"), mu, sigma, quad.grid) is not None
    for scale in (0.05, 0.3):  # random and sharp densities
        query, keys, values = _inputs(streams, q_len, model, n, torch.float32, scale, seed=n + points)
        context, density = ops.quadrature_attention(query, keys, values, heads, mu, sigma, quad.grid,
                                                    quad.log_weight, write_density)
        want, want_density = _float64(query, keys, values, heads, mu, sigma, quad.grid, quad.log_weight)
        assert rel_err(context, want) < 1e-5, scale
        groups = -(-q_len // 16)
        if write_density:
            got = density.reshape(streams, heads, groups, -1).sum(2)
            assert rel_err(got, want_density) < 1e-5, scale
        else:
            assert density.shape == (streams, heads * groups, 1) and not density.any()
        if shuffle:
            continue  # Triton's bands for a shuffled basis of 300 need more shared memory than a GPU has
        triton_context, triton_density = _triton(query, keys, values, heads, mu, sigma, quad.grid, quad.log_weight,
                                                 write_density)
        assert rel_err(context, triton_context) < 2e-5
        if write_density:
            assert rel_err(density, triton_density) < 2e-5


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[:4])
def test_half_types_within_their_rounding(case, dtype):
    streams, q_len, model, heads, n, points, _ = case
    quad = ops.quadrature_constants(MemoryConfig(num_basis=n, basis="gaussian", quad_points=points),
                                    torch.device("cuda"))
    query, keys, values = _inputs(streams, q_len, model, n, dtype, 0.3, seed=3)
    context, _ = ops.quadrature_attention(query, keys, values, heads, quad.mu, quad.sigma, quad.grid, quad.log_weight)
    want, _ = _float64(query, keys, values, heads, quad.mu, quad.sigma, quad.grid, quad.log_weight)
    assert context.dtype == dtype
    assert rel_err(context, want) <= 1.5 * rel_err(want.to(dtype), want)


@needs_kernel
def test_strided_inputs():
    """Query, keys and values as column slices of wider tensors (row strides not their widths)."""
    quad = ops.quadrature_constants(MemoryConfig(num_basis=64, basis="gaussian", quad_points=130),
                                    torch.device("cuda"))
    query, keys, values = _inputs(3, 21, 2 * 96, 64, torch.float32, 0.3, seed=5)
    query, keys, values = query[..., 96:], keys[..., :96], values[..., 96:]
    context, density = ops.quadrature_attention(query, keys, values, 3, quad.mu, quad.sigma, quad.grid,
                                                quad.log_weight)
    want, _ = _float64(query, keys, values, 3, quad.mu, quad.sigma, quad.grid, quad.log_weight)
    assert rel_err(context, want) < 1e-5
    assert rel_err(density, _triton(query.contiguous(), keys.contiguous(), values.contiguous(), 3, quad.mu,
                                    quad.sigma, quad.grid, quad.log_weight)[1]) < 2e-5


@needs_kernel
def test_bad_input_names_the_argument():
    quad = ops.quadrature_constants(MemoryConfig(num_basis=32, basis="gaussian", quad_points=100),
                                    torch.device("cuda"))
    query, keys, values = _inputs(2, 4, 24, 32, torch.float32, 0.1, seed=0)
    table, start, chunks = basis_tables.chunked_basis_table(quad.mu, quad.sigma, quad.grid)
    op = torch.ops.infvideo.quadrature_table_attention
    with pytest.raises(RuntimeError, match="keys must have the query's dtype"):
        op(query, keys.half(), values, 2, table, start, chunks, quad.log_weight, True)
    with pytest.raises(RuntimeError, match="num_heads"):
        op(query, keys, values, 5, table, start, chunks, quad.log_weight, True)
    with pytest.raises(RuntimeError, match="table must be"):
        op(query, keys, values, 2, table[:, :64], start, chunks, quad.log_weight, True)
    with pytest.raises(RuntimeError, match="band_chunks"):
        op(query, keys, values, 2, table, start, 0, quad.log_weight, True)
    with pytest.raises(RuntimeError, match="log_weight must be a contiguous float32"):
        op(query, keys, values, 2, table, start, chunks, quad.log_weight.double(), True)
