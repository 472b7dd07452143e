"""Original (LAVIS-style BERT) Q-former checkpoints → the transformers-based video Q-formers.

Video-LLaMA's ``video_Qformer`` and VideoChat2's ``qformer`` are LAVIS ``BertLMHeadModel``s; their
weights map one to one onto the module's ``qformer`` (``transformers.Blip2QFormerModel``, or
``InstructBlipQFormerModel`` for a Q-former with text input):

    {p}bert.embeddings.LayerNorm.{w}                → qformer.layernorm.{w}  (with text: qformer.embeddings.layernorm.{w})
    {p}{L}.{a}.self.{query,key,value}.{w}           → qformer.{L}.{a}.attention.{query,key,value}.{w}
    {p}{L}.{a}.output.{dense,LayerNorm}.{w}         → qformer.{L}.{a}.output.{dense,LayerNorm}.{w}
    {p}{L}.intermediate_query.dense.{w}             → qformer.{L}.intermediate_query.dense.{w}
    {p}{L}.output_query.{dense,LayerNorm}.{w}       → qformer.{L}.output_query.{dense,LayerNorm}.{w}
    <query tokens> [1, Q, D]                        → query_tokens
    <extra query tokens> [1, Q', D]                 → extra_query_tokens  (VideoChat2)
    <frame position embedding> [max_frames, e]      → frame_position_embedding.weight  (Video-LLaMA)

and, for a Q-former with text input (VideoChat2's ``qformer_text_input``):

    {p}bert.embeddings.{word,position}_embeddings.weight → qformer.embeddings.{word,position}_embeddings.weight
    {p}{L}.intermediate.dense.{w}                   → qformer.{L}.intermediate.dense.{w}
    {p}{L}.output.{dense,LayerNorm}.{w}             → qformer.{L}.output.{dense,LayerNorm}.{w}

with {p} the Q-former's prefix in the big checkpoint, {L} = ``bert.encoder.layer.{i}`` on the
left and ``encoder.layer.{i}`` on the right, {a} ∈ {attention, crossattention} and
{w} ∈ {weight, bias}. Without text input the Q-former's text parts (word and position
embeddings, the text feed-forward ``intermediate`` / ``output``) have no counterpart and are
reported as unused, as are ``position_ids`` and the ``cls`` head always. Everything outside the
prefix and the named tensors (the LLM, the ViT, the image Q-former, projections) is reported as
ignored.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..memory import LongTermMemory

__all__ = ["CheckpointReport", "convert_lavis_state_dict", "load_lavis_checkpoint"]

_W = r"(weight|bias)"
# (LAVIS name after the prefix, transformers name inside the Blip2QFormerModel): regex, template.
_QFORMER_MAP = tuple((re.compile(pattern), template) for pattern, template in (
    (rf"bert\.embeddings\.LayerNorm\.{_W}", "layernorm.{0}"),
    (rf"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.{_W}",
     "encoder.layer.{0}.{1}.attention.{2}.{3}"),
    (rf"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.{_W}",
     "encoder.layer.{0}.{1}.output.{2}.{3}"),
    (rf"bert\.encoder\.layer\.(\d+)\.intermediate_query\.dense\.{_W}",
     "encoder.layer.{0}.intermediate_query.dense.{1}"),
    (rf"bert\.encoder\.layer\.(\d+)\.output_query\.(dense|LayerNorm)\.{_W}", "encoder.layer.{0}.output_query.{1}.{2}"),
))
# The text parts, mapped only for a Q-former with text input (InstructBlipQFormerModel's names).
_TEXT_MAP = tuple((re.compile(pattern), template) for pattern, template in (
    (rf"bert\.embeddings\.LayerNorm\.{_W}", "embeddings.layernorm.{0}"),
    (r"bert\.embeddings\.(word|position)_embeddings\.weight", "embeddings.{0}_embeddings.weight"),
    (rf"bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.{_W}", "encoder.layer.{0}.intermediate.dense.{1}"),
    (rf"bert\.encoder\.layer\.(\d+)\.output\.(dense|LayerNorm)\.{_W}", "encoder.layer.{0}.output.{1}.{2}"),
))


@dataclass(frozen=True)
class CheckpointReport:
    """What a conversion did with each checkpoint key.

    Attributes:
        converted: (checkpoint name, module name) pairs, in checkpoint order.
        unused: Q-former keys (under the prefix) with no counterpart in the video Q-formers: the
            text embeddings, ``position_ids``, the text feed-forward, the LM head.
        ignored: keys outside the Q-former (the LLM, the ViT, the image Q-former, projections, …).
    """

    converted: tuple[tuple[str, str], ...]
    unused: tuple[str, ...]
    ignored: tuple[str, ...]


def _qformer_name(name: str, text_input: bool) -> str | None:
    # With text the embeddings' LayerNorm lives in InstructBlip's embeddings: the text map goes first.
    for pattern, template in (_TEXT_MAP + _QFORMER_MAP if text_input else _QFORMER_MAP):
        match = pattern.fullmatch(name)
        if match:
            return template.format(*match.groups())
    return None


def _check_state_dict(state_dict, what: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{what}: expected a state dict (a mapping of names to tensors), "
                         f"got {type(state_dict).__name__}")
    # LAVIS, Video-LLaMA and VideoChat2 save {"model": state_dict, "optimizer": …, "epoch": …}.
    if isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    bad = [key for key, value in state_dict.items() if not (isinstance(key, str) and isinstance(value, torch.Tensor))]
    if bad:
        raise ValueError(f"{what}: not a state dict: the entries {bad[:5]} are not tensors named by strings")
    return state_dict


# Video-LLaMA's names: the defaults of convert_lavis_state_dict.
_VIDEO_LLAMA_NAMES = dict(prefix="video_Qformer.", query_tokens="video_query_tokens",
                          frame_positions="video_frame_position_embedding.weight")


def convert_lavis_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = _VIDEO_LLAMA_NAMES["prefix"],
                             query_tokens: str | None = _VIDEO_LLAMA_NAMES["query_tokens"],
                             frame_positions: str | None = _VIDEO_LLAMA_NAMES["frame_positions"],
                             extra_query_tokens: str | None = None, text_input: bool = False,
                             ) -> tuple[dict[str, torch.Tensor], CheckpointReport]:
    """Renames a LAVIS-style Q-former state dict to the names of the video Q-former modules.

    Args:
        state_dict: the original checkpoint's state dict (or the ``{"model": state_dict, …}``
            that LAVIS-based training saves).
        prefix: where the Q-former sits in it: ``"video_Qformer."`` (Video-LLaMA),
            ``"qformer."`` (VideoChat2), ``""`` for a bare Q-former.
        query_tokens: the full name of the query tokens [1, Q, D] (``"video_query_tokens"`` in
            Video-LLaMA, ``"query_tokens"`` in VideoChat2), or None.
        frame_positions: the full name of the frame position embedding weight (Video-LLaMA's
            ``"video_frame_position_embedding.weight"``), or None.
        extra_query_tokens: the full name of VideoChat2's extra query tokens [1, Q', D]
            (``"extra_query_tokens"``), or None.
        text_input: map the Q-former's text parts too (a module whose ``qformer`` is an
            ``InstructBlipQFormerModel``); otherwise they are reported as unused.

    Returns ``(converted, report)``: the tensors under the module's names (not copied) and a
    ``CheckpointReport``. Missing keys are only known against a module: ``load_lavis_checkpoint``
    checks them.
    """
    state_dict = _check_state_dict(state_dict, "state_dict")
    named = {name: target for name, target in ((query_tokens, "query_tokens"),
                                               (extra_query_tokens, "extra_query_tokens"),
                                               (frame_positions, "frame_position_embedding.weight")) if name}
    converted, pairs, unused, ignored = {}, [], [], []
    for key, value in state_dict.items():
        if key in named:
            target = named[key]
        elif key.startswith(prefix):
            inner = _qformer_name(key[len(prefix):], text_input)
            if inner is None:
                unused.append(key)
                continue
            target = "qformer." + inner
        else:
            ignored.append(key)
            continue
        converted[target] = value
        pairs.append((key, target))
    return converted, CheckpointReport(tuple(pairs), tuple(unused), tuple(ignored))


def _read(path, argument: str) -> Mapping[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # torch.load reports a non-checkpoint by many exception types
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise ValueError(f"{argument} {os.fspath(path)!r} is not a torch checkpoint that loads with "
                         f"weights_only=True ({type(error).__name__}: {first_line})") from error
    return _check_state_dict(loaded, f"{argument} {os.fspath(path)!r}")


def load_lavis_checkpoint(module: nn.Module, path_or_state_dict, prefix: str | None = None,
                          query_tokens: str | None = None, frame_positions: str | None = None,
                          extra_query_tokens: str | None = None) -> CheckpointReport:
    """Loads an original Video-LLaMA / VideoChat2 checkpoint into a video Q-former, in place.

    Converts with ``convert_lavis_state_dict`` and loads strictly: every Q-former weight of
    ``module`` (all parameters and buffers except the ∞-Video memories) must come from the
    checkpoint with its shape, and every converted tensor must have a place in ``module``;
    the memories are left as they are.

    Args:
        module: a ``VideoLlamaQFormer`` / ``VideoChat2QFormer`` (or a module with the same names).
        path_or_state_dict: a file for ``torch.load(…, weights_only=True)``, or a state dict.
        prefix, query_tokens, frame_positions, extra_query_tokens: as in
            ``convert_lavis_state_dict``; None takes the module's ``lavis_names`` (its original
            checkpoint's names). Extra query tokens are read only into a module that has them,
            and the text parts only into a module with text input (``module.text_input``).

    Returns the ``CheckpointReport`` (what was loaded, unused Q-former keys, ignored keys).
    Raises ValueError when the file is not a checkpoint (naming it), when weights are missing
    (listing them), when the checkpoint has Q-former weights the module has no place for (a
    different layer count or cross-attention frequency) or when shapes differ.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    names = dict(getattr(module, "lavis_names", None) or _VIDEO_LLAMA_NAMES)
    for key, value in (("prefix", prefix), ("query_tokens", query_tokens), ("frame_positions", frame_positions),
                       ("extra_query_tokens", extra_query_tokens)):
        if value is not None:
            names[key] = value
    if getattr(module, "extra_query_tokens", None) is None:
        names.pop("extra_query_tokens", None)
    names["text_input"] = getattr(module, "text_input", False) is True
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        state_dict = _read(path_or_state_dict, "path_or_state_dict")
    else:
        state_dict = _check_state_dict(path_or_state_dict, "path_or_state_dict")
    converted, report = convert_lavis_state_dict(state_dict, **names)

    memories = tuple(name + "." for name, child in module.named_modules() if isinstance(child, LongTermMemory))
    expected = {key: value for key, value in module.state_dict().items() if not key.startswith(memories)}
    missing = [key for key in expected if key not in converted]
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} weights of {type(module).__name__} "
                         f"(names {names}): {missing}")
    extra = [source for source, target in report.converted if target not in expected]
    if extra:
        raise ValueError(f"the checkpoint has Q-former weights that {type(module).__name__} has no place for "
                         f"(a different num_layers or cross-attention frequency?): {extra}")
    shapes = [f"{source}: {tuple(converted[target].shape)} in the checkpoint, {tuple(expected[target].shape)} in "
              f"the module" for source, target in report.converted if converted[target].shape != expected[target].shape]
    if shapes:
        raise ValueError("the checkpoint's shapes differ from the module's (sizes, max_frames, num_queries): "
                         + "; ".join(shapes))
    module.load_state_dict(converted, strict=False)
    return report
