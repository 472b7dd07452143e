"""Compile the package's Triton kernels for a Hopper GPU (sm_90) on a machine without one.

    python bench/compile_for_gpu.py [--arch 90] [--only NAME ...] [--resources]   # not under TRITON_INTERPRET

The CPU interpreter runs the kernels' Python semantics, not Triton's compiler: a kernel that the
interpreter accepts can still fail to compile for a GPU. Here each kernel-level launcher
(``infvideo.kernels``) runs on small CPU tensors with ``CachedLaunch`` recording its launches
instead of running them (outputs stay uninitialised; nothing reads them back), and every recorded
launch is compiled to a cubin for the target with Triton's bundled ptxas, with the alignment
specialisations (arguments divisible by 16) its GPU launch would have. The GPU's own variants
of what the CPU would not pick are compiled too: three-TF32 dots for ``PRECISION``, tensor-core
half dots for ``HALF_DOTS`` / ``DOT_TYPE``. Prints one line per compilation; exits 1 if any fails.
``--resources`` adds each compilation's registers per thread, spill stores and shared memory, as
ptxas reports them: a kernel's register pressure (what limits its occupancy) read without a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("compile_for_gpu.py compiles for a GPU: run it without TRITON_INTERPRET=1")

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from infvideo.kernels import _launch

_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
            torch.int32: "*i32", torch.int64: "*i64", torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "launch_pdl")


def signature(kernel, args, meta) -> tuple[dict, dict, dict]:
    """(Triton signature, constexprs by position, launch options) of one launch."""
    names = list(kernel.arg_names)
    types, constants = {}, {}
    for index, name in enumerate(names):
        value = args[index] if index < len(args) else meta[name]
        # An integer argument equal to 1 (a unit stride) is a constant to Triton's launcher too.
        if kernel.params[index].is_constexpr or (type(value) is int and value == 1):
            types[name], constants[(index,)] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            types[name] = _POINTER[value.dtype]
        elif isinstance(value, bool):
            types[name] = "i1"
        elif isinstance(value, int):
            types[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            types[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: argument {name} of type {type(value).__name__}")
    return types, constants, {k: meta[k] for k in LAUNCH_OPTIONS if k in meta}


def divisibility(kernel, args) -> dict:
    """The alignment facts Triton's launcher specialises a compilation on: runtime arguments (tensor
    addresses, integers) divisible by 16, as ``tt.divisibility`` attributes. Without them the
    compiler sees no aligned access and takes the scalar load paths a GPU launch does not."""
    attrs = {}
    for index, value in enumerate(args):
        if kernel.params[index].is_constexpr or isinstance(value, bool):
            continue
        if (value.data_ptr() if isinstance(value, torch.Tensor) else value if isinstance(value, int) else 1) % 16 == 0:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return attrs


def gpu_variants(args, meta: dict) -> list[dict]:
    """The launch's constexprs as recorded, and as a GPU would set those the CPU chose otherwise:
    three-TF32 dots for PRECISION, TF32 products for SPLIT_PRECISION, tensor-core half dots (HALF_DOTS,
    DOT_TYPE), half K/V on the tensor cores (IEEE), 16-bit tokens pooled in their type
    (POOL_FLOAT32), the quadrature tiles' three-TF32 products (SCORE_PRECISION, WEIGHT_PRECISION),
    vector band loads (BAND_INSIDE) and programmatic dependent launches (PDL, FRAMES_FIRST: kernels/_launch.py)."""
    half = any(isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) for a in args)
    variants = [meta]
    for name, cpu, gpu in (("PRECISION", "ieee", dict(PRECISION="tf32x3")),
                           ("SPLIT_PRECISION", "ieee", dict(SPLIT_PRECISION="tf32")),
                           ("SCORE_PRECISION", "ieee", dict(SCORE_PRECISION="tf32x3", WEIGHT_PRECISION="tf32x3")),
                           ("BAND_INSIDE", False, dict(BAND_INSIDE=True, LO_ALIGN=4)),
                           ("HALF_DOTS", False, dict(HALF_DOTS=True, DOT_TYPE=tl.bfloat16)),
                           ("IEEE", True, dict(IEEE=False) if half else None),
                           ("POOL_FLOAT32", True, dict(POOL_FLOAT32=False)),
                           ("PDL", False, dict(PDL=True, launch_pdl=True)),
                           ("FRAMES_FIRST", False, dict(FRAMES_FIRST=True) if meta.get("HAS_PAST") else None)):
        if gpu is not None and meta.get(name, not cpu) == cpu:
            variants += [dict(v, **gpu) for v in variants]
    return variants


class Recorder:
    """Stands in for ``CachedLaunch.__call__``: keeps each distinct launch, runs nothing."""

    def __init__(self):
        self.launches: dict = {}

    def __call__(self, launch, grid, *args, **meta):
        for variant in gpu_variants(args, meta):
            types, constants, options = signature(launch.kernel, args, variant)
            attrs = divisibility(launch.kernel, args)
            key = (launch.kernel.fn.__name__, tuple(types.items()), tuple(map(repr, constants.items())),
                   tuple(options.items()), tuple(attrs))
            self.launches.setdefault(key, (launch.kernel, types, constants, options, attrs))


def workloads():
    """Memory steps (no grad, and with a backward) of the configurations the kernels serve, each
    switch of ``ops.step`` both ways, then no-grad steps at the benchmarks' widths (N = 256,
    e = D = 768, 12 heads, 32 queries: the tiles the GPU runs there), and the launchers no step
    reaches on the CPU. Triton counts as runnable on CPU tensors here: its launches are only
    recorded."""
    from infvideo import LongTermMemory, backends
    from infvideo.benchmarks import harness
    from infvideo.kernels import finite, products
    from infvideo.ops import step as step_module
    backends.interpreting = lambda: True
    gen = torch.Generator().manual_seed(0)
    configs = [dict(), dict(preset="paper"), dict(sticky=False), dict(sampling="upstream"),
               dict(basis="gaussian"), dict(basis="gaussian", preset="paper")]
    switches = [dict(), dict(FACTORED_ON_GPU=True)]
    for config, switch, tokens, weights in itertools.product(configs, switches, (torch.float32, torch.bfloat16),
                                                             (torch.float32, torch.bfloat16)):
        with harness.overrides([(step_module, name, value) for name, value in switch.items()]):
            memory = LongTermMemory(num_basis=16, past_samples=24, backend="triton", cuda_graphs=False,
                                    check_finite=False, **config)
            pk, pv = (torch.nn.Linear(32, 24).to(weights) for _ in range(2))
            for grad in (False, False, True):
                frames = torch.randn(2, 12, 4, 32, generator=gen).to(tokens).requires_grad_(grad)
                query = torch.randn(2, 5, 24, generator=gen).to(tokens)
                with torch.set_grad_enabled(grad):
                    context = memory(frames, query, pk, pv, 3)
                if grad:
                    context.float().sum().backward()
    for basis, dtype in itertools.product(("rectangular", "gaussian"), (torch.float32, torch.bfloat16)):
        memory = LongTermMemory(num_basis=256, past_samples=512, basis=basis, backend="triton", cuda_graphs=False,
                                check_finite=False)
        pk, pv = (torch.nn.Linear(768, 768).to(dtype) for _ in range(2))
        with torch.no_grad():
            for _ in range(2):
                memory(torch.randn(1, 16, 4, 768, generator=gen).to(dtype),
                       torch.randn(1, 32, 768, generator=gen).to(dtype), pk, pv, 12)
    queries, keys = torch.randn(2, 5, 24), torch.randn(2, 16, 24)
    products.split_linear(torch.randn(7, 300), products.split_weight(torch.randn(24, 300)), None)
    for rows in (7, products.LARGE_ROWS):  # the float32 K/V product, which the step takes on CUDA only
        products.linear(torch.randn(rows, 768), products.tf32_parts(torch.randn(1536, 768)), torch.randn(1536))
    flags, coef = torch.zeros(3, dtype=torch.int32), torch.randn(2, 16, 32)
    finite.raise_flags(flags, [(0, coef), (1, queries), (2, keys.bfloat16())])
    finite.select_committed(flags, [(coef, coef.clone(), coef), (keys, keys.clone(), keys)])
    finite.copy_committed([(coef, coef.clone()), (keys, keys.clone())])
    yield


def resources(ptxas_log: str, shared: int) -> str:
    """", N registers, M bytes spilled, S bytes shared" from a ptxas -v log and Triton's shared memory."""
    registers = re.findall(r"Used (\d+) registers", ptxas_log)
    spills = re.findall(r"(\d+) bytes spill stores", ptxas_log)
    return (f", {registers[-1] if registers else '?'} registers, {spills[-1] if spills else '?'} bytes spilled, "
            f"{shared} bytes shared")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--only", nargs="+", default=None, help="kernel function names to compile")
    parser.add_argument("--resources", action="store_true",
                        help="also print registers, spill stores and shared memory per compilation (ptxas -v)")
    args = parser.parse_args()
    if args.resources:  # ptxas's log is printed only when it runs: no cached compilations
        from triton import knobs
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
    recorder = Recorder()
    original = _launch.CachedLaunch.__call__
    _launch.CachedLaunch.__call__ = lambda self, grid, *a, **m: recorder(self, grid, *a, **m)
    try:
        for _ in workloads():
            pass
    finally:
        _launch.CachedLaunch.__call__ = original
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    for (name, *_), (kernel, types, constants, options, attrs) in recorder.launches.items():
        if args.only and name not in args.only:
            continue
        shown = {k: v for (i,), v in constants.items() for k in [kernel.arg_names[i]]
                 if k in ("PRECISION", "SPLIT_PRECISION", "HALF_DOTS", "IEEE", "HAS_PAST", "FRAME_ROWS", "ONE_TILE",
                          "WRITE_CAST",
                          "SCORE_PRECISION", "BAND_INSIDE", "PDL", "FRAMES_FIRST", "PREFETCH_V")}
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                compiled = triton.compile(ASTSource(kernel, types, constexprs=constants, attrs=attrs), target=target,
                                          options=options)
            status = "ok"
            if args.resources:
                status += resources(log.getvalue(), compiled.metadata.shared)
        except Exception as err:  # reported, then counted
            failures += 1
            status = f"FAILED {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(f"sm_{args.arch} {name} {shown} {options}: {status} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"{len(recorder.launches)} launches, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
