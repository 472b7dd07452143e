"""The ∞-Video memory inside a transformers BLIP-2 style Q-former (SPEC sections 1, 8, 10).

Every cross-attention of the Q-former gets a ``LongTermMemory`` submodule ``ltm`` and a forward
hook that rewrites the attention's context (heads merged, before the output dense layer):

    context ← α·softmax(q Kᵀ/√d) V + (1 − α)·LTM(frames, q),   q = query(hidden_states)

where the memory is read with the layer's own ``key`` / ``value`` Linear layers. Nothing is
trained or copied; the rest of the layer (output dense, dropout, LayerNorm, feed-forward) is
untouched.

The Q-former is found by its structure, not its class: a layer with ``has_cross_attention`` whose
``crossattention.attention`` has ``query``, ``key``, ``value`` Linear layers and an int
``num_attention_heads``. That is ``Blip2QFormerMultiHeadAttention`` and its copies
``InstructBlipQFormerMultiHeadAttention`` / ``InstructBlipVideoQFormerMultiHeadAttention`` inside
``Blip2QFormerModel``, ``Blip2Model``, ``Blip2ForConditionalGeneration``, ``InstructBlip*`` and
``InstructBlipVideo*``. transformers 4.4x passes the attention's arguments by position
(``hidden_states, attention_mask, head_mask, encoder_hidden_states, …``) and 5.x by keyword
(``hidden_states, attention_mask, encoder_hidden_states, …``); both are read through the forward's
signature, so nothing here imports transformers.
"""
from __future__ import annotations

import inspect
import numbers

from torch import nn

from ..memory import LongTermMemory

__all__ = ["apply_infvideo", "remove_infvideo", "reset_memory"]


class _MemoryMix:
    """Forward hook of one patched cross-attention: context ← α·context + (1 − α)·LTM.

    A plain object, not a module, so it adds nothing to ``state_dict()``; the memory it reads is
    the attention's ``ltm`` submodule.
    """

    def __init__(self, alpha: float, tokens_per_frame: int, hidden_at: int | None, encoder_at: int | None):
        self.alpha = alpha
        self.tokens_per_frame = tokens_per_frame
        # Where hidden_states / encoder_hidden_states sit among the forward's positional
        # arguments (the two transformers generations differ), found once at patch time.
        self.hidden_at = hidden_at
        self.encoder_at = encoder_at
        self.handle = None
        self.guard = None  # the model's _AllOrNone, kept by the first patched layer

    def __call__(self, attention: nn.Module, args: tuple, kwargs: dict, output):
        if self.alpha == 1.0:
            # The unpatched layer, bit for bit: the memory is neither read nor written.
            return None
        encoder = _argument(args, kwargs, "encoder_hidden_states", self.encoder_at)
        if encoder is None:
            return None
        streams, length = encoder.shape[:2]
        if length % self.tokens_per_frame:
            raise ValueError(f"tokens_per_frame={self.tokens_per_frame} does not divide the "
                             f"{length} encoder tokens of this chunk (shape {tuple(encoder.shape)})")
        # Frame-major tokens: frame j is tokens j·T … j·T + T − 1; the memory pools them.
        frames = encoder.reshape(streams, length // self.tokens_per_frame, self.tokens_per_frame, -1)
        # The query projection is recomputed rather than captured from inside the attention:
        # one [S, Q, D]·[D, D] product, exact (same Linear, same input) and independent of how
        # each transformers version lays out its forward.
        query = attention.query(_argument(args, kwargs, "hidden_states", self.hidden_at))
        memory = attention.ltm(frames, query, attention.key, attention.value, attention.num_attention_heads)
        context = output[0] if isinstance(output, tuple) else output
        mixed = self.alpha * context + (1.0 - self.alpha) * memory
        # Attention weights (5.x) or cached keys/values (4.4x) after the context stay the STM's.
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed


class _AllOrNone:
    """Makes one forward of the patched Q-former commit every layer's memory or none.

    A pre-hook on the module that runs all patched layers saves each memory's state (buffers,
    fill state and the generators its sampler draws from); an always-called forward hook there
    gets no output when the forward raised, and then puts every saved state back, so a layer
    that fails after earlier layers consolidated the chunk leaves no memory ahead of the others.
    Memories that check CUDA steps on the device are synchronised there first (one wait per
    forward), so that their refusals count too.
    Copies, not references: a captured or compiled step updates the buffers in place.
    """

    def __init__(self, memories: list[LongTermMemory]):
        self.memories = memories
        self.saved = None
        self.handles = []

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.saved = [memory.snapshot() for memory in self.memories]

    def after(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        saved, self.saved = self.saved, None
        if saved is None:
            return
        if output is not None:
            # CUDA steps check their inputs on the device and raise later: wait for this forward's
            # verdict here, so that a layer whose step was refused takes the others back with it.
            try:
                for memory in self.memories:
                    if memory.checks_asynchronously:
                        memory.synchronize()
                return
            except ValueError:
                for memory, state in zip(self.memories, saved):
                    memory.restore(state)
                raise
        for memory, state in zip(self.memories, saved):  # the forward raised
            memory.restore(state)


def _runner(model: nn.Module, attentions: list[nn.Module]) -> nn.Module:
    """The innermost module of ``model`` whose forward runs every one of ``attentions`` (a container
    such as ``encoder.layer`` is never called itself, so its caller is taken)."""
    names = {id(module): name for name, module in model.named_modules()}
    paths = [names[id(attention)].split(".") if names[id(attention)] else [] for attention in attentions]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    while common:
        module = model.get_submodule(".".join(common))
        if module is not attentions[0] and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            return module
        common.pop()
    return model


def _argument(args: tuple, kwargs: dict, name: str, position: int | None):
    if name in kwargs:
        return kwargs[name]
    return args[position] if position is not None and position < len(args) else None


def _positions(attention: nn.Module) -> tuple[int | None, int | None]:
    """Positions of hidden_states and encoder_hidden_states in the attention's forward."""
    names = []
    for parameter in inspect.signature(attention.forward).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        names.append(parameter.name)
    if "encoder_hidden_states" not in names:
        raise ValueError(f"model: the cross-attention {type(attention).__name__}.forward takes no "
                         "encoder_hidden_states argument; this Q-former layout is not supported")
    return (names.index("hidden_states") if "hidden_states" in names else None,
            names.index("encoder_hidden_states"))


def _is_attention(module) -> bool:
    return (isinstance(module, nn.Module)
            and all(isinstance(getattr(module, name, None), nn.Linear) for name in ("query", "key", "value"))
            and isinstance(getattr(module, "num_attention_heads", None), int))


def _cross_attentions(model: nn.Module) -> list[nn.Module]:
    """The Q-former cross-attentions of ``model`` in module order (each module once)."""
    found = []
    for layer in model.modules():
        if getattr(layer, "has_cross_attention", False) is not True:
            continue
        attention = getattr(getattr(layer, "crossattention", None), "attention", None)
        if _is_attention(attention):
            found.append(attention)
    return found


def _patched(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "_infvideo_mix", None), _MemoryMix)]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def apply_infvideo(model: nn.Module, alpha: float = 0.9, tokens_per_frame: int = 32, **memory_kwargs) -> nn.Module:
    """Give every Q-former cross-attention of ``model`` an ∞-Video long-term memory, in place.

    Per patched layer, with q = query(h) the layer's query projection of the Q-former hidden
    states h [S, Q, D] and X [S, L·T, e] the encoder hidden states (T = tokens_per_frame):

        context = α·softmax(q Kᵀ/√d) V + (1 − α)·LTM(mean of each frame's T tokens, q)

    The context [S, Q, D] is mixed where the heads are merged, before the output dense layer.
    LTM is a ``LongTermMemory(**memory_kwargs)`` registered as the attention's ``ltm``
    submodule (so ``model.to()`` and ``state_dict()`` carry it), read with the layer's own
    key/value Linear layers and head count. The batch dimension S is the stream dimension: row
    s of every call is the next chunk of video s. Each Q-former forward consolidates one chunk
    per stream, so call it once per chunk and ``reset_memory(model)`` between videos.
    ``encoder_attention_mask`` still masks the STM, but the memory reads every token.
    InstructBlipVideo runs its Q-former on (video, frame) pairs, so there each stream is one
    frame slot of one video.

    Args:
        model: a ``Blip2QFormerModel`` or a model containing one (Blip2Model,
            Blip2ForConditionalGeneration, InstructBlip*, InstructBlipVideo*).
        alpha: α ∈ [0, 1], the weight of the ordinary (short-term) attention; α = 1 leaves the
            model's outputs exactly as they were and never touches the memory.
        tokens_per_frame: T ≥ 1, encoder tokens per frame (frame-major); every call's encoder
            length must be a multiple of it.
        **memory_kwargs: ``LongTermMemory`` arguments (num_basis, tau, past_samples, …), the
            same for every layer.

    One forward commits every layer's memory or none: when it raises part-way (say a later layer
    finds a non-finite query), every memory is put back as it was before the call.

    Returns the model. Applying to a model that is already patched raises (not idempotent:
    a second call would otherwise silently drop or double the memories); call
    ``remove_infvideo`` first to change the settings.
    """
    _check_model(model)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int) or tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be an int >= 1, got {tokens_per_frame!r}")
    attentions = _cross_attentions(model)
    if not attentions:
        raise ValueError(f"model ({type(model).__name__}) has no BLIP-2 style Q-former cross-attention "
                         "(a layer with has_cross_attention and crossattention.attention.query/key/value)")
    if any(hasattr(attention, "ltm") or hasattr(attention, "_infvideo_mix") for attention in attentions):
        raise ValueError("model is already patched by apply_infvideo (or its cross-attention has an 'ltm' "
                         "attribute); call remove_infvideo(model) before patching again")
    # Everything is built before the model is touched, so bad memory_kwargs leave it unpatched.
    plans = [(attention, LongTermMemory(**memory_kwargs).to(attention.query.weight.device),
              _MemoryMix(float(alpha), tokens_per_frame, *_positions(attention)))
             for attention in attentions]
    for attention, memory, mix in plans:
        attention.add_module("ltm", memory)
        mix.handle = attention.register_forward_hook(mix, with_kwargs=True)
        attention._infvideo_mix = mix
    if float(alpha) != 1.0:
        runner, guard = _runner(model, attentions), _AllOrNone([memory for _, memory, _ in plans])
        guard.handles = [runner.register_forward_pre_hook(guard.before, with_kwargs=True),
                         runner.register_forward_hook(guard.after, with_kwargs=True, always_call=True)]
        attentions[0]._infvideo_mix.guard = guard
    return model


def remove_infvideo(model: nn.Module) -> nn.Module:
    """Undo ``apply_infvideo``: drop the hooks and the ``ltm`` submodules (and their memories)."""
    _check_model(model)
    attentions = _patched(model)
    if not attentions:
        raise ValueError(f"model ({type(model).__name__}) is not patched by apply_infvideo")
    for attention in attentions:
        attention._infvideo_mix.handle.remove()
        for handle in attention._infvideo_mix.guard.handles if attention._infvideo_mix.guard else ():
            handle.remove()
        del attention._infvideo_mix
        del attention.ltm
    return model


def reset_memory(model: nn.Module, streams=None) -> None:
    """Empty the memory of every patched layer: all streams (a new batch of videos), or only
    ``streams`` (indices or a bool mask [S]) when those videos end and others go on."""
    _check_model(model)
    attentions = _patched(model)
    if not attentions:
        raise ValueError(f"model ({type(model).__name__}) holds no infvideo memory; call apply_infvideo first")
    for attention in attentions:
        attention.ltm.reset(streams)
