"""Issue 22: the GPU step and its attention by way of projecting: float32 K/V on cuBLAS, three-TF32 K/V, split-bf16 K/V, folded.

    PYTHONPATH=$PWD python bench/bench_projections_gpu.py --out DIR [--streams 1 16 64] [--tokens bf16 fp32]
        [--projections fp32 bf16] [--budget 0.2]

Case: S streams, L = 256 frames of 32 tokens each (``--tokens`` dtype, pooled inside), N = 256,
M = 512, e = D = 768, 12 heads, 32 queries (the queries in the tokens' dtype), sticky quantile
sampling, ``--projections`` dtype; the memory is full (two steps before the timing). Rows per case:

- ``step, <variant>``: ``LongTermMemory(backend="triton")`` (its CUDA graphs) with the
  ``infvideo.ops.step`` switches of VARIANTS: K and V from cuBLAS in float32
  (``FLOAT32_PROJECTION = "cublas"``), from one three-TF32 Triton product (``"tf32x3"``,
  ``kernels/products.py``), from one cuBLAS product of bfloat16 parts (``"split-bf16"``), or
  never formed (``FACTORED_ON_GPU``: ``factored_slot_attention``, where the streams fill the GPU,
  ``kernels.factored_attention.fills_device``; fewer take three-TF32 K/V). The switches act on
  float32 projections only: with bfloat16 projections the rows run the same step (a check of the
  switches);
- ``attention, <variant>``: the attention alone on the same float32 coefficients;
- the input + state read floor (``bench_step_gpu.floor_us`` at the measured read bandwidth).

GPU time per call from ``harness.gpu_time`` (``triton.testing.do_bench``). ``rel_diff``: a step's
output against the first variant's (same inputs and state), an attention's context against the
same attention in float64. Writes projections.csv and projections.md into --out.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from bench_step_gpu import BASIS, HEADS, LENGTH, QUERIES, SAMPLES, TOKENS, WIDTH, floor_us, read_bandwidth
from infvideo import LongTermMemory
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.ops import factored_attention, step_constants
from infvideo.ops import step as step_module
from infvideo.ops.slot_attention import slot_attention_unchecked

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FLOOR = "input + state read floor"


def inputs(streams: int, tokens_dtype: torch.dtype, projections_dtype: torch.dtype):
    """(proj_key, proj_value, tokens [S, L, 32, e], query [S, Q, D]) on the GPU, seeded."""
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(projections_dtype)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(projections_dtype)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=tokens_dtype)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=tokens_dtype)
    return pk, pv, tokens, query


# Step variants: the ops.step switches each sets (the rest keep their defaults).
VARIANTS = {"cuBLAS float32 K/V": dict(FLOAT32_PROJECTION="cublas", FACTORED_ON_GPU=False),
            "three-TF32 K/V": dict(FLOAT32_PROJECTION="tf32x3", FACTORED_ON_GPU=False),
            "split-bf16 K/V": dict(FLOAT32_PROJECTION="split-bf16", FACTORED_ON_GPU=False),
            "folded": dict(FLOAT32_PROJECTION="cublas", FACTORED_ON_GPU=True)}


def switched(settings: dict):
    """``settings`` set on ops.step for the duration of a ``with`` block."""
    return harness.overrides([(step_module, name, value) for name, value in settings.items()])


def step_rows(streams, pk, pv, tokens, query, budget) -> list[tuple[str, list[float], torch.Tensor]]:
    """(provider, times, output) of the memory step in each of VARIANTS."""
    rows = []
    for name, settings in VARIANTS.items():
        # The memory captures its step into CUDA graphs on the first calls: switch first.
        with switched(settings):
            memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton").cuda()
            for _ in range(2):
                memory(tokens, query, pk, pv, HEADS)
            times = harness.gpu_time(lambda: memory(tokens, query, pk, pv, HEADS), budget)
            # From the same state in every row: one more step after the timed calls would differ.
            fresh = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton").cuda()
            for _ in range(3):
                out = fresh(tokens, query, pk, pv, HEADS)
        rows.append((f"step, {name}", times, out))
        del memory, fresh
    return rows


def attention_rows(streams, pk, pv, query, budget) -> list[tuple[str, list[float], torch.Tensor]]:
    """(provider, times, context) of the attention alone on the same float32 coefficients in each
    of VARIANTS, and the float64 context (K/V and the softmax in float64) as the last row."""
    coef = torch.randn(streams, BASIS, WIDTH, device="cuda")
    log_weight = step_constants(MemoryConfig(num_basis=BASIS, past_samples=SAMPLES), LENGTH,
                                torch.device("cuda")).slot_log_weight

    def kv():
        keys, values = step_module._project_pair(pk, pv, coef, backend="triton")
        return slot_attention_unchecked(query, keys, values, HEADS, log_weight, None, "triton")[0]

    def folded():
        return factored_attention.factored_slot_attention(query, coef, pk, pv, HEADS, log_weight, "triton")[0]

    rows = []
    for name, settings in VARIANTS.items():
        fn = folded if settings["FACTORED_ON_GPU"] else kv
        with switched(settings):
            rows.append((f"attention, {name}", harness.gpu_time(fn, budget), fn()))
    keys, values = (torch.nn.functional.linear(coef.double(), p.weight.double(), p.bias.double()) for p in (pk, pv))
    exact = slot_attention_torch64(query.double(), keys, values, None if log_weight is None else log_weight.double())
    return rows + [("attention, float64", None, exact)]


def slot_attention_torch64(query, keys, values, log_weight):
    """The slot attention's context in float64 (plain torch)."""
    s, q_len, model = query.shape
    d = model // HEADS

    def heads(x):
        return x.reshape(s, -1, HEADS, d).transpose(1, 2)
    scores = heads(query) @ heads(keys).transpose(-1, -2) / d ** 0.5
    r = torch.softmax(scores if log_weight is None else scores + log_weight, dim=-1)
    return (r @ heads(values)).transpose(1, 2).reshape(s, q_len, model)


def measure(streams: int, tokens: str, projections: str, budget: float, bandwidth: float) -> list[dict]:
    """The rows of one (S, tokens dtype, projections dtype) case."""
    pk, pv, frames, query = inputs(streams, DTYPES[tokens], DTYPES[projections])
    case = dict(S=streams, tokens=tokens, projections=projections)
    rows = []
    with torch.no_grad():
        steps = step_rows(streams, pk, pv, frames, query, budget)
        attention = attention_rows(streams, pk, pv, query, budget)
    exact = attention.pop()[2]
    # Steps against the first variant's (same inputs and state), the attention against float64.
    timed = [(name, times, out, rel_diff(out, steps[0][2]) if index else None)
             for index, (name, times, out) in enumerate(steps)]
    timed += [(name, times, out, rel_diff(out, exact)) for name, times, out in attention]
    for provider, times, out, diff in timed:
        p20, p50, p80 = harness.percentiles(times)
        rows.append(dict(**case, provider=provider, p20_us=p20, p50_us=p50, p80_us=p80, rel_diff=diff))
        print(f"  S={streams:<3d} tokens {tokens} projections {projections} {provider:32s} p50 {p50:10,.1f} µs"
              + ("" if diff is None else f"  rel diff {diff:.1e}"), flush=True)
    floor = floor_us(streams, [frames, query, pk.weight, pv.weight], bandwidth)
    rows.append(dict(**case, provider=FLOOR, p20_us=floor, p50_us=floor, p80_us=floor, rel_diff=None))
    return rows


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def report(rows: list[dict], meta: dict, out: Path) -> None:
    """projections.md: one row per case, one column per provider (p50 µs)."""
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    cases = list(dict.fromkeys((r["S"], r["tokens"], r["projections"]) for r in rows))
    cell = {(r["S"], r["tokens"], r["projections"], r["provider"]): r["p50_us"] for r in rows}
    table = harness.markdown_table(["S", "tokens", "projections", *providers],
                                   [[*case, *[cell.get((*case, p)) for p in providers]] for case in cases])
    harness.write_markdown(out / "projections.md", f"The GPU step and its attention by projection variant: L={LENGTH} "
                           f"frames ×{TOKENS} tokens, N={BASIS}, M={SAMPLES}, e=D={WIDTH}, {HEADS} heads, "
                           f"{QUERIES} queries; p50 GPU µs (do_bench)", table, meta)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--tokens", choices=sorted(DTYPES), nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--projections", choices=sorted(DTYPES), nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of timed calls per row")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_projections_gpu.py needs a GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = harness.metadata(torch.device("cuda"))
    bandwidth = read_bandwidth()
    print(f"{meta}; read bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows = []
    for streams in args.streams:
        for tokens in args.tokens:
            for projections in args.projections:
                rows += measure(streams, tokens, projections, args.budget, bandwidth)
                torch.cuda.empty_cache()
    harness.write_csv(out / "projections.csv", rows, meta)
    report(rows, meta, out)


if __name__ == "__main__":
    main()
