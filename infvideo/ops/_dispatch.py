"""Which implementation an op wrapper runs: the Triton kernels or the csrc (C++/CUDA) ones."""
from __future__ import annotations

import torch

from . import _csrc, _triton

OP_BACKENDS = ("auto", "triton", "cpu", "cuda")
CSRC_BACKENDS = ("cpu", "cuda")


def op_backend(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend (``"triton"``, ``"cpu"`` or ``"cuda"``) of one call on ``device`` tensors.

    ``"auto"`` takes Triton where it runs (CUDA, or the CPU interpreter under TRITON_INTERPRET=1),
    else the csrc kernels of the tensors' device. ``"cpu"`` / ``"cuda"`` name the csrc kernels and
    must match the tensors' device.
    """
    if backend not in OP_BACKENDS:
        raise ValueError(f"{op}: backend must be one of {OP_BACKENDS}, got {backend!r}")
    if backend == "auto":
        if _triton.usable(device) or not _csrc.supports(device):
            return "triton"  # its require() explains what is missing
        return device.type
    if backend in CSRC_BACKENDS:
        if not _csrc.built():
            raise RuntimeError(f"{op}: backend={backend!r} needs the C++/CUDA extension, which this installation "
                               "did not build (see csrc/README.md)")
        if backend == "cuda" and not _csrc.built_with_cuda():
            raise RuntimeError(f"{op}: backend='cuda': the extension was built without its CUDA kernels")
        if device.type != backend:
            raise ValueError(f"{op}: backend={backend!r} runs on {backend} tensors, got tensors on {device}")
    return backend
