"""Input checks at the public boundary. Kernels and the reference assume checked inputs."""
from __future__ import annotations

import torch
from torch import nn


def tensor(name: str, value, dims: tuple[int, ...]) -> torch.Tensor:
    """A floating tensor with one of the given ranks and no empty dimension."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)})")
    if value.is_meta:
        raise ValueError(f"{name} is a meta tensor (a shape without values); the memory needs real values")
    return value


def nonfinite_flags(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[len(tensors)] bool on the tensors' device: which of them hold NaN or Inf, without reading
    the device.

    NaN and Inf survive a sum, which is one fast reduction per tensor; only a finite overflow of
    the float32 sum (entries near 1e38, unusable anyway) would be reported too. (A float64 sum of
    float32 input costs 3× as much on the CPU.)
    """
    sums = torch.stack([value.detach().sum(dtype=torch.float64 if value.dtype == torch.float64 else torch.float32)
                        for value in tensors])
    return ~torch.isfinite(sums)


def nonfinite(tensors: list[torch.Tensor]) -> int | None:
    """The index of the first tensor holding NaN or Inf (None: all finite), with one host
    synchronisation for all (:func:`nonfinite_flags`)."""
    return next((i for i, bad in enumerate(nonfinite_flags(tensors).tolist()) if bad), None)


def finite(named: list[tuple[str, torch.Tensor]]) -> None:
    """Raise naming the first tensor holding NaN or Inf, with one host synchronisation for all."""
    bad = nonfinite([value for _, value in named])
    if bad is not None:
        raise ValueError(f"{named[bad][0]} contains NaN or Inf")


def parameters_finite(named_modules: list[tuple[str, object]]) -> None:
    """Raise naming the first parameter of the named modules (projections) holding NaN or Inf,
    e.g. "proj_key's weight contains NaN or Inf"; plain callables have none to look at."""
    named = [(f"{name}'s {param_name}", param) for name, module in named_modules if isinstance(module, nn.Module)
             for param_name, param in module.named_parameters()]
    if named:
        finite(named)


def projection_dtypes(proj_key, proj_value) -> None:
    """Key and value projections whose weights share one dtype (the fused steps stack them)."""
    key, value = (getattr(proj, "weight", None) for proj in (proj_key, proj_value))
    if isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor) and key.dtype != value.dtype:
        raise ValueError(f"proj_value's weight is {value.dtype} but proj_key's is {key.dtype}: "
                         "the key and value projections must share one dtype")


def heads(value, model: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"num_heads must be an int, got {type(value).__name__}")
    if value < 1 or model % value:
        raise ValueError(f"num_heads ({value}) must be a positive divisor of the query width {model}")
    return value


def projection(name: str, proj, width: int, device: torch.device) -> int | None:
    """Checks a key/value projection applied to coefficients of width e; returns its output width if known."""
    if not callable(proj):
        raise TypeError(f"{name} must be callable (an nn.Linear), got {type(proj).__name__}")
    if isinstance(proj, nn.Linear):
        if proj.in_features != width:
            raise ValueError(f"{name} expects inputs of width {proj.in_features}, but frames have width {width}")
        if proj.weight.device != device:
            raise ValueError(f"{name} is on {proj.weight.device}, frames are on {device}")
        return proj.out_features
    return _probed_width(proj, width)


def _probed_width(proj, width: int) -> int | None:
    """The output width of a plain callable, from one call on a meta tensor [1, 1, e] (no data, no
    kernel); None when it cannot say (it rejects meta tensors, or does not return one tensor)."""
    try:
        out = proj(torch.empty(1, 1, width, device="meta"))
    except Exception:  # noqa: BLE001 - any failure only means the width stays unknown here
        return None
    return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 3 else None


def device_option(option: str, text: str) -> torch.device:
    """A command line's device option: a device that holds values and exists here (checked before
    anything is allocated on it)."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{option} {text!r} is not a device ({err})") from None
    if device.type == "meta":
        raise ValueError(f"{option} meta: meta tensors hold no values to compute with; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {text}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{option} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {text}: only cpu and cuda devices are supported")
    return device
