"""Frames/s of ``python -m infvideo encode`` on 1 GPU and on K GPUs (torchrun), same videos, one run.

    python bench/encode_scaling.py --gpus 2 --out results/   # writes encode_scaling.json/.md there

Both runs encode the same synthetic videos; the script also compares their embeddings (the
sharding changes which videos share a batch, so equality is to rounding, not bit for bit).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _encode(processes: int, out: Path, options: list[str]) -> dict:
    summary = out.with_suffix(".json")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "infvideo", "encode", *options, "--out", str(out), "--summary", str(summary)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    subprocess.run(command, check=True, env=env)
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("."))
    args, rest = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    options = ["--videos", str(args.videos), "--frames", str(args.frames), "--streams", str(args.streams), *rest]
    runs = {k: _encode(k, args.out / f"encode_{k}gpu.pt", options) for k in sorted({1, args.gpus})}
    one, many = runs[1], runs[args.gpus]
    a = torch.load(args.out / "encode_1gpu.pt", weights_only=False)
    b = torch.load(args.out / f"encode_{args.gpus}gpu.pt", weights_only=False)
    scale = a["last"].abs().max().item()
    result = {"device": one["device"], "videos": args.videos, "frames_per_video": args.frames,
              "streams": args.streams, "fps_1": one["frames_per_second"], f"fps_{args.gpus}": many["frames_per_second"],
              "scaling": many["frames_per_second"] / one["frames_per_second"], "gpus": args.gpus,
              "same_names": a["names"] == b["names"],
              "max_abs_diff_last": (a["last"] - b["last"]).abs().max().item() / scale,
              "max_abs_diff_mean": (a["mean"] - b["mean"]).abs().max().item() / scale,
              "per_rank": many["per_rank"]}
    (args.out / "encode_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (f"| GPUs | frames/s | scaling |\n|---|---|---|\n| 1 | {one['frames_per_second']:,.0f} | 1.00 |\n"
             f"| {args.gpus} | {many['frames_per_second']:,.0f} | {result['scaling']:.2f} |\n")
    (args.out / "encode_scaling.md").write_text(table)
    print(table)
    print(f"embeddings 1 vs {args.gpus} GPUs: same order {result['same_names']}, max |Δ| / max|x| "
          f"{result['max_abs_diff_last']:.2e} (last chunk), {result['max_abs_diff_mean']:.2e} (chunk mean)")


if __name__ == "__main__":
    main()
