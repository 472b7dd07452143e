"""The Gaussian step's consolidation on the GPU (issue 18): its kernels' tiles, against torch.

    cd bench && PYTHONPATH=.. python tune_gaussian_consolidation.py [--streams 16 64] [--no-sweep]

B = G_framesᵀ pool(tokens) + (G_pastᵀ Ψ_u) B_past for bf16 tokens [S, 256, 32, 768], B_past
[S, 256, 768] and ψ at 512 sticky quantile samples (N = 256, the exact preset's fit, random sticky
masses): torch (pooling, then cuBLAS float32 products on Ψ_u); the step's Triton kernels
(``ops.gaussian_consolidation``: the sample times, G_pastᵀ Ψ_u with ψ evaluated inside the
product, ``kernels/gaussian_fit.py``, then one pass over the tokens, ``kernels/dense_consolidate.py``)
the first chunk's pass alone (no past) with its token read rate, beside torch's sum over the
tokens (the read rate a plain reduction reaches); then, at the largest S, the pass at each tile
of its two pooling forms (a product, a register sum) with bf16 and fp32 tokens, and the
consolidation at each tile of the past map. GPU time p50 (CUDA graph replay) and each result's
error against float64.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from infvideo.config import MemoryConfig
from infvideo.kernels import dense_consolidate, gaussian_fit
from infvideo.ops.gaussian_consolidation import gaussian_consolidation
from infvideo.reference.fit import consolidation_fit, on_device
from infvideo.reference.step import past_samples

LENGTH, TOKENS, WIDTH, SAMPLES = 256, 32, 768, 512


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile sweeps at the largest S")
    args = parser.parse_args()
    cfg = MemoryConfig(basis="gaussian", past_samples=SAMPLES)
    device = torch.device("cuda")
    fit = on_device(consolidation_fit(cfg, LENGTH), device, torch.float32)
    n = fit.frame_g.shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    for streams in args.streams:
        tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", generator=gen).to(torch.bfloat16)
        past = torch.randn(streams, n, WIDTH, device="cuda", generator=gen)
        mass = torch.rand(streams, 24, cfg.sticky_bins, device="cuda", generator=gen) ** 4
        basis = past_samples(cfg, mass, torch.float32, device).dense
        pooled64 = tokens.double().mean(2)
        exact = (torch.einsum("ln,sle->sne", fit.frame_g.double(), pooled64)
                 + (fit.past_g.double().T @ past_samples(cfg, mass, torch.float64, device).dense) @ past.double())
        del pooled64

        def report(what, call, nbytes=None):
            error = float((call().double() - exact).norm() / exact.norm()) if nbytes is None else float("nan")
            took = triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median") * 1e3
            rate = f", tokens at {nbytes / took / 1e6:.2f} TB/s" if nbytes else ""
            print(f"S={streams} {what}: {took:8.1f} µs, error {error:.1e}{rate}", flush=True)
            return took

        report("torch: pooling, cuBLAS float32", lambda: torch.einsum("ln,sle->sne", fit.frame_g, tokens.float().mean(2))
               + (fit.past_g.T @ basis) @ past)

        def consolidation():
            return gaussian_consolidation(cfg, tokens, past, None, mass, None, torch.float32)[0]

        def first_pass():
            return dense_consolidate.dense_consolidate(tokens, fit.frame_g, None, None, "tf32x3")[0]

        report("Triton consolidation", consolidation)
        report("Triton first chunk's pass", first_pass, tokens.numel() * tokens.element_size())
        if streams != max(args.streams) or args.no_sweep:
            continue
        report("torch: the tokens summed over tokens (read rate)", lambda: tokens.sum(2),
               tokens.numel() * tokens.element_size())
        forms = dense_consolidate.CONFIG
        base_forms = {form: dict(tiles) for form, tiles in forms.items()}
        base_dot_dtypes, base_mix = dense_consolidate.DOT_POOLING, gaussian_fit.TILES
        for form, sweep in (("dot", [dict(block_l=16, stage_bytes=k * be * 2, block_e=be, num_warps=w, num_stages=st)
                                     for k, be, w, st in [(512, 64, 8, 3), (512, 64, 8, 2), (512, 32, 4, 3),
                                                          (256, 64, 8, 4), (512, 32, 8, 3)]]
                                    + [dict(block_l=32, stage_bytes=65536, num_stages=3)]),
                            ("register", [dict(block_l=bl, block_t=bt, block_e=be, num_warps=w)
                                          for bl, bt, be, w in itertools.product((16, 32), (8, 16), (32, 64),
                                                                                 (4, 8))])):
            for dtype in (torch.bfloat16, torch.float32):
                dense_consolidate.DOT_POOLING = (dtype,) if form == "dot" else ()
                other = tokens.to(dtype)
                for change in sweep:
                    forms[form].update(base_forms[form], **change)
                    try:
                        report(f"{dtype} tokens, pooling by {form}, first chunk's pass, {change}",
                               lambda: dense_consolidate.dense_consolidate(other, fit.frame_g, None, None,
                                                                           "tf32x3")[0],
                               other.numel() * other.element_size())
                    except Exception as exc:  # a tile that does not compile (registers, shared memory)
                        print(f"S={streams} {dtype} {form} {change}: {type(exc).__name__}", flush=True)
                del other
                forms[form].update(base_forms[form])
            dense_consolidate.DOT_POOLING = base_dot_dtypes
        for tiles in [(128, 64, 32, 4), (64, 64, 32, 4), (128, 128, 32, 8), (256, 64, 32, 8)]:
            gaussian_fit.TILES = tiles
            try:
                report(f"Triton consolidation, mix tiles {tiles}", consolidation)
            except Exception as exc:
                print(f"S={streams} mix tiles {tiles}: {type(exc).__name__}", flush=True)
        gaussian_fit.TILES = base_mix


if __name__ == "__main__":
    main()
