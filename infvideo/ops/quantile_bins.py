"""``torch.ops.infvideo.quantile_bins``: sticky quantile sampling (inverse CDF of bin masses)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from . import _library, _validate

_OP = "infvideo.ops.quantile_bins"


# Sample indices are not differentiable (integer outputs): the op has no backward.
@torch.library.custom_op("infvideo::quantile_bins", mutates_args=())
def _quantile_bins(mass: Tensor, num_samples: int, backend: str = "auto") -> Tensor:
    return _library.no_default_kernel()


@_quantile_bins.register_fake
def _(mass, num_samples, backend="auto"):
    return mass.new_empty(mass.shape[0], num_samples, dtype=torch.int32)


def _triton_kernel(mass, num_samples):
    return backends.triton_kernels()["sampling"].quantile_bins(mass, num_samples)


_library.select_kernels("quantile_bins", _triton_kernel)


def quantile_bins(mass: Tensor, num_samples: int, backend: str = "auto") -> Tensor:
    """Bins of u_i = F⁻¹((i − ½)/M), i = 1 … M, F the CDF of the masses summed over groups.

    mass: [S, G, K] or [S, K] non-negative (the sticky statistic; any float dtype and strides,
    expanded inputs included); num_samples: M >= 1. Returns [S, M] int32, sorted: the same bins as
    ``infvideo.reference.sticky.quantile_bins``. ``backend``: ``"triton"``, ``"cpu"`` / ``"cuda"``
    (the csrc kernels) or ``"auto"`` (``infvideo.backends``).

    Not differentiable: the output is integer indices (piecewise constant in the masses), so no
    backward is registered and autograd treats the bins as constants.
    """
    _validate.tensor(_OP, "mass", mass, (2, 3), "[S, K] or [S, G, K]", dtypes=None)
    _validate.positive_int(_OP, "num_samples", num_samples)
    return quantile_bins_unchecked(mass, num_samples, backend)


def quantile_bins_unchecked(mass: Tensor, num_samples: int, backend: str = "auto") -> Tensor:
    """:func:`quantile_bins` without the input checks (for ``fused_step``, whose inputs are checked)."""
    if mass.dim() == 2:
        mass = mass[:, None]
    mass = mass.contiguous()
    return _library.launch("quantile_bins", _triton_kernel, (mass, num_samples), backend)
