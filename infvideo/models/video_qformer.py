"""Video Q-formers with the ∞-Video memory: Video-LLaMA's and VideoChat2's, on transformers' BLIP-2 Q-former.

Each model is learned query tokens in front of a ``transformers.Blip2QFormerModel`` whose every
cross-attention is patched by ``apply_infvideo`` (SPEC sections 1, 10): for each chunk of L frames
the queries attend to the chunk's frame tokens (STM) and read the long-term memory (LTM) of all
earlier chunks, context = α·STM + (1 − α)·LTM. The batch dimension is the stream dimension S:
row s of every chunk is the next piece of video s.

Only the Q-former lives here: the vision encoder (and Video-LLaMA's image Q-former) in front of
it and the projection into the language model behind it stay in the host model, which also
decides what to do with the per-chunk outputs (SPEC section 9: Video-LLaMA averages them).
Weights come from the original checkpoints through ``infvideo.models.checkpoints``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from .. import _checks
from ..integrations.transformers import apply_infvideo, reset_memory

__all__ = ["VideoChat2QFormer", "VideoLlamaQFormer"]


def _blip2_qformer(**config) -> nn.Module:
    """A randomly initialised ``transformers.Blip2QFormerModel`` (transformers is imported here, on
    first use, so that ``import infvideo.models`` works without it)."""
    try:
        from transformers import Blip2QFormerConfig, Blip2QFormerModel
    except ImportError as error:
        raise ImportError("the video Q-formers are built on transformers' Blip2QFormerModel: "
                          "pip install 'infvideo[hf]' (transformers>=4.40)") from error
    return Blip2QFormerModel(Blip2QFormerConfig(**config))


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class _VideoQFormer(nn.Module):
    """Learned queries [1, Q, D] + a Blip2QFormerModel patched with ∞-Video memory (shared API)."""

    #: Names of this model's weights in its original (LAVIS-style) checkpoint, the defaults of
    #: ``infvideo.models.load_lavis_checkpoint``.
    lavis_names: ClassVar[dict[str, str | None]]

    def __init__(self, *, alpha: float, tokens_per_frame: int, encoder_width: int, num_queries: int,
                 num_layers: int, cross_attention_frequency: int, hidden_size: int, num_heads: int,
                 intermediate_size: int, initializer_range: float, memory_kwargs: dict):
        super().__init__()
        for name, value in (("tokens_per_frame", tokens_per_frame), ("encoder_width", encoder_width),
                            ("num_queries", num_queries), ("num_layers", num_layers),
                            ("cross_attention_frequency", cross_attention_frequency),
                            ("hidden_size", hidden_size), ("num_heads", num_heads),
                            ("intermediate_size", intermediate_size)):
            _positive(name, value)
        self.tokens_per_frame = tokens_per_frame
        self.encoder_width = encoder_width
        self.qformer = _blip2_qformer(
            hidden_size=hidden_size, num_attention_heads=num_heads, num_hidden_layers=num_layers,
            cross_attention_frequency=cross_attention_frequency, intermediate_size=intermediate_size,
            encoder_hidden_size=encoder_width, initializer_range=initializer_range)
        # As in the original models: zeros, then N(0, initializer_range²).
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, hidden_size))
        nn.init.normal_(self.query_tokens, std=initializer_range)
        apply_infvideo(self.qformer, alpha=alpha, tokens_per_frame=tokens_per_frame, **memory_kwargs)

    def _frame_tokens(self, frames: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Checks one chunk [S, L, *tokens, e] and returns it as [S, L, T, e]."""
        frames = _checks.tensor("frames", frames, dims)
        tokens = math.prod(frames.shape[2:-1])
        if tokens != self.tokens_per_frame or frames.shape[-1] != self.encoder_width:
            raise ValueError(f"frames must be [S, L, {self.tokens_per_frame} tokens, {self.encoder_width}] "
                             f"(tokens_per_frame, encoder_width), got shape {tuple(frames.shape)}")
        return frames.reshape(*frames.shape[:2], tokens, frames.shape[-1])

    def _encoder_states(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        """Query embeddings of the next chunk of each stream; consolidates the chunk into the memory.

        Per cross-attention layer: context = α·softmax(q Kᵀ/√d) V over the chunk's L·T frame tokens
        + (1 − α)·LTM(one mean vector per frame, q), the memory holding every earlier chunk.

        Args:
            frames: [S, L, T, e] frame tokens of one chunk (L frames of T tokens of width e,
                frame-major), the next L frames of each of S streams.

        Returns: [S, Q, D] the Q-former's output at the Q query tokens.
        """
        states = self._encoder_states(frames)
        queries = self.query_tokens.expand(states.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=states).last_hidden_state

    def encode_video(self, chunks: Iterable[torch.Tensor], progress: bool | None = None) -> torch.Tensor:
        """Encodes whole videos chunk by chunk: reset the memory, then ``encode_chunk`` each chunk.

        Args:
            chunks: any iterable (a list, a generator reading frames lazily, …) of chunks in time
                order, each as ``encode_chunk`` takes it, all with the same S streams; L may vary
                from chunk to chunk.
            progress: True shows a tqdm progress bar over the chunks when tqdm is installed
                (tqdm is optional; without it nothing is shown); None or False shows none.

        Returns: [S, Q, D] the query embeddings of the last chunk, which has read the whole video
        through the memory. Combining the per-chunk outputs (the published Video-LLaMA code
        averages them over chunks, SPEC section 9) is the host model's business: call
        ``reset`` and ``encode_chunk`` directly to keep each of them.
        """
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                chunks = tqdm(chunks, total=len(chunks) if hasattr(chunks, "__len__") else None,
                              desc=type(self).__name__, unit="chunk")
        self.reset()
        out = None
        for chunk in chunks:
            out = self.encode_chunk(chunk)
        if out is None:
            raise ValueError("chunks is empty: a video needs at least one chunk")
        return out

    def reset(self, streams=None) -> None:
        """Empties the memory of every layer: all streams (new videos), or only ``streams``
        (indices or a bool mask [S]) when those videos end and the others go on."""
        reset_memory(self.qformer, streams)


class VideoLlamaQFormer(_VideoQFormer):
    """Video-LLaMA's video Q-former with ∞-Video memory.

    Input per chunk: the image Q-former's outputs for L frames, [S, L, 32, 768] (32 query tokens
    per frame). Frame position embeddings P [max_frames, e] are added to every token of a frame
    and the result goes in as encoder states [S, L·32, 768]:

        X[s, j·T + t] = frames[s, j, t] + P[j]

    Frame positions restart at 0 with every chunk: the embedding was trained on clips of at most
    ``max_frames`` (32) frames, and each chunk is presented as such a clip, while time across
    chunks is carried by the memory (each chunk's frames are placed in [τ, 1] of its signal,
    SPEC section 6). So a chunk has at most ``max_frames`` frames. (The published ∞-Video-LLaMA
    code computes MovieChat-style interpolated positions but never adds them to the encoder
    states; ``frame_position_embedding`` can be zeroed to reproduce that.)

    Args:
        alpha: α ∈ [0, 1], weight of the ordinary (short-term) cross-attention; 1 gives the
            unpatched Q-former, bit for bit.
        num_layers: Q-former layers, each with cross-attention (Video-LLaMA: 2).
        max_frames: rows of the frame position embedding (Video-LLaMA: 32).
        num_queries: Q, video query tokens (32).
        hidden_size: D, the Q-former width (768).
        num_heads: attention heads (12).
        encoder_width: e, width of the frame tokens (768, the image Q-former's width).
        tokens_per_frame: T, tokens per frame (32, the image Q-former's query count).
        intermediate_size: feed-forward width (3072).
        initializer_range: std of the random initialisation (weights come from a checkpoint).
        **memory_kwargs: ``LongTermMemory`` arguments (num_basis, tau, past_samples, sticky, …),
            the same for every layer.

    Weights are random until ``infvideo.models.load_lavis_checkpoint`` loads a Video-LLaMA
    checkpoint. Dropout follows the original configuration (0.1): call ``.eval()`` for inference.
    """

    lavis_names: ClassVar[dict[str, str | None]] = dict(
        prefix="video_Qformer.", query_tokens="video_query_tokens",
        frame_positions="video_frame_position_embedding.weight")

    def __init__(self, alpha: float = 0.9, num_layers: int = 2, max_frames: int = 32, num_queries: int = 32,
                 hidden_size: int = 768, num_heads: int = 12, encoder_width: int = 768, tokens_per_frame: int = 32,
                 intermediate_size: int = 3072, initializer_range: float = 0.02, **memory_kwargs):
        _positive("max_frames", max_frames)
        super().__init__(alpha=alpha, tokens_per_frame=tokens_per_frame, encoder_width=encoder_width,
                         num_queries=num_queries, num_layers=num_layers, cross_attention_frequency=1,
                         hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                         initializer_range=initializer_range, memory_kwargs=memory_kwargs)
        self.frame_position_embedding = nn.Embedding(max_frames, encoder_width)
        nn.init.normal_(self.frame_position_embedding.weight, std=initializer_range)

    def _encoder_states(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self._frame_tokens(frames, (4,))
        streams, length = frames.shape[:2]
        if length > self.frame_position_embedding.num_embeddings:
            raise ValueError(f"frames: a chunk holds at most max_frames = "
                             f"{self.frame_position_embedding.num_embeddings} frames, got {length}")
        positions = self.frame_position_embedding(torch.arange(length, device=frames.device))  # [L, e]
        return (frames + positions[:, None, :]).reshape(streams, -1, frames.shape[-1])


class VideoChat2QFormer(_VideoQFormer):
    """VideoChat2's Q-former with ∞-Video memory.

    Input per chunk: the vision encoder's patch tokens for L frames, [S, L, 196, 1024] or as a
    grid [S, L, 14, 14, 1024] (flattened row-major), after VideoChat2's ``vision_layernorm``
    (which stays in the host model, with the ViT). They go in as encoder states [S, L·196, 1024]
    unchanged: the ViT has already encoded time.

    The defaults are VideoChat2's Q-former (BERT-base: 12 layers, cross-attention in every
    second layer from the first) so that its checkpoint loads as is. VideoChat2 also feeds the
    instruction's text tokens and extra query tokens (``extra_query_tokens``) through the
    Q-former; this module runs the ``num_queries`` learned queries only.

    Args:
        alpha: α ∈ [0, 1], weight of the ordinary (short-term) cross-attention; 1 gives the
            unpatched Q-former, bit for bit.
        num_layers: Q-former layers (12).
        cross_attention_frequency: cross-attention in layers 0, f, 2f, … (2).
        num_queries: Q, query tokens (32).
        hidden_size: D, the Q-former width (768).
        num_heads: attention heads (12).
        encoder_width: e, width of the patch tokens (1024).
        tokens_per_frame: T, patch tokens per frame (196 = 14 × 14).
        intermediate_size: feed-forward width (3072).
        initializer_range: std of the random initialisation (weights come from a checkpoint).
        **memory_kwargs: ``LongTermMemory`` arguments, the same for every layer.

    Weights are random until ``infvideo.models.load_lavis_checkpoint`` loads a VideoChat2
    checkpoint. Dropout follows the original configuration (0.1): call ``.eval()`` for inference.
    """

    lavis_names: ClassVar[dict[str, str | None]] = dict(prefix="qformer.", query_tokens="query_tokens",
                                                        frame_positions=None)

    def __init__(self, alpha: float = 0.9, num_layers: int = 12, cross_attention_frequency: int = 2,
                 num_queries: int = 32, hidden_size: int = 768, num_heads: int = 12, encoder_width: int = 1024,
                 tokens_per_frame: int = 196, intermediate_size: int = 3072, initializer_range: float = 0.02,
                 **memory_kwargs):
        super().__init__(alpha=alpha, tokens_per_frame=tokens_per_frame, encoder_width=encoder_width,
                         num_queries=num_queries, num_layers=num_layers,
                         cross_attention_frequency=cross_attention_frequency, hidden_size=hidden_size,
                         num_heads=num_heads, intermediate_size=intermediate_size,
                         initializer_range=initializer_range, memory_kwargs=memory_kwargs)

    def _encoder_states(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self._frame_tokens(frames, (4, 5))
        return frames.reshape(frames.shape[0], -1, frames.shape[-1])
