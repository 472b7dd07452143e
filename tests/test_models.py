"""The video Q-formers (infvideo.models) and the LAVIS checkpoint key map, on tiny random models.

Both families are built through the real classes with small sizes (D = 64, 4 heads, 2 layers,
8 queries): a "tiny Llama" (T = 4 tokens per frame, width 48, cross-attention in every layer) and
a "tiny Chat2" (3 × 3 = 9 patches per frame, width 40, cross-attention in layer 0 only, as
VideoChat2's every-second-layer pattern gives, 3 extra queries and a 50-token text vocabulary).
Everything runs in eval mode without gradients. The general tests run the memory's own
deterministic settings (exact preset, quantile sampling); the published defaults have tests of
their own at the end.
"""
from __future__ import annotations

import copy
import sys

import pytest
import torch

from conftest import rel_err

pytest.importorskip("transformers")

from infvideo.integrations.transformers import remove_infvideo  # noqa: E402
from infvideo.models import (VideoChat2QFormer, VideoLlamaQFormer, convert_lavis_state_dict,  # noqa: E402
                             load_lavis_checkpoint)

S, L, Q, D = 3, 5, 8, 64
MEMORY = dict(num_basis=16, past_samples=20, preset="exact", sampling="quantile")
SIZES = dict(hidden_size=D, num_heads=4, num_layers=2, num_queries=Q, intermediate_size=128,
             # Larger than the pretrained 0.02 so that the memory's share shows through the LayerNorms.
             initializer_range=0.2)
FAMILIES = {
    "llama": (VideoLlamaQFormer, dict(encoder_width=48, tokens_per_frame=4, max_frames=8), (4,)),
    "chat2": (VideoChat2QFormer, dict(encoder_width=40, tokens_per_frame=9, extra_queries=3, text_vocab_size=50), (3, 3)),
}
QUERIES = {"llama": Q, "chat2": Q + 3}  # learned + extra query tokens


def _build(family, seed=0, alpha=0.5, **extra):
    cls, sizes, _ = FAMILIES[family]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(alpha=alpha, **{**SIZES, **sizes, **MEMORY, **extra}).eval()


def _chunks(family, count, streams=S, length=L, seed=0):
    """Chunks [S, L, *tokens, e] of the family's input layout."""
    _, sizes, tokens = FAMILIES[family]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(streams, length, *tokens, sizes["encoder_width"], generator=gen) for _ in range(count)]


def _encode(model, chunk):
    with torch.no_grad():
        return model.encode_chunk(chunk)


families = pytest.mark.parametrize("family", list(FAMILIES))


@families
def test_encode_chunk_shapes(family):
    model = _build(family)
    for length in (L, 2, 1):  # chunks may change length along a video
        (chunk,) = _chunks(family, 1, length=length)
        assert _encode(model, chunk).shape == (S, QUERIES[family], D)


def test_chat2_grid_equals_flat_tokens():
    grid, flat = _build("chat2"), _build("chat2")
    for chunk in _chunks("chat2", 2):
        assert torch.equal(_encode(grid, chunk), _encode(flat, chunk.flatten(2, 3)))


def _unpatched_states(family, model, chunk):
    """The encoder states the Q-former should see, built by hand."""
    if family == "llama" and model.add_frame_positions:
        chunk = chunk + model.frame_position_embedding.weight[:chunk.shape[1], None, :]
    return chunk.reshape(chunk.shape[0], -1, chunk.shape[-1])


def _unpatched(family, model, chunk, **text):
    """The Q-former without memory called by hand on the chunk (and an instruction)."""
    base = remove_infvideo(copy.deepcopy(model.qformer))
    queries = model.query_tokens
    if model.extra_query_tokens is not None:
        queries = torch.cat([queries, model.extra_query_tokens], dim=1)
    if family == "chat2":
        text.setdefault("input_ids", None)
    with torch.no_grad():
        out = base(query_embeds=queries.expand(S, -1, -1), encoder_hidden_states=_unpatched_states(family, model, chunk),
                   **text).last_hidden_state
    return out[:, :queries.shape[1]]


@pytest.mark.parametrize("family,positions", [("llama", False), ("llama", True), ("chat2", False)])
def test_alpha_one_is_the_unpatched_qformer(family, positions):
    model = _build(family, alpha=1.0, **({"add_frame_positions": positions} if family == "llama" else {}))
    for chunk in _chunks(family, 2):
        assert torch.equal(_encode(model, chunk), _unpatched(family, model, chunk))


@families
def test_memory_carries_over_chunks_and_reset_starts_anew(family):
    model, fresh = _build(family), _build(family)
    first, second = _chunks(family, 2)
    _encode(model, first)
    assert rel_err(_encode(model, second), _encode(fresh, second)) > 1e-3
    model.reset()
    assert torch.equal(_encode(model, second), _encode(_build(family), second))


@families
def test_encode_video_is_reset_then_each_chunk(family):
    chunks = _chunks(family, 3)
    stepwise = _build(family)
    _encode(stepwise, _chunks(family, 1, seed=9)[0])  # an earlier video, forgotten by both
    stepwise.reset()
    expected = [_encode(stepwise, chunk) for chunk in chunks][-1]
    model = _build(family)
    _encode(model, _chunks(family, 1, seed=9)[0])
    with torch.no_grad():
        out = model.encode_video(chunk for chunk in chunks)  # any iterable, here a generator
    assert torch.equal(out, expected)


def test_encode_video_without_tqdm(monkeypatch, capsys):
    chunks = _chunks("llama", 2)
    with torch.no_grad():
        expected = _build("llama").encode_video(chunks)
        monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
        assert torch.equal(_build("llama").encode_video(chunks, progress=True), expected)
    assert capsys.readouterr().err == ""


def test_encode_video_progress_bar(capsys):
    pytest.importorskip("tqdm")
    chunks = _chunks("llama", 2)
    with torch.no_grad():
        expected = _build("llama").encode_video(chunks)
        assert capsys.readouterr().err == ""
        assert torch.equal(_build("llama").encode_video(chunks, progress=True), expected)
    assert "VideoLlamaQFormer" in capsys.readouterr().err


@families
def test_streams_together_equal_streams_alone(family):
    chunks = _chunks(family, 3)
    together = _build(family)
    joint = [_encode(together, chunk) for chunk in chunks]
    for s in range(S):
        alone = _build(family)
        for step, chunk in enumerate(chunks):
            assert rel_err(joint[step][s:s + 1], _encode(alone, chunk[s:s + 1])) <= 1e-5, f"stream {s}, chunk {step}"


@families
def test_reset_some_streams(family):
    chunks = _chunks(family, 3)
    model = _build(family)
    for chunk in chunks[:2]:
        _encode(model, chunk)
    model.reset(streams=[1])
    out = _encode(model, chunks[2])
    assert rel_err(out[1:2], _encode(_build(family), chunks[2][1:2])) <= 1e-5


# --- checkpoints ---------------------------------------------------------------------------------

NAMES = {"llama": dict(prefix="video_Qformer.", query_tokens="video_query_tokens",
                       frame_positions="video_frame_position_embedding.weight"),
         "chat2": dict(prefix="qformer.", query_tokens="query_tokens", frame_positions=None)}
# Keys of the rest of a big checkpoint, which the models do not use.
OTHER = ("llama_model.model.embed_tokens.weight", "llama_proj.weight", "visual_encoder.blocks.0.attn.qkv.weight",
         "Qformer.bert.embeddings.LayerNorm.weight")
# Q-former keys without a place in the module: Video-LLaMA's video Q-former runs no text; the
# VideoChat2 one does, but has no use for position_ids or the LM head either.
TEXT = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.position_ids", "bert.encoder.layer.0.intermediate.dense.weight",
        "bert.encoder.layer.0.output.LayerNorm.bias", "cls.predictions.bias")
UNUSED = {"llama": TEXT, "chat2": ("bert.embeddings.position_ids", "cls.predictions.bias")}


def _lavis_name(family, name):
    """The LAVIS (Video-LLaMA / VideoChat2) name of one of the module's weights, written out by hand."""
    names = NAMES[family]
    if name in ("query_tokens", "extra_query_tokens"):
        return names["query_tokens"] if name == "query_tokens" else name
    if name == "frame_position_embedding.weight":
        return names["frame_positions"]
    assert name.startswith("qformer.")
    inner = name[len("qformer."):]
    for layernorm in ("layernorm.", "embeddings.layernorm."):
        if inner.startswith(layernorm):
            return names["prefix"] + "bert.embeddings.LayerNorm." + inner[len(layernorm):]
    for attention in ("attention", "crossattention"):
        inner = inner.replace(f".{attention}.attention.", f".{attention}.self.")
    return names["prefix"] + "bert." + inner


def _lavis_state_dict(family, model):
    """A synthetic original checkpoint: the model's weights under LAVIS names, plus Q-former keys
    the model has no place for and keys of other parts."""
    memories = (".ltm.",)
    state = {_lavis_name(family, key): value.clone() for key, value in model.state_dict().items()
             if not any(part in key for part in memories)}
    state.update({NAMES[family]["prefix"] + key: torch.ones(2) for key in UNUSED[family]})
    state.update({key: torch.zeros(3) for key in OTHER})
    return state


def test_key_map_names():
    model = _build("llama")
    _, report = convert_lavis_state_dict(_lavis_state_dict("llama", model))
    pairs = dict(report.converted)
    layer = "video_Qformer.bert.encoder.layer.1."
    for lavis, ours in (
            ("video_Qformer.bert.embeddings.LayerNorm.weight", "qformer.layernorm.weight"),
            (layer + "attention.self.query.weight", "qformer.encoder.layer.1.attention.attention.query.weight"),
            (layer + "attention.self.value.bias", "qformer.encoder.layer.1.attention.attention.value.bias"),
            (layer + "attention.output.dense.weight", "qformer.encoder.layer.1.attention.output.dense.weight"),
            (layer + "attention.output.LayerNorm.bias", "qformer.encoder.layer.1.attention.output.LayerNorm.bias"),
            (layer + "crossattention.self.key.weight", "qformer.encoder.layer.1.crossattention.attention.key.weight"),
            (layer + "crossattention.output.dense.bias", "qformer.encoder.layer.1.crossattention.output.dense.bias"),
            (layer + "crossattention.output.LayerNorm.weight",
             "qformer.encoder.layer.1.crossattention.output.LayerNorm.weight"),
            (layer + "intermediate_query.dense.weight", "qformer.encoder.layer.1.intermediate_query.dense.weight"),
            (layer + "output_query.dense.bias", "qformer.encoder.layer.1.output_query.dense.bias"),
            (layer + "output_query.LayerNorm.weight", "qformer.encoder.layer.1.output_query.LayerNorm.weight"),
            ("video_query_tokens", "query_tokens"),
            ("video_frame_position_embedding.weight", "frame_position_embedding.weight")):
        assert pairs[lavis] == ours
    assert sorted(report.unused) == sorted("video_Qformer." + key for key in TEXT)
    assert sorted(report.ignored) == sorted(OTHER)


@families
def test_checkpoint_round_trip(family):
    source = _build(family, seed=0)
    state = _lavis_state_dict(family, source)
    target = _build(family, seed=1)
    chunks = _chunks(family, 2)
    assert rel_err(_encode(target, chunks[0]), _encode(_build(family, seed=0), chunks[0])) > 1e-2
    target.reset()
    report = load_lavis_checkpoint(target, state)  # the names default to the family's
    assert len(report.converted) == len(state) - len(UNUSED[family]) - len(OTHER)
    assert sorted(report.ignored) == sorted(OTHER)
    for chunk in chunks:
        assert torch.equal(_encode(target, chunk), _encode(source, chunk))


def test_checkpoint_file_round_trip(tmp_path):
    source, target = _build("llama", seed=0), _build("llama", seed=1)
    path = tmp_path / "finetune.pth"
    torch.save({"model": _lavis_state_dict("llama", source), "epoch": 3}, path)  # as LAVIS saves
    load_lavis_checkpoint(target, str(path))
    load_lavis_checkpoint(target, path)
    (chunk,) = _chunks("llama", 1)
    assert torch.equal(_encode(target, chunk), _encode(source, chunk))


@pytest.mark.parametrize("family,lost,ours", [
    ("llama", "video_Qformer.bert.encoder.layer.1.crossattention.self.key.bias",
     "qformer.encoder.layer.1.crossattention.attention.key.bias"),
    ("llama", "video_frame_position_embedding.weight", "frame_position_embedding.weight"),
    ("chat2", "qformer.bert.embeddings.LayerNorm.bias", "qformer.embeddings.layernorm.bias"),
    ("chat2", "qformer.bert.embeddings.word_embeddings.weight", "qformer.embeddings.word_embeddings.weight"),
    ("chat2", "qformer.bert.encoder.layer.1.output.dense.weight", "qformer.encoder.layer.1.output.dense.weight"),
    ("chat2", "extra_query_tokens", "extra_query_tokens"),
    ("chat2", "query_tokens", "query_tokens")])
def test_missing_weight_is_refused(family, lost, ours):
    model = _build(family, seed=1)
    state = _lavis_state_dict(family, _build(family))
    del state[lost]
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="lacks 1 weights") as error:
        load_lavis_checkpoint(model, state)
    assert repr(ours) in str(error.value)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # untouched


def test_other_mismatches_are_refused():
    model = _build("chat2")
    state = _lavis_state_dict("chat2", model)
    # VideoChat2's Q-former has cross-attention in layers 0, 2, …: a layer-1 one has no place here.
    extra = dict(state, **{"qformer.bert.encoder.layer.1.crossattention.self.query.weight": torch.zeros(D, D)})
    with pytest.raises(ValueError, match="no place.*layer.1.crossattention.self.query.weight"):
        load_lavis_checkpoint(model, extra)
    wrong = dict(state, query_tokens=torch.zeros(1, Q + 1, D))
    with pytest.raises(ValueError, match=r"shapes.*query_tokens: \(1, 9, 64\)"):
        load_lavis_checkpoint(model, wrong)
    # Video-LLaMA names on a VideoChat2 checkpoint: nothing of the Q-former is found.
    with pytest.raises(ValueError, match="lacks"):
        load_lavis_checkpoint(model, state, prefix="video_Qformer.", query_tokens="video_query_tokens")


def test_not_a_checkpoint(tmp_path):
    model = _build("llama")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="path_or_state_dict.*garbage.pth"):
        load_lavis_checkpoint(model, garbage)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="path_or_state_dict.*tensor.pt"):
        load_lavis_checkpoint(model, str(tensor))
    with pytest.raises(FileNotFoundError):
        load_lavis_checkpoint(model, tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="not tensors"):
        load_lavis_checkpoint(model, {"bert.x": 1.0})


def test_refusals():
    llama, chat2 = _build("llama"), _build("chat2")
    (chunk,) = _chunks("llama", 1)
    for bad in (chunk[..., :-1], chunk[:, :, :3], chunk.flatten(1, 2), chunk.long()):
        with pytest.raises((ValueError, TypeError), match="frames"):
            llama.encode_chunk(bad)
    with pytest.raises(ValueError, match="max_frames"):
        _build("llama", add_frame_positions=True).encode_chunk(_chunks("llama", 1, length=9)[0])
    with pytest.raises(ValueError, match="instruction_ids"):
        llama.encode_chunk(chunk, instruction_ids=torch.zeros(1, 3, dtype=torch.long))
    (frames,) = _chunks("chat2", 1)
    for ids in (torch.zeros(1, 3), torch.full((1, 3), 50), torch.zeros(2, 3, dtype=torch.long),
                torch.zeros(1, 513, dtype=torch.long)):
        with pytest.raises((ValueError, TypeError), match="instruction_ids"):
            chat2.encode_chunk(frames, instruction_ids=ids)
    with pytest.raises(ValueError, match="instruction_mask"):
        chat2.encode_chunk(frames, instruction_ids=torch.zeros(1, 3, dtype=torch.long),
                           instruction_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="frames"):
        chat2.encode_chunk(_chunks("chat2", 1)[0][:, :, :2])
    with pytest.raises(ValueError, match="empty"):
        llama.encode_video([])
    with pytest.raises(ValueError, match="num_queries"):
        VideoLlamaQFormer(num_queries=0)
    with pytest.raises(ValueError, match="alpha"):
        _build("chat2", alpha=1.5)


# --- the published ∞-Video code paths (SPEC section 10b) -------------------------------------------

@families
def test_published_memory_by_default(family):
    cls, sizes, _ = FAMILIES[family]
    model = cls(**SIZES, **sizes, num_basis=16, past_samples=20)
    memories = [m for m in model.modules() if type(m).__name__ == "LongTermMemory"]
    assert memories and all(m.config.preset == "paper" and m.config.sampling == "upstream" and m.config.sticky
                            for m in memories)
    mine = _build(family)  # memory_kwargs win over the published settings
    assert all(m.config.preset == "exact" for m in mine.modules() if type(m).__name__ == "LongTermMemory")


def test_llama_frame_positions_are_computed_but_not_added_by_default():
    """∞-Video-LLaMA passes its positions only as the memory's switch: the encoder states are the frames."""
    model = _build("llama", alpha=1.0)
    assert model.add_frame_positions is False
    (chunk,) = _chunks("llama", 1)
    assert torch.equal(_encode(model, chunk), _unpatched("llama", model, chunk))
    added = _build("llama", alpha=1.0, add_frame_positions=True)
    assert rel_err(_encode(added, chunk), _encode(model, chunk)) > 1e-2


def test_llama_takes_published_chunk_lengths():
    """256-frame chunks run (the paper's commands); beyond 32 × 32 frames the first ones are dropped."""
    model = _build("llama")
    (chunk,) = _chunks("llama", 1, streams=1, length=256)
    assert _encode(model, chunk).shape == (1, Q, D)
    limit = VideoLlamaQFormer.PUBLISHED_MAX_FRAMES
    (long,) = _chunks("llama", 1, streams=1, length=limit + 6)
    model.reset()
    with pytest.warns(UserWarning, match=f"keeps its last {limit}"):
        out = _encode(model, long)
    model.reset()
    assert torch.equal(out, _encode(model, long[:, 6:]))


def test_chat2_instruction_goes_through_the_self_attention():
    """With text input the instruction's tokens sit beside the queries (α = 1: the unpatched
    InstructBLIP Q-former called by hand); padding is masked; the queries come out, text does not."""
    model = _build("chat2", alpha=1.0)
    (chunk,) = _chunks("chat2", 1)
    ids = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    out = model.encode_chunk(chunk, ids, mask).detach()
    assert out.shape == (S, QUERIES["chat2"], D)
    full_mask = torch.cat([torch.ones(S, QUERIES["chat2"], dtype=torch.long), mask.expand(S, -1)], dim=1)
    expected = _unpatched("chat2", model, chunk, input_ids=ids.expand(S, -1), attention_mask=full_mask)
    assert rel_err(out, expected) <= 1e-6
    padded = torch.cat([ids[:, :4], torch.randint(0, 50, (1, 2))], dim=1)  # other tokens under the mask
    assert rel_err(model.encode_chunk(chunk, padded, mask).detach(), out) <= 1e-6
    assert rel_err(out, _encode(model, chunk)) > 1e-3  # the instruction changes the queries


def test_chat2_without_text_input_runs_queries_only():
    model = _build("chat2", text_vocab_size=None, extra_queries=0)
    assert not hasattr(model.qformer, "embeddings") and model.extra_query_tokens is None
    (chunk,) = _chunks("chat2", 1)
    assert _encode(model, chunk).shape == (S, Q, D)
    state = _lavis_state_dict("chat2", model)
    report = load_lavis_checkpoint(_build("chat2", seed=1, text_vocab_size=None, extra_queries=0), state)
    assert not any("word_embeddings" in target for _, target in report.converted)


def test_published_sticky_video_is_reproducible_from_the_global_seed():
    """A seeded run of the published settings draws the same sticky samples again (global CPU generator)."""
    chunks = _chunks("llama", 3, streams=1)
    runs = []
    for _ in range(2):
        model = _build("llama", preset="paper", sampling="upstream")
        torch.manual_seed(11)
        runs.append([_encode(model, chunk) for chunk in chunks])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
