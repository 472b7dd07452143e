"""Host time of the pieces of a one-stream eager step on the GPU (issue 3: launch cost).

    python bench/bench_host_cost.py [--calls 2000]

Each row: µs of host time per call over back-to-back calls without synchronisation ("host"), and
with the final synchronisation included ("wall"); where host ≈ wall the GPU waits on the host.
Sizes are the issue's (S=1, bf16 tokens [1, 256, 32, 768], bf16 projections, N=256, M=512, 12
heads, 32 queries). A plain torch elementwise op and an empty tensor give the host's own scale.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from infvideo import LongTermMemory, launch_plans
from infvideo.config import MemoryConfig
from infvideo.ops import step as fused


def per_call_us(fn, calls: int) -> tuple[float, float]:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host, (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    torch.manual_seed(0)
    proj_key = nn.Linear(768, 768).to(device, torch.bfloat16)
    proj_value = nn.Linear(768, 768).to(device, torch.bfloat16)
    tokens = torch.randn(1, 256, 32, 768, device=device).to(torch.bfloat16)
    query = torch.randn(1, 32, 768, device=device).to(torch.bfloat16)
    memory = LongTermMemory(backend="triton", check_finite=False).to(device)
    python_memory = LongTermMemory(backend="triton", check_finite=False, launch_plans=False).to(device)
    cfg = MemoryConfig()
    consts = fused.step_constants(cfg, 256, device)
    past = torch.randn(1, 256, 768, device=device)
    mass = torch.rand(1, 24, 256, device=device)
    bins = fused.quantile_bins(mass, 512, "triton")
    keys = torch.randn(1, 256, 768, device=device, dtype=torch.bfloat16)
    rows = {
        "torch.empty [1, 256, 768]": lambda: torch.empty(1, 256, 768, device=device),
        "tensor.add(1), [1, 256, 768]": lambda: past.add(1),
        "F.linear bf16 [256, 768] x [768, 1536]": lambda: torch.nn.functional.linear(keys, proj_key.weight),
        "quantile_bins launch": lambda: fused.quantile_bins(mass, 512, "triton"),
        "rect_consolidate launch": lambda: fused.rect_consolidate(tokens, past, consts.later_plan, bins,
                                                                  cast_dtype=torch.bfloat16, backend="triton"),
        "slot_attention launch": lambda: fused.slot_attention(query, keys, keys, 12, consts.slot_log_weight,
                                                              consts.null_log_weight, backend="triton"),
        "fused_step": lambda: fused.fused_step(cfg, consts, tokens, query, proj_key, proj_value, 12, past, None, mass,
                                               backend="triton"),
        "LongTermMemory step, launched from Python": lambda: python_memory(tokens, query, proj_key, proj_value, 12),
        "LongTermMemory step, C++ launch plan": lambda: memory(tokens, query, proj_key, proj_value, 12),
    }
    if launch_plans.available():
        # The plan's own host cost, without the memory's Python around it.
        with torch.no_grad():
            for _ in range(3):
                memory(tokens, query, proj_key, proj_value, 12)
        (plan,) = memory._plans.plans.values()
        inputs = [tokens, query, memory.coef, memory.sticky_stats]
        rows["launch plan alone (3 kernels + GEMM)"] = lambda: plan(inputs)
        rows["launch_plan_run call, no work (wrong inputs)"] = lambda: plan([])
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    with torch.no_grad():
        for name, fn in rows.items():
            host, wall = per_call_us(fn, args.calls)
            print(f"{name:42s} host {host:8.1f} µs/call   wall {wall:8.1f} µs/call")


if __name__ == "__main__":
    main()
