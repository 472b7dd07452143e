"""Which implementations of the memory's ops exist here, and which one a call uses."""
from __future__ import annotations

import os

import torch

from .config import BACKENDS
from .ops import _csrc, _triton


def available_backends() -> tuple[str, ...]:
    """Backends usable in this process, GPU ones first (the reference ``torch`` is always there)."""
    found = []
    if _triton.usable():
        found.append("triton")
    if _csrc.built_with_cuda() and torch.cuda.is_available():
        found.append("cuda")
    if _csrc.built():
        found.append("cpu")
    return (*found, "torch")


def info() -> dict:
    """What this installation holds: ``extension`` (path of the C++/CUDA library, or None),
    ``built`` (its backends: ``"cpu"``, ``"cuda"``), ``available`` (backends usable in this
    process), ``auto`` (what ``backend="auto"`` runs on CPU and on CUDA tensors) and
    ``launch_plans`` (whether eager CUDA steps can be launched from C++: ``infvideo.launch_plans``)."""
    from . import launch_plans

    built = (("cpu",) + (("cuda",) if _csrc.built_with_cuda() else ())) if _csrc.built() else ()
    auto = {"cpu": backend_for("auto", torch.device("cpu"))}
    if torch.cuda.is_available():
        auto["cuda"] = backend_for("auto", torch.device("cuda"))
    return {"extension": _csrc.library_path(), "built": built, "available": available_backends(), "auto": auto,
            "launch_plans": launch_plans.available()}


def resolve_backend(backend: str) -> str:
    """Checks a requested backend name; INFVIDEO_BACKEND replaces ``"auto"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("INFVIDEO_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"INFVIDEO_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu" and not _csrc.built():
        raise ValueError("backend='cpu' needs the C++ extension, which this installation did not build "
                         f"(see csrc/README.md); available: {available_backends()}")
    if backend == "cuda" and not _csrc.built_with_cuda():
        raise ValueError("backend='cuda' needs the C++/CUDA extension built with CUDA (see csrc/README.md); "
                         f"available: {available_backends()}")
    if backend == "triton" and _triton.kernels() is None:
        raise ValueError("backend='triton' needs Triton (pip install triton)")
    return backend


def backend_for(backend: str, device: torch.device) -> str:
    """The concrete backend of one call on tensors of ``device``.

    ``auto``: Triton on CUDA tensors (the csrc ``cuda`` kernels without Triton), the csrc ``cpu``
    kernels on CPU tensors where the extension is built, else the torch reference.
    """
    if backend == "auto":
        if device.type == "cuda":
            if _triton.usable(device):
                return "triton"
            return "cuda" if _csrc.supports(device) else "torch"
        return "cpu" if device.type == "cpu" and _csrc.built() else "torch"
    if backend == "triton" and not _triton.usable(device):
        raise ValueError(f"backend='triton' cannot run on {device} tensors (CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if backend in ("cpu", "cuda") and device.type != backend:
        raise ValueError(f"backend={backend!r} runs on {backend} tensors, got tensors on {device}")
    return backend
