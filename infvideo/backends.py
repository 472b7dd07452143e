"""Which implementations of the memory's ops exist here, and which one a call uses."""
from __future__ import annotations

import os

from .config import BACKENDS


def available_backends() -> tuple[str, ...]:
    """Backends usable in this process, fastest first (the reference ``torch`` is always there)."""
    return ("torch",)


def resolve_backend(backend: str) -> str:
    """The concrete backend for a requested name; INFVIDEO_BACKEND overrides ``"auto"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("INFVIDEO_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"INFVIDEO_BACKEND must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            return available_backends()[0]
    if backend not in available_backends():
        raise ValueError(f"backend={backend!r} is not available here; available: {available_backends()}")
    return backend
