"""``python -m infvideo encode``: a list of videos through a video Q-former with the memory, sharded over GPUs.

The memory is per stream, so the unit of parallel work is the video: under
``torchrun --nproc_per_node=K python -m infvideo encode …`` rank r takes videos r, r + K, r + 2K, …
on its own GPU (``cuda:LOCAL_RANK``), with no communication until the end, when rank 0 gathers
every video's query embeddings (``torch.distributed.gather_object``) and writes them with a
throughput summary. Without torchrun it is the same program on one process.

Videos are synthetic (a drifting signal plus token noise, generated on the device from a per-video
seed, so any sharding sees the same frames) or feature files: ``--features DIR`` reads every
``*.pt`` there holding one tensor [frames, tokens, width] (the image encoder's output per frame).
Within a rank, videos of equal length run together as the memory's streams, ``--streams`` at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .progress import progress

# NVLink multicast stays off on shared hosts (it can take the GPUs down); a user's explicit
# setting wins.
_NCCL_SAFE_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class Video:
    """One video of the list: its index (its place in the output), name, length and source."""

    index: int
    name: str
    frames: int
    path: Path | None = None
    seed: int = 0


def synthetic_videos(count: int, frames: int, seed: int) -> list[Video]:
    """``count`` synthetic videos of ``frames`` frames, video i drawn from seed ``seed + i``."""
    return [Video(i, f"synthetic-{i:05d}", frames, seed=seed + i) for i in range(count)]


def feature_videos(folder: Path) -> list[Video]:
    """The ``*.pt`` feature files of ``folder`` in name order, each one tensor [frames, tokens, width],
    all with the same tokens and width (checked here, before any model is built)."""
    if not Path(folder).is_dir():
        raise ValueError(f"--features: {folder} is not a folder")
    paths = sorted(Path(folder).glob("*.pt"))
    if not paths:
        raise ValueError(f"--features: no *.pt files in {folder}")
    videos, first = [], None
    for i, path in enumerate(paths):
        shape = _feature_tensor(path, mmap=True).shape
        if first is None:
            first = (path, shape[1:])
        elif shape[1:] != first[1]:
            raise ValueError(f"--features: {path} holds [frames, tokens, width] = {list(shape)}, but {first[0]} has "
                             f"tokens and width {list(first[1])}; every file of a run must match")
        videos.append(Video(i, path.stem, shape[0], path=path))
    return videos


def _feature_tensor(path: Path, mmap: bool = False) -> torch.Tensor:
    # Only regular files are read: a FIFO or device named *.pt would block the load forever.
    if not path.is_file():
        raise ValueError(f"--features: {path} is not a regular file")
    try:
        tensor = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"--features: {path} is not a tensor file written by torch.save (zip format, tensors "
                         f"only): {str(err).splitlines()[0][:300]}") from None
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3 or min(tensor.shape) < 1:
        raise ValueError(f"--features: {path} must hold one tensor [frames, tokens, width] with each at least 1, got "
                         f"{tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__}")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32)):
        raise ValueError(f"--features: {path} holds a {tensor.dtype} tensor; features must be real numbers")
    return tensor


def _synthetic_chunks(video: Video, chunk: int, tokens: int, width: int, device: torch.device):
    """[L, tokens, width] chunks: a random walk per frame (the scene) plus per-token noise."""
    gen = torch.Generator(device=device).manual_seed(video.seed)
    scene = torch.randn(width, generator=gen, device=device)
    for start in range(0, video.frames, chunk):
        length = min(chunk, video.frames - start)
        walk = torch.randn(length, width, generator=gen, device=device).mul_(0.05).cumsum(0).add_(scene)
        scene = walk[-1]
        yield walk[:, None, :] + 0.1 * torch.randn(length, tokens, width, generator=gen, device=device)


def _file_chunks(video: Video, chunk: int, device: torch.device):
    features = _feature_tensor(video.path, mmap=True)
    for start in range(0, video.frames, chunk):
        piece = features[start:start + chunk].to(device, torch.float32, non_blocking=True)
        if not bool(torch.isfinite(piece).all()):
            raise ValueError(f"--features: {video.path} holds NaN or Inf in frames {start} to "
                             f"{start + piece.shape[0] - 1}")
        yield piece


def video_chunks(video: Video, chunk: int, tokens: int, width: int, device: torch.device):
    """The video's frames as chunks [L, tokens, width] on ``device`` (the last one may be shorter)."""
    if video.path is None:
        return _synthetic_chunks(video, chunk, tokens, width, device)
    return _file_chunks(video, chunk, device)


def batches(videos: list[Video], streams: int) -> list[list[Video]]:
    """Groups of at most ``streams`` videos of equal length, run together as the memory's streams."""
    by_length: dict[int, list[Video]] = {}
    for video in videos:
        by_length.setdefault(video.frames, []).append(video)
    return [group[i:i + streams] for group in by_length.values() for i in range(0, len(group), streams)]


@torch.no_grad()
def encode_batch(model, videos: list[Video], chunk: int, device: torch.device,
                 bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Streams equal-length videos through ``model`` as S streams (``bar``: a tqdm bar counting frames).

    Returns (mean, last), each [S, Q, D]: the per-chunk outputs averaged over chunks (as
    Video-LLaMA combines them) and the last chunk's output, which has read the whole video
    through the memory.
    """
    model.reset()
    sources = [video_chunks(v, chunk, model.tokens_per_frame, model.encoder_width, device) for v in videos]
    total, count, out = None, 0, None
    for pieces in zip(*sources):
        batch = torch.stack(pieces)
        out = model.encode_chunk(batch)
        total = out.clone() if total is None else total.add_(out)
        count += 1
        if bar is not None:
            bar.update(batch.shape[0] * batch.shape[1])
    return total / count, out


def _distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg:
        from ._checks import device_option
        device = device_option("--device", device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1:
        return 0, 1, device
    for name, value in _NCCL_SAFE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _build_model(args, device: torch.device, tokens: int, width: int):
    from .models import VideoChat2QFormer, VideoLlamaQFormer, load_lavis_checkpoint

    torch.manual_seed(args.seed)  # every rank builds the same weights
    memory = dict(num_basis=args.num_basis, past_samples=args.past_samples, backend=args.backend)
    if not args.published_memory:
        # The memory's own deterministic settings: each video's embeddings then do not depend on
        # which videos share its batch or its process (the published sampler couples them).
        memory.update(preset="exact", sampling="quantile")
    if args.model == "videollama":
        model = VideoLlamaQFormer(alpha=args.alpha, num_layers=args.num_layers or 2, tokens_per_frame=tokens,
                                  encoder_width=width, **memory)
    else:
        model = VideoChat2QFormer(alpha=args.alpha, num_layers=args.num_layers or 12, tokens_per_frame=tokens,
                                  encoder_width=width, **memory)
    if args.checkpoint:
        load_lavis_checkpoint(model, args.checkpoint)
    return model.to(device).eval()


def _warm_up(model, chunk: int, streams: int, device: torch.device) -> None:
    """Two chunks (a first and a consolidating one) so that kernel compilation is not timed."""
    warm = [Video(-1, "warm-up", 2 * chunk, seed=12345)] * streams
    encode_batch(model, warm, chunk, device)
    _synchronize(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> dict:
    """The ``encode`` command; returns the summary (rank 0's is complete; other ranks get theirs)."""
    rank, world, device = _distributed(args.device)
    try:
        if args.features:
            videos = feature_videos(args.features)
            tokens, width = _feature_tensor(videos[0].path, mmap=True).shape[1:]
        else:
            videos = synthetic_videos(args.videos, args.frames, args.seed)
            tokens, width = (32, 768) if args.model == "videollama" else (196, 1024)
        model = _build_model(args, device, tokens, width)
        share = videos[rank::world]
        groups = batches(share, args.streams)
        if args.warm_up and groups:
            _warm_up(model, args.chunk, len(groups[0]), device)
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        results = {}
        # Rank 0 shows its own progress (the ranks run the same share of frames).
        with progress(sum(v.frames for v in share), f"encode (rank {rank} of {world})" if world > 1 else "encode",
                      args.quiet or rank != 0) as bar:
            for done, group in enumerate(groups, 1):
                mean, last = encode_batch(model, group, args.chunk, device, bar)
                for i, video in enumerate(group):
                    results[video.index] = (mean[i].cpu(), last[i].cpu())
                bar.set_postfix_str(f"videos {sum(len(g) for g in groups[:done])}/{len(share)}", refresh=False)
        _synchronize(device)
        seconds = time.perf_counter() - start
        mine = {"rank": rank, "device": str(device), "videos": len(share),
                "frames": sum(v.frames for v in share), "seconds": seconds}
        if world > 1:
            dist.barrier()
        wall = time.perf_counter() - start
        gathered = [None] * world if rank == 0 else None
        if world > 1:
            dist.gather_object((mine, results), gathered, dst=0)
        else:
            gathered = [(mine, results)]
        if rank != 0:
            return mine
        return _write(args, videos, gathered, wall, world, device)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _write(args, videos: list[Video], gathered, wall: float, world: int, device: torch.device) -> dict:
    ranks = [mine for mine, _ in gathered]
    results = {}
    for _, part in gathered:
        results.update(part)
    frames = sum(r["frames"] for r in ranks)
    summary = {
        "world_size": world, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.model, "videos": len(videos), "frames": frames, "chunk": args.chunk, "streams": args.streams,
        "num_basis": args.num_basis, "past_samples": args.past_samples, "seconds": wall,
        "frames_per_second": frames / wall if wall > 0 else float("nan"),
        "per_rank": [{**r, "frames_per_second": r["frames"] / r["seconds"] if r["seconds"] > 0 else float("nan")}
                     for r in ranks],
    }
    order = [v.index for v in videos]
    torch.save({"names": [v.name for v in videos], "frames": [v.frames for v in videos],
                "mean": torch.stack([results[i][0] for i in order]),
                "last": torch.stack([results[i][1] for i in order]), "summary": summary}, args.out)
    print(f"infvideo encode: {len(videos)} videos, {frames:,} frames on {world} process(es) "
          f"({summary['device']}) in {wall:.2f} s: {summary['frames_per_second']:,.0f} frames/s; "
          f"embeddings [videos, Q, D] written to {args.out}")
    for r in summary["per_rank"]:
        print(f"  rank {r['rank']} on {r['device']}: {r['videos']} videos, {r['frames']:,} frames, "
              f"{r['frames_per_second']:,.0f} frames/s")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def add_arguments(parser: argparse.ArgumentParser, positive_int) -> None:
    """The ``encode`` subcommand's options."""
    parser.add_argument("--model", choices=("videollama", "videochat2"), default="videollama")
    parser.add_argument("--videos", type=positive_int, default=8, help="synthetic videos (without --features)")
    parser.add_argument("--frames", type=positive_int, default=4096, help="frames per synthetic video")
    parser.add_argument("--features", type=Path, default=None,
                        help="folder of *.pt feature files, one tensor [frames, tokens, width] each")
    parser.add_argument("--chunk", type=positive_int, default=256, help="frames per chunk (L)")
    parser.add_argument("--streams", type=positive_int, default=4, help="videos run together on one device")
    parser.add_argument("--num-basis", type=positive_int, default=256)
    parser.add_argument("--past-samples", type=positive_int, default=512)
    parser.add_argument("--num-layers", type=positive_int, default=None, help="Q-former layers (model default)")
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--checkpoint", default=None, help="LAVIS-style checkpoint for the Q-former's weights")
    parser.add_argument("--published-memory", action="store_true",
                        help="the published code's memory (paper preset, its sticky sampler from the global "
                             "generator: videos batched together read stream 0's histogram, as there); "
                             "default: the exact preset with quantile sampling")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is there, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="time the first chunks too (kernel compilation included)")
    parser.add_argument("--out", default="infvideo_embeddings.pt", help="rank 0 writes the embeddings here")
    parser.add_argument("--summary", default=None, help="also write the throughput summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none off a terminal either)")
