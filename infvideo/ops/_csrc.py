"""The C++/CUDA kernels of ``csrc/`` (the ``infvideo._C`` extension), where this installation built them.

The extension is a plain shared library of torch ops (no Python module inside): loading it with
``torch.ops.load_library`` registers ``torch.ops.infvideo.<op>_csrc`` with a CPU kernel and, when
built with CUDA, a CUDA kernel. Each has the schema of its Triton twin ``torch.ops.infvideo.<op>``
(see csrc/README.md for why the names differ). Without the extension, or when it cannot be
loaded (built against another torch), everything here reports "not built" and the package runs
on Triton and the torch reference.
"""
from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache

import torch

# The query block of the slot attention's mass groups (csrc/attention/slot_attention.h, kQueryBlock):
# the Triton kernel's, so the sticky statistic has the same shape on every backend.
QUERY_BLOCK = 16


@lru_cache(maxsize=1)
def library_path() -> str | None:
    """Path of the loaded extension, or None when it is absent or does not load here."""
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


def built() -> bool:
    """The extension is loaded: the ``cpu`` backend exists."""
    return library_path() is not None


@lru_cache(maxsize=1)
def built_with_cuda() -> bool:
    """The loaded extension holds the CUDA kernels (the ``cuda`` backend exists, given a GPU)."""
    return built() and bool(torch.ops.infvideo.csrc_has_cuda())


def supports(device: torch.device) -> bool:
    """The extension has kernels for tensors on ``device``."""
    return built() and (device.type == "cpu" or (device.type == "cuda" and built_with_cuda()))


def register_fake(op: str, fake) -> None:
    """Give ``infvideo::<op>_csrc`` the fake (meta) kernel of its Triton twin, when the extension is loaded."""
    if built():
        torch.library.register_fake(f"infvideo::{op}_csrc")(fake)
