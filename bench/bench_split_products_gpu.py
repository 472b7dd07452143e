"""Issue 22: float32 accuracy for the K/V projection on half-precision tensor cores, against the
float32 ways. The step's shape at S streams: coefficients [S·256, 768] by [W_k; W_v]ᵀ [768, 1,536].

    PYTHONPATH=$PWD python bench/bench_split_products_gpu.py [--streams 16 64] [--out DIR]

Rows: cuBLAS float32; cuBLAS TF32; the three-TF32 Triton product (``products.linear``); the same
three TF32 products as one cuBLAS TF32 call on TF32 parts, [x0 | x0 | x1] · [w0 | w1 | w0]ᵀ; cuBLAS
bfloat16 in and out (what bfloat16 projections take); and split products in one cuBLAS call,
``torch.mm(..., out_dtype=torch.float32)`` over the concatenated parts: x = x0 + x1 and
W = w0 + w1 in bfloat16 or float16 (W scaled by a power of two into float16's normal range),
[x0 | x0 | x1] · [w0 | w1 | w0]ᵀ, the dropped x1·w1 term and the parts' rounding leaving about
2⁻¹⁸ (bfloat16) or 2⁻²² (float16) relative error. "with split" adds the time to build the
coefficients' parts from float32. Float16 parts of x with each row scaled by a power of two, with
cuBLAS's reduced-precision reductions on and off; each float32-accurate product's error carried
through a float64 attention (random queries, and 64 times larger ones). Then the slot attention
on float32 K/V (IEEE dots) and on bfloat16 K/V, each against the float64 attention on the same
K/V. Errors: relative Frobenius against float64. GPU µs, do_bench p50.
"""
from __future__ import annotations

import argparse
import math
import os

import torch
import triton.testing

from infvideo.kernels import products
from infvideo.ops.slot_attention import slot_attention_unchecked

WIDTH, MODEL, BASIS, HEADS, QUERIES = 768, 768, 256, 12, 32


def us(fn) -> float:
    return triton.testing.do_bench(fn, return_mode="median") * 1e3


def rel(a, b) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def parts(x: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1) in ``dtype`` with x·scale ≈ x0 + x1."""
    x = x * scale
    hi = x.to(dtype)
    return hi, (x - hi.float()).to(dtype)


def tf32_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1) float32 with x = x0 + x1, x0 rounded to TF32 (its 10-bit mantissa): cuBLAS's TF32
    products then read x0 exactly and x1 to 2⁻¹¹ of itself."""
    x0 = products.tf32_round(x)
    return x0, x - x0


def tf32_split_linear(x, w_parts, bias):
    """x·Wᵀ + b as one cuBLAS TF32 product over [x0 | x0 | x1] · [w0 | w1 | w0]ᵀ (``w_parts`` that
    concatenation of W's TF32 parts)."""
    x0, x1 = tf32_parts(x)
    return torch.addmm(bias, torch.cat([x0, x0, x1], -1), w_parts.T)


def split_operands(x, w, dtype, w_scale):
    x0, x1 = parts(x, dtype)
    w0, w1 = parts(w, dtype, w_scale)
    return torch.cat([x0, x0, x1], -1), torch.cat([w0, w1, w0], -1)


def attention64(query, kv):
    """The slot attention's context in float64 on the same K|V."""
    s, q_len, model = query.shape
    d = model // HEADS

    def heads(t):
        return t.double().reshape(s, -1, HEADS, d).transpose(1, 2)
    keys, values = kv.split(MODEL, -1)
    r = torch.softmax(heads(query) @ heads(keys).transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (r @ heads(values)).transpose(1, 2).reshape(s, q_len, model)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = (torch.rand(2 * MODEL, WIDTH, device="cuda") * 2 - 1) / math.sqrt(WIDTH)
    bias = (torch.rand(2 * MODEL, device="cuda") * 2 - 1) / math.sqrt(WIDTH)
    # float16's normal range starts at 2⁻¹⁴: the weights' low parts (≈ 2⁻¹¹ |w|) need a scale.
    w_scale = 2.0 ** (14 - math.ceil(math.log2(weight.abs().max().item())))
    lines = []
    for streams in args.streams:
        x = torch.randn(streams * BASIS, WIDTH, device="cuda")
        want = x.double() @ weight.double().T + bias.double()
        rows = {}
        torch.backends.cuda.matmul.allow_tf32 = False
        rows["cuBLAS float32"] = (us(lambda: torch.nn.functional.linear(x, weight, bias)),
                                  rel(torch.nn.functional.linear(x, weight, bias), want))
        torch.backends.cuda.matmul.allow_tf32 = True
        rows["cuBLAS TF32"] = (us(lambda: torch.nn.functional.linear(x, weight, bias)),
                               rel(torch.nn.functional.linear(x, weight, bias), want))
        torch.backends.cuda.matmul.allow_tf32 = False
        rows["three-TF32 Triton (products.linear)"] = (us(lambda: products.linear(x, weight, bias)),
                                                       rel(products.linear(x, weight, bias), want))
        xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
        rows["cuBLAS bfloat16 in and out"] = (us(lambda: torch.nn.functional.linear(xb, wb, bb)),
                                              rel(torch.nn.functional.linear(xb, wb, bb), want))
        for dtype, scale in ((torch.bfloat16, 1.0), (torch.float16, w_scale)):
            xs, ws = split_operands(x, weight, dtype, scale)
            wt = ws.T

            def split_mm():  # the bias and the weights' scale in cuBLAS's epilogue
                return torch.addmm(bias, xs, wt, out_dtype=torch.float32, alpha=1.0 / scale)

            def with_split():
                x0, x1 = parts(x, dtype)
                return torch.addmm(bias, torch.cat([x0, x0, x1], -1), wt, out_dtype=torch.float32, alpha=1.0 / scale)
            name = "bf16" if dtype == torch.bfloat16 else "fp16"
            try:
                rows[f"split {name} x3, one cuBLAS call"] = (us(split_mm), rel(split_mm(), want))
                rows[f"split {name} x3, with split"] = (us(with_split), float("nan"))
            except Exception as err:  # torch without mm(out_dtype=...) says so
                rows[f"split {name} x3"] = (float("nan"), float("nan"))
                print(f"split {name}: {type(err).__name__}: {err}")
        # TF32 parts on cuBLAS's TF32 tensor cores: the three products of three-TF32 as one call.
        w0, w1 = tf32_parts(weight)
        w_tf32 = torch.cat([w0, w1, w0], -1)
        x0, x1 = tf32_parts(x)
        x_tf32 = torch.cat([x0, x0, x1], -1)
        torch.backends.cuda.matmul.allow_tf32 = True
        rows["split TF32 x3, one cuBLAS TF32 call"] = (us(lambda: torch.addmm(bias, x_tf32, w_tf32.T)),
                                                        rel(torch.addmm(bias, x_tf32, w_tf32.T), want))
        rows["split TF32 x3, with split"] = (us(lambda: tf32_split_linear(x, w_tf32, bias)), float("nan"))
        tf32_kv = tf32_split_linear(x, w_tf32, bias)
        torch.backends.cuda.matmul.allow_tf32 = False
        # Float16 parts of x too, each row scaled by a power of two to a largest value of 2¹⁴ (its
        # low parts then stay normal numbers), the rows unscaled after the product; with and
        # without cuBLAS's reduced-precision reductions.
        row_scale = torch.exp2(14 - torch.ceil(torch.log2(x.abs().amax(-1, keepdim=True))))
        xs16, ws16 = split_operands(x * row_scale, weight, torch.float16, w_scale)

        def rows_scaled():
            return torch.mm(xs16, ws16.T, out_dtype=torch.float32) / (row_scale * w_scale) + bias
        flags = torch.backends.cuda.matmul
        for reduced in (True, False):
            flags.allow_fp16_reduced_precision_reduction = reduced
            rows[f"split fp16 x3, x rows scaled, reduced-precision reductions {'on' if reduced else 'off'}"] = (
                us(rows_scaled), rel(rows_scaled(), want))
            xs, ws = split_operands(x, weight, torch.float16, w_scale)
            rows[f"split fp16 x3, W scaled only, reduced-precision reductions {'on' if reduced else 'off'}"] = (
                float("nan"), rel(torch.mm(xs, ws.T, out_dtype=torch.float32) / w_scale + bias, want))
        flags.allow_fp16_reduced_precision_reduction = True
        # How far each product's error carries into a float64 attention on its K|V, against the
        # same attention on float64 K|V: random queries, and 64 times larger (sharp weights).
        query = torch.randn(streams, QUERIES, MODEL, device="cuda")
        exact_kv = want.view(streams, BASIS, 2 * MODEL)
        products_kv = {"three-TF32": products.linear(x, weight, bias), "split fp16, x rows scaled": rows_scaled(),
                       "split bf16": products.split_linear(x, products.split_weight(weight), bias),
                       "split TF32 on cuBLAS": tf32_kv}
        for q_scale in (1, 64):
            exact_ctx = attention64(query * q_scale, exact_kv)
            for name, kv in products_kv.items():
                rows[f"context error, queries x{q_scale}, {name} K|V"] = (
                    float("nan"), rel(attention64(query * q_scale, kv.view(streams, BASIS, 2 * MODEL)), exact_ctx))
        query = torch.randn(streams, QUERIES, MODEL, device="cuda")
        kv = torch.nn.functional.linear(x, weight, bias).view(streams, BASIS, 2 * MODEL)
        exact = attention64(query, kv)
        for name, t in (("float32, IEEE dots", kv), ("bfloat16", kv.bfloat16())):
            keys, values = t.split(MODEL, -1)

            def attend():
                return slot_attention_unchecked(query, keys, values, HEADS, None, None, "triton")[0]
            rows[f"slot attention, {name} K/V"] = (us(attend), rel(attend(), exact))
        lines.append(f"\nS={streams}: [{streams * BASIS}, {WIDTH}] x [{WIDTH}, {2 * MODEL}]\n")
        lines.append("| product | µs | rel err vs float64 |\n|---|---|---|")
        lines += [f"| {k} | {t:,.1f} | {e:.1e} |" for k, (t, e) in rows.items()]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "split_products.md"), "w") as f:
        f.write(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}\n{text}\n")


if __name__ == "__main__":
    main()
