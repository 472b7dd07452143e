"""``python -m infvideo encode``: sharding videos over processes gives the single-process results."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch

from infvideo import cli, encode
from conftest import REPO

SMALL = ["--frames", "96", "--chunk", "32", "--num-basis", "16", "--past-samples", "24", "--num-layers", "1",
         "--device", "cpu"]


def _command(out, *extra, processes: int = 1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*launcher, "-m", "infvideo", "encode", *SMALL, "--out", str(out), *extra]


def _run(command):
    # One thread per process, so that the two runs multiply matrices the same way.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_two_gloo_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo): the gathered embeddings equal a 1-process run, bit for bit."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _run(_command(one, "--videos", "3", "--streams", "1"))
    printed = _run(_command(two, "--videos", "3", "--streams", "1", processes=2))
    a, b = torch.load(one, weights_only=False), torch.load(two, weights_only=False)
    assert a["names"] == b["names"] == [f"synthetic-{i:05d}" for i in range(3)]
    assert a["mean"].shape == (3, 32, 768)
    assert torch.equal(a["mean"], b["mean"]) and torch.equal(a["last"], b["last"])
    # The videos differ, so equal outputs are not a constant.
    assert not torch.allclose(a["last"][0], a["last"][1])
    summary = b["summary"]
    assert summary["world_size"] == 2 and summary["frames"] == 3 * 96
    assert sorted((r["rank"], r["videos"]) for r in summary["per_rank"]) == [(0, 2), (1, 1)]
    assert "frames/s" in printed


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    encode.add_arguments(parser, cli._positive_int)
    return parser.parse_args([*SMALL, "--out", str(tmp_path / "out.pt"), *extra])


def test_streams_batched_equal_videos_alone(tmp_path):
    batched = encode.run(_args(tmp_path, "--videos", "4", "--streams", "3"))
    together = torch.load(tmp_path / "out.pt", weights_only=False)
    encode.run(_args(tmp_path, "--videos", "4", "--streams", "1"))
    alone = torch.load(tmp_path / "out.pt", weights_only=False)
    assert batched["frames"] == 4 * 96
    torch.testing.assert_close(together["mean"], alone["mean"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together["last"], alone["last"], rtol=1e-4, atol=1e-5)


def test_feature_files_of_different_lengths(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    lengths = {"b-clip": 40, "a-clip": 70, "c-clip": 40}
    for name, frames in lengths.items():
        torch.save(torch.randn(frames, 4, 24, generator=gen), folder / f"{name}.pt")
    summary = encode.run(_args(tmp_path, "--features", str(folder), "--streams", "2"))
    saved = torch.load(tmp_path / "out.pt", weights_only=False)
    assert saved["names"] == ["a-clip", "b-clip", "c-clip"]
    assert saved["frames"] == [70, 40, 40] and summary["frames"] == 150
    assert saved["mean"].shape == (3, 32, 768) and torch.isfinite(saved["mean"]).all()
    # b and c ran together as two streams; each must equal its run alone.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "c-clip.pt").write_bytes((folder / "c-clip.pt").read_bytes())
    encode.run(_args(tmp_path, "--features", str(alone)))
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=False)["last"][0], saved["last"][2],
                               rtol=1e-4, atol=1e-5)


def test_batches_group_equal_lengths():
    videos = [encode.Video(i, str(i), frames) for i, frames in enumerate([10, 20, 10, 10, 20])]
    groups = encode.batches(videos, streams=2)
    assert [[v.index for v in g] for g in groups] == [[0, 2], [3], [1, 4]]


def test_feature_folder_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="--features: no"):
        encode.feature_videos(tmp_path)
    torch.save(torch.zeros(5, 3), tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="--features: .*flat.pt must hold one tensor"):
        encode.feature_videos(tmp_path)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@two_gpus
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_memory_on_second_gpu_matches_cpu(backend):
    """A memory and its inputs on cuda:1 while cuda:0 is current: same result as on the CPU."""
    from infvideo import LongTermMemory
    from conftest import random_linear

    torch.cuda.set_device(0)
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(3, 24, 32, 64, generator=gen) for _ in range(3)]
    query = torch.randn(3, 8, 48, generator=gen)
    pk, pv = random_linear(64, 48, seed=1), random_linear(64, 48, seed=2)
    results = {}
    for device in ("cpu", "cuda:1"):
        memory = LongTermMemory(num_basis=20, past_samples=30, backend="torch" if device == "cpu" else backend)
        memory.to(device)
        with torch.no_grad():
            out = [memory(c.to(device), query.to(device), pk.to(device), pv.to(device), 4) for c in chunks]
        results[device] = (out[-1].cpu(), memory.coef.cpu())
        pk, pv = pk.cpu(), pv.cpu()
    torch.testing.assert_close(results["cuda:1"][0], results["cpu"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(results["cuda:1"][1], results["cpu"][1], rtol=1e-5, atol=1e-5)


@two_gpus
def test_memory_moved_between_gpus_keeps_its_state():
    from infvideo import LongTermMemory
    from conftest import random_linear

    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(2, 16, 40, generator=gen) for _ in range(3)]
    query = torch.randn(2, 4, 32, generator=gen)
    pk, pv = random_linear(40, 32, seed=1).cuda(0), random_linear(40, 32, seed=2).cuda(0)
    staying, moving = LongTermMemory(num_basis=12, past_samples=20), LongTermMemory(num_basis=12, past_samples=20)
    with torch.no_grad():
        for memory in (staying, moving):
            memory.to("cuda:0")
            memory(chunks[0].cuda(0), query.cuda(0), pk, pv, 2)
        moving.to("cuda:1")
        assert moving.coef.device == torch.device("cuda:1")
        torch.testing.assert_close(moving.coef.cpu(), staying.coef.cpu(), rtol=0, atol=0)
        here = staying(chunks[1].cuda(0), query.cuda(0), pk, pv, 2)
        there = moving(chunks[1].cuda(1), query.cuda(1), pk.to("cuda:1"), pv.to("cuda:1"), 2)
    torch.testing.assert_close(there.cpu(), here.cpu(), rtol=1e-5, atol=1e-5)
