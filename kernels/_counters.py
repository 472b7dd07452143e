"""Counters through which one kernel's programs wait for another's (Triton device functions).

A kernel that waits must never hold every multiprocessor while the kernel it waits for has
programs left to start: the waiting grid is smaller than the GPU (kernels/trailing_attention.py).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def wait_for_count(counter_ptr, target):
    """Returns once the counter at ``counter_ptr`` reaches ``target``, with everything the counted
    programs stored before counting themselves visible to every thread of this program."""
    # Plain polling reads while waiting, then one acquire for the reads after it.
    seen = tl.load(counter_ptr, volatile=True)
    while seen < target:
        seen = tl.load(counter_ptr, volatile=True)
    tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def count_done(counter_ptr):
    """Counts this program done at ``counter_ptr``, after every thread's stores."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
