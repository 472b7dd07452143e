"""How an op with several kernels picks one: its ``backend`` argument, read at BackendSelect.

Each op of ``infvideo.ops`` has one schema, ``torch.ops.infvideo.<op>``, defined here in Python
with ``torch.library.custom_op`` (so it exists with or without the C++ extension) and one fake.
Its kernels:

- the C++ ones of ``csrc/`` register for the op's ``CPU`` and ``CUDA`` dispatch keys
  (``TORCH_LIBRARY_IMPL(infvideo, CPU/CUDA, …)``) when the extension loads;
- the Triton launcher is a Python function.

An op's last argument, ``str backend`` (``"auto"``, ``"triton"``, ``"cpu"`` or ``"cuda"``), picks
among them in a kernel registered for the ``BackendSelect`` key, which every call passes through
after autograd and before the device's kernel (torch's own ``custom_op`` selects devices there
for factory ops): ``triton`` launches the Triton kernel, ``cpu`` / ``cuda`` redispatch to the C++
kernel of the tensors' device, ``auto`` follows ``infvideo.backends.backend_for``. Fake tensors,
``torch.compile`` and ``opcheck`` see the one schema and its fake; meta tensors go to the fake.

An op's backward (registered on the op with ``torch.library.register_autograd``) is a second op,
``infvideo::<op>_backward``, whose last argument is the forward's ``backend`` and which picks its
kernel here the same way; its plain-torch body is the kernel of a device without one of its own
(the CUDA key until csrc has CUDA backward kernels).
"""
from __future__ import annotations

import torch
from torch._C import DispatchKey, DispatchKeySet
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import backends

_LIB = torch.library.Library("infvideo", "FRAGMENT")


def select_kernels(name: str, triton_kernel) -> None:
    """Registers the BackendSelect kernel of ``infvideo::<name>``, whose last argument is the backend
    and whose first is a tensor on the call's device."""
    overload = getattr(torch.ops.infvideo, name).default
    arguments = overload._schema.arguments
    qualified = f"infvideo::{name}"

    def select(keyset, *args, **kwargs):
        # Defaults of arguments the caller left out, so every kernel sees the whole argument list.
        args = (*args, *(kwargs.get(a.name, a.default_value) for a in arguments[len(args):]))
        device = args[0].device
        if device.type == "meta":  # the fake
            return overload.redispatch(DispatchKeySet(DispatchKey.Meta), *args)
        backend = backends.op_backend(qualified, args[-1], device)
        if backend == "triton":
            return triton_kernel(*args[:-1])
        return overload.redispatch(DispatchKeySet(DispatchKey.CPU if backend == "cpu" else DispatchKey.CUDA), *args)

    _LIB.impl(name, select, "BackendSelect", with_keyset=True)


def direct_triton(first: torch.Tensor, backend: str) -> bool:
    """Whether a call may launch an op's Triton kernel itself instead of going through
    ``torch.ops.infvideo.<op>``: ``backend`` is ``"triton"``, ``first`` is a plain CUDA tensor,
    and nothing needs to see the op: no torch.compile or export tracing, no dispatch mode (fake
    tensors, opcheck), no profiler recording op names. The dispatcher's way to the same launcher
    (the custom op's autograd wrapper, BackendSelect, the Python select) costs more host time than
    the kernels of a small step take on the GPU."""
    return backend == "triton" and eager_cuda(first) and not torch._C._autograd._profiler_enabled()


def eager(tensor: torch.Tensor) -> bool:
    """``tensor`` is a plain tensor of an eager call: no torch.compile or export tracing, no
    dispatch mode (fake tensors, opcheck)."""
    return type(tensor) is torch.Tensor and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def eager_cuda(tensor: torch.Tensor) -> bool:
    """``tensor`` is a plain CUDA tensor of an eager call (:func:`eager`)."""
    return tensor.is_cuda and eager(tensor)


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """Grad mode is on and one of ``tensors`` requires grad: autograd must see the op."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# op name -> the autograd.Function that records an eager call of its Triton kernel (register_autograd).
_DIRECT_AUTOGRAD: dict[str, type] = {}


def register_autograd(name: str, triton_kernel, backward, setup_context) -> None:
    """``torch.library.register_autograd`` of ``infvideo::<name>``, and the same ``setup_context``
    and ``backward`` as an ``autograd.Function`` around the op's Triton kernel, through which
    :func:`launch` records eager grad-enabled calls without the dispatcher (the backward is the
    op's own, so both ways give the same gradients)."""
    torch.library.register_autograd(f"infvideo::{name}", backward, setup_context=setup_context)

    def forward(ctx, *args):
        output = triton_kernel(*args[:-1])
        setup_context(ctx, args, output)
        return output

    _DIRECT_AUTOGRAD[name] = type(f"Direct_{name}", (torch.autograd.Function,),
                                  {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def launch(name: str, triton_kernel, args: tuple, backend: str, *differentiable: torch.Tensor | None):
    """``torch.ops.infvideo.<name>(*args, backend)``, or the same Triton kernel called directly
    where :func:`direct_triton` allows it; a call that autograd must record (grad mode on and one
    of ``differentiable`` requiring grad) then goes through the op's registered autograd
    (:func:`register_autograd`)."""
    if direct_triton(args[0], backend):
        if not records_grad(*differentiable):
            return triton_kernel(*args)
        function = _DIRECT_AUTOGRAD.get(name)
        if function is not None:
            return function.apply(*args, backend)
    return getattr(torch.ops.infvideo, name)(*args, backend)


def no_default_kernel(*args):
    """The custom op's own body: never reached, BackendSelect picks a kernel first."""
    raise AssertionError("infvideo: an op's BackendSelect kernel picks its implementation")


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``, skipping the call when it is a no-op."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def rows_unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself when its last dimension is contiguous (views of a stacked K|V qualify)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


# The sticky statistic sums each head's attention over groups of this many queries: the mass
# output of the attention ops is [S, H·⌈Q/QUERY_GROUP⌉, N], whatever tiles a kernel uses.
QUERY_GROUP = 16


def mass_groups(num_heads: int, queries: int) -> int:
    """G = H·⌈Q/16⌉, the groups of the attention ops' mass output."""
    return num_heads * -(-queries // QUERY_GROUP)
