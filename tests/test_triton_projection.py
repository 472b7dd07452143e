"""The Triton K|V projection (kernels/projection.py) against F.linear in float64.

Tolerance ‖out − ref‖ / ‖ref‖: 1e-6 in float32 (exact fp32 products, another summation order),
4e-3 in float16 / bfloat16 (inputs are the same rounded values; the output is rounded once, a
relative 2⁻¹¹ / 2⁻⁸ per entry at most, and these norms average that down).
"""
from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()  # without it, conftest.py has set TRITON_INTERPRET=1
pytest.importorskip("triton")

from infvideo.kernels import projection  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
TOLERANCE = {torch.float32: 1e-6, torch.float16: 4e-3, torch.bfloat16: 4e-3}
# (leading shape of x, in features, out features): odd sizes, a partial last tile in each direction
CASES = [((1, 20), 40, 72), ((3, 37), 45, 66), ((2, 256), 96, 130)] + (
    [((1, 256), 768, 1536), ((16, 256), 768, 1536), ((5, 129), 770, 1500)] if CUDA else [])


@pytest.mark.parametrize("lead, k, n", CASES, ids=str)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_linear_matches_float64(lead, k, n, dtype, with_bias):
    gen = torch.Generator().manual_seed(k + n)
    x = torch.randn(*lead, k, generator=gen).to(DEVICE, dtype)
    weight = (torch.randn(n, k, generator=gen) / k ** 0.5).to(DEVICE, dtype)
    bias = torch.randn(n, generator=gen).to(DEVICE, dtype) if with_bias else None
    out = projection.linear(x, weight, bias)
    want = torch.nn.functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert out.shape == (*lead, n) and out.dtype == dtype and out.is_contiguous()
    err = float((out.double() - want).norm() / want.norm())
    assert err < TOLERANCE[dtype], err


def test_step_projects_half_types_with_triton_up_to_the_row_limit(monkeypatch):
    from torch import nn

    from infvideo.ops import step

    calls = []
    monkeypatch.setattr(projection, "linear", lambda *a: calls.append(a) or torch.nn.functional.linear(*a))
    pk, pv = nn.Linear(8, 6).to(DEVICE, torch.bfloat16), nn.Linear(8, 6).to(DEVICE, torch.bfloat16)
    coef = torch.randn(2, 5, 8, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        keys, values = step._project_pair(pk, pv, coef, "triton")
        torch.testing.assert_close(keys, pk(coef))
        torch.testing.assert_close(values, pv(coef))
        assert len(calls) == 1
        step._project_pair(pk, pv, coef, "cuda")
        monkeypatch.setattr(step, "TRITON_PROJECTION_ROWS", 9)
        step._project_pair(pk, pv, coef, "triton")
        monkeypatch.setattr(step, "TRITON_PROJECTION_ROWS", 10)
        step._project_pair(nn.Linear(8, 6).to(DEVICE), nn.Linear(8, 6).to(DEVICE), coef.float(), "triton")
        assert len(calls) == 1, "the csrc backends, 10 rows > 9 and float32 keep cuBLAS"
