"""Issue 22, few streams: the K|V product and attention in one launch (``ops.project_attend``).

    PYTHONPATH=$PWD python bench/project_attend_gpu.py [--streams 1 2 4 8] [--budget 0.1] [--sweep]

The case of ``bench_many_streams_gpu.py`` (256 frames × 32 bf16 tokens, N = 256, M = 512,
e = D = 768, 12 heads, 32 queries, bf16 projections, a full memory in a user's CUDA graph): the
step with the one launch against the same step with ``project_attend.MAX_STREAMS = 0`` (cuBLAS
K|V, then the slot attention), µs per replay, and the largest relative difference between the
two ways' context, coefficients and mass over a few eager steps. A stream count given twice is
timed twice (S = 1 varies from run to run by about a microsecond, the size of what is at stake).
``--sweep`` also times the tiles of ``kernels/project_attend.CONFIG`` at the ``--sweep-streams``.
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import itertools

import torch
from torch import nn

import bench_many_streams_gpu as many
from bench_step_gpu import BASIS, HEADS, LENGTH, QUERIES, SAMPLES, TOKENS, WIDTH, read_bandwidth
from infvideo import LongTermMemory
from infvideo.benchmarks import harness
from infvideo.kernels import project_attend as kernel
from infvideo.ops import project_attend

SEPARATE = [(project_attend, "MAX_STREAMS", 0)]
ONE = [(project_attend, "MAX_STREAMS", 1 << 20)]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def differences(streams: int, steps: int = 4) -> tuple[float, float, float]:
    """Largest relative differences (context, coefficients, mass) between the one launch and
    the separate product and attention over ``steps`` eager steps from the same inputs."""
    torch.manual_seed(streams)
    pk = nn.Linear(WIDTH, WIDTH).cuda().bfloat16()
    pv = nn.Linear(WIDTH, WIDTH).cuda().bfloat16()
    chunks = [torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16) for _ in range(steps)]
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
    runs = []
    for changes in (ONE, SEPARATE):
        memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton", cuda_graphs=False,
                                check_finite=False).cuda()
        with harness.overrides(changes), torch.no_grad():
            outputs = [(memory(chunk, query, pk, pv, HEADS), memory.coef.clone(), memory.sticky_stats.clone())
                       for chunk in chunks]
        runs.append(outputs)
    worst = [0.0, 0.0, 0.0]
    for one, separate in zip(*runs):
        for i in range(3):
            worst[i] = max(worst[i], _relative(one[i], separate[i]))
    return tuple(worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--sweep", action="store_true", help="also time each tile configuration")
    parser.add_argument("--sweep-streams", type=int, nargs="+", default=None,
                        help="the stream counts of the sweep (default: --streams)")
    args = parser.parse_args()
    bandwidth = read_bandwidth()
    print(f"GPU {harness.device_name(torch.device('cuda'))}, torch {torch.__version__}, commit {harness.commit()}\n")
    print("| S | one launch µs | K\\|V and attention apart µs | floor µs | one / apart | context diff | "
          "coefficients diff | mass diff |")
    print("|---|---|---|---|---|---|---|---|")
    for streams in args.streams:
        many.ALTERNATIVES.clear()
        many.ALTERNATIVES["apart"] = SEPARATE
        with harness.overrides(ONE):
            step, floor, _, _, alternatives = many.step_us(streams, torch.bfloat16, torch.bfloat16, args.budget,
                                                           bandwidth)
        separate = alternatives["apart"]
        diffs = differences(streams)
        print(f"| {streams} | {step:,.1f} | {separate:,.1f} | {floor:,.1f} | {step / separate:.2f}× | "
              + " | ".join(f"{d:.1e}" for d in diffs) + " |", flush=True)
    if not args.sweep:
        return
    print("\n| S | tile | warps | stages | µs |")
    print("|---|---|---|---|---|")
    base = dict(kernel.CONFIG)
    for streams in args.sweep_streams or args.streams:
        for tile, warps, stages in itertools.product(((64, 64, 64), (32, 64, 64), (64, 128, 64)), (4, 8), (2, 3)):
            config = dict(base, tile=tile, num_warps=warps, num_stages=stages)
            many.ALTERNATIVES.clear()
            with harness.overrides([(kernel, "CONFIG", config), *ONE]):
                try:
                    step = many.step_us(streams, torch.bfloat16, torch.bfloat16, args.budget, bandwidth)[0]
                except Exception as err:  # a tile that does not compile or fit: reported, then skipped
                    print(f"| {streams} | {tile} | {warps} | {stages} | {type(err).__name__} |", flush=True)
                    continue
            print(f"| {streams} | {tile} | {warps} | {stages} | {step:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
