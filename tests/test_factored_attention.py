"""``infvideo.ops.factored_attention`` (one kernel: the C++ CPU one) against the reference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infvideo import backends
from infvideo.ops import factored_attention
from infvideo.reference import attention as ref_attention
from conftest import rel_err

pytestmark = pytest.mark.skipif("cpu" not in backends.built(), reason="the C++ extension is not built")


def test_matches_reference():
    """The CPU step's attention with the projections folded into the queries (no K, no V)."""
    streams, q_len, width, model, heads, n = 2, 32, 128, 128, 2, 128
    gen = torch.Generator().manual_seed(3)
    coef = torch.randn(streams, n, width, generator=gen)
    query = torch.randn(streams, q_len, model, generator=gen)
    proj_key, proj_value = nn.Linear(width, model), nn.Linear(width, model)
    assert factored_attention.applies(proj_key, proj_value, n, width, query, heads, None)
    with torch.no_grad():
        context, mass = factored_attention.factored_slot_attention(query, coef, proj_key, proj_value, heads, None)
        a = ref_attention.scores(coef, query, proj_key, heads)
        r = torch.softmax(a, -1)
        expected = ref_attention.read_values(coef, r, proj_value, heads)
    assert rel_err(context, expected) < 1e-5
    assert rel_err(mass.reshape(streams, heads, -1, n).sum(2), r.sum(2)) < 1e-5


def test_opcheck():
    """With and without a value bias."""
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 5, 8, generator=gen)
    coef = torch.randn(2, 7, 6, generator=gen)
    w_key, w_value = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    logw = torch.randn(7, generator=gen)
    op = torch.ops.infvideo.factored_slot_attention.default
    torch.library.opcheck(op, (query, coef, w_key, w_value, torch.randn(8, generator=gen), 2, logw))
    torch.library.opcheck(op, (query, coef, w_key, w_value, None, 2, None))
