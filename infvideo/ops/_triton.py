"""Whether the Triton kernels can run here, and their import (Triton is optional)."""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import torch


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on the CPU (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@lru_cache(maxsize=1)
def kernels():
    """The ``infvideo.kernels`` modules, or None when Triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    from ..kernels import attention, consolidate, projection, quadrature, sampling
    return {"attention": attention, "consolidate": consolidate, "projection": projection, "quadrature": quadrature,
            "sampling": sampling}


def usable(device: torch.device | str | None = None) -> bool:
    """Triton kernels can run on ``device`` (default: CUDA if present, else the interpreter)."""
    if kernels() is None:
        return False
    if device is None:
        return torch.cuda.is_available() or interpreting()
    if not isinstance(device, torch.device):
        device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def require(op: str, device: torch.device):
    mods = kernels()
    if mods is None:
        raise RuntimeError(f"infvideo::{op}: Triton is not installed (pip install triton)")
    if not usable(device):
        raise RuntimeError(f"infvideo::{op}: Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 "
                           f"for CPU tensors; got a tensor on {device}")
    return mods


def direct_call_ok(tensor: torch.Tensor) -> bool:
    """Eager calls without autograd may launch the kernel directly, skipping the dispatcher.

    The registered op is what torch.compile, fake tensors and opcheck see; in plain eager mode its
    Python dispatch (tens of µs) would cost more than the kernels of a one-stream step.
    """
    return not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and tensor.requires_grad)


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``, skipping the call (microseconds of dispatch per step) when it is a no-op."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def rows_unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself when its last dimension is contiguous (views of a stacked K|V qualify)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
