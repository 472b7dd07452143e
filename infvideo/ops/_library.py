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


def direct_triton(first: torch.Tensor, backend: str, *others: torch.Tensor | None) -> bool:
    """Whether a call from the fused step may launch an op's Triton kernel itself: ``backend`` is
    ``"triton"``, the inputs are plain CUDA tensors, nothing traces (no torch.compile, no
    dispatch mode such as fake tensors) and autograd need not record the call (grad disabled, or
    neither ``first`` nor ``others`` requires grad). The dispatcher's way to the same launcher
    (autograd wrapper, BackendSelect, Python select) costs more host time than the kernels of a
    small step take on the GPU; torch.compile, export, opcheck and every grad-enabled call see
    ``torch.ops.infvideo.<op>``, whose registered autograd records the backward."""
    return (backend == "triton" and type(first) is torch.Tensor and first.is_cuda
            and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and not records_grad(first, *others))


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """Grad mode is on and one of ``tensors`` requires grad: autograd must see the op."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
