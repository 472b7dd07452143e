"""``infvideo.kernels.few_rows_linear`` (the half K|V product of few-stream steps) against float64,
and the step that takes it.

Tolerance: the output is rounded once to its 16-bit dtype from a float32 accumulation, so it is
within 2⁻⁸ (bfloat16) or 2⁻¹¹ (float16) of the float64 product of the same 16-bit inputs,
relative to each value plus a few float32 roundings: 5e-3 and 7e-4 relative in norm. A plain
bfloat16 product of float32 inputs misses the bfloat16 bound by rounding the inputs, which is why
the float64 reference takes the same 16-bit inputs. Triton runs in its interpreter on the CPU
(IEEE float32 dots) and on CUDA tensors on a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infvideo import LongTermMemory, backends
from infvideo.ops import step as step_module
from conftest import CUDA, rel_err

DEVICES = [d for d in ("cpu", "cuda") if backends.triton_runs_on(torch.device(d)) and (d != "cuda" or CUDA)]
TOLERANCE = {torch.bfloat16: 5e-3, torch.float16: 7e-4}
# (rows, inner, outputs): odd sizes, one to four chunks of the inner dimension, partial tiles.
SHAPES = [(1, 5, 3), (37, 300, 70), (65, 256, 64), (3, 513, 129), (20, 1024, 40)]
GPU_SHAPES = [(256, 768, 1536), (512, 768, 1536), (100, 1000, 200)]


def cases():
    return [pytest.param(device, shape, id=f"{device}-{shape}") for device in DEVICES
            for shape in SHAPES + (GPU_SHAPES if device == "cuda" else [])]


@pytest.mark.parametrize("device,shape", cases())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("weights_ready", [False, True], ids=["weights-after-wait", "weights-first"])
def test_matches_float64(device, shape, dtype, bias, weights_ready):
    kernel = backends.triton_kernels()["few_rows_linear"]
    rows, inner, outputs = shape
    gen = torch.Generator().manual_seed(rows + inner + outputs)
    x = torch.randn(rows, inner, generator=gen).to(device, dtype)
    weight = (torch.randn(outputs, inner, generator=gen) / inner ** 0.5).to(device, dtype)
    b = torch.randn(outputs, generator=gen).to(device, dtype) if bias else None
    got = kernel.few_rows_linear(x, weight, b, weights_ready=weights_ready)
    want = nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    assert got.dtype == dtype and got.shape == want.shape
    assert rel_err(got, want) < TOLERANCE[dtype]


def test_serves_up_to_four_chunks(monkeypatch):
    """The kernel holds at most MAX_CHUNKS chunks of BLOCK_K columns per program, and serves only
    devices that launch programmatic dependents (never the CPU)."""
    kernel = backends.triton_kernels()["few_rows_linear"]
    assert not kernel.serves(768, torch.device("cpu"))
    monkeypatch.setattr(kernel, "programmatic", lambda device: True)
    limit = kernel.MAX_CHUNKS * kernel.BLOCK_K
    assert limit == 1024
    assert kernel.serves(1, torch.device("cpu")) and kernel.serves(limit, torch.device("cpu"))
    assert not kernel.serves(limit + 1, torch.device("cpu")) and not kernel.serves(0, torch.device("cpu"))


def test_step_takes_it_only_where_it_serves(monkeypatch):
    """``_takes_few_rows_product``: half coefficients in the weight's dtype, at most
    ``FEW_ROWS_PRODUCT`` rows, an eager CUDA call on a GPU with programmatic launches; cuBLAS
    otherwise (here: a CPU tensor, float32, too many rows)."""
    takes = step_module._takes_few_rows_product
    monkeypatch.setattr(step_module, "FEW_ROWS_PRODUCT", 512)
    weight = torch.zeros(8, 16, dtype=torch.bfloat16)
    assert not takes(torch.zeros(1, 4, 16, dtype=torch.bfloat16), weight)  # not CUDA
    assert not takes(torch.zeros(1, 4, 16), weight.float())
    monkeypatch.setattr(step_module, "FEW_ROWS_PRODUCT", 0)
    assert not takes(torch.zeros(1, 4, 16, dtype=torch.bfloat16), weight)


@pytest.mark.skipif(not CUDA or not backends.triton_runs_on(torch.device("cuda")), reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("streams", [1, 3])
def test_step_takes_it_and_matches_the_reference(monkeypatch, dtype, streams):
    """A Triton step with half projections over few rows projects K|V through the kernel when the
    GPU launches programmatic dependents, and matches the reference step over several chunks
    (half K/V: 1e-2, their rounding); with FEW_ROWS_PRODUCT = 0 it takes cuBLAS. The projections
    change between chunks once, so the stacked weights are rebuilt just before one product."""
    monkeypatch.setattr(step_module, "FEW_ROWS_PRODUCT", 512)
    kernel = backends.triton_kernels()["few_rows_linear"]
    launch = kernel.few_rows_linear
    ready = []
    monkeypatch.setattr(kernel, "few_rows_linear",
                        lambda *args, weights_ready=False: ready.append(weights_ready) or launch(*args, weights_ready))
    torch.manual_seed(0)
    pk, pv = nn.Linear(48, 36).cuda().to(dtype), nn.Linear(48, 36).cuda().to(dtype)
    fused = LongTermMemory(num_basis=40, past_samples=30, backend="triton", cuda_graphs=False).cuda()
    reference = LongTermMemory(num_basis=40, past_samples=30, backend="torch").cuda()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for chunk in range(3):
            if chunk == 2:
                pk.weight.mul_(0.5)
            frames = torch.randn(streams, 10, 4, 48, generator=gen).to("cuda", dtype)
            query = torch.randn(streams, 5, 36, generator=gen).to("cuda", dtype)
            assert rel_err(fused(frames, query, pk, pv, 3), reference(frames, query, pk, pv, 3)) < 1e-2
            assert rel_err(fused.coef, reference.coef) < 1e-4
    if kernel.serves(48, torch.device("cuda")):
        assert ready == [False, True, False]
    else:
        assert not ready
    monkeypatch.setattr(step_module, "FEW_ROWS_PRODUCT", 0)
    ready.clear()
    with torch.no_grad():
        fused(frames, query, pk, pv, 3)
    assert not ready
