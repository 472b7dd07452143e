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


@pytest.mark.parametrize("device,backend,case", CASES)
def test_matches_reference(device, backend, case):
    streams, q_len, model, heads, n, points = case
    cfg = MemoryConfig(num_basis=n, basis="gaussian", quad_points=points)
    gen = torch.Generator().manual_seed(n)
    query = torch.randn(streams, q_len, model, generator=gen).to(device)
    keys = torch.randn(streams, n, model, generator=gen).to(device) * 0.1
    values = torch.randn(streams, n, model, generator=gen).to(device)
    quad = ops.quadrature_constants(cfg, device)
    context, density = ops.quadrature_attention(query, keys, values, heads, quad.mu, quad.sigma, quad.grid,
                                                quad.log_weight)
    const = ref_fit.on_device(ref_attention.attention_constants(cfg), device, torch.float64)
    a = (split_heads(query, heads) @ split_heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)).double()
    r, dens = ref_attention.quadrature_weights(a, const)
    expected = (r @ split_heads(values, heads).double()).transpose(1, 2).reshape(streams, q_len, model)
    assert rel_err(context, expected) < 1e-4
    assert rel_err(density.reshape(streams, heads, -1, points).sum(2), dens.sum(2)) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    quad = ops.quadrature_constants(MemoryConfig(num_basis=8, basis="gaussian", quad_points=20), torch.device(device))
    keys = torch.randn(2, 8, 8, generator=gen).to(device)
    for q_len, density in ((3, True), (17, False)):
        query = torch.randn(2, q_len, 8, generator=gen).to(device)
        torch.library.opcheck(torch.ops.infvideo.quadrature_attention.default,
                              (query, keys, keys, 2, quad.mu, quad.sigma, quad.grid, quad.log_weight, density))


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
    cotangents = [torch.randn(streams, q_len, model, generator=gen),
                  torch.randn(streams, heads * -(-q_len // 16), points, generator=gen)]
    quad = ops.quadrature_constants(cfg, device)
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
