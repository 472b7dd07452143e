"""Issue 22: the step's float32-projection kernels against the forms they replaced, in one run.

    PYTHONPATH=$PWD python bench/bench_float32_kv_gpu.py [--streams 1 16 64] [--out DIR]

- K|V product [S·256, 768] by [W_k; W_v]ᵀ + b, float32: ``products.linear`` (W's TF32 parts read
  from memory, x split in registers: the step's product) against the same three TF32 products with
  both operands split on every tile by Triton's ``tf32x3`` dot (``products.head_products`` at the
  128 × 128 × 64 tiles, 8 warps, 3 stages that ``linear`` launched until this change) and cuBLAS
  float32;
- slot attention on float32 K/V (N = 256, one tile of slots, and N = 1,000, several): three TF32
  products per dot (``attention.CONFIG["split_float32"]``, the default) against float32 dots.

GPU µs per call (kernels replayed from a CUDA graph, ``do_bench_cudagraph``, median); errors
relative (Frobenius) against float64 on the same inputs. Prints a markdown table and writes float32_kv.md into --out.
"""
from __future__ import annotations

import argparse
import math
import os

import torch

from infvideo.benchmarks import harness
from infvideo.kernels import attention, products
from infvideo.ops.slot_attention import slot_attention_unchecked
from split_products_accuracy import HEADS, attention64

WIDTH, BASIS, QUERIES = 768, 256, 32
PREVIOUS_TILES = (128, 128, 64, 8, 3)


def us(fn) -> float:
    """Median µs of ``fn``'s kernels replayed from a CUDA graph: a one-stream call's Python would
    otherwise outlast its kernels."""
    fn()  # compiles outside the capture
    return harness.percentiles(harness.gpu_time(fn, 0.1, graph=True))[1]


def rel(a, b) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def tile_split_linear(x, weight, bias):
    """x·Wᵀ + b by Triton's tf32x3 dot, both operands split on every tile (the earlier ``linear``)."""
    rows, k = x.shape
    n = weight.shape[0]
    out = torch.empty(rows, n, device=x.device)
    products.head_products(x, (0, 0, x.stride(0), x.stride(1)), weight, (0, 0, weight.stride(1), weight.stride(0)),
                           out, (0, 0, out.stride(0), out.stride(1)), rows, n, k, 1, 1, "tf32x3",
                           bias=bias, bias_strides=(0, bias.stride(0)), tiles=PREVIOUS_TILES)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda")
    lines = [f"GPU {harness.device_name(device)}, torch {torch.__version__}, commit {harness.commit()}", "",
             "| S | kernel | µs | error vs float64 |", "|---|---|---|---|"]
    for streams in args.streams:
        torch.manual_seed(streams)
        x = torch.randn(streams * BASIS, WIDTH, device=device)
        weight = (torch.rand(2 * WIDTH, WIDTH, device=device) * 2 - 1) / math.sqrt(WIDTH)
        bias = (torch.rand(2 * WIDTH, device=device) * 2 - 1) / math.sqrt(WIDTH)
        parts = products.tf32_parts(weight)
        want = torch.addmm(bias.double(), x.double(), weight.double().T)
        rows = [("K/V product: products.linear, W's TF32 parts from memory",
                 lambda: products.linear(x, parts, bias), want),
                ("K/V product: tf32x3 dot, both operands split per tile (before)",
                 lambda: tile_split_linear(x, weight, bias), want),
                ("K/V product: cuBLAS float32", lambda: torch.addmm(bias, x, weight.T), want)]
        query = torch.randn(streams, QUERIES, WIDTH, device=device)
        for slots in (BASIS, 1000):
            kv = torch.randn(streams, slots, 2 * WIDTH, device=device)
            keys, values = kv.split(WIDTH, -1)
            exact = attention64(query, keys, values)[0]
            for split in (True, False):
                def attend(split=split, keys=keys, values=values):
                    with harness.overrides([(attention.CONFIG, "split_float32", split)]):
                        return slot_attention_unchecked(query, keys, values, HEADS, None, None, "triton")[0]
                name = "three TF32 products per dot" if split else "float32 dots (before)"
                rows.append((f"slot attention, N = {slots}: {name}", attend, exact))
        for name, fn, exact in rows:
            lines.append(f"| {streams} | {name} | {us(fn):,.1f} | {rel(fn(), exact):.1e} |")
            print(lines[-1], flush=True)
    with open(os.path.join(args.out, "float32_kv.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
