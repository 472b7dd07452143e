"""The transformers patch (SPEC section 10): ∞-Video memory in a tiny random BLIP-2 Q-former.

The Q-former is randomly initialised and small (D = 64, 4 heads, 2 layers, each with
cross-attention, encoder width 48); everything runs in eval mode without gradients.
"""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

from conftest import rel_err
from infvideo import LongTermMemory, reset_memory
from infvideo.integrations.transformers import apply_infvideo, remove_infvideo

transformers = pytest.importorskip("transformers")

S, Q, L, T, E, D, H = 3, 5, 6, 8, 48, 64, 4  # streams, queries, frames, tokens per frame, widths, heads
MEMORY = dict(num_basis=16, past_samples=20)
ALPHA = 0.5
QFORMER = dict(hidden_size=D, num_attention_heads=H, num_hidden_layers=2, cross_attention_frequency=1,
               encoder_hidden_size=E, intermediate_size=128,
               # Larger than the pretrained 0.02 so that the attention contexts, and with them the
               # memory's share, are visible through the LayerNorms.
               initializer_range=0.2)


def _build(model_class, config_class, **extra):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model_class(config_class(**QFORMER, **extra)).eval()


@pytest.fixture(scope="module")
def base():
    """The unpatched Q-former (never patched itself: tests patch deep copies)."""
    return _build(transformers.Blip2QFormerModel, transformers.Blip2QFormerConfig)


def _patched(base, alpha=ALPHA, **memory):
    return apply_infvideo(copy.deepcopy(base), alpha=alpha, tokens_per_frame=T, **(memory or MEMORY))


def _query(streams=S, seed=1):
    return torch.randn(streams, Q, D, generator=torch.Generator().manual_seed(seed))


def _chunks(count, streams=S, seed=0):
    """Encoder states [S, L·T, E] of consecutive chunks (frame-major tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(streams, L * T, E, generator=gen) for _ in range(count)]


def _run(model, query, encoder):
    with torch.no_grad():
        return model(query_embeds=query, encoder_hidden_states=encoder).last_hidden_state


def _cross_attentions(model):
    return [layer.crossattention.attention for layer in model.encoder.layer if layer.has_cross_attention]


def test_alpha_one_is_the_unpatched_model(base):
    patched = _patched(base, alpha=1.0)
    query = _query()
    for encoder in _chunks(2):
        assert torch.equal(_run(patched, query, encoder), _run(base, query, encoder))
    assert all(attention.ltm.coefficients is None for attention in _cross_attentions(patched))


def _mixed_by_hand(base, alpha, contexts):
    """The unpatched Q-former whose cross-attention contexts are replaced by
    α·(their own context) + (1 − α)·(a separate LongTermMemory read with their own layers)."""
    model = copy.deepcopy(base)
    for attention in _cross_attentions(model):
        signature = inspect.signature(attention.forward)

        def mix(module, args, kwargs, output, memory=LongTermMemory(**MEMORY), signature=signature):
            bound = signature.bind(*args, **kwargs).arguments
            frames = bound["encoder_hidden_states"].unflatten(1, (L, T)).mean(2)  # pooled [S, L, E]
            query = module.query(bound["hidden_states"])
            ltm = memory(frames, query, module.key, module.value, module.num_attention_heads)
            context = alpha * output[0] + (1 - alpha) * ltm
            contexts.append(context)
            return (context, *output[1:])

        attention.register_forward_hook(mix, with_kwargs=True)
    return model


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_context_is_alpha_stm_plus_rest_ltm(base, alpha):
    expected_contexts, contexts = [], []
    expected_model = _mixed_by_hand(base, alpha, expected_contexts)
    patched = _patched(base, alpha=alpha)
    for attention in _cross_attentions(patched):
        # Registered after the patch's hook, so it sees the mixed context.
        attention.register_forward_hook(lambda module, args, output: contexts.append(output[0]))
    query = _query()
    for step, encoder in enumerate(_chunks(3)):
        out, expected = _run(patched, query, encoder), _run(expected_model, query, encoder)
        assert rel_err(out, expected) <= 1e-5, f"chunk {step}"
    assert len(contexts) == len(expected_contexts) == 6
    for index, (context, expected) in enumerate(zip(contexts, expected_contexts)):
        assert context.shape == (S, Q, D)
        assert rel_err(context, expected) <= 1e-5, f"call {index}"


def test_memory_persists_and_reset_starts_a_new_video(base):
    query, (first, second) = _query(), _chunks(2)
    patched = _patched(base)
    _run(patched, query, first)
    remembered = _run(patched, query, second)
    fresh = _run(_patched(base), query, second)
    assert rel_err(remembered, fresh) > 1e-3
    reset_memory(patched)
    assert torch.equal(_run(patched, query, second), fresh)


def test_reset_some_streams(base):
    query, chunks = _query(), _chunks(3)
    patched, untouched = _patched(base), _patched(base)
    for encoder in chunks[:2]:
        _run(patched, query, encoder)
        _run(untouched, query, encoder)
    reset_memory(patched, streams=[1])
    out, kept = _run(patched, query, chunks[2]), _run(untouched, query, chunks[2])
    alone = _run(_patched(base), query[1:2], chunks[2][1:2])
    assert rel_err(out[[0, 2]], kept[[0, 2]]) <= 1e-5
    assert rel_err(out[1:2], alone) <= 1e-5
    assert rel_err(out[1:2], kept[1:2]) > 1e-3


def test_streams_together_equal_streams_alone(base):
    query, chunks = _query(), _chunks(3)
    together = _patched(base)
    joint = [_run(together, query, encoder) for encoder in chunks]
    for s in range(S):
        alone = _patched(base)
        for step, encoder in enumerate(chunks):
            assert rel_err(joint[step][s:s + 1], _run(alone, query[s:s + 1], encoder[s:s + 1])) <= 1e-5, \
                f"stream {s}, chunk {step}"


def test_state_dict_carries_the_memory(base):
    query, (first, second) = _query(), _chunks(2)
    patched = _patched(base)
    _run(patched, query, first)
    state = patched.state_dict()
    for attention in ("encoder.layer.0.crossattention.attention", "encoder.layer.1.crossattention.attention"):
        assert state[f"{attention}.ltm.coef"].shape == (S, MEMORY["num_basis"], E)
    resumed = _patched(base)
    resumed.load_state_dict(state)
    assert torch.equal(_run(resumed, query, second), _run(patched, query, second))


def test_remove_restores_the_model(base):
    query, (encoder,) = _query(), _chunks(1)
    patched = _patched(base)
    copied = copy.deepcopy(patched)
    remove_infvideo(copied)
    assert not any(".ltm." in key for key in copied.state_dict())
    assert torch.equal(_run(copied, query, encoder), _run(base, query, encoder))
    # The copy's removal left the original patched.
    assert rel_err(_run(patched, query, encoder), _run(base, query, encoder)) > 1e-3
    apply_infvideo(copied, alpha=ALPHA, tokens_per_frame=T, **MEMORY)
    assert torch.equal(_run(copied, query, encoder), _run(_patched(base), query, encoder))


def test_instructblip_qformer_with_instruction_tokens():
    base = _build(transformers.InstructBlipQFormerModel, transformers.InstructBlipQFormerConfig,
                  vocab_size=50, max_position_embeddings=32)
    ids = torch.randint(0, 50, (S, 4), generator=torch.Generator().manual_seed(2))
    query, (first, second) = _query(), _chunks(2)

    def run(model, encoder):
        with torch.no_grad():
            return model(input_ids=ids, query_embeds=query, encoder_hidden_states=encoder).last_hidden_state

    unchanged = apply_infvideo(copy.deepcopy(base), alpha=1.0, tokens_per_frame=T, **MEMORY)
    assert torch.equal(run(unchanged, second), run(base, second))
    patched = apply_infvideo(copy.deepcopy(base), alpha=ALPHA, tokens_per_frame=T, **MEMORY)
    assert len(_cross_attentions(patched)) == 2
    first_call = run(patched, first)
    assert first_call.shape == (S, Q + 4, D) and rel_err(first_call, run(base, first)) > 1e-3
    run(patched, second)
    reset_memory(patched)
    assert torch.equal(run(patched, first), first_call)


def test_full_blip2_model():
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    text = dict(model_type="opt", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=32)
    qformer = {k: v for k, v in QFORMER.items() if k != "encoder_hidden_size"}
    config = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                      num_query_tokens=Q)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = transformers.Blip2Model(config).eval()
    tokens = (16 // 8) ** 2 + 1  # patches + CLS: one image is one frame
    pixels = torch.randn(S, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    def features(model):
        with torch.no_grad():
            out = model.get_qformer_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out[0]

    unchanged = apply_infvideo(copy.deepcopy(base), alpha=1.0, tokens_per_frame=tokens, **MEMORY)
    assert torch.equal(features(unchanged), features(base))
    patched = apply_infvideo(copy.deepcopy(base), alpha=ALPHA, tokens_per_frame=tokens, **MEMORY)
    assert len([m for m in patched.modules() if isinstance(m, LongTermMemory)]) == 2
    assert rel_err(features(patched), features(base)) > 1e-3


def test_refusals(base):
    with pytest.raises(ValueError, match="model"):
        apply_infvideo(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="model"):
        apply_infvideo("not a model")
    for alpha in (1.5, -0.1, math.nan, True):
        with pytest.raises(ValueError, match="alpha"):
            apply_infvideo(copy.deepcopy(base), alpha=alpha, tokens_per_frame=T)
    for tokens in (0, 2.0):
        with pytest.raises(ValueError, match="tokens_per_frame"):
            apply_infvideo(copy.deepcopy(base), tokens_per_frame=tokens)
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="num_basis"):
        apply_infvideo(model, tokens_per_frame=T, num_basis=0)
    assert not any(isinstance(m, LongTermMemory) for m in model.modules())  # left unpatched
    with pytest.raises(ValueError, match="model"):
        reset_memory(model)
    with pytest.raises(ValueError, match="model"):
        remove_infvideo(model)
    patched = _patched(base)
    with pytest.raises(ValueError, match="already patched"):
        apply_infvideo(patched, tokens_per_frame=T)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        _run(patched, _query(), torch.randn(S, L * T + 3, E))
