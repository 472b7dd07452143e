"""``infvideo.kernels.dense_consolidate``: pooled tokens fitted by G_framesᵀ plus the past map's
product, in one pass, against float64 on the same inputs.

Tolerance: 1e-6 relative (Frobenius) for every token dtype: the tokens are pooled in float32 from
their own values (exact inputs: the pooling product's 0/1 matrix is exact in any dtype) and the
products are three-TF32 on a GPU (float32 accuracy, about 3e-7), exact float32 dots in the
interpreter. Odd sizes, tokens as [S, L, e], [S, L, T, e] and a [S, L, h, w, e] grid, strided
frames, basis rows over several row tiles, with and without a past, each token dtype through both
pooling forms (a product, a register sum).
"""
from __future__ import annotations

import pytest
import torch

from infvideo import backends
from conftest import CUDA, rel_err

DEVICES = [d for d in ("cpu", "cuda") if backends.triton_runs_on(torch.device(d)) and (d != "cuda" or CUDA)]
# (streams, frames L, token dims, width e, basis N)
CASES = [(3, 7, (5,), 24, 12), (2, 33, (), 40, 30), (1, 16, (2, 3), 70, 17)]
GPU_CASES = [(4, 256, (32,), 768, 256), (3, 100, (7,), 1000, 300)]


def cases():
    return [pytest.param(device, case, id=f"{device}-{case}") for device in DEVICES
            for case in CASES + (GPU_CASES if device == "cuda" else [])]


def expected(frames, frame_g, mix, past):
    pooled = frames.double().flatten(2, -2).mean(2) if frames.dim() > 3 else frames.double()
    coef = frame_g.double().T @ pooled
    return coef if mix is None else coef + mix.double() @ past.double()


def consolidate(frames, frame_g, mix, past):
    kernels = backends.triton_kernels()
    coef, cast = kernels["dense_consolidate"].dense_consolidate(frames, frame_g, mix, past,
                                                                kernels["products"].precision(frames.device))
    assert cast is coef
    return coef


@pytest.mark.parametrize("device,case", cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_past", [True, False], ids=["past", "first"])
@pytest.mark.parametrize("pooling", ["dot", "register"])
def test_matches_float64(device, case, dtype, with_past, pooling, monkeypatch):
    module = backends.triton_kernels()["dense_consolidate"]
    monkeypatch.setattr(module, "DOT_POOLING", (dtype,) if pooling == "dot" else ())
    streams, length, token_dims, width, n = case
    gen = torch.Generator().manual_seed(length + width + n)
    frames = torch.randn(streams, length, *token_dims, width, generator=gen).to(device, dtype)
    frame_g = torch.randn(n, length, generator=gen).T.to(device)  # stored transposed: read by strides
    mix = torch.randn(streams, n, n, generator=gen).to(device) / n ** 0.5 if with_past else None
    past = torch.randn(streams, n, width, generator=gen).to(device) if with_past else None
    got = consolidate(frames, frame_g, mix, past)
    assert got.dtype == torch.float32 and got.shape == (streams, n, width)
    assert rel_err(got, expected(frames, frame_g, mix, past)) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cast_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cast_copy(device, cast_dtype):
    """The copy for the K/V projection is the float32 result within one unit in the last place of
    its type (rounded on a GPU; the interpreter's conversion truncates)."""
    gen = torch.Generator().manual_seed(3)
    frames = torch.randn(2, 11, 3, 20, generator=gen).to(device, torch.bfloat16)
    frame_g = torch.randn(11, 13, generator=gen).to(device)
    kernels = backends.triton_kernels()
    coef, cast = kernels["dense_consolidate"].dense_consolidate(frames, frame_g, None, None,
                                                                kernels["products"].precision(frames.device), cast_dtype)
    assert cast.dtype == cast_dtype
    finfo = torch.finfo(cast_dtype)
    torch.testing.assert_close(cast.float(), coef, rtol=finfo.eps, atol=finfo.tiny)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pooling", ["dot", "register"])
def test_row_tiles_and_strided_frames(device, pooling, monkeypatch):
    """More basis rows than one tile holds (each tile reads the tokens again), frames and past
    read in place from strided views, and (pooling product) a block of frames over several chunks
    of token rows, give the same result."""
    module = backends.triton_kernels()["dense_consolidate"]
    for form in module.CONFIG.values():
        monkeypatch.setitem(form, "max_rows", 16)
    monkeypatch.setitem(module.CONFIG["dot"], "stage_bytes", 16 * 32 * 4)  # 16 rows of a 32-column tile
    monkeypatch.setattr(module, "DOT_POOLING", (torch.float32,) if pooling == "dot" else ())
    gen = torch.Generator().manual_seed(5)
    storage = torch.randn(2, 9, 6, 2, 40, generator=gen).to(device)
    frames = storage[:, :, :, 1, 3:35]  # [S, L, T, e] with gaps between tokens and columns
    frame_g = torch.randn(9, 37, generator=gen).to(device)
    mix = torch.randn(2, 37, 37, generator=gen).to(device)
    past = torch.randn(2, 32, 37, generator=gen).to(device).transpose(1, 2)  # read by strides
    got = consolidate(frames, frame_g, mix, past)
    assert rel_err(got, expected(frames, frame_g, mix, past)) < 1e-6
