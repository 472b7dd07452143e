"""Eager CUDA steps launched from C++ plans (``LongTermMemory(launch_plans=True)``, the default).

A one-stream step on the Triton backend is three kernels and one small product, about 24 µs of
GPU time, but launched from Python it costs several times that in host time: each kernel's
wrapper recomputes its grid, strides and constants, and Triton's launcher unpacks every argument
(bench/bench_host_cost.py). At a given signature (shapes, strides, dtypes, device, weights) all
of that is the same on every call. So, at the second full step of a signature, the memory
computes the step once under a recorder that sees every ATen call (allocations, views, a cuBLAS
product) and every Triton launch (the compiled kernel and its arguments), and hands the sequence
to C++ (``csrc/launch/``). Later calls at that signature run the plan: C++ checks the inputs
against the recording, allocates the step's tensors, launches the same compiled kernels with the
same arguments but the new pointers, and returns new tensors; the memory then checks (with
``check_finite``) and commits them as it does a step launched from Python.

Unlike a CUDA graph (``cuda_graphs=True``) nothing is copied or captured: the frames are read
where they are, results are bit-identical to the Python path (same kernels, same arguments, same
cuBLAS call), and the plan runs at any size. Only memories whose steps run on the fused kernels
alone keep plans (rectangular bins, exact preset, quantile or uniform sampling); a step that does
anything else (float64 inputs, a copy or a cast the recording cannot replay) is refused by the
recorder and its signature keeps the Python path, as does a plan that fails (with a warning).
Plans need the extension built with CUDA.
"""
from __future__ import annotations

import re
import struct
import warnings
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .graphs import traced
from .ops import _csrc

# The program format of csrc/launch/launch_plan.cpp.
_VERSION = 1
_ALLOC, _LAUNCH, _MATMUL = 0, 1, 2
_POINTER, _INT32, _INT64, _FLOAT32, _NULL = 0, 1, 2, 3, 4

_aten = torch.ops.aten
_ALLOCATIONS = {_aten.empty.memory_format, _aten.empty_strided.default}
_PRODUCTS = {_aten.addmm.default: True, _aten.mm.default: False}  # op -> has a bias operand
# Triton's parameter types that a plan passes by value, and how wide the kernel's parameter is.
_SCALARS = {"i32": (_INT32, 4), "u32": (_INT32, 4), "i64": (_INT64, 8), "u64": (_INT64, 8), "fp32": (_FLOAT32, 4)}
_PTX_WIDTH = {"u64": 8, "b64": 8, "s64": 8, "f64": 8, "u32": 4, "b32": 4, "s32": 4, "f32": 4}


class Refused(Exception):
    """The recorded step does something a plan cannot replay (the message says what)."""


def available() -> bool:
    """The extension holds the plan ops (it was built with CUDA)."""
    return _csrc.built_with_cuda() and hasattr(torch.ops.infvideo, "launch_plan_run")


class _Recorder(TorchDispatchMode):
    """Logs a step's ATen calls and Triton launches, refusing what a plan could not replay."""

    def __init__(self):
        super().__init__()
        self.events: list = []
        self.refusal: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _ALLOCATIONS:
            self.events.append(("alloc", out))
        elif func in _PRODUCTS:
            if any(kwargs.get(name, 1) != 1 for name in ("beta", "alpha")):
                self.refuse(f"{func} with beta/alpha")
            self.events.append(("matmul", func, args, out))
        elif not func.is_view and (func._schema.is_mutable or any(isinstance(x, torch.Tensor)
                                                                   for x in tree_leaves(out))):
            self.refuse(f"{func}")  # (ops that only compute metadata, e.g. promote_types, need no replay)
        elif isinstance(out, torch.Tensor) and isinstance(args[0], torch.Tensor) and out.dtype != args[0].dtype:
            self.refuse(f"{func} changes the dtype")
        return out

    def launch(self, compiled, grid, args) -> None:
        self.events.append(("launch", compiled, grid, args))

    def refuse(self, why: str) -> None:
        if self.refusal is None:
            self.refusal = why


def _ptx_params(ptx: str, name: str) -> list[int]:
    """Byte widths of the parameters of kernel ``name``'s entry in its PTX."""
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise Refused(f"no PTX entry for {name}")
    widths = []
    for decl in match.group(1).split(","):
        kind = re.search(r"\.param\s+\.(\w+)", decl)
        if kind is None or kind.group(1) not in _PTX_WIDTH:
            raise Refused(f"{name}: parameter {decl.strip()!r}")
        widths.append(_PTX_WIDTH[kind.group(1)])
    return widths


def _shape(t: torch.Tensor) -> list[int]:
    return [t.dim(), *t.shape, *t.stride()]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _dtype_code(dtype: torch.dtype) -> int:
    """c10::ScalarType's number of ``dtype`` (the order of c10/core/ScalarType.h)."""
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        raise Refused(f"a tensor of {dtype}")
    return code


_DTYPE_CODES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4, torch.float16: 5,
                torch.float32: 6, torch.float64: 7, torch.bool: 11, torch.bfloat16: 15}


class _Program:
    """The int64 program of one recorded step (the format of csrc/launch/launch_plan.cpp).

    Slots are numbered in the order the step meets them: the inputs first, then every constant
    (memory the step neither allocated nor took as an input: its cached constants and stacked
    weights, which the plan keeps alive), allocation and product output.
    """

    def __init__(self, inputs: list[torch.Tensor]):
        self.slots: dict[int, tuple[int, torch.Tensor]] = {}  # storage address -> (slot, its base tensor)
        self.count = 0
        self.head: list[int] = []
        for t in inputs:
            if _storage(t) in self.slots:
                raise Refused("two inputs share memory")
            self._new_slot(t)
            self.head += [*_shape(t), _dtype_code(t.dtype), t.data_ptr() & 15]
        self.inputs = len(inputs)
        self.constants: list[tuple[int, torch.Tensor]] = []
        self.ops: list[list[int]] = []

    def _new_slot(self, t: torch.Tensor) -> int:
        slot = self.count
        self.count += 1
        self.slots[_storage(t)] = (slot, t)
        return slot

    def _slot_of(self, t: torch.Tensor) -> tuple[int, torch.Tensor]:
        hit = self.slots.get(_storage(t))
        if hit is None:
            slot = self._new_slot(t)
            self.constants.append((slot, t))
            hit = (slot, t)
        return hit

    def _ref(self, t: torch.Tensor) -> list[int]:
        slot, base = self._slot_of(t)
        if t.dtype != base.dtype:
            raise Refused("a view of memory under another dtype")
        return [slot, t.storage_offset() - base.storage_offset(), *_shape(t)]

    def alloc(self, out: torch.Tensor) -> None:
        if out.storage_offset():
            raise Refused("an allocation with a storage offset")
        self.ops.append([_ALLOC, self._new_slot(out), *_shape(out), _dtype_code(out.dtype)])

    def matmul(self, func, args, out: torch.Tensor) -> None:
        if len(args) != (3 if _PRODUCTS[func] else 2) or not all(isinstance(a, torch.Tensor) for a in args):
            raise Refused(f"{func} with arguments {args!r:.100}")
        refs = [x for t in args for x in self._ref(t)]
        self.ops.append([_MATMUL, self._new_slot(out), int(_PRODUCTS[func]), *refs])

    def launch(self, compiled, grid, args) -> None:
        meta = compiled.metadata
        name = getattr(meta, "name", "?")
        if (getattr(meta, "num_ctas", 1) != 1 or tuple(getattr(meta, "cluster_dims", (1, 1, 1))) != (1, 1, 1)
                or getattr(meta, "launch_pdl", False) or getattr(meta, "launch_cooperative_grid", False)
                or getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0)):
            raise Refused(f"{name}: launch options a plan does not pass")
        signature = list(compiled.src.signature.values())
        if len(signature) != len(args):
            raise Refused(f"{name}: {len(args)} arguments for {len(signature)} parameters")
        params, widths = [], []
        for kind, value in zip(signature, args):
            if kind == "constexpr":
                continue
            if kind.startswith("*") and isinstance(value, torch.Tensor):
                slot, base = self._slot_of(value)
                params += [_POINTER, slot, value.data_ptr() - base.data_ptr()]
                widths.append(8)
            elif kind in _SCALARS and isinstance(value, (int, float)):
                code, width = _SCALARS[kind]
                if code == _FLOAT32:
                    value = struct.unpack("<i", struct.pack("<f", value))[0]
                params += [code, int(value), 0]
                widths.append(width)
            else:
                raise Refused(f"{name}: a {kind} parameter given {value!r:.50}")
        ptx = _ptx_params(compiled.asm["ptx"], name)
        scratch = ptx[len(widths):]
        if ptx[:len(widths)] != widths or any(width != 8 for width in scratch):
            raise Refused(f"{name}: PTX parameters {ptx} do not match the arguments' {widths}")
        params += [_NULL, 0, 0] * len(scratch)  # Triton's scratch pointers: no scratch memory (checked above)
        self.ops.append([_LAUNCH, int(compiled.function), *grid, 32 * meta.num_warps, meta.shared, len(params) // 3,
                         *params])

    def encode(self, outputs: list[torch.Tensor]) -> tuple[list[int], list[torch.Tensor]]:
        """(program, constants) returning views of ``outputs``."""
        refs = [x for t in outputs for x in self._ref(t)]
        program = [_VERSION, self.inputs, self.count, len(self.constants), *(s for s, _ in self.constants),
                   len(self.ops), len(outputs), *self.head, *(x for op in self.ops for x in op), *refs]
        return program, [t for _, t in self.constants]


class LaunchPlan:
    """One recorded step, replayed by C++: ``plan(inputs)`` returns its outputs, or None when the
    inputs are not those it was recorded for (shape, strides, dtype, device, 16-byte alignment)."""

    def __init__(self, program: list[int], constants: list[torch.Tensor], device: torch.device, kernels=()):
        self.id = torch.ops.infvideo.launch_plan_create(program, constants, device.index)
        self.kernels = tuple(kernels)  # the compiled kernels whose CUfunctions the plan launches stay loaded
        self._run = torch.ops.infvideo.launch_plan_run.default
        # Released with the Python object; at exit the process frees everything anyway.
        weakref.finalize(self, torch.ops.infvideo.launch_plan_release, self.id).atexit = False

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        return self._run(self.id, inputs) or None


def record(step, inputs: list[torch.Tensor], outputs) -> tuple:
    """Run ``step()`` once, eagerly, and record it: (its result, a LaunchPlan, or the reason there is none).

    ``inputs``: the tensors that change from call to call, in the order the plan will take them;
    ``outputs(result)``: the tensors the plan returns, given what ``step()`` returned.
    """
    from .kernels import _launch  # a planned step runs Triton kernels, so Triton is there

    recorder = _Recorder()
    previous = _launch.set_recorder(recorder.launch)
    try:
        with recorder:
            result = step()
    finally:
        _launch.set_recorder(previous)
    if recorder.refusal is not None:
        return result, recorder.refusal
    try:
        program = _Program(inputs)
        for kind, *event in recorder.events:
            getattr(program, kind)(*event)
        kernels = [event[0] for kind, *event in recorder.events if kind == "launch"]
        return result, LaunchPlan(*program.encode(outputs(result)), inputs[0].device, kernels)
    except (Refused, RuntimeError) as why:  # RuntimeError: the C++ side rejected the program
        return result, str(why)


def eligible(memory: nn.Module, frames: torch.Tensor) -> bool:
    """Steps a plan can replay: CUDA tensors on the Triton backend, no autograd, a full memory
    (every stream holds a video), outside torch.compile and CUDA graph captures. (Which
    configurations keep plans at all, LongTermMemory decides once: ``plannable``.)"""
    return (memory._fill == "full" and not torch.is_grad_enabled() and frames.is_cuda
            and memory._backends.get(frames.device) == "triton" and not traced(frames.device))


class StepPlans:
    """The plans of one memory, one per signature (the few a model uses).

    A signature's first full step runs from Python (it compiles the kernels), its second is
    recorded, later ones run the plan. ``refused`` keeps why a signature has no plan (the step does
    something a plan cannot replay), so that it is recorded only once.
    """

    def __init__(self, limit: int = 8):
        self.limit = limit
        self.plans: dict[tuple, LaunchPlan] = {}
        self.seen: set = set()
        self.refused: dict[tuple, str] = {}

    def run(self, memory: nn.Module, key: tuple, frames: torch.Tensor, query: torch.Tensor,
            projections: tuple = ()) -> torch.Tensor | None:
        """The step's context from its plan (the memory's state updated), or None without a plan
        (``projections``: (proj_key, proj_value), for the memory's check to name)."""
        plan = self.plans.get(key)
        if plan is None or not eligible(memory, frames):
            return None
        buffers = memory._buffers
        try:
            outputs = plan([frames, query, buffers["coef"], buffers["sticky_stats"]])
        except RuntimeError as err:
            # A plan that fails (a driver error, say) has written only tensors of its own: the
            # state is untouched, and this signature goes back to the Python launches for good.
            warnings.warn(f"infvideo: a launch plan failed ({err}); this step signature now runs from Python",
                          RuntimeWarning, stacklevel=3)
            del self.plans[key]
            self.refused[key] = str(err)
            return None
        if outputs is None:  # the state is not what the plan was recorded with (e.g. loaded)
            del self.plans[key]
            self.seen.discard(key)
            return None
        context, coef, *stats = outputs  # no statistic without sticky sampling
        # (eligible() has ruled out a compile or capture: the commit need not ask again)
        return memory._finish(frames, query, context, coef, stats[0] if stats else None, "full", traced=False,
                              projections=projections)

    def wants(self, memory: nn.Module, key: tuple, frames: torch.Tensor) -> bool:
        """Whether this step (checked, about to run) should be recorded."""
        if key in self.plans or key in self.refused or not eligible(memory, frames) or not available():
            return False
        if key not in self.seen:
            self.seen.add(key)
            return False
        return True

    def record(self, memory: nn.Module, key: tuple, compute, frames: torch.Tensor, query: torch.Tensor,
               projections: tuple = ()) -> torch.Tensor:
        """Runs ``compute()`` (the memory's step on these inputs, without its check and commit)
        under the recorder, keeps the plan, then checks and commits the step as usual."""
        buffers = memory._buffers
        inputs = [frames, query, buffers["coef"], buffers["sticky_stats"]]
        (context, coef, stats), plan = record(compute, inputs, lambda out: [t for t in out if t is not None])
        if isinstance(plan, str):
            if len(self.refused) >= 64:
                self.refused.clear()
            self.refused[key] = plan
        else:
            if len(self.plans) >= self.limit:
                self.plans.pop(next(iter(self.plans)))
            self.plans[key] = plan
        return memory._finish(frames, query, context, coef, stats, "full", traced=False, projections=projections)
