"""``torch.ops.infvideo.quantile_bins``: sticky quantile sampling (inverse CDF of bin masses)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _csrc, _dispatch, _triton, _validate

_OP = "infvideo.ops.quantile_bins"


@torch.library.custom_op("infvideo::quantile_bins", mutates_args=())
def _quantile_bins(mass: Tensor, num_samples: int) -> Tensor:
    return _triton.require("quantile_bins", mass.device)["sampling"].quantile_bins(mass, num_samples)


def _fake(mass, num_samples):
    return mass.new_empty(mass.shape[0], num_samples, dtype=torch.int32)


_quantile_bins.register_fake(_fake)
_csrc.register_fake("quantile_bins", _fake)


def quantile_bins(mass: Tensor, num_samples: int, backend: str = "auto") -> Tensor:
    """Bins of u_i = F⁻¹((i − ½)/M), i = 1 … M, F the CDF of the masses summed over groups.

    mass: [S, G, K] or [S, K] non-negative (the sticky statistic; any float dtype and strides,
    expanded inputs included); num_samples: M >= 1. Returns [S, M] int32, sorted: the same bins as
    ``infvideo.reference.sticky.quantile_bins``. ``backend``: ``"triton"``, ``"cpu"`` / ``"cuda"``
    (the csrc kernels) or ``"auto"`` (Triton where it runs, else csrc).
    """
    _validate.tensor(_OP, "mass", mass, (2, 3), "[S, K] or [S, G, K]", dtypes=None)
    _validate.positive_int(_OP, "num_samples", num_samples)
    return launch(mass, num_samples, _dispatch.op_backend(_OP, backend, mass.device))


def launch(mass: Tensor, num_samples: int, backend: str = "triton") -> Tensor:
    """:func:`quantile_bins` without the input checks (for ``fused_step``, whose inputs are checked);
    ``backend`` is concrete."""
    if mass.dim() == 2:
        mass = mass[:, None]
    mass = mass.contiguous()
    if backend in _dispatch.CSRC_BACKENDS:
        return torch.ops.infvideo.quantile_bins_csrc(mass, num_samples)
    if _triton.direct_call_ok(mass):
        return _triton.require("quantile_bins", mass.device)["sampling"].quantile_bins(mass, int(num_samples))
    return torch.ops.infvideo.quantile_bins(mass, num_samples)
