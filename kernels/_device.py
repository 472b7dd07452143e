"""Triton launches on the *current* CUDA device; these launchers make it the tensors' device."""
from __future__ import annotations

import functools

import torch


def on_input_device(launcher):
    """Runs ``launcher(first_tensor, ...)`` with the first tensor's CUDA device current.

    Without it, a memory on ``cuda:1`` called while ``cuda:0`` is current would launch the kernel
    on the wrong GPU with pointers it cannot read. The switch is skipped (no cost beyond one query)
    when the device is already current, and for CPU tensors (the interpreter).
    """
    @functools.wraps(launcher)
    def launch(first: torch.Tensor, *args, **kwargs):
        device = first.device
        if device.type != "cuda" or device.index == torch.cuda.current_device():
            return launcher(first, *args, **kwargs)
        with torch.cuda.device(device):
            return launcher(first, *args, **kwargs)
    return launch
