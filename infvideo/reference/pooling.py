"""Frame pooling (SPEC section 3): one vector per frame, the mean of its tokens."""
from __future__ import annotations

import torch


def pool_frames(frames: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean over each frame's tokens.

    frames: [S, L, e] (already pooled, returned as is), [S, L, tokens, e] (Video-LLaMA: 32 tokens
    of width 768; VideoChat2: 196 of width 1024) or [S, L, 14, 14, e] (VideoChat2 patch grid).
    Returns [S, L, e] in ``dtype`` (default: the input's), accumulated in at least float32.
    """
    dtype = dtype or frames.dtype
    if frames.dim() == 3:
        return frames.to(dtype)
    acc = torch.promote_types(frames.dtype, torch.float32)
    return frames.flatten(2, -2).mean(2, dtype=acc).to(dtype)
