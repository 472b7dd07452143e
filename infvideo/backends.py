"""The registry of backends: their names, which exist here, and what ``auto`` picks.

One table for the module (``LongTermMemory(backend=...)``) and the ops (``infvideo.ops.*(...,
backend=...)``, ``torch.ops.infvideo.*``) alike:

| name | runs | on |
|---|---|---|
| ``torch`` | the reference (``infvideo.reference``), differentiable | any device (the module only) |
| ``triton`` | the Triton kernels (``infvideo.kernels``) | CUDA tensors; CPU tensors under TRITON_INTERPRET=1 |
| ``cuda`` | the C++/CUDA kernels of ``csrc/`` (the ``infvideo._C`` extension built with CUDA) | CUDA tensors |
| ``cpu`` | the C++ kernels of ``csrc/`` | CPU tensors |

``auto`` (:func:`backend_for`): on CUDA tensors ``triton``, else ``cuda``, else ``torch``; on CPU
tensors ``cpu``, else ``triton`` under the interpreter, else ``torch``. INFVIDEO_BACKEND replaces
``auto`` where the module is built. The ops have no ``torch`` kernel: an op whose backend resolves
to ``torch`` raises and names what is missing.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from functools import lru_cache

import torch

NAMES = ("auto", "torch", "triton", "cuda", "cpu")
# The backends whose steps run on the fused ops (infvideo.ops.fused_step); "torch" is the reference.
FUSED = ("triton", "cuda", "cpu")


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on the CPU (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@lru_cache(maxsize=1)
def triton_kernels():
    """The ``infvideo.kernels`` modules by name, or None when Triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    from .kernels import (attention, consolidate, dense_consolidate, factored_attention, gaussian_fit, products,
                          quadrature, sampling)
    return {"attention": attention, "consolidate": consolidate, "dense_consolidate": dense_consolidate,
            "factored_attention": factored_attention, "gaussian_fit": gaussian_fit, "products": products,
            "quadrature": quadrature, "sampling": sampling}


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels can run on tensors of ``device``."""
    return triton_kernels() is not None and (device.type == "cuda" or (device.type == "cpu" and interpreting()))


@lru_cache(maxsize=1)
def extension_path() -> str | None:
    """Path of the loaded C++/CUDA extension, or None when it is absent or does not load here.

    The extension is a plain shared library (no Python module): loading it registers the C++
    kernels of the ``torch.ops.infvideo`` ops for their dispatch keys (csrc/README.md)."""
    spec = importlib.util.find_spec("infvideo._C")
    if spec is None or spec.origin is None:
        return None
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as err:
        warnings.warn(f"infvideo: the C++/CUDA extension {spec.origin} does not load with torch {torch.__version__} "
                      f"({err}); rebuild it (pip install --no-build-isolation -e .). Using Triton and the torch "
                      "reference.", RuntimeWarning, stacklevel=2)
        return None
    return spec.origin


@lru_cache(maxsize=1)
def built() -> tuple[str, ...]:
    """The csrc backends this installation built: ``("cpu",)`` or ``("cpu", "cuda")``, or ``()``."""
    if extension_path() is None:
        return ()
    return ("cpu", "cuda") if torch.ops.infvideo.csrc_has_cuda() else ("cpu",)


def available_backends() -> tuple[str, ...]:
    """Backends usable in this process, GPU ones first (the reference ``torch`` is always there)."""
    found = []
    if triton_kernels() is not None and (torch.cuda.is_available() or interpreting()):
        found.append("triton")
    if "cuda" in built() and torch.cuda.is_available():
        found.append("cuda")
    if "cpu" in built():
        found.append("cpu")
    return (*found, "torch")


def resolve_backend(backend: str) -> str:
    """Checks a backend name given to the module; INFVIDEO_BACKEND replaces ``"auto"``."""
    if backend not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("INFVIDEO_BACKEND", "auto")
        if backend not in NAMES:
            raise ValueError(f"INFVIDEO_BACKEND must be one of {NAMES}, got {backend!r}")
    if backend in ("cpu", "cuda") and backend not in built():
        raise ValueError(f"backend={backend!r} needs the C++ extension built with {backend.upper()} kernels, which "
                         f"this installation lacks (see csrc/README.md); available: {available_backends()}")
    if backend == "triton" and triton_kernels() is None:
        raise ValueError("backend='triton' needs Triton (pip install triton)")
    return backend


def backend_for(backend: str, device: torch.device) -> str:
    """The concrete backend of a call on tensors of ``device`` (``backend`` already resolved)."""
    if backend == "auto":
        if device.type == "cuda":
            if triton_runs_on(device):
                return "triton"
            return "cuda" if "cuda" in built() else "torch"
        if device.type == "cpu" and "cpu" in built():
            return "cpu"
        return "triton" if triton_runs_on(device) else "torch"
    if backend == "triton" and not triton_runs_on(device):
        raise ValueError(f"backend='triton' cannot run on {device} tensors (CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if backend in ("cpu", "cuda") and device.type != backend:
        raise ValueError(f"backend={backend!r} runs on {backend} tensors, got tensors on {device}")
    return backend


def op_backend(op: str, backend: str, device: torch.device) -> str:
    """The kernel (``"triton"``, ``"cpu"`` or ``"cuda"``) of one op call on ``device`` tensors."""
    if backend not in NAMES or backend == "torch":
        raise ValueError(f"{op}: backend must be one of {tuple(n for n in NAMES if n != 'torch')}, got {backend!r}")
    if backend in ("cpu", "cuda") and backend not in built():
        raise RuntimeError(f"{op}: backend={backend!r} needs the C++ extension built with {backend.upper()} kernels, "
                           "which this installation lacks (see csrc/README.md)")
    if backend == "triton" and triton_kernels() is None:
        raise RuntimeError(f"{op}: Triton is not installed (pip install triton)")
    concrete = backend_for(backend, device)
    if concrete == "torch":
        raise RuntimeError(f"{op}: no kernel runs on {device} tensors here: build the C++ extension (cpu), install "
                           "Triton (CUDA, or TRITON_INTERPRET=1 on the CPU)")
    return concrete


def info() -> dict:
    """What this installation holds: ``extension`` (path of the C++/CUDA library, or None),
    ``built`` (its backends: ``"cpu"``, ``"cuda"``), ``available`` (backends usable in this
    process) and ``auto`` (what ``backend="auto"`` runs on CPU and on CUDA tensors)."""
    auto = {"cpu": backend_for("auto", torch.device("cpu"))}
    if torch.cuda.is_available():
        auto["cuda"] = backend_for("auto", torch.device("cuda"))
    return {"extension": extension_path(), "built": built(), "available": available_backends(), "auto": auto}
