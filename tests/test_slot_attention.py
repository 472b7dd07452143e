"""``infvideo.ops.slot_attention`` on every kernel present against the reference slot weights.

Tolerances (relative): 1e-5 with float32 keys/values (on a GPU each dot as three TF32 products,
float32-accurate; in the interpreter the same three products in float32), 2e-2 with fp16/bf16 ones
(the reference sees the same rounded K/V in float32; the context is rounded to the query's dtype).
Gradients (the registered backward, context and mass cotangents together) against float64
reference gradients at the same rounded inputs: conftest.GRAD_TOL.
"""
from __future__ import annotations

import math

import pytest
import torch

import infvideo.ops as ops
from infvideo import backends
from infvideo.config import MemoryConfig
from infvideo.reference import attention as ref_attention
from infvideo.reference import fit as ref_fit
from conftest import DTYPES, GRAD_TOL, OP_KERNELS, grads_of, kernel_cases, kernel_id, rel_err, split_heads

# (streams, Q, D, H, N). 16 streams take two blocks of queries per Triton program; Q = 33 leaves
# one group of 16 queries partly empty.
CASES = kernel_cases([(2, 5, 24, 3, 13), (1, 3, 8, 2, 40), (16, 33, 24, 3, 13)],
                     large=[(3, 17, 96, 3, 33), (1, 32, 768, 12, 256)],
                     gpu=[(5, 32, 768, 12, 64), (3, 7, 96, 3, 1000), (64, 32, 768, 12, 256), (2, 9, 600, 2, 31)])


@pytest.mark.parametrize("device,backend,case", CASES)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, backend, case, preset, dtype):
    streams, q_len, model, heads, n = case
    gen = torch.Generator().manual_seed(n + q_len)
    query = torch.randn(streams, q_len, model, generator=gen).to(device, dtype)
    keys = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    values = torch.randn(streams, n, model, generator=gen).to(device, dtype)
    const = ref_fit.on_device(ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset)), device,
                              torch.float32)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    context, mass = ops.slot_attention(query, keys, values, heads, const.log_weight, null, backend=backend)
    a = split_heads(query, heads) @ split_heads(keys, heads).transpose(-1, -2) / math.sqrt(model // heads)
    r = ref_attention.slot_weights(a, const)
    expected = (r @ split_heads(values, heads)).transpose(1, 2).reshape(streams, q_len, model)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert context.dtype == dtype
    assert rel_err(context, expected) < tol
    groups = -(-q_len // 16)
    assert mass.shape == (streams, heads * groups, n)  # the op's groups of 16 queries per head
    assert rel_err(mass.reshape(streams, heads, groups, n).sum(2), r.sum(2)) < tol


# Float32 K/V: small and several-tile shapes, and on a GPU head width 64 over 1,000 slots (several
# tiles) and 256 (one tile) with two query blocks per program (17 streams).
FLOAT32_CASES = [c for c in kernel_cases([(2, 5, 24, 3, 13), (1, 3, 8, 2, 300)],
                                         gpu=[(2, 32, 768, 12, 1000), (17, 32, 768, 12, 256)])
                 if c.values[1] == "triton"]


@pytest.mark.parametrize("device,backend,case", FLOAT32_CASES)
@pytest.mark.parametrize("split", [True, False], ids=["three-tf32", "float32-dots"])
def test_float32_kv_either_way(device, backend, case, split, monkeypatch):
    """Float32 K/V on the Triton kernel both ways it can take them, three TF32 products per dot
    (the default where the GPU has TF32) and float32 dots, within 1e-5 of the reference; over several
    tiles of slots at head width 64 too, where staged float32 V once took more shared memory than an
    H200 has."""
    monkeypatch.setitem(backends.triton_kernels()["attention"].CONFIG, "split_float32", split)
    streams, q_len, model, heads, n = case
    gen = torch.Generator().manual_seed(n)
    query, keys, values = (torch.randn(streams, rows, model, generator=gen).to(device) for rows in (q_len, n, n))
    const = ref_attention.attention_constants(MemoryConfig(num_basis=n))
    const32 = ref_fit.on_device(const, device, torch.float32)
    context, mass = ops.slot_attention(query, keys, values, heads, const32.log_weight, None, backend=backend)
    a = split_heads(query, heads).double() @ split_heads(keys, heads).double().transpose(-1, -2)
    a = a / math.sqrt(model // heads)
    r = ref_attention.slot_weights(a, ref_fit.on_device(const, device, torch.float64))
    expected = (r @ split_heads(values, heads).double()).transpose(1, 2).reshape(streams, q_len, model)
    assert rel_err(context, expected) < 1e-5
    assert rel_err(mass.reshape(streams, heads, -1, n).sum(2), r.sum(2)) < 1e-5


@pytest.mark.parametrize("device,backend", [pair for pair in OP_KERNELS if pair[1] == "triton"], ids=kernel_id)
def test_mass_written_where_asked(device, backend):
    """``mass_out`` (a capturing memory's buffer): the Triton kernel writes there the mass it would
    return, and leaves a tensor of another shape, dtype or layout alone; ``slot_attention_unchecked``
    passes it on where it launches the kernel itself (CUDA, outside autograd) and not otherwise."""
    from infvideo.ops.slot_attention import slot_attention_unchecked
    kernel = backends.triton_kernels()["attention"].slot_attention
    gen = torch.Generator().manual_seed(3)
    query, keys, values = (torch.randn(2, rows, 24, generator=gen).to(device) for rows in (5, 13, 13))
    expected_context, expected_mass = kernel(query, keys, values, 3, None, None)
    buffer = torch.full_like(expected_mass, float("nan"))
    context, mass = kernel(query, keys, values, 3, None, None, mass_out=buffer)
    assert mass is buffer
    torch.testing.assert_close(mass, expected_mass, rtol=0, atol=0)
    torch.testing.assert_close(context, expected_context, rtol=0, atol=0)
    for wrong in (torch.zeros(2, 4, 13, device=device), expected_mass.double(),
                  torch.zeros(13, 3, 2, device=device).transpose(0, 2)):
        before = wrong.clone()
        _, mass = kernel(query, keys, values, 3, None, None, mass_out=wrong)
        assert mass is not wrong and torch.equal(wrong, before)
        torch.testing.assert_close(mass, expected_mass, rtol=0, atol=0)
    buffer.fill_(float("nan"))
    _, mass = slot_attention_unchecked(query, keys, values, 3, backend=backend, mass_out=buffer)
    assert (mass is buffer) == (device == "cuda")
    torch.testing.assert_close(mass, expected_mass, rtol=0, atol=0)
    _, mass = slot_attention_unchecked(query, keys.requires_grad_(), values, 3, backend=backend, mass_out=buffer)
    assert mass is not buffer and mass.grad_fn is not None


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_opcheck(device, backend):
    """The one schema, its fake (mass groups from Q alone) and the kernel ``backend`` picks."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 7, 8, generator=gen).to(device)
    logw = torch.randn(7, generator=gen).to(device)
    op = torch.ops.infvideo.slot_attention.default
    for q_len, log_weight, null in ((3, logw, -3.0), (17, None, None)):  # one and two groups of queries
        query = torch.randn(2, q_len, 8, generator=gen).to(device)
        torch.library.opcheck(op, (query, keys, keys, 2, log_weight, null, backend))


def _reference(query, keys, values, heads, const):
    """Context and mass of the slot attention in the inputs' dtype (float64 here), from the reference."""
    streams, q_len, model = query.shape

    def split(x):  # conftest.split_heads without its cast to float32
        return x.reshape(streams, x.shape[1], heads, model // heads).transpose(1, 2)

    a = split(query) @ split(keys).transpose(-1, -2)
    r = ref_attention.slot_weights(a / math.sqrt(model // heads), const)
    context = (r @ split(values)).transpose(1, 2).reshape(streams, q_len, model)
    groups = -(-q_len // 16)
    padded = torch.nn.functional.pad(r, (0, 0, 0, groups * 16 - q_len))
    return context, padded.reshape(streams, heads, groups, 16, -1).sum(3).reshape(streams, heads * groups, -1)


# Head widths 8, 12 (not a power of 2) and 16; N = 70 spans two tiles of slots; Q = 33 leaves a
# group of 16 queries partly empty.
GRAD_CASES = kernel_cases([(2, 5, 24, 3, 13), (2, 7, 24, 2, 20), (3, 19, 24, 3, 40), (1, 33, 32, 2, 70)], large=[(2, 32, 768, 12, 256)],
                          gpu=[(16, 32, 768, 12, 256), (3, 7, 96, 3, 1000)])


@pytest.mark.parametrize("device,backend,case", GRAD_CASES)
@pytest.mark.parametrize("preset", ["exact", "paper"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_matches_reference(device, backend, case, preset, dtype):
    """dq, dK, dV of the registered backward (flash-style recomputation, null slot and log-weights
    of the paper preset, the mass output's gradient too) against float64 reference gradients."""
    streams, q_len, model, heads, n = case
    gen = torch.Generator().manual_seed(3 * n + q_len)
    inputs = [torch.randn(streams, rows, model, generator=gen).to(device, dtype) for rows in (q_len, n, n)]
    cotangents = [torch.randn(streams, q_len, model, generator=gen),
                  torch.randn(streams, heads * -(-q_len // 16), n, generator=gen)]
    const = ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset))
    const32 = ref_fit.on_device(const, device, torch.float32)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    got = grads_of(lambda q, k, v: ops.slot_attention(q, k, v, heads, const32.log_weight, null, backend=backend),
                   inputs, cotangents)
    const64 = ref_fit.on_device(const, device, torch.float64)
    want = grads_of(lambda q, k, v: _reference(q, k, v, heads, const64), [x.double() for x in inputs], cotangents)
    for name, a, b in zip(("query", "keys", "values"), got, want):
        assert a.dtype == dtype, name
        assert rel_err(a, b) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
def test_backward_opcheck(device, backend):
    """opcheck with inputs that require grad: the autograd registration on the op itself, and the
    backward op's schema, fake and kernels as torch.compile's AOT dispatch traces them."""
    gen = torch.Generator().manual_seed(1)
    logw = torch.randn(7, generator=gen).to(device)
    for q_len, log_weight, null in ((3, logw, -3.0), (17, None, None)):
        query, keys, values = (torch.randn(2, rows, 8, generator=gen).to(device).requires_grad_()
                               for rows in (q_len, 7, 7))
        torch.library.opcheck(torch.ops.infvideo.slot_attention.default,
                              (query, keys, values, 2, log_weight, null, backend))
        grad_mass = torch.randn(2, 2 * -(-q_len // 16), 7, generator=gen).to(device)
        torch.library.opcheck(torch.ops.infvideo.slot_attention_backward.default,
                              (torch.randn(2, q_len, 8, generator=gen).to(device), grad_mass, query.detach(),
                               keys.detach(), values.detach(), 2, log_weight, null, backend))


def test_reference_gradcheck():
    """The reference the kernels' gradients are compared with is itself right (float64 gradcheck,
    null slot and log-weights of the paper preset)."""
    const = ref_fit.on_device(ref_attention.attention_constants(MemoryConfig(num_basis=9, preset="paper")),
                              torch.device("cpu"), torch.float64)
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, rows, 8, generator=gen, dtype=torch.float64).requires_grad_() for rows in (17, 9, 9)]
    assert torch.autograd.gradcheck(lambda q, k, v: _reference(q, k, v, 2, const), inputs)


@pytest.mark.parametrize("device,backend", [k for k in OP_KERNELS if k[1] != "triton"], ids=kernel_id)
def test_backward_rejects_bad_input_naming_the_argument(device, backend):
    """Direct calls of the backward op reach the C++ checks (CPU) or the plain-torch kernel's (CUDA)."""
    query, keys = torch.randn(2, 3, 8, device=device), torch.randn(2, 7, 8, device=device)
    with pytest.raises((RuntimeError, ValueError), match="grad_context"):
        torch.ops.infvideo.slot_attention_backward(torch.randn(2, 4, 8, device=device), None, query, keys, keys, 2,
                                                   None, None, backend)
    with pytest.raises((RuntimeError, ValueError), match="grad_mass"):
        torch.ops.infvideo.slot_attention_backward(torch.randn(2, 3, 8, device=device),
                                                   torch.randn(2, 5, 7, device=device), query, keys, keys, 2, None,
                                                   None, backend)


@pytest.mark.parametrize("device,backend", OP_KERNELS, ids=kernel_id)
@pytest.mark.parametrize("preset", ["exact", "paper"])
def test_backward_kernels_match_plain_torch(device, backend, preset):
    """Each backward kernel against the plain-torch formulation (the CUDA key's kernel)."""
    from infvideo.ops.slot_attention import slot_attention_backward_torch

    gen = torch.Generator().manual_seed(7)
    streams, q_len, model, heads, n = 3, 19, 24, 3, 40
    query, keys, values = (torch.randn(streams, rows, model, generator=gen).to(device) for rows in (q_len, n, n))
    grad_context = torch.randn(streams, q_len, model, generator=gen).to(device)
    grad_mass = torch.randn(streams, heads * 2, n, generator=gen).to(device)
    const = ref_fit.on_device(ref_attention.attention_constants(MemoryConfig(num_basis=n, preset=preset)), device,
                              torch.float32)
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    args = (grad_context, grad_mass, query, keys, values, heads, const.log_weight, null)
    for got, want in zip(torch.ops.infvideo.slot_attention_backward(*args, backend),
                         slot_attention_backward_torch(*args)):
        assert rel_err(got, want) < 1e-5
