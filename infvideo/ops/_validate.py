"""Input checks at the boundary of the op wrappers (``infvideo.ops.*``).

The kernels read raw pointers with the strides they are given, so an input of the wrong rank,
width, dtype or device would read out of bounds or fail deep inside Triton. These checks look at
shapes, dtypes and devices only (host metadata: no host synchronisation), and
name the argument in the message. Values are not looked at: e.g. sample bins must lie in [-1, N)
and masses must be non-negative, but checking that would read the device.

Inputs with overlapping memory (an expanded, stride-0 ``past``, frames or query) and
non-contiguous inputs are accepted: every op only reads them, through their strides or a
contiguous copy, and writes fresh outputs.
"""
from __future__ import annotations

import math

import torch

# What the kernels' loads and dots take; float64 belongs to the torch reference backend.
KERNEL_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def _dims_text(dims: tuple[int, ...]) -> str:
    return " or ".join(map(str, dims))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def tensor(op: str, name: str, value, dims: tuple[int, ...], layout: str, dtypes=KERNEL_FLOATS,
           device: torch.device | None = None, device_of: str = "") -> torch.Tensor:
    """``value`` is a non-empty tensor of one of ``dims`` ranks and one of ``dtypes`` (None: any
    floating dtype) on ``device`` (None: anywhere); ``device_of`` names where ``device`` comes from."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() not in dims:
        raise ValueError(f"{op}: {name} must have {_dims_text(dims)} dimensions {layout}, "
                         f"got shape {tuple(value.shape)}")
    if dtypes is None:
        if not value.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {_dtype_name(value.dtype)}")
    elif value.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype {' or '.join(map(_dtype_name, dtypes))}, "
                        f"got {_dtype_name(value.dtype)}")
    if value.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(value.shape)})")
    if device is not None and value.device != device:
        raise ValueError(f"{op}: {name} is on {value.device}, but {device_of} is on {device}")
    return value


def positive_int(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value}")
    return value


def heads(op: str, value, model: int) -> int:
    value = positive_int(op, "num_heads", value)
    if model % value:
        raise ValueError(f"{op}: num_heads ({value}) must divide the query width {model}")
    return value


def match(op: str, name: str, got: int, want: int, what: str, of: str) -> None:
    """``name`` has ``got`` ``what`` where ``of`` has ``want``: e.g. "keys has 3 streams (dim 0) but query has 2"."""
    if got != want:
        raise ValueError(f"{op}: {name} has {got} {what} but {of} has {want}")


def attention_inputs(op: str, query, keys, values, num_heads, values_dtypes=KERNEL_FLOATS) -> None:
    """query [S, Q, D], keys / values [S, N, D] on one device, num_heads dividing D."""
    query = tensor(op, "query", query, (3,), "[S, Q, D]")
    device = query.device
    keys = tensor(op, "keys", keys, (3,), "[S, N, D]", device=device, device_of="query")
    values = tensor(op, "values", values, (3,), "[S, N, D]", values_dtypes, device=device, device_of="query")
    match(op, "keys", keys.shape[0], query.shape[0], "streams (dim 0)", "query")
    match(op, "keys", keys.shape[2], query.shape[2], "columns (dim 2)", "query")
    if values.shape != keys.shape:
        raise ValueError(f"{op}: values must have the keys' shape {tuple(keys.shape)}, got {tuple(values.shape)}")
    heads(op, num_heads, query.shape[2])


def real(op: str, name: str, value, allow_minus_inf: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value == math.inf or (value == -math.inf and not allow_minus_inf):
        raise ValueError(f"{op}: {name} must be a finite number (or -inf), got {value}")
    return value
