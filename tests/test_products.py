"""``infvideo.kernels.products``: float32 products as three TF32 tensor-core dots, and as one
product of bfloat16 parts (``split_linear``: the GPU step's float32 K/V projection), against
float64, and the step that takes them.

Tolerance: 1e-5 relative against float64 for every input dtype (the inputs are converted to
float32 exactly; three-TF32 dots keep float32 accuracy: about 4e-7 on an H200 at the step's
sizes, where a single TF32 product is off by 3e-4; the bfloat16 parts about 6e-6). Triton runs in its interpreter on the CPU (small shapes) and
on CUDA tensors on a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infvideo import LongTermMemory, backends
from infvideo.ops import step as step_module
from conftest import CUDA, assert_steps_match, rel_err

DEVICES = [d for d in ("cpu", "cuda") if backends.triton_runs_on(torch.device(d)) and (d != "cuda" or CUDA)]
# (rows dims, k, n): odd sizes, row counts on either side of the tile choice (LARGE_ROWS) on a GPU.
SHAPES = [((3, 7), 10, 12), ((1, 33), 24, 40), ((65,), 9, 17), ((2, 9), 64, 20), ((5,), 64, 32)]
GPU_SHAPES = [((16, 256), 768, 1536), ((5, 1000), 96, 200)]


def cases():
    return [pytest.param(device, shape, id=f"{device}-{shape}") for device in DEVICES
            for shape in SHAPES + (GPU_SHAPES if device == "cuda" else [])]


@pytest.mark.parametrize("device,shape", cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_matches_float64(device, shape, dtype, bias):
    products = backends.triton_kernels()["products"]
    rows, k, n = shape
    gen = torch.Generator().manual_seed(sum(rows) + k + n)
    x = torch.randn(*rows, k, generator=gen).to(device, dtype)
    weight = torch.randn(n, k, generator=gen).to(device) / k ** 0.5
    b = torch.randn(n, generator=gen).to(device) if bias else None
    got = products.linear(x, weight, b)
    want = nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_tf32_parts_hold_the_weight(device):
    """high + low is the weight exactly, high has TF32's 10 mantissa bits, low is at most 2⁻¹¹ of
    the weight; linear() on the parts is linear() on the weight, bit for bit."""
    products = backends.triton_kernels()["products"]
    gen = torch.Generator().manual_seed(5)
    weight = (torch.randn(20, 64, generator=gen) * 10.0 ** torch.randint(-4, 5, (20, 64), generator=gen)).to(device)
    parts = products.tf32_parts(weight)
    assert parts.shape == (2, 20, 64) and parts.dtype == torch.float32 and parts.is_contiguous()
    high, low = parts
    assert torch.equal(high + low, weight)
    assert not (high.view(torch.int32) & 0x1FFF).any()
    assert (low.abs() <= weight.abs() * 2.0 ** -11).all()
    x = torch.randn(2, 9, 64, generator=gen).to(device)
    assert torch.equal(products.linear(x, parts, None), products.linear(x, weight, None))


def test_linear_reads_strided_rows_and_transposed_weights():
    """Rows with a stride (a slice of a wider tensor) and a weight that is a transposed view."""
    device = DEVICES[0] if DEVICES else pytest.skip("Triton cannot run here")
    products = backends.triton_kernels()["products"]
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(2, 9, 30, generator=gen).to(device)
    x = wide[..., 3:23]
    weight_t = torch.randn(20, 14, generator=gen).to(device)
    got = products.linear(x, weight_t.t(), None)
    assert rel_err(got, x.double() @ weight_t.double()) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_head_products_per_stream(device):
    """c[s] = a[s] @ b[s] with a shared a (stream stride 0) read transposed, odd sizes over
    several tiles."""
    products = backends.triton_kernels()["products"]
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(70, 130, generator=gen).to(device)  # used as aᵀ [130, 70]
    b = torch.randn(3, 70, 150, generator=gen).to(device)
    c = torch.randn(3, 130, 150, generator=gen).to(device)
    want = a.double().t() @ b.double()
    products.head_products(a, (0, 0, a.stride(1), a.stride(0)), b, (b.stride(0), 0, b.stride(1), b.stride(2)),
                           c, (c.stride(0), 0, c.stride(1), c.stride(2)), 130, 150, 70, 1, 3,
                           products.precision(torch.device(device)))
    assert rel_err(c, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_tf32_remainder_is_what_truncation_drops(device):
    """x − tf32_remainder(x) has TF32's 10 mantissa bits (the low 13 cleared: what a TF32 product
    reads of x) and is x's truncation toward zero; the two add to x exactly. Odd sizes over
    several blocks, magnitudes from 1e-30 to 1e30, zeros and negative zeros."""
    products = backends.triton_kernels()["products"]
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2_777, generator=gen) * 10.0 ** torch.randint(-30, 31, (3, 2_777), generator=gen)
    x[0, :5] = torch.tensor([0.0, -0.0, 1.0, -1.0, 1 + 2.0 ** -11 + 2.0 ** -12])
    x = x.to(device)
    low = products.tf32_remainder(x)
    high = x - low
    assert low.shape == x.shape and low.dtype == torch.float32
    assert torch.equal(high + low, x)
    assert torch.equal(high.view(torch.int32), x.view(torch.int32) & -8192)
    assert high[0, 4].item() == 1.0  # truncated, where rounding gives 1 + 2⁻¹⁰
    assert products.tf32_remainder(x[:0]).shape == (0, 2_777)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_head_products_with_low_parts(device, dtype):
    """Split products that read b's tiles as their own high parts and b's low part from memory
    (``b_low``): per stream and head by strides (a head's slice of rows, b read along k), odd
    sizes over several tiles, a bias per head; within 1e-5 of float64, as with one dot."""
    products = backends.triton_kernels()["products"]
    gen = torch.Generator().manual_seed(8)
    streams, heads, m, k, n = 3, 2, 45, 70, 37
    a = torch.randn(streams, heads, m, k, generator=gen).to(device, dtype)
    b = torch.randn(streams, heads * n, k, generator=gen).to(device) * 10.0 ** torch.randint(
        -3, 4, (streams, heads * n, k), generator=gen).to(device)  # b[s, h] = rows h·n.. of [S, H·n, k], transposed
    bias = torch.randn(heads * n, generator=gen).to(device)
    c = torch.empty(streams, heads, m, n, device=device)
    want = (a.double() @ b.double().view(streams, heads, n, k).transpose(-1, -2)
            + bias.double().view(heads, 1, n))
    low = products.tf32_remainder(b)
    products.head_products(a, a.stride()[:4], b, (b.stride(0), n * b.stride(1), b.stride(2), b.stride(1)),
                           c, c.stride(), m, n, k, heads, streams, products.precision(torch.device(device)),
                           bias=bias, bias_strides=(n, 1), tiles=(32, 32, 16, 4, 2), b_low=low)
    assert rel_err(c, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_split_rows_are_the_two_bfloat16_parts(device):
    """[x0 | x0 | x1] with x0 the bfloat16 rounding of x and x1 that of the remainder, rows read
    with a stride, a width over several column blocks."""
    products = backends.triton_kernels()["products"]
    gen = torch.Generator().manual_seed(4)
    wide = torch.randn(2, 5, 700, generator=gen).to(device) * 10.0 ** torch.randint(-3, 4, (2, 5, 700), generator=gen
                                                                                       ).to(device)
    x = wide[..., 3:603]
    parts = products.split_rows(x)
    hi = x.to(torch.bfloat16)
    lo = (x - hi.float()).to(torch.bfloat16)
    assert parts.shape == (10, 1800) and parts.dtype == torch.bfloat16
    assert torch.equal(parts, torch.cat([hi, hi, lo], -1).reshape(10, 1800))
    # The two parts hold x to about 2⁻¹⁸ of each entry.
    assert ((hi.double() + lo.double() - x.double()).abs() <= x.double().abs() * 2.0 ** -16).all()


@pytest.mark.parametrize("device,shape", cases())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_split_linear_matches_float64(device, shape, bias):
    """Within 1e-5 of float64 (a bfloat16 product: about 3e-3), on cuBLAS on a GPU."""
    products = backends.triton_kernels()["products"]
    rows, k, n = shape
    gen = torch.Generator().manual_seed(sum(rows) + k + n + 1)
    x = torch.randn(*rows, k, generator=gen).to(device)
    weight = torch.randn(n, k, generator=gen).to(device) / k ** 0.5
    b = torch.randn(n, generator=gen).to(device) if bias else None
    got = products.split_linear(x, products.split_weight(weight), b)
    want = nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel_err(got, want) < 1e-5
    assert rel_err(nn.functional.linear(x.bfloat16(), weight.bfloat16()).float()
                   + (0 if b is None else b), want) > 1e-4  # the bound is one a plain bf16 product misses


@pytest.mark.skipif(not CUDA or not backends.triton_runs_on(torch.device("cuda")), reason="needs CUDA and Triton")
@pytest.mark.parametrize("projection,product", [("split-bf16", "split_linear"), ("tf32x3", "linear")])
def test_step_takes_tensor_core_projections(monkeypatch, projection, product):
    """A Triton step with float32 projections on CUDA projects K|V through the product that
    ``FLOAT32_PROJECTION`` names and matches the reference step over several chunks (1e-4:
    test_backends' Triton tolerance, the consolidation sums in another order on the GPU); with
    "cublas" it takes neither."""
    products = backends.triton_kernels()["products"]
    calls = []
    originals = {name: getattr(products, name) for name in ("linear", "split_linear")}

    def spy(name):
        def call(*args):
            calls.append(name)
            return originals[name](*args)
        return call

    for name in originals:
        monkeypatch.setattr(products, name, spy(name))
    monkeypatch.setattr(step_module, "FLOAT32_PROJECTION", projection)
    torch.manual_seed(0)
    pk, pv = nn.Linear(48, 36).cuda(), nn.Linear(48, 36).cuda()
    fused = LongTermMemory(num_basis=40, past_samples=30, backend="triton").cuda()
    reference = LongTermMemory(num_basis=40, past_samples=30, backend="torch").cuda()
    gen = torch.Generator().manual_seed(1)
    assert_steps_match(fused, reference, (3, 10, 4, 48), (3, 5, 36), pk, pv, 3, gen, "cuda")
    assert calls and set(calls) == {product}
    monkeypatch.setattr(step_module, "FLOAT32_PROJECTION", "cublas")
    calls.clear()
    with torch.no_grad():
        LongTermMemory(num_basis=40, past_samples=30, backend="triton", cuda_graphs=False).cuda()(
            torch.randn(3, 10, 4, 48, device="cuda"), torch.randn(3, 5, 36, device="cuda"), pk, pv, 3)
    assert not calls
