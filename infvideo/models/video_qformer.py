"""Video Q-formers with the ∞-Video memory: Video-LLaMA's and VideoChat2's, on transformers' BLIP-2 Q-former.

Each model is learned query tokens in front of a ``transformers.Blip2QFormerModel`` whose every
cross-attention is patched by ``apply_infvideo`` (SPEC sections 1, 10): for each chunk of L frames
the queries attend to the chunk's frame tokens (STM) and read the long-term memory (LTM) of all
earlier chunks, context = α·STM + (1 − α)·LTM. The batch dimension is the stream dimension S:
row s of every chunk is the next piece of video s.

Only the Q-former lives here: the vision encoder (and Video-LLaMA's image Q-former) in front of
it, the tokenizer of VideoChat2's instruction and the projection into the language model behind
it stay in the host model, which also decides what to do with the per-chunk outputs (SPEC
section 9: the published code averages them). Weights come from the original checkpoints through
``infvideo.models.checkpoints``.

By default both models compute what the published ∞-Video code computes (SPEC section 10b, the
deep-spin/Infinite-Video repository): the memory runs the ``paper`` preset with the published
sticky sampler (``PUBLISHED_MEMORY``), and each model feeds its Q-former as the published branch
does. With the same weights, the same chunks and, for sticky sampling, the same seeded global CPU
generator, the outputs agree with the published code to float32 rounding on the CPU. The
published code runs VideoChat2's Q-former under float16 autocast on CUDA; run the module under
``torch.autocast`` to do the same.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from .. import _checks
from ..integrations.transformers import apply_infvideo, reset_memory

__all__ = ["PUBLISHED_MEMORY", "VideoChat2QFormer", "VideoLlamaQFormer"]

#: ``LongTermMemory`` settings of the published ∞-Video code (what ``memory_kwargs`` default to):
#: its trapezoid quadrature and positions (SPEC section 9) and its sticky sampler (section 7).
#: Both branches build the memory with N = 256, τ = 0.75, M = 512 and λ = 0.5, the memory's own
#: defaults; sticky sampling is a command-line switch there and on by default here.
PUBLISHED_MEMORY = dict(preset="paper", sampling="upstream")


def _qformer(text_input: bool, **config) -> nn.Module:
    """A randomly initialised transformers Q-former: ``InstructBlipQFormerModel`` (query tokens and
    text, as LAVIS' ``BertModel`` with ``input_ids``) when ``text_input``, else
    ``Blip2QFormerModel`` (query tokens only). transformers is imported here, on first use, so
    that ``import infvideo.models`` works without it."""
    try:
        if text_input:
            from transformers import InstructBlipQFormerConfig as Config, InstructBlipQFormerModel as Model
        else:
            from transformers import Blip2QFormerConfig as Config, Blip2QFormerModel as Model
    except ImportError as error:
        raise ImportError("the video Q-formers are built on transformers' BLIP-2 Q-former: "
                          "pip install 'infvideo[hf]' (transformers>=4.40)") from error
    return Model(Config(**config))


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class _VideoQFormer(nn.Module):
    """Learned queries [1, Q, D] + a transformers Q-former patched with ∞-Video memory (shared API)."""

    #: Names of this model's weights in its original (LAVIS-style) checkpoint, the defaults of
    #: ``infvideo.models.load_lavis_checkpoint``.
    lavis_names: ClassVar[dict[str, str | None]]

    def __init__(self, *, alpha: float, tokens_per_frame: int, encoder_width: int, num_queries: int,
                 num_layers: int, cross_attention_frequency: int, hidden_size: int, num_heads: int,
                 intermediate_size: int, initializer_range: float, memory_kwargs: dict,
                 extra_queries: int = 0, text_vocab_size: int | None = None):
        super().__init__()
        for name, value in (("tokens_per_frame", tokens_per_frame), ("encoder_width", encoder_width),
                            ("num_queries", num_queries), ("num_layers", num_layers),
                            ("cross_attention_frequency", cross_attention_frequency),
                            ("hidden_size", hidden_size), ("num_heads", num_heads),
                            ("intermediate_size", intermediate_size)):
            _positive(name, value)
        _positive("extra_queries", extra_queries, minimum=0)
        if text_vocab_size is not None:
            _positive("text_vocab_size", text_vocab_size)
        self.tokens_per_frame = tokens_per_frame
        self.encoder_width = encoder_width
        self.text_input = text_vocab_size is not None
        text = dict(vocab_size=text_vocab_size) if self.text_input else {}
        self.qformer = _qformer(
            self.text_input, hidden_size=hidden_size, num_attention_heads=num_heads, num_hidden_layers=num_layers,
            cross_attention_frequency=cross_attention_frequency, intermediate_size=intermediate_size,
            encoder_hidden_size=encoder_width, initializer_range=initializer_range, **text)
        # As in the original models: zeros, then N(0, initializer_range²).
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, hidden_size))
        nn.init.normal_(self.query_tokens, std=initializer_range)
        if extra_queries:
            self.extra_query_tokens = nn.Parameter(torch.zeros(1, extra_queries, hidden_size))
            nn.init.normal_(self.extra_query_tokens, std=initializer_range)
        else:
            self.extra_query_tokens = None
        apply_infvideo(self.qformer, alpha=alpha, tokens_per_frame=tokens_per_frame,
                       **{**PUBLISHED_MEMORY, **memory_kwargs})

    def _frame_tokens(self, frames: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Checks one chunk [S, L, *tokens, e] and returns it as [S, L, T, e]."""
        frames = _checks.tensor("frames", frames, dims)
        weights = self.query_tokens
        if weights.is_meta:
            raise ValueError(f"this {type(self).__name__}'s weights are meta tensors (shapes without values): "
                             "build it on a real device or load its weights before encoding frames")
        if frames.device != weights.device:
            raise ValueError(f"frames are on {frames.device}, but this {type(self).__name__} is on {weights.device}; "
                             f"move one of them (frames.to({str(weights.device)!r}) or model.to(...))")
        tokens = math.prod(frames.shape[2:-1])
        if tokens != self.tokens_per_frame or frames.shape[-1] != self.encoder_width:
            raise ValueError(f"frames must be [S, L, {self.tokens_per_frame} tokens, {self.encoder_width}] "
                             f"(tokens_per_frame, encoder_width), got shape {tuple(frames.shape)}")
        return frames.reshape(*frames.shape[:2], tokens, frames.shape[-1])

    def _encoder_states(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text(self, streams: int, instruction_ids, instruction_mask) -> dict:
        """The Q-former's text inputs: {} without an instruction, else input_ids [S, W] and the
        attention mask over queries and text [S, Q + W]."""
        if instruction_ids is None:
            if instruction_mask is not None:
                raise ValueError("instruction_mask given without instruction_ids")
            return {}
        if not self.text_input:
            raise ValueError(f"instruction_ids: this {type(self).__name__} has no text input "
                             "(build it with text_vocab_size to feed an instruction)")
        if not isinstance(instruction_ids, torch.Tensor) or instruction_ids.dtype != torch.long:
            raise TypeError("instruction_ids must be an int64 tensor of token ids [S, W]")
        vocab = self.qformer.embeddings.word_embeddings.num_embeddings
        positions = self.qformer.embeddings.position_embeddings.num_embeddings
        if (instruction_ids.dim() != 2 or instruction_ids.shape[0] not in (1, streams)
                or not 1 <= instruction_ids.shape[1] <= positions):
            raise ValueError(f"instruction_ids must be [S or 1, W] with S = {streams} and 1 <= W <= {positions}, "
                             f"got shape {tuple(instruction_ids.shape)}")
        if instruction_ids.numel() and not bool(((instruction_ids >= 0) & (instruction_ids < vocab)).all()):
            raise ValueError(f"instruction_ids holds ids outside [0, {vocab}) (the text vocabulary)")
        if instruction_mask is None:
            instruction_mask = torch.ones_like(instruction_ids)
        if not isinstance(instruction_mask, torch.Tensor) or instruction_mask.shape != instruction_ids.shape:
            raise ValueError(f"instruction_mask must be a tensor of instruction_ids' shape "
                             f"{tuple(instruction_ids.shape)}")
        ids = instruction_ids.expand(streams, -1)
        queries = self.query_tokens.shape[1] + (0 if self.extra_query_tokens is None else self.extra_query_tokens.shape[1])
        mask = torch.cat([torch.ones(streams, queries, dtype=torch.long, device=ids.device),
                          instruction_mask.to(device=ids.device, dtype=torch.long).expand(streams, -1)], dim=1)
        return dict(input_ids=ids, attention_mask=mask)

    def _queries(self, streams: int) -> torch.Tensor:
        queries = self.query_tokens
        if self.extra_query_tokens is not None:
            queries = torch.cat([queries, self.extra_query_tokens], dim=1)
        return queries.expand(streams, -1, -1)

    def encode_chunk(self, frames: torch.Tensor, instruction_ids: torch.Tensor | None = None,
                     instruction_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Query embeddings of the next chunk of each stream; consolidates the chunk into the memory.

        Per cross-attention layer: context = α·softmax(q Kᵀ/√d) V over the chunk's L·T frame tokens
        + (1 − α)·LTM(one mean vector per frame, q), the memory holding every earlier chunk.

        Args:
            frames: [S, L, T, e] frame tokens of one chunk (L frames of T tokens of width e,
                frame-major), the next L frames of each of S streams.
            instruction_ids: [S or 1, W] int64 token ids of a text instruction that goes through
                the Q-former's self-attention beside the queries (VideoChat2 with
                ``text_vocab_size``; tokenised by the host, e.g. BERT's uncased tokenizer).
            instruction_mask: [S or 1, W] 1 for tokens, 0 for padding (default: all ones).

        Returns: [S, Q, D] the Q-former's output at the Q query tokens (extra query tokens
        included, text tokens excluded).
        """
        states = self._encoder_states(frames)
        queries = self._queries(states.shape[0])
        text = self._text(states.shape[0], instruction_ids, instruction_mask)
        if self.text_input and not text:
            text = dict(input_ids=None)  # InstructBlipQFormerModel takes input_ids positionally
        out = self.qformer(query_embeds=queries, encoder_hidden_states=states, **text).last_hidden_state
        return out[:, :queries.shape[1]]

    def encode_video(self, chunks: Iterable[torch.Tensor], progress: bool | None = None,
                     instruction_ids: torch.Tensor | None = None,
                     instruction_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encodes whole videos chunk by chunk: reset the memory, then ``encode_chunk`` each chunk.

        Args:
            chunks: any iterable (a list, a generator reading frames lazily, …) of chunks in time
                order, each as ``encode_chunk`` takes it, all with the same S streams; L may vary
                from chunk to chunk.
            progress: True shows a tqdm progress bar over the chunks when tqdm is installed
                (tqdm is optional; without it nothing is shown); None or False shows none.
            instruction_ids, instruction_mask: as in ``encode_chunk``, the same for every chunk
                (the published VideoChat2 code feeds its system prompt with each chunk).

        Returns: [S, Q, D] the query embeddings of the last chunk, which has read the whole video
        through the memory. Combining the per-chunk outputs (the published code averages them over
        chunks, SPEC section 9) is the host model's business: call ``reset`` and ``encode_chunk``
        directly to keep each of them.
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
            out = self.encode_chunk(chunk, instruction_ids, instruction_mask)
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
    per frame), which go in as encoder states [S, L·32, 768]. Two ways to present them, by
    ``add_frame_positions``:

    - ``False`` (default): the published ∞-Video-LLaMA code
      (``infty-Video-LLaMA/InfVideoLLaMA/models/infinityqa.py``, ``encode_video``). It computes
      MovieChat-style interpolated frame positions but only passes them to the Q-former as the
      switch that turns the memory on; nothing is added to the encoder states, which are the
      frames as they come. A chunk may hold up to ``PUBLISHED_MAX_FRAMES`` (1,024 = 32 × 32
      interpolated positions) frames; of a longer chunk the published code keeps the last 1,024,
      and so does this module, with a warning.
    - ``True``: the original Video-LLaMA (``video_llama.py``): the frame position embedding P
      [max_frames, e] is added to every token of a frame,
      X[s, j·T + t] = frames[s, j, t] + P[j], so a chunk holds at most ``max_frames`` (32)
      frames. Positions restart at 0 with every chunk (each chunk is presented as a clip), while
      time across chunks is carried by the memory (SPEC section 6).

    Either way the position table is part of the model (and of the checkpoint), so one
    checkpoint loads into both.

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
        add_frame_positions: see above (False: ∞-Video's code path; True: Video-LLaMA's).
        **memory_kwargs: ``LongTermMemory`` arguments (num_basis, tau, past_samples, sticky, …),
            the same for every layer, over ``PUBLISHED_MEMORY`` (the published preset and
            sampler: pass ``preset="exact", sampling="quantile"`` for the memory's own defaults).

    Weights are random until ``infvideo.models.load_lavis_checkpoint`` loads a Video-LLaMA
    checkpoint. Dropout follows the original configuration (0.1): call ``.eval()`` for inference.
    """

    #: Longest chunk of the published ∞-Video-LLaMA code: ⌈√L⌉ interpolated positions, at most 32,
    #: give 32² frame slots, and frames beyond them are dropped from the front.
    PUBLISHED_MAX_FRAMES: ClassVar[int] = 32 * 32

    lavis_names: ClassVar[dict[str, str | None]] = dict(
        prefix="video_Qformer.", query_tokens="video_query_tokens",
        frame_positions="video_frame_position_embedding.weight")

    def __init__(self, alpha: float = 0.9, num_layers: int = 2, max_frames: int = 32, num_queries: int = 32,
                 hidden_size: int = 768, num_heads: int = 12, encoder_width: int = 768, tokens_per_frame: int = 32,
                 intermediate_size: int = 3072, initializer_range: float = 0.02, add_frame_positions: bool = False,
                 **memory_kwargs):
        _positive("max_frames", max_frames)
        if not isinstance(add_frame_positions, bool):
            raise TypeError(f"add_frame_positions must be a bool, got {type(add_frame_positions).__name__}")
        super().__init__(alpha=alpha, tokens_per_frame=tokens_per_frame, encoder_width=encoder_width,
                         num_queries=num_queries, num_layers=num_layers, cross_attention_frequency=1,
                         hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                         initializer_range=initializer_range, memory_kwargs=memory_kwargs)
        self.add_frame_positions = add_frame_positions
        self.frame_position_embedding = nn.Embedding(max_frames, encoder_width)
        nn.init.normal_(self.frame_position_embedding.weight, std=initializer_range)

    def _encoder_states(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self._frame_tokens(frames, (4,))
        streams, length = frames.shape[:2]
        if not self.add_frame_positions:
            if length > self.PUBLISHED_MAX_FRAMES:
                warnings.warn(f"frames: a chunk of {length} frames; the published ∞-Video-LLaMA code keeps its "
                              f"last {self.PUBLISHED_MAX_FRAMES}, and so does this model (add_frame_positions=False)",
                              stacklevel=3)
                frames = frames[:, -self.PUBLISHED_MAX_FRAMES:]
            return frames.reshape(streams, -1, frames.shape[-1])
        if length > self.frame_position_embedding.num_embeddings:
            raise ValueError(f"frames: with add_frame_positions=True a chunk holds at most max_frames = "
                             f"{self.frame_position_embedding.num_embeddings} frames, got {length}")
        positions = self.frame_position_embedding(torch.arange(length, device=frames.device))  # [L, e]
        return (frames + positions[:, None, :]).reshape(streams, -1, frames.shape[-1])


class VideoChat2QFormer(_VideoQFormer):
    """VideoChat2's Q-former with ∞-Video memory, as the published ∞-VideoChat2 code runs it.

    Follows ``infty-VideoChat2/models/videochat_mistra/videochat2_it_mistral.py`` (``encode_img``)
    with ``models/blip2/Qformer.py`` and ``configs/config_mistral.json``, which every published
    evaluation script loads.

    Input per chunk: the vision encoder's patch tokens for L frames, [S, L, 196, 1024] or as a
    grid [S, L, 14, 14, 1024] (flattened row-major), after VideoChat2's ``vision_layernorm``
    (which stays in the host model, with the ViT). They go in as encoder states [S, L·196, 1024]
    unchanged: the ViT has already encoded time, and the Q-former adds no frame positions. The
    memory pools each frame's 196 tokens into one vector, as the published memory does; chunks
    may have any length (the published scripts split the sampled frames with ``torch.chunk``).

    The queries are ``num_queries`` learned query tokens followed by ``extra_queries`` extra
    ones (VideoChat2-Mistral: 32 + 64); all of them read the frames and the memory, and all are
    returned. With ``text_vocab_size`` the Q-former is ``InstructBlipQFormerModel`` (LAVIS'
    ``BertModel`` with text, ``qformer_text_input`` in the published configuration): the
    instruction's token ids go through the self-attention beside the queries (never through the
    cross-attention or the memory) and its text feed-forward; without it the model runs the
    queries alone, as ``qformer_text_input = false`` does. The encoder attention mask is all
    ones in the published code, so none is taken.

    The defaults are the published VideoChat2-Mistral Q-former (BERT-base: 12 layers,
    cross-attention in every second layer from the first, 32 + 64 queries, instruction text with
    BERT's uncased vocabulary plus VideoChat2's ``[DEC]`` token) so that its checkpoint loads as is.

    Args:
        alpha: α ∈ [0, 1], weight of the ordinary (short-term) cross-attention; 1 gives the
            unpatched Q-former, bit for bit.
        num_layers: Q-former layers (12).
        cross_attention_frequency: cross-attention in layers 0, f, 2f, … (2).
        num_queries: learned query tokens (32).
        extra_queries: VideoChat2's extra query tokens after them (64; 0 for none).
        hidden_size: D, the Q-former width (768).
        num_heads: attention heads (12).
        encoder_width: e, width of the patch tokens (1024).
        tokens_per_frame: T, patch tokens per frame (196 = 14 × 14).
        intermediate_size: feed-forward width (3072).
        initializer_range: std of the random initialisation (weights come from a checkpoint).
        text_vocab_size: size of the instruction vocabulary (30,523), or None for a Q-former
            without text input.
        **memory_kwargs: ``LongTermMemory`` arguments, the same for every layer, over
            ``PUBLISHED_MEMORY``.

    Weights are random until ``infvideo.models.load_lavis_checkpoint`` loads a VideoChat2
    checkpoint. Dropout follows the original configuration (0.1): call ``.eval()`` for inference.
    """

    lavis_names: ClassVar[dict[str, str | None]] = dict(prefix="qformer.", query_tokens="query_tokens",
                                                        frame_positions=None, extra_query_tokens="extra_query_tokens")

    def __init__(self, alpha: float = 0.9, num_layers: int = 12, cross_attention_frequency: int = 2,
                 num_queries: int = 32, extra_queries: int = 64, hidden_size: int = 768, num_heads: int = 12,
                 encoder_width: int = 1024, tokens_per_frame: int = 196, intermediate_size: int = 3072,
                 initializer_range: float = 0.02, text_vocab_size: int | None = 30523, **memory_kwargs):
        super().__init__(alpha=alpha, tokens_per_frame=tokens_per_frame, encoder_width=encoder_width,
                         num_queries=num_queries, num_layers=num_layers,
                         cross_attention_frequency=cross_attention_frequency, hidden_size=hidden_size,
                         num_heads=num_heads, intermediate_size=intermediate_size,
                         initializer_range=initializer_range, memory_kwargs=memory_kwargs,
                         extra_queries=extra_queries, text_vocab_size=text_vocab_size)

    def _encoder_states(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self._frame_tokens(frames, (4, 5))
        return frames.reshape(frames.shape[0], -1, frames.shape[-1])
