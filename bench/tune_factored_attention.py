"""Tiles and dot precision of the folded slot attention's Triton kernels on the GPU (issue 22).

    PYTHONPATH=$PWD python bench/tune_factored_attention.py [--streams 64] [--kv-tiles] [--rows 64]
        [--block-e 16 32] [--warps 8] [--stages 2 3] [--product-tiles 64,128,32,4,3 ...]

Times ``factored_slot_attention`` (float32 projections folded into the queries) for each softmax
tile (``kernels.factored_attention.CONFIG``: rows per program, slice of e per dot, warps, stages,
every slot in one tile, split or Triton's tf32x3 dots), then for each tile of its mix and its two
head products; beside them the K/V
way (the float32 projection on cuBLAS and in three-TF32 products, then ``slot_attention``), each
with the context's error against float64.
"""
from __future__ import annotations

import argparse
import itertools
import math

import torch
import triton.testing
from torch import nn

from infvideo.kernels import factored_attention as folded
from infvideo.kernels import products
from infvideo.ops import slot_attention

WIDTH, HEADS, QUERIES, BASIS = 768, 12, 32, 256


def reference(query, coef, pk, pv):
    """The context in float64 through K and V."""
    s, q_len, model = query.shape
    d = model // HEADS
    keys = nn.functional.linear(coef.double(), pk.weight.double(), pk.bias.double())
    values = nn.functional.linear(coef.double(), pv.weight.double(), pv.bias.double())

    def heads(x):
        return x.reshape(s, -1, HEADS, d).transpose(1, 2)
    r = torch.softmax(heads(query.double()) @ heads(keys).transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (r @ heads(values)).transpose(1, 2).reshape(s, q_len, model)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def tune_kv_products(streams, query, coef, weight, bias, want):
    """K|V = B [W_k; W_v]ᵀ + b as one three-TF32 Triton product (``kernels.products``' batched
    product, one stream and head), per tile, then the slot attention."""
    rows, width = streams * BASIS, WIDTH
    flat = coef.reshape(rows, width)
    out = torch.empty(rows, 2 * WIDTH, device="cuda")
    for bm, bn, bk, warps, stages in itertools.product((64, 128), (64, 128), (32, 64), (4, 8), (2, 3)):
        grid = (triton.cdiv(rows, bm) * triton.cdiv(2 * WIDTH, bn), 1, 1)

        def project():
            products._batched_product_kernel[grid](
                flat, weight, bias, out, rows, 2 * WIDTH, width, 0, 0, flat.stride(0), flat.stride(1),
                0, 0, weight.stride(1), weight.stride(0), 0, 0, out.stride(0), out.stride(1), 0, bias.stride(0),
                HAS_BIAS=True, PRECISION="tf32x3", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                num_warps=warps, num_stages=stages)

        def step():
            project()
            keys, values = out.view(streams, BASIS, 2 * WIDTH).split(WIDTH, dim=-1)
            return slot_attention(query, keys, values, HEADS)[0]
        try:
            ms = triton.testing.do_bench(project, return_mode="median")
            total = triton.testing.do_bench(step, return_mode="median")
            print(f"S={streams} K/V tf32x3 Triton bm={bm} bn={bn} bk={bk} warps={warps} stages={stages}: "
                  f"product {ms * 1e3:7.1f} us, with attention {total * 1e3:7.1f} us  err {rel(step(), want):.1e}",
                  flush=True)
        except Exception as err:  # a tile the compiler rejects is reported, not fatal
            print(f"S={streams} K/V bm={bm} bn={bn} bk={bk} warps={warps} stages={stages}: failed "
                  f"{type(err).__name__}: {str(err)[:120]}", flush=True)


def tune_folded(streams, query, coef, pk, pv, want, args):
    """``factored_slot_attention`` per softmax tile, then per tile of the mix and the two head
    products, each with the best tiles found before it."""
    def run():
        return folded.factored_slot_attention(query, coef, pk.weight, pv.weight, pv.bias, HEADS, None)[0]

    def timed(label):
        try:
            ms = triton.testing.do_bench(run, return_mode="median")
            print(f"S={streams} folded {label}: {ms * 1e3:8.1f} us  err {rel(run(), want):.1e}", flush=True)
            return ms
        except Exception as err:  # a tile the compiler rejects is reported, not fatal
            print(f"S={streams} folded {label}: failed {type(err).__name__}: {str(err)[:200]}", flush=True)
            return float("inf")

    default = dict(folded.CONFIG)
    best = (timed(f"default {default}"), default)
    for rows, block_e, warps, stages, split in itertools.product(args.rows, args.block_e, args.warps, args.stages,
                                                                 (True, False)):
        config = dict(best[1], rows=rows, block_e=block_e, warps=warps, stages=stages, split=split,
                      scores_per_warp=(rows * BASIS) // warps)  # every slot in one tile
        folded.CONFIG.update(config)
        ms = timed(f"rows={rows:3d} block_e={block_e:3d} warps={warps} stages={stages} split={split}")
        best = min(best, (ms, config), key=lambda x: x[0])
    print(f"S={streams} best softmax tile: {best[1]}", flush=True)
    for name in ("mix_tiles", "query_tiles", "context_tiles"):
        for tiles in args.product_tiles:
            config = dict(best[1], **{name: tiles})
            folded.CONFIG.update(config)
            ms = timed(f"{name}={tiles}")
            best = min(best, (ms, config), key=lambda x: x[0])
    print(f"S={streams} best: {best[0] * 1e3:.1f} us {best[1]}", flush=True)
    folded.CONFIG.update(default)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[64])
    parser.add_argument("--kv-tiles", action="store_true", help="also sweep the three-TF32 K/V product's tiles")
    parser.add_argument("--rows", type=int, nargs="+", default=[64])
    parser.add_argument("--block-e", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--warps", type=int, nargs="+", default=[8])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--product-tiles", type=lambda t: tuple(map(int, t.split(","))), nargs="+",
                        default=[(64, 128, 32, 4, 3), (64, 128, 32, 8, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 3),
                                 (128, 64, 32, 4, 3)],
                        help="tiles BLOCK_M,BLOCK_N,BLOCK_K,warps,stages tried for each product")
    args = parser.parse_args()
    torch.manual_seed(0)
    pk, pv = nn.Linear(WIDTH, WIDTH).cuda(), nn.Linear(WIDTH, WIDTH).cuda()
    for streams in args.streams:
        query = torch.randn(streams, QUERIES, WIDTH, device="cuda")
        coef = torch.randn(streams, BASIS, WIDTH, device="cuda")
        want = reference(query, coef, pk, pv)
        weight, bias = torch.cat([pk.weight, pv.weight]), torch.cat([pk.bias, pv.bias])

        def kv():
            keys, values = nn.functional.linear(coef, weight, bias).split(WIDTH, dim=-1)
            return slot_attention(query, keys, values, HEADS)[0]
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ms = triton.testing.do_bench(kv, return_mode="median")
            print(f"S={streams} K/V cuBLAS allow_tf32={tf32}: {ms * 1e3:8.1f} us  err {rel(kv(), want):.1e}", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False

        parts = products.tf32_parts(weight)  # as the step caches them

        def kv_tf32x3():
            keys, values = products.linear(coef, parts, bias).split(WIDTH, dim=-1)
            return slot_attention(query, keys, values, HEADS)[0]
        ms = triton.testing.do_bench(kv_tf32x3, return_mode="median")
        print(f"S={streams} K/V products.linear (three-TF32): {ms * 1e3:8.1f} us  err {rel(kv_tf32x3(), want):.1e}",
              flush=True)
        if args.kv_tiles:
            tune_kv_products(streams, query, coef, weight, bias, want)
        tune_folded(streams, query, coef, pk, pv, want, args)


if __name__ == "__main__":
    main()
