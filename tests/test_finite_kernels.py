"""The asynchronous finiteness check's two kernels (kernels/finite.py) and the DeviceCheck that
drives them, against torch: flags rise for exactly the tensors holding NaN or Inf, stay up, and the
select keeps the old values while any flag is up. Triton runs on CUDA, else in its interpreter."""
from __future__ import annotations

import pytest
import torch

from infvideo.backends import triton_runs_on
from infvideo.finite_check import DeviceCheck

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="Triton cannot run here")

# Sizes around the kernels' block of 4,096 elements, odd ones included.
SHAPES = [(1,), (7, 3), (4096,), (4097,), (3, 1500, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _tensors(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE) for shape in SHAPES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("poison", [None, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 3, 4])
def test_raise_flags_marks_exactly_the_poisoned_tensor(dtype, poison, where):
    from infvideo.kernels.finite import raise_flags
    tensors = _tensors(dtype)
    if poison is not None:
        flat = tensors[where].view(-1)
        flat[flat.numel() - 1] = poison  # the last element: the tail of the last block
    flags = torch.zeros(5, dtype=torch.int32, device=DEVICE)
    raise_flags(flags, list(enumerate(tensors)))
    expected = [int(poison is not None and i == where) for i in range(5)]
    assert flags.tolist() == expected


def test_raise_flags_shares_flags_and_keeps_them_up():
    from infvideo.kernels.finite import raise_flags
    a, b = torch.ones(10, device=DEVICE), torch.ones(5000, device=DEVICE)
    b[4999] = float("nan")
    flags = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    raise_flags(flags, [(2, a), (2, b)])
    assert flags.tolist() == [0, 0, 1]
    raise_flags(flags, [(0, a)])  # finite: flags only rise
    assert flags.tolist() == [0, 0, 1]


def test_raise_flags_writes_the_host_copy():
    """The pinned host copy is written by the kernel itself (through the device's mapping of it)."""
    from infvideo.finite_check import _maps_pinned_memory
    from infvideo.kernels.finite import raise_flags
    if DEVICE.type == "cuda" and not _maps_pinned_memory(DEVICE):
        pytest.skip("this device does not map pinned host memory")
    host = torch.zeros(3, dtype=torch.int32, pin_memory=DEVICE.type == "cuda")
    flags = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    bad = torch.ones(7, device=DEVICE)
    bad[3] = -float("inf")
    raise_flags(flags, [(0, torch.ones(3, device=DEVICE)), (1, bad)], host)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    assert host.tolist() == flags.tolist() == [0, 1, 0]


def test_raise_flags_takes_one_to_five_tensors():
    from infvideo.kernels.finite import raise_flags
    flags = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="1 to 5"):
        raise_flags(flags, [(0, torch.ones(1, device=DEVICE))] * 6)


@pytest.mark.parametrize("raised", [False, True])
@pytest.mark.parametrize("out", ["new", "old", "third"])
def test_select_committed(raised, out):
    from infvideo.kernels.finite import select_committed
    gen = torch.Generator().manual_seed(1)
    pairs, expected = [], []
    for shape in [(3, 4097), (2, 1, 33)]:
        new, old = (torch.randn(shape, generator=gen).to(DEVICE) for _ in range(2))
        expected.append((old if raised else new).clone())
        pairs.append((new, old, {"new": new, "old": old, "third": torch.full_like(new, 7.0)}[out]))
    flags = torch.tensor([0, int(raised), 0], dtype=torch.int32, device=DEVICE)
    select_committed(flags, pairs)
    for (_, _, result), want in zip(pairs, expected):
        assert torch.equal(result, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 2])
def test_copy_committed(dtype, count):
    """The kernel's copy without flags (a commit that does not check), one or two pairs of odd sizes."""
    from infvideo.kernels.finite import copy_committed
    news = _tensors(dtype, seed=3)[-count:]
    outs = [torch.full_like(new, 7.0) for new in news]
    copy_committed(list(zip(news, outs)))
    for new, out in zip(news, outs):
        assert torch.equal(out, new)


@pytest.mark.parametrize("count", [0, 3])
def test_select_and_copy_take_one_or_two_pairs(count):
    from infvideo.kernels.finite import copy_committed, select_committed
    t = torch.ones(3, device=DEVICE)
    flags = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=f"select_committed takes 1 or 2 pairs, got {count}"):
        select_committed(flags, [(t, t, t)] * count)
    with pytest.raises(ValueError, match=f"copy_committed takes 1 or 2 pairs, got {count}"):
        copy_committed([(t, t)] * count)


def test_copy_committed_falls_back_to_torch_copies():
    """finite_check.copy_committed: what the kernel does not take (integer or strided tensors) is
    copied by torch, the rest by the kernel, every pair written."""
    from infvideo.finite_check import copy_committed
    gen = torch.Generator().manual_seed(4)
    news = [torch.randn(5, 4097, generator=gen).to(DEVICE), torch.randint(0, 9, (6,), generator=gen).to(DEVICE),
            torch.randn(6, 5, generator=gen).to(DEVICE).t(), torch.randn(33, generator=gen).to(DEVICE)]
    outs = [torch.zeros_like(new) for new in news]
    copy_committed(list(zip(news, outs)))
    for new, out in zip(news, outs):
        assert torch.equal(out, new)


@pytest.mark.parametrize("raised", [False, True])
def test_device_check_on_the_kernels_matches_torch(raised):
    """DeviceCheck's fused form (CUDA) and its torch form (elsewhere) agree on flags and selection."""
    coef = torch.randn(2, 16, 8, device=DEVICE)
    if raised:
        coef[1, 3, 2] = float("inf")
    query = torch.randn(2, 4, 8, device=DEVICE, dtype=torch.bfloat16)
    results = []
    for fused in (True, False):
        check = DeviceCheck(DEVICE)
        check.fused = fused
        check.raise_flags([(0, coef), (1, query)])
        old = torch.zeros_like(coef)
        out = coef.clone()
        check.select([(out, old, out)])
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        results.append((check.flags.tolist(), check.seen.tolist(), out))
        assert check.failed() == (0 if raised else None)
        assert check.flags.tolist() == [0, 0, 0]
    assert results[0][0] == results[1][0] == results[0][1] == [int(raised), 0, 0]
    assert torch.equal(results[0][2], results[1][2])
