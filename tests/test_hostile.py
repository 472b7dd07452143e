"""Hostile and careless callers (issue 21): nothing they do may poison a memory or hang.

One case per reproduction, grouped by class (the test's name and the case id's prefix):
configuration, positions, caches, state loading, reset, the transformers patch, the memory's
boundary, the video Q-formers, the command line and the step itself (non-finite projections,
score overflow, generators, odd projections). Each case either raises TypeError / ValueError
(RuntimeError from ``load_state_dict``, torch's convention) naming the argument, option, key or
file, and leaves the state (the samplers' generators included) as it was, or is handled
correctly.
"""
from __future__ import annotations

import copy
import io
import math
import os
import pickle
import signal
import time
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from conftest import assert_unchanged, random_linear, snapshot
from infvideo import LongTermMemory
from infvideo.backends import available_backends
from infvideo.cli import main as cli_main
from infvideo.encode import feature_videos
from infvideo.reference import fit, positions

ERRORS = (TypeError, ValueError)
S, L, E, D, H, Q = 2, 8, 16, 16, 4, 5


def _inputs(seed=0, streams=S, length=L):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(streams, length, E, generator=gen), torch.randn(streams, Q, D, generator=gen)


def _projections():
    return random_linear(E, D, 1), random_linear(E, D, 2)


def _held(**kwargs):
    """A memory holding two chunks, and its twin that never sees a bad input."""
    memory = LongTermMemory(**{"num_basis": 16, "past_samples": 32, **kwargs})
    pk, pv = _projections()
    with torch.no_grad():
        for seed in (1, 2):
            memory(*_inputs(seed), pk, pv, H)
    return memory, copy.deepcopy(memory)


def _same_next_step(memory, twin):
    pk, pv = _projections()
    with torch.no_grad():
        out, ref = memory(*_inputs(9), pk, pv, H), twin(*_inputs(9), pk, pv, H)
    assert torch.equal(out, ref)
    assert torch.equal(memory.coef, twin.coef) and torch.equal(memory.sticky_stats, twin.sticky_stats)


def _names(info, *names):
    message = str(info.value)
    assert any(name in message for name in names), f"the message names none of {names}: {message}"


@contextmanager
def _deadline(seconds):
    """Fails instead of hanging (SIGALRM, main thread)."""
    def expire(*_):
        raise TimeoutError(f"took more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# Configuration: ranges that keep the arithmetic sound and the constants in memory, quickly.

CONFIG_CASES = {  # id: (LongTermMemory kwargs, name in the message)
    "ridge-1e-40": (dict(ridge=1e-40), "ridge"),
    "ridge-1e-7": (dict(ridge=1e-7), "ridge"),
    "sigmas-1e-300": (dict(basis="gaussian", num_basis=16, sigmas=(1e-300,)), "sigmas"),
    "sigmas-one-too-narrow": (dict(basis="gaussian", num_basis=16, sigmas=(0.01, 1e-5)), "sigmas"),
    "check_finite-no": (dict(check_finite="no"), "check_finite"),
    "check_finite-none": (dict(check_finite=None), "check_finite"),
    "past_samples-1e8": (dict(past_samples=10 ** 8), "past_samples"),
    "num_basis-1e6": (dict(num_basis=10 ** 6), "num_basis"),
    "quad_points-1e7": (dict(quad_points=10 ** 7), "quad_points"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_configuration_refused(case):
    kwargs, name = CONFIG_CASES[case]
    start = time.perf_counter()
    with pytest.raises(ERRORS) as info:
        LongTermMemory(**kwargs)
    _names(info, name)
    assert time.perf_counter() - start < 1.0


LEGAL_CASES = {  # id: LongTermMemory kwargs that must step, finite, in a few seconds
    "ridge-0": dict(ridge=0.0),
    "ridge-1e-6": dict(ridge=1e-6),
    "ridge-0-gaussian": dict(ridge=0.0, basis="gaussian", sigmas=(0.05, 0.1), quad_points=50),
    "sigmas-at-floor": dict(basis="gaussian", sigmas=(1e-4, 0.05), quad_points=50),
    "past_samples-max": dict(past_samples=65536),
    "past_samples-max-paper": dict(past_samples=65536, preset="paper"),
    "tau-long-decimal": dict(past_samples=4096, tau=0.1234567891234),
}


@pytest.mark.parametrize("case", LEGAL_CASES)
def test_configuration_at_its_limits_steps(case):
    pk, pv = _projections()
    memory = LongTermMemory(**{"num_basis": 16, **LEGAL_CASES[case]})
    with _deadline(60), torch.no_grad():
        for seed in (1, 2):
            out = memory(*_inputs(seed), pk, pv, H)
    assert torch.isfinite(out).all() and torch.isfinite(memory.coef).all()


@pytest.mark.parametrize("samples,length,tau,n", [(512, 256, 0.75, 256), (20, 7, 0.7, 64), (9, 24, 0.7, 64),
                                                  (100, 13, 0.123, 7), (33, 17, 0.5625, 6), (11, 5, 0.3, 1)])
def test_vectorised_positions_match_fractions(samples, length, tau, n):
    """positions: the int64 ratios give the values and bins the Fraction arithmetic gives."""
    from fractions import Fraction

    from infvideo.reference.basis import rectangular_bins
    t = positions.as_written(tau)
    exact = [t * Fraction(2 * i - 1, 2 * samples) for i in range(1, samples + 1)]
    exact += [t + (1 - t) * Fraction(2 * j - 1, 2 * length) for j in range(1, length + 1)]
    points = positions.consolidation(samples, length, tau, "exact")
    assert points.ratios is not None
    assert torch.equal(points.values, torch.tensor([float(f) for f in exact], dtype=torch.float64))
    bins = [min(f.numerator * n // f.denominator, n - 1) for f in exact]
    assert rectangular_bins(points, n).tolist() == bins


# ---------------------------------------------------------------------------------------------
# Caches: per-length constants are bounded.

@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_caches_hold_a_bounded_number_of_chunk_lengths(backend):
    pk, pv = random_linear(4, 4, 1), random_linear(4, 4, 2)
    memory = LongTermMemory(num_basis=8, past_samples=8, backend=backend)
    with torch.no_grad():
        for length in range(1, 601):
            memory(torch.randn(1, length, 4), torch.randn(1, 3, 4), pk, pv, 2)
    assert len(memory._step_constants) <= memory._step_constants.maxsize
    assert len(fit._device_cache) <= fit._device_cache.maxsize
    for cached in (fit.first_fit, fit.consolidation_fit, positions.first_chunk, positions.consolidation):
        info = cached.cache_info()
        assert info.maxsize is not None and info.currsize <= info.maxsize


# ---------------------------------------------------------------------------------------------
# State loading: validated, the offending key named, the memory unchanged on refusal.

def _state(memory, **change):
    state = copy.deepcopy(memory.state_dict())
    for key, value in change.items():
        state[key] = value(state[key]) if callable(value) else value
    return state


def _gaussian_twin_shapes():
    """A rectangular memory's state dict whose shapes a Gaussian memory (T − 1 = N) shares."""
    rect, _ = _held()
    return _state(rect)


def _through_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


STATE_CASES = {  # id: (memory kwargs, state-dict maker taking the held memory, name in the message)
    "negative-sticky-stats": ({}, lambda m: _state(m, sticky_stats=lambda s: s - 0.5), "sticky_stats"),
    "sticky-stats-without-mass": ({}, lambda m: _state(m, sticky_stats=torch.zeros_like), "sticky_stats"),
    "upstream-histogram-not-normalised": (dict(sampling="upstream", generator=torch.Generator().manual_seed(0)),
                                          lambda m: _state(m, sticky_stats=lambda s: s * 2), "sticky_stats"),
    "rectangular-state-into-gaussian": (dict(basis="gaussian", sigmas=(0.05, 0.1), quad_points=17),
                                        lambda m: _gaussian_twin_shapes(), "basis"),
    "rectangular-state-into-gaussian-saved": (dict(basis="gaussian", sigmas=(0.05, 0.1), quad_points=17),
                                              lambda m: _through_bytes(_gaussian_twin_shapes()), "basis"),
    "meta-coef": ({}, lambda m: _state(m, coef=lambda c: c.to("meta")), "coef"),
    "nan-sticky-stats": ({}, lambda m: _state(m, sticky_stats=lambda s: s.index_fill(2, torch.tensor([0]), math.nan)),
                         "sticky_stats"),
}


@pytest.mark.parametrize("case", STATE_CASES)
def test_state_refused_and_memory_unchanged(case):
    kwargs, make, name = STATE_CASES[case]
    memory, twin = _held(**kwargs)
    state = make(memory)
    before = snapshot(memory)
    generator = None if memory.generator is None else memory.generator.get_state()
    with pytest.raises((RuntimeError, *ERRORS)) as info:
        memory.load_state_dict(state)
    _names(info, name)
    assert_unchanged(memory, before)
    if generator is not None:
        assert torch.equal(memory.generator.get_state(), generator)
    _same_next_step(memory, twin)


@pytest.mark.parametrize("kwargs", [{}, dict(sticky=False),
                                    dict(sampling="upstream", generator=torch.Generator().manual_seed(6)),
                                    dict(basis="gaussian", sigmas=(0.05, 0.1), quad_points=17)],
                         ids=["quantile", "not-sticky", "upstream", "gaussian"])
def test_own_state_loads_after_saving_to_bytes(kwargs):
    memory, twin = _held(**kwargs)
    # A memory without a generator: the saved one comes with the state.
    fresh = LongTermMemory(**{"num_basis": 16, "past_samples": 32, **kwargs, "generator": None})
    fresh.load_state_dict(_through_bytes(memory.state_dict()))
    _same_next_step(fresh, twin)


# ---------------------------------------------------------------------------------------------
# reset

@pytest.mark.parametrize("streams", [[], (), torch.tensor([], dtype=torch.long)], ids=["list", "tuple", "tensor"])
def test_reset_of_no_stream_is_a_no_op(streams):
    memory, twin = _held()
    memory.reset(streams=streams)
    _same_next_step(memory, twin)
    LongTermMemory(num_basis=16).reset(streams=streams)  # on an empty memory too


# ---------------------------------------------------------------------------------------------
# The memory's boundary: plain-function projections, meta tensors.

def _narrow(coef):
    return coef[..., :12]


def _wide(coef):
    return torch.cat([coef, coef], -1)


def _odd(coef):
    return coef[..., :13]


CALL_CASES = {  # id: (changes to (frames, query, proj_key, proj_value), name in the message)
    "function-proj_key-narrow": (lambda f, q, k, v: (f, q, _narrow, v), "proj_key"),
    "function-proj_key-wide": (lambda f, q, k, v: (f, q, _wide, v), "proj_key"),
    "function-proj_value-not-divisible": (lambda f, q, k, v: (f, q, k, _odd), "proj_value"),
    "meta-frames": (lambda f, q, k, v: (f.to("meta"), q, k, v), "frames"),
    "meta-query": (lambda f, q, k, v: (f, q.to("meta"), k, v), "query"),
    "meta-frames-and-query": (lambda f, q, k, v: (f.to("meta"), q.to("meta"), k, v), "frames"),
    "meta-proj_key": (lambda f, q, k, v: (f, q, copy.deepcopy(k).to("meta"), v), "proj_key"),
}


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("case", CALL_CASES)
def test_call_refused_and_memory_unchanged(case, backend):
    memory, twin = _held(backend=backend)
    change, name = CALL_CASES[case]
    before = snapshot(memory)
    with pytest.raises(ERRORS) as info, torch.no_grad():
        memory(*change(*_inputs(5), *_projections()), H)
    _names(info, name)
    assert_unchanged(memory, before)
    _same_next_step(memory, twin)


# ---------------------------------------------------------------------------------------------
# The transformers patch: one forward commits every layer's memory or none.

def _patched_qformer(**memory):
    transformers = pytest.importorskip("transformers")
    from infvideo.integrations.transformers import apply_infvideo
    config = transformers.Blip2QFormerConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
                                             cross_attention_frequency=1, encoder_hidden_size=12,
                                             intermediate_size=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.Blip2QFormerModel(config).eval()
    return apply_infvideo(model, alpha=0.5, tokens_per_frame=4, num_basis=8, past_samples=10, **memory)


def _qformer_step(model, seed):
    gen = torch.Generator().manual_seed(seed)
    query, encoder = torch.randn(2, 4, 16, generator=gen), torch.randn(2, 3 * 4, 12, generator=gen)
    with torch.no_grad():
        return model(query_embeds=query, encoder_hidden_states=encoder).last_hidden_state


def _memories(model):
    return [m for m in model.modules() if isinstance(m, LongTermMemory)]


@pytest.mark.parametrize("sampling,check", [("quantile", True), ("multinomial", True), ("quantile", "async")])
def test_patched_model_commits_every_layer_or_none(sampling, check):
    """check="async" checks on the device (as CUDA steps do): the forward still raises, and the
    layer that committed is taken back."""
    memory = dict(sampling=sampling, check_finite=check)
    if sampling == "multinomial":
        memory["generator"] = torch.Generator().manual_seed(3)
    model = _patched_qformer(**memory)
    _qformer_step(model, 0)
    twin = copy.deepcopy(model)
    before = [snapshot(m) for m in _memories(model)]
    generators = [m.generator.get_state() if m.generator is not None else None for m in _memories(model)]
    # A NaN out of layer 0's feed-forward reaches layer 1's query, which layer 1's memory refuses.
    hook = model.encoder.layer[0].output_query.dense.register_forward_hook(lambda mod, args, out: out * math.nan)
    with pytest.raises(ValueError, match="query"):
        _qformer_step(model, 1)
    hook.remove()
    for memory_, saved, generator in zip(_memories(model), before, generators):
        assert_unchanged(memory_, saved)
        if generator is not None:
            assert torch.equal(memory_.generator.get_state(), generator)
    assert torch.equal(_qformer_step(model, 2), _qformer_step(twin, 2))


def test_patched_model_without_generators_leaves_the_default_one():
    """Memories without a generator draw from torch's default one: a forward that fails in layer 1,
    after layer 0 drew, leaves it where it was."""
    model = _patched_qformer(sampling="multinomial")
    _qformer_step(model, 0)
    twin = copy.deepcopy(model)
    hook = model.encoder.layer[0].output_query.dense.register_forward_hook(lambda mod, args, out: out * math.nan)
    with torch.random.fork_rng(devices=[]):
        state = torch.manual_seed(5).get_state()
        with pytest.raises(ValueError, match="query"):
            _qformer_step(model, 1)
        assert torch.equal(torch.get_rng_state(), state)
        hook.remove()
        out = _qformer_step(model, 2)
        torch.manual_seed(5)
        assert torch.equal(out, _qformer_step(twin, 2))


def test_removing_the_patch_removes_its_hooks():
    from infvideo.integrations.transformers import remove_infvideo
    model = _patched_qformer()
    remove_infvideo(model)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


# ---------------------------------------------------------------------------------------------
# The video Q-formers.

def test_video_qformer_on_meta_weights():
    from infvideo.models import VideoLlamaQFormer
    pytest.importorskip("transformers")
    model = VideoLlamaQFormer(num_layers=1, num_basis=8, past_samples=8).to("meta")
    with pytest.raises(ValueError) as info:
        model.encode_chunk(torch.randn(1, 2, 32, 768))
    _names(info, "meta")


def test_video_qformer_meta_frames():
    from infvideo.models import VideoLlamaQFormer
    pytest.importorskip("transformers")
    model = VideoLlamaQFormer(num_layers=1, num_basis=8, past_samples=8)
    with pytest.raises(ValueError) as info:
        model.encode_chunk(torch.randn(1, 2, 32, 768, device="meta"))
    _names(info, "frames")


# ---------------------------------------------------------------------------------------------
# The command line: every error names the option or the file; only regular files are read.

def _write_features(folder, name, tensor, **save):
    path = folder / f"{name}.pt"
    torch.save(tensor, path, **save)
    return path


def _features_nan(folder):
    features = torch.randn(3, 2, 8)
    features[1, 0, 0] = math.nan
    return _write_features(folder, "nan", features)


def _features_widths(folder):
    _write_features(folder, "a", torch.randn(3, 2, 8))
    return _write_features(folder, "b", torch.randn(3, 2, 9))


def _features_no_tokens(folder):
    return _write_features(folder, "empty", torch.randn(3, 0, 8))


def _features_legacy(folder):
    return _write_features(folder, "legacy", torch.randn(3, 2, 8), _use_new_zipfile_serialization=False)


def _features_raw_pickle(folder):
    path = folder / "raw.pt"
    path.write_bytes(pickle.dumps({"frames": [1.0, 2.0]}))
    return path


def _features_fifo(folder):
    path = folder / "fifo.pt"
    os.mkfifo(path)
    return path


def _features_not_a_folder(folder):
    path = folder / "file.pt"
    path.write_text("not a folder")
    return path


FEATURE_CASES = {  # id: writes the bad files into a folder and returns the path the error must name
    "nan": _features_nan,
    "different-widths": _features_widths,
    "zero-tokens-per-frame": _features_no_tokens,
    "legacy-format": _features_legacy,
    "raw-pickle": _features_raw_pickle,
    "fifo": _features_fifo,
    "not-a-folder": _features_not_a_folder,
}


@pytest.mark.parametrize("case", FEATURE_CASES)
def test_encode_features_named(case, tmp_path):
    if case == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    named = FEATURE_CASES[case](tmp_path)
    folder = named if case == "not-a-folder" else tmp_path
    argv = ["encode", "--features", str(folder), "--device", "cpu", "--chunk", "2", "--num-basis", "8",
            "--past-samples", "8", "--num-layers", "1", "--no-warm-up", "--out", str(tmp_path / "out.pt")]
    with _deadline(120), pytest.raises(ERRORS) as info:
        cli_main(argv)
    _names(info, str(named))
    assert "--features" in str(info.value)
    assert not (tmp_path / "out.pt").exists()


def test_feature_files_of_one_width_are_read(tmp_path):
    _write_features(tmp_path, "a", torch.randn(3, 2, 8))
    _write_features(tmp_path, "b", torch.randn(5, 2, 8).half())
    assert [video.frames for video in feature_videos(tmp_path)] == [3, 5]


CLI_CASES = {  # id: (argv, option named)
    "demo-chunk-1e9": (["demo", "--chunk", "1000000000", "--frames", "1000000000"], "--chunk"),
    "demo-device-meta": (["demo", "--device", "meta", "--frames", "8"], "--device"),
    "demo-device-unknown": (["demo", "--device", "tpu", "--frames", "8"], "--device"),
    "encode-device-meta": (["encode", "--device", "meta", "--videos", "1", "--frames", "8"], "--device"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_refused_before_allocating(case, tmp_path):
    argv, name = CLI_CASES[case]
    extra = ["--png", str(tmp_path / "demo.png")] if argv[0] == "demo" else ["--out", str(tmp_path / "out.pt")]
    with _deadline(60), pytest.raises(ERRORS) as info:
        cli_main(argv + extra)
    _names(info, name)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The step: it commits only what is finite (coefficients, statistics, generators), and every
# backend accepts and refuses the same projections.

def _refused(memory, twin, frames, query, pk, pv, name):
    before = snapshot(memory)
    generator = None if memory.generator is None else memory.generator.get_state()
    with pytest.raises(ERRORS) as info, torch.no_grad():
        memory(frames, query, pk, pv, H)
    _names(info, name)
    assert_unchanged(memory, before)
    if generator is not None:
        assert torch.equal(memory.generator.get_state(), generator)
    _same_next_step(memory, twin)
    return str(info.value)


def _poisoned(which, name, value=math.nan):
    pk, pv = _projections()
    with torch.no_grad():
        getattr({"proj_key": pk, "proj_value": pv}[which], name).view(-1)[3] = value
    return pk, pv


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("sampling", ["quantile", "multinomial"])
@pytest.mark.parametrize("which,name,value", [("proj_key", "weight", math.nan), ("proj_value", "weight", math.inf),
                                              ("proj_key", "bias", -math.inf), ("proj_value", "bias", math.nan)])
def test_non_finite_projection_refused_by_name(which, name, value, sampling, backend):
    memory, twin = _held(backend=backend, sampling=sampling, generator=torch.Generator().manual_seed(4))
    message = _refused(memory, twin, *_inputs(5), *_poisoned(which, name, value), which)
    assert message == f"{which}'s {name} contains NaN or Inf"


def test_non_finite_projection_refused_on_the_first_step():
    memory = LongTermMemory(num_basis=16, past_samples=32)
    with pytest.raises(ValueError, match="proj_key's weight contains NaN or Inf"), torch.no_grad():
        memory(*_inputs(5), *_poisoned("proj_key", "weight"), H)
    assert memory.num_streams == 0 and memory.coefficients is None


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("config", [{}, dict(basis="gaussian", sigmas=(0.05, 0.1), quad_points=50),
                                    dict(sampling="multinomial", generator=torch.Generator().manual_seed(4))],
                         ids=["rectangular", "gaussian", "multinomial"])
def test_score_overflow_refused(config, backend):
    memory, twin = _held(backend=backend, **config)
    frames, query = _inputs(5)
    _refused(memory, twin, frames * 1e20, query * 1e20, *_projections(), "frames")


def test_check_finite_off_skips_the_check():
    memory = LongTermMemory(num_basis=16, past_samples=32, check_finite=False)
    with torch.no_grad():
        out = memory(*_inputs(5), *_poisoned("proj_key", "weight"), H)
    assert not bool(torch.isfinite(out).all())


@pytest.mark.parametrize("sampling", ["multinomial", "upstream"])
def test_rejected_call_leaves_the_generator(sampling):
    memory, twin = _held(sampling=sampling, generator=torch.Generator().manual_seed(4))
    frames, query = _inputs(5)
    frames[0, 0, 0] = math.nan
    _refused(memory, twin, frames, query, *_projections(), "frames")


@pytest.mark.parametrize("sampling", ["multinomial", "upstream"])
def test_rejected_call_leaves_the_default_generators(sampling):
    """Without a generator of their own the samplers draw from torch's default CPU generator: a
    rejected call leaves it where it was, so the next good step draws what a memory that never
    saw the bad call draws."""
    memory, twin = _held(sampling=sampling)
    frames, query = _inputs(5)
    bad, (pk, pv) = _poisoned("proj_value", "weight"), _projections()  # nn.Linear() draws: before seeding
    before = snapshot(memory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        with pytest.raises(ValueError, match="proj_value"), torch.no_grad():
            memory(frames, query, *bad, H)
        assert torch.equal(torch.get_rng_state(), torch.manual_seed(11).get_state())
        assert_unchanged(memory, before)
        with torch.no_grad():
            torch.manual_seed(12)
            out = memory(*_inputs(9), pk, pv, H)
            torch.manual_seed(12)
            ref = twin(*_inputs(9), pk, pv, H)
    assert torch.equal(out, ref) and torch.equal(memory.sticky_stats, twin.sticky_stats)


@pytest.mark.parametrize("config", [dict(sampling="quantile"), dict(sticky=False, sampling="multinomial")])
def test_deterministic_steps_keep_no_generator_state(config):
    memory, _ = _held(generator=torch.Generator(), **config)
    assert memory._sampling_generators(memory.coef.device) == []


# The fused backends that run on CPU tensors (this suite's inputs): the C++ cpu kernels, and Triton
# where it runs in its interpreter (no GPU). The boundary checks that the cases below meet run
# before any backend is chosen, so the GPU backends get the same answers.
FUSED = [backend for backend in ("cpu", "triton") if backend in available_backends()
         and (backend == "cpu" or not torch.cuda.is_available())]


def _backend_outcomes(backend, pk, pv):
    outcomes = []
    for name in ("torch", backend):
        memory = LongTermMemory(num_basis=16, past_samples=32, backend=name)
        try:
            with torch.no_grad():
                outcomes.append(memory(*_inputs(5), pk, pv, H))
        except ERRORS as err:
            outcomes.append(f"{type(err).__name__}: {err}")
    return outcomes


ODD_PROJECTIONS = {  # id: (proj_key, proj_value), refused naming proj_value
    "value-wider": lambda: (random_linear(E, D, 1), random_linear(E, D + 4, 2)),
    "value-narrower": lambda: (random_linear(E, D, 1), random_linear(E, D - 4, 2)),
    "value-float64": lambda: (random_linear(E, D, 1), random_linear(E, D, 2, dtype=torch.float64)),
    "key-float64": lambda: (random_linear(E, D, 1, dtype=torch.float64), random_linear(E, D, 2)),
    "value-bfloat16": lambda: (random_linear(E, D, 1), random_linear(E, D, 2, dtype=torch.bfloat16)),
}


@pytest.mark.parametrize("backend", ["torch", *FUSED])
@pytest.mark.parametrize("case", ODD_PROJECTIONS)
def test_odd_projections_refused_by_every_backend(case, backend):
    memory, twin = _held(backend=backend)
    _refused(memory, twin, *_inputs(5), *ODD_PROJECTIONS[case](), "proj_value")


@pytest.mark.skipif(not FUSED, reason="no fused backend to compare with the reference")
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", ODD_PROJECTIONS)
def test_backends_agree_on_odd_projections(case, backend):
    a, b = _backend_outcomes(backend, *ODD_PROJECTIONS[case]())
    assert isinstance(a, str) and a == b


@pytest.mark.skipif(not FUSED, reason="no fused backend to compare with the reference")
@pytest.mark.parametrize("backend", FUSED)
def test_backends_agree_on_projections_of_one_other_dtype(backend):
    a, b = _backend_outcomes(backend, random_linear(E, D, 1, dtype=torch.float64),
                             random_linear(E, D, 2, dtype=torch.float64))
    assert type(a) is type(b) and (a == b if isinstance(a, str) else torch.allclose(a, b.to(a.dtype), atol=1e-5))
