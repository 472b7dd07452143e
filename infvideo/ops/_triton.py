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
    from ..kernels import attention, consolidate, quadrature
    return {"attention": attention, "consolidate": consolidate, "quadrature": quadrature}


def usable(device: torch.device | str | None = None) -> bool:
    """Triton kernels can run on ``device`` (default: CUDA if present, else the interpreter)."""
    if kernels() is None:
        return False
    if device is None:
        return torch.cuda.is_available() or interpreting()
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
