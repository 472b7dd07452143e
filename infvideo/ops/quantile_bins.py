"""``torch.ops.infvideo.quantile_bins``: sticky quantile sampling (inverse CDF of bin masses)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _triton


@torch.library.custom_op("infvideo::quantile_bins", mutates_args=())
def _quantile_bins(mass: Tensor, num_samples: int) -> Tensor:
    return _triton.require("quantile_bins", mass.device)["sampling"].quantile_bins(mass, num_samples)


@_quantile_bins.register_fake
def _(mass, num_samples):
    return mass.new_empty(mass.shape[0], num_samples, dtype=torch.int32)


def quantile_bins(mass: Tensor, num_samples: int) -> Tensor:
    """Bins of u_i = F⁻¹((i − ½)/M), i = 1 … M, F the CDF of the masses summed over groups.

    mass: [S, G, K] or [S, K] non-negative (the sticky statistic). Returns [S, M] int32, sorted:
    the same bins as ``infvideo.reference.sticky.quantile_bins``.
    """
    if mass.dim() == 2:
        mass = mass[:, None]
    mass = mass.contiguous()
    if _triton.direct_call_ok(mass):
        return _triton.require("quantile_bins", mass.device)["sampling"].quantile_bins(mass, int(num_samples))
    return torch.ops.infvideo.quantile_bins(mass, int(num_samples))
