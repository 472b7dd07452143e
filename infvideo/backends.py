"""Which implementations of the memory's ops exist here, and which one a call uses."""
from __future__ import annotations

import os

import torch

from .config import BACKENDS
from .ops import _triton


def available_backends() -> tuple[str, ...]:
    """Backends usable in this process, fastest first (the reference ``torch`` is always there)."""
    return (("triton",) if _triton.usable() else ()) + ("torch",)


def resolve_backend(backend: str) -> str:
    """Checks a requested backend name; INFVIDEO_BACKEND replaces ``"auto"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("INFVIDEO_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"INFVIDEO_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if backend in ("cuda", "cpu"):
        raise ValueError(f"backend={backend!r} (the C++/CUDA extension) is not built in this installation; "
                         f"available: {available_backends()}")
    if backend == "triton" and _triton.kernels() is None:
        raise ValueError("backend='triton' needs Triton (pip install triton)")
    return backend


def backend_for(backend: str, device: torch.device) -> str:
    """The concrete backend of one call on tensors of ``device``: ``auto`` takes Triton on CUDA."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton.usable(device) else "torch"
    if backend == "triton" and not _triton.usable(device):
        raise ValueError(f"backend='triton' cannot run on {device} tensors (CUDA, or TRITON_INTERPRET=1 on the CPU)")
    return backend
