"""Launch a Triton kernel through its compiled form once one call has compiled it.

Triton's launch path (``kernel[grid](...)``) binds, specialises and hashes every argument on each
call, which on the GPU machines' hosts takes longer than a one-stream step's kernels run
(``bench/README.md``). A launch here computes a cheaper key that captures everything Triton
specialises a compilation on (each tensor's dtype and 16-byte alignment, the other arguments'
values, the constexprs and launch options); the first call of a key goes through Triton and keeps
the compiled kernel, later calls hand the arguments straight to that kernel's launcher.

Under the CPU interpreter (TRITON_INTERPRET=1) there is no compiled kernel: every call goes
through Triton.
"""
from __future__ import annotations

import functools
import os
import threading

import torch

try:  # grid dependency control, for kernels launched as programmatic dependents (below)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - Triton releases without it never launch so
    gdc_launch_dependents = gdc_wait = None

try:  # the driver and knobs of the Triton that compiled the kernels (absent: no fast path)
    from triton import knobs as _knobs
    from triton.runtime import driver as _driver
except ImportError:  # pragma: no cover - Triton releases without them take Triton's own launch path
    _knobs = _driver = None


# triton.cdiv and triton.next_power_of_2 are constexpr functions: called from host code each
# costs microseconds of argument unwrapping, several times per launch.
def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for positive integers."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 that is ≥ n (1 for n ≤ 1)."""
    return 1 << max(0, n - 1).bit_length()


def specialization_key(args, meta: dict) -> tuple:
    """The cache key of one launch: each tensor's dtype and 16-byte alignment, every other runtime
    argument by value (more specific than Triton's classes of integers: never less), then the
    constexprs and launch options."""
    return (*[(a.dtype, not a.data_ptr() & 15) if isinstance(a, torch.Tensor) else a for a in args], *meta.items())


# Programmatic dependent launch (Hopper and later): a kernel launched with ``launch_pdl=True`` may
# start while the kernel before it on the stream is still running, so its launch and whatever it
# reads that the earlier kernel does not write overlap that kernel's tail. Every kernel launched
# so calls ``gdc_wait`` (tl.extra.cuda) before it reads what a prior kernel may write and before
# it stores anything (torch may hand it memory a prior kernel still reads), and releases its own
# dependents only after that wait: so when such a kernel starts, every kernel but the one just
# before it has finished. Off to compare (bench/bench_many_streams_gpu.py --compare).
PROGRAMMATIC_LAUNCH = True


def compiled_on(device: torch.device) -> bool:
    """Whether a launch on ``device`` runs a compiled kernel: a CUDA device, not under the CPU
    interpreter (TRITON_INTERPRET=1, where every call goes through Triton's Python)."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"


@functools.lru_cache(maxsize=None)
def _programmatic_device(index: int) -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # pragma: no cover - a Triton without its NVIDIA backend
        return False
    return (gdc_wait is not None and "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})
            and torch.version.hip is None and torch.cuda.get_device_capability(index) >= (9, 0))


def programmatic(device: torch.device) -> bool:
    """Whether kernels on ``device`` are launched as programmatic dependents (``PROGRAMMATIC_LAUNCH``,
    an NVIDIA device of compute capability 9.0 or later, a Triton that has ``launch_pdl``; never
    under the CPU interpreter)."""
    return (PROGRAMMATIC_LAUNCH and compiled_on(device)
            and _programmatic_device(device.index if device.index is not None else torch.cuda.current_device()))


def programmatic_options(device: torch.device) -> dict:
    """A launch's programmatic-dependent meta, the kernel's ``PDL`` constexpr (its ``gdc_wait``)
    and the ``launch_pdl`` launch option together, so that neither is set without the other."""
    on = programmatic(device)
    return {"PDL": on, "launch_pdl": on}


# Keys are per shape; a program that sees ever new shapes should not grow the cache without end.
MAX_CACHED = 512

# A key's first launch goes through Triton's compile-and-launch path one thread at a time: threads
# compiling different kernels at once were seen (Triton 3.6, tests/test_determinism.py's threads)
# to launch one kernel through another's launcher ("function takes exactly 40 arguments (41 given)").
_FIRST_LAUNCH = threading.Lock()


class CachedLaunch:
    """``launch(grid, *args, **meta)`` runs ``kernel[grid](*args, **meta)``, faster after the first call.

    ``args``: the kernel's runtime arguments, positionally and in order, and nothing else; ``meta``:
    its constexpr arguments by name and the launch options (num_warps, num_stages). The
    compiled kernels are kept per device and key.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.names = list(kernel.arg_names)
        self.compiled: dict = {}

    def _ordered(self, args, meta: dict) -> list:
        # The compiled launcher takes every parameter (constexprs too), in declaration order.
        values = list(args)
        values.extend(meta[name] for name in self.names[len(args):])
        return values

    def __call__(self, grid, *args, **meta):
        device = args[0].device
        if not compiled_on(device):
            self.kernel[grid](*args, **meta)
            return
        key = (device.index, specialization_key(args, meta))
        compiled = self.compiled.get(key)
        grid = tuple(grid) + (1,) * (3 - len(grid))
        if compiled is None:
            with _FIRST_LAUNCH:
                compiled = self.kernel[grid](*args, **meta)
            if all(hasattr(compiled, name) for name in ("__getitem__", "run", "function", "packed_metadata")):
                if len(self.compiled) >= MAX_CACHED:
                    self.compiled.clear()
                self.compiled[key] = compiled
        elif not _hooks_idle():
            compiled[grid](*self._ordered(args, meta))  # the launch hooks see it as usual
        else:
            stream = _driver.active.get_current_stream(device.index)
            compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None,
                         *self._ordered(args, meta))


def _hooks_idle() -> bool:
    """No launch hook is registered (profilers such as proton add them).

    Triton 3.6 keeps its launch hooks in chains that are never None, so its own path builds the
    hooks' metadata and calls both (empty) chains from C on every launch; with no hook there is
    nothing to build or call, which a one-stream eager step measurably gains from.
    """
    if _knobs is None or _driver is None:
        return False
    hooks = (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook)
    return all(hook is None or getattr(hook, "calls", None) == [] for hook in hooks)
