"""CPU, float64 references: how far the slot attention's context moves when K|V come from
bfloat16 parts (``products.split_linear``) instead of a float32 product, as the attention sharpens.

    TRITON_INTERPRET=1 python bench/split_products_accuracy.py [--streams 4] [--scales 1 4 16]

Coefficients ~ N(0, 1) [S, 256, 768], the step's Linear layers (PyTorch's default initialisation),
queries ~ N(0, scale²) [S, 32, 768], 12 heads: a larger scale makes the softmax sharper (each row's
largest weight is printed), so that an error in the scores weighs more. Each way of projecting
feeds the same float64 attention, so the table isolates the projection's error. On the CPU the
split product's parts are multiplied exactly and summed in float32; on a GPU its cuBLAS product
adds its own accumulation error (``results/h200_split_products.md``: 5.9e-6 for K|V alone at
scale 1).
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from infvideo import backends

WIDTH, BASIS, HEADS, QUERIES = 768, 256, 12, 32


def attention64(query, keys, values):
    s, q_len, model = query.shape
    d = model // HEADS

    def heads(t):
        return t.double().reshape(s, -1, HEADS, d).transpose(1, 2)
    r = torch.softmax(heads(query) @ heads(keys).transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (r @ heads(values)).transpose(1, 2).reshape(s, q_len, model), r.amax(-1).median().item()


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    args = parser.parse_args()
    products = backends.triton_kernels()["products"]
    torch.manual_seed(0)
    pk, pv = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
    weight, bias = torch.cat([pk.weight, pv.weight]).detach(), torch.cat([pk.bias, pv.bias]).detach()
    coef = torch.randn(args.streams, BASIS, WIDTH)
    exact = nn.functional.linear(coef.double(), weight.double(), bias.double())
    ways = {"float32 product": nn.functional.linear(coef, weight, bias),
            "bfloat16 parts (split_linear)": products.split_linear(coef, products.split_weight(weight), bias),
            "bfloat16 product": nn.functional.linear(coef.bfloat16(), weight.bfloat16(), bias.bfloat16()).float()}
    print("| query scale | median largest weight | " + " | ".join(ways) + " |")
    print("|---|---|" + "---|" * len(ways))
    for scale in args.scales:
        query = torch.randn(args.streams, QUERIES, WIDTH) * scale
        want, peak = attention64(query, *exact.split(WIDTH, -1))
        errors = [rel(attention64(query, *kv.double().split(WIDTH, -1))[0], want) for kv in ways.values()]
        print(f"| {scale:g} | {peak:.2f} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")
    print("K|V alone: " + ", ".join(f"{name} {rel(kv.double(), exact):.1e}" for name, kv in ways.items()))


if __name__ == "__main__":
    main()
