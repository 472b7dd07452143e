"""Issue 22's table: the default step per token and projection dtype against the same run's read floor.

    PYTHONPATH=$PWD python bench/bench_many_streams_gpu.py [--streams 1 16 64] [--budget 0.1] [--compile]
        [--compare [WORD ...]] [--one-fp32]

Case: S videos of 256 frames × 32 tokens (bf16 or fp32), N = 256, M = 512, e = D = 768, 12 heads,
32 queries (in the tokens' dtype), bf16 or fp32 projections, sticky quantile sampling, the memory
full (two steps first). The step is ``LongTermMemory(backend="triton", cuda_graphs=False,
check_finite=False)`` captured in a user's CUDA graph and replayed (``do_bench_cudagraph``: the
kernels' time, no host); the floor reads the step's inputs and the memory's state once at the
copy rate measured in the same run (``bench_step_gpu.floor_us``). S = 1 runs bf16 tokens and
projections only (``--one-fp32``: float32 projections too). With ``--compile``, each case also
runs the torch reference step (``backend="torch"``) under ``torch.compile``, replayed from a CUDA
graph where it can be captured (otherwise timed eagerly with ``do_bench``, and marked so). With
``--compare``, each case also times the step with each switch of ``COMPARISONS`` changed
(programmatic launches off, the step's new state copied after the attention rather than
committed beside and by it, the attention's V loaded after the softmax, float32 K/V on float32
dots, the folded attention for float32 projections off, the sampler on 8 warps, the consolidation
on 32-row tiles below 16 streams, its bins without frames on a program per bin and column block
(as before the twelfth session), the attention on 4 warps per block of queries below 16 streams),
or those named.
Prints a markdown table.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from bench_step_gpu import BASIS, HEADS, LENGTH, QUERIES, SAMPLES, TOKENS, WIDTH, floor_us, read_bandwidth
from infvideo import LongTermMemory, early_commit
from infvideo.benchmarks import harness
from infvideo.kernels import _launch, attention, consolidate, sampling
from infvideo.ops import step as step_ops

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


# Switches that --compare times the step with besides the defaults: (module or dict, name, value).
COMPARISONS = {
    "no PDL": [(_launch, "PROGRAMMATIC_LAUNCH", False)],
    "state committed after the attention": [(early_commit, "EARLY_COMMIT", False)],
    "attention: V after the softmax": [(attention.CONFIG, "prefetch_values", False)],
    "attention: float32 dots on float32 K/V": [(attention.CONFIG, "split_float32", False)],
    "folded attention off": [(step_ops, "FACTORED_ON_GPU", False)],
    "sampler on 8 warps": [(sampling.CONFIG, "num_warps", 8)],
    "consolidation: 32 rows per tile at few streams": [(consolidate.CONFIG, "block_rows_few_streams", 32)],
    "consolidation: bins without frames on one column block each at few streams":
        [(consolidate.CONFIG, "past_blocks_few_streams", 1)],
    "consolidation: bins without frames on one program per bin and column block at many streams":
        [(consolidate.CONFIG, "past_blocks", 1), (consolidate.CONFIG, "past_bins", 1)],
    "attention: 4 warps per query block at few streams": [(attention.CONFIG, "warps_per_group_few_streams", 4)],
}
ALTERNATIVES: dict = {}


def step_us(streams: int, tokens_dtype: torch.dtype, projections_dtype: torch.dtype, budget: float, bandwidth: float,
            compiled: bool = False):
    """(step µs in a user's CUDA graph, floor µs, torch.compile'd reference µs or None, whether that
    one was replayed from a graph) of one case."""
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(projections_dtype)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(projections_dtype)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=tokens_dtype)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=tokens_dtype)

    def warm_time(backend: str, wrap=None, graph: bool = True) -> float:
        memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend=backend, cuda_graphs=False,
                                check_finite=False).cuda()
        call = memory if wrap is None else wrap(memory)
        with torch.no_grad():
            for _ in range(3):
                call(tokens, query, pk, pv, HEADS)
            return harness.percentiles(harness.gpu_time(lambda: call(tokens, query, pk, pv, HEADS), budget, graph))[1]

    with torch.no_grad():
        step = warm_time("triton")
        alternatives = {}
        for name, changes in ALTERNATIVES.items():
            with harness.overrides(changes):
                alternatives[name] = warm_time("triton")
    reference, replayed = None, False
    if compiled:
        torch._dynamo.reset()
        try:
            reference, replayed = warm_time("torch", torch.compile), True
        except Exception as err:  # a capture the compiled reference does not allow: timed eagerly instead
            print(f"  torch.compile, S={streams}: no CUDA graph ({type(err).__name__}); timed eagerly", flush=True)
            torch._dynamo.reset()
            reference = warm_time("torch", torch.compile, graph=False)
    return step, floor_us(streams, [tokens, query, pk.weight, pv.weight], bandwidth), reference, replayed, alternatives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the torch reference step")
    parser.add_argument("--one-fp32", action="store_true", help="S = 1 with float32 projections too")
    parser.add_argument("--compare", nargs="*", default=None, metavar="WORD",
                        help="also time the step with each of COMPARISONS' switches off (programmatic launches, "
                             "the early commit, the attention's early V, its split float32 dots); with words, only "
                             "the switches whose name contains one of them")
    args = parser.parse_args()
    if args.compare is not None:
        ALTERNATIVES.update({name: changes for name, changes in COMPARISONS.items()
                             if not args.compare or any(word in name for word in args.compare)})
    bandwidth = read_bandwidth()
    print(f"GPU {harness.device_name(torch.device('cuda'))}, torch {torch.__version__}, commit {harness.commit()}, "
          f"copy rate {bandwidth / 1e12:.2f} TB/s\n")
    extra = " torch.compile reference µs | step / compiled |" if args.compile else ""
    extra += "".join(f" {name} µs |" for name in ALTERNATIVES)
    print("| S | tokens | projections | step µs (user's CUDA graph) | input + state read floor µs | ratio |" + extra)
    print("|---|---|---|---|---|---|" + ("---|---|" if args.compile else "") + "---|" * len(ALTERNATIVES))
    for streams in args.streams:
        for tokens in ("bf16",) if streams == 1 else ("bf16", "fp32"):
            for projections in ("bf16",) if streams == 1 and not args.one_fp32 else ("bf16", "fp32"):
                step, floor, reference, replayed, alternatives = step_us(
                    streams, DTYPES[tokens], DTYPES[projections], args.budget, bandwidth, args.compile)
                row = f"| {streams} | {tokens} | {projections} | {step:,.1f} | {floor:,.1f} | {step / floor:.2f}× |"
                if reference is not None:
                    row += f" {reference:,.1f}{'' if replayed else ' (eager)'} | {step / reference:.2f}× |"
                row += "".join(f" {alternatives[name]:,.1f} |" for name in ALTERNATIVES)
                print(row, flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
