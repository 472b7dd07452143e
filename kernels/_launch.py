"""Host-side helpers of the Triton launchers."""
from __future__ import annotations


# triton.cdiv and triton.next_power_of_2 are constexpr functions: called from host code each
# unwraps its arguments, several times per launch.
def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for positive integers."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 that is ≥ n (1 for n ≤ 1)."""
    return 1 << max(0, n - 1).bit_length()
