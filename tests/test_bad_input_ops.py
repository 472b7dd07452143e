"""Bad inputs beyond LongTermMemory.forward (tests/test_bad_input.py holds those): the op wrappers of
``infvideo.ops``, the configuration, state-dict loading, ``reset`` and the transformers patch.

Every rejected input raises TypeError or ValueError (RuntimeError for ``load_state_dict``, torch's
convention) naming the argument; a rejected LongTermMemory-level call leaves ``coef``, ``filled`` and
``sticky_stats`` bit-identical and the next good call matches a twin that never saw it. Unusual but
valid inputs (expanded / stride-0 and non-contiguous tensors, mixed dtypes) must give the result of
the plain input: ``torch.equal`` where the same arithmetic runs, else within 1e-6 relative (same
values, another summation order), and within the tolerances of tests/test_backends.py of the
torch reference.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import assert_unchanged, random_linear, rel_err, snapshot
from infvideo import LongTermMemory, MemoryConfig

import infvideo.ops as ops
from infvideo import reset_memory
from infvideo.backends import available_backends
from infvideo.integrations.transformers import apply_infvideo
from infvideo.reference import consolidate as ref_consolidate
from infvideo.reference import fit as ref_fit
from infvideo.reference import sticky

CUDA = torch.cuda.is_available()  # without it, conftest.py has set TRITON_INTERPRET=1
# The checks run before any kernel; only the tests of accepted inputs launch one.
needs_triton = pytest.mark.skipif("triton" not in available_backends(), reason="needs Triton")

DEVICE = torch.device("cuda" if CUDA else "cpu")
S, L, N, M, E, D, H, Q = 2, 3, 5, 7, 4, 8, 2, 3
CFG = MemoryConfig(num_basis=N, past_samples=M, tau=0.6)
ERRORS = (TypeError, ValueError)


def _randn(*shape, seed=0, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def _plans():
    return (ops.plan_on(ref_fit.first_fit(CFG, L), DEVICE), ops.plan_on(ref_fit.consolidation_fit(CFG, L), DEVICE))


def _bins(rows=S, count=M, dtype=torch.int32):
    return torch.randint(-1, N, (rows, count), generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)


def _rect(**change):
    """rect_consolidate with a later chunk's good arguments, some replaced."""
    args = dict(frames=_randn(S, L, E, seed=1), past=_randn(S, N, E, seed=2), plan=_plans()[1], sample_bins=_bins())
    args.update(change)
    return ops.rect_consolidate(**args)


def _slot(**change):
    args = dict(query=_randn(S, Q, D, seed=4), keys=_randn(S, N, D, seed=5), values=_randn(S, N, D, seed=6),
                num_heads=H, slot_log_weight=None, null_log_weight=None)
    args.update(change)
    return ops.slot_attention(**args)


def _quad(**change):
    quad = ops.quadrature_constants(MemoryConfig(num_basis=4, basis="gaussian", quad_points=9), DEVICE)
    args = dict(query=_randn(S, Q, D, seed=4), keys=_randn(S, 4, D, seed=5), values=_randn(S, 4, D, seed=6),
                num_heads=H, mu=quad.mu, sigma=quad.sigma, grid=quad.grid, log_weight=quad.log_weight)
    args.update(change)
    return ops.quadrature_attention(**args)


def _quantile(**change):
    args = dict(mass=torch.rand(S, H, N, generator=torch.Generator().manual_seed(7)).to(DEVICE), num_samples=M)
    args.update(change)
    return ops.quantile_bins(**args)


def _step(**change):
    consts = ops.step_constants(CFG, L, DEVICE)
    args = dict(cfg=CFG, consts=consts, frames=_randn(S, L, E, seed=1), query=_randn(S, Q, D, seed=4),
                proj_key=random_linear(E, D, 8).to(DEVICE), proj_value=random_linear(E, D, 9).to(DEVICE),
                num_heads=H, past=None, filled=None, stats=None)
    args.update(change)
    return ops.fused_step(**args)


OP_CASES = {  # name: (call, argument named in the message)
    # rect_consolidate
    "rect-frames-list": (lambda: _rect(frames=_randn(S, L, E).tolist()), "frames"),
    "rect-frames-2d": (lambda: _rect(frames=_randn(L, E)), "frames"),
    "rect-frames-6d": (lambda: _rect(frames=_randn(S, L, 1, 1, 1, E)), "frames"),
    "rect-frames-int": (lambda: _rect(frames=torch.ones(S, L, E, dtype=torch.int64, device=DEVICE)), "frames"),
    "rect-frames-empty": (lambda: _rect(frames=_randn(S, L, 0)), "frames"),
    "rect-frames-length-vs-plan": (lambda: _rect(frames=_randn(S, L + 2, E)), "frames"),
    "rect-plan-not-a-plan": (lambda: _rect(plan=ref_fit.consolidation_fit(CFG, L)), "plan"),
    "rect-past-other-num-basis": (lambda: _rect(past=_randn(S, N + 1, E)), "past"),
    "rect-past-other-width": (lambda: _rect(past=_randn(S, N, E + 1)), "past"),
    "rect-past-other-streams": (lambda: _rect(past=_randn(S + 1, N, E)), "past"),
    "rect-past-2d": (lambda: _rect(past=_randn(N, E)), "past"),
    "rect-past-int": (lambda: _rect(past=torch.ones(S, N, E, dtype=torch.int32, device=DEVICE)), "past"),
    "rect-past-without-bins": (lambda: _rect(sample_bins=None), "sample_bins"),
    "rect-bins-float": (lambda: _rect(sample_bins=_bins().float()), "sample_bins"),
    "rect-bins-other-count": (lambda: _rect(sample_bins=_bins(count=M - 1)), "sample_bins"),
    "rect-bins-other-rows": (lambda: _rect(sample_bins=_bins(rows=S + 1)), "sample_bins"),
    "rect-bins-3d": (lambda: _rect(sample_bins=_bins()[None]), "sample_bins"),
    "rect-past-with-first-plan": (lambda: _rect(plan=_plans()[0]), "sample_bins"),
    "rect-cast-int": (lambda: _rect(cast_dtype=torch.int8), "cast_dtype"),
    "rect-cast-string": (lambda: _rect(cast_dtype="bfloat16"), "cast_dtype"),
    # quantile_bins
    "quantile-mass-1d": (lambda: _quantile(mass=torch.rand(N, device=DEVICE)), "mass"),
    "quantile-mass-4d": (lambda: _quantile(mass=torch.rand(S, 1, 1, N, device=DEVICE)), "mass"),
    "quantile-mass-int": (lambda: _quantile(mass=torch.ones(S, N, dtype=torch.int64, device=DEVICE)), "mass"),
    "quantile-mass-no-bins": (lambda: _quantile(mass=torch.rand(S, H, 0, device=DEVICE)), "mass"),
    "quantile-mass-list": (lambda: _quantile(mass=[[0.5, 0.5]]), "mass"),
    "quantile-samples-zero": (lambda: _quantile(num_samples=0), "num_samples"),
    "quantile-samples-float": (lambda: _quantile(num_samples=2.5), "num_samples"),
    "quantile-samples-bool": (lambda: _quantile(num_samples=True), "num_samples"),
    # slot_attention
    "slot-query-2d": (lambda: _slot(query=_randn(Q, D)), "query"),
    "slot-query-float64": (lambda: _slot(query=_randn(S, Q, D, dtype=torch.float64)), "query"),
    "slot-query-no-queries": (lambda: _slot(query=_randn(S, 0, D)), "query"),
    "slot-keys-4d": (lambda: _slot(keys=_randn(S, N, D, 1)), "keys"),
    "slot-keys-int": (lambda: _slot(keys=torch.ones(S, N, D, dtype=torch.int32, device=DEVICE)), "keys"),
    "slot-keys-no-slots": (lambda: _slot(keys=_randn(S, 0, D), values=_randn(S, 0, D)), "keys"),
    "slot-keys-other-streams": (lambda: _slot(keys=_randn(S + 1, N, D), values=_randn(S + 1, N, D)), "keys"),
    "slot-keys-other-width": (lambda: _slot(keys=_randn(S, N, D + 2), values=_randn(S, N, D + 2)), "keys"),
    "slot-values-vs-keys": (lambda: _slot(values=_randn(S, N + 1, D)), "values"),
    "slot-heads-not-dividing": (lambda: _slot(num_heads=3), "num_heads"),
    "slot-heads-zero": (lambda: _slot(num_heads=0), "num_heads"),
    "slot-heads-float": (lambda: _slot(num_heads=2.0), "num_heads"),
    "slot-logw-length": (lambda: _slot(slot_log_weight=torch.zeros(N + 1, device=DEVICE)), "slot_log_weight"),
    "slot-logw-2d": (lambda: _slot(slot_log_weight=torch.zeros(1, N, device=DEVICE)), "slot_log_weight"),
    "slot-null-nan": (lambda: _slot(null_log_weight=math.nan), "null_log_weight"),
    "slot-null-plus-inf": (lambda: _slot(null_log_weight=math.inf), "null_log_weight"),
    "slot-null-string": (lambda: _slot(null_log_weight="-3"), "null_log_weight"),
    # quadrature_attention
    "quad-mu-length": (lambda: _quad(mu=torch.zeros(5, device=DEVICE)), "mu"),
    "quad-sigma-2d": (lambda: _quad(sigma=torch.ones(1, 4, device=DEVICE)), "sigma"),
    "quad-grid-empty": (lambda: _quad(grid=torch.zeros(0, device=DEVICE)), "grid"),
    "quad-logw-vs-grid": (lambda: _quad(log_weight=torch.zeros(8, device=DEVICE)), "log_weight"),
    "quad-values-int": (lambda: _quad(values=torch.ones(S, 4, D, dtype=torch.int64, device=DEVICE)), "values"),
    "quad-heads-not-dividing": (lambda: _quad(num_heads=3), "num_heads"),
    # fused_step
    "step-cfg-dict": (lambda: _step(cfg=dict(num_basis=N)), "cfg"),
    "step-consts-plan": (lambda: _step(consts=_plans()[0]), "consts"),
    "step-consts-other-length": (lambda: _step(frames=_randn(S, L + 1, E)), "frames"),
    "step-query-other-streams": (lambda: _step(query=_randn(S + 1, Q, D)), "query"),
    "step-past-other-num-basis": (lambda: _step(past=_randn(S, N + 2, E)), "past"),
    "step-frames-2d": (lambda: _step(frames=_randn(L, E)), "frames"),
}


def _assert_refused(call, name: str) -> None:
    """The call raises one of ERRORS with a message naming ``name``."""
    with pytest.raises(ERRORS) as info:
        call()
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


@pytest.mark.parametrize("case", OP_CASES)
def test_op_bad_input(case):
    _assert_refused(*OP_CASES[case])


# Device mismatches: each op names the argument on the wrong device (CUDA machines only).
DEVICE_CASES = {
    "rect-plan-on-cpu": (lambda: _rect(frames=_randn(S, L, E), plan=ops.plan_on(
        ref_fit.consolidation_fit(CFG, L), torch.device("cpu"))), "plan"),
    "rect-past-on-cpu": (lambda: _rect(past=_randn(S, N, E, device="cpu")), "past"),
    "rect-bins-on-cpu": (lambda: _rect(sample_bins=_bins().cpu()), "sample_bins"),
    "slot-keys-on-cpu": (lambda: _slot(keys=_randn(S, N, D, device="cpu")), "keys"),
    "slot-values-on-cpu": (lambda: _slot(values=_randn(S, N, D, device="cpu")), "values"),
    "quad-keys-on-cpu": (lambda: _quad(keys=_randn(S, 4, D, device="cpu")), "keys"),
    "step-query-on-cpu": (lambda: _step(query=_randn(S, Q, D, device="cpu")), "query"),
    "step-consts-on-cpu": (lambda: _step(consts=ops.step_constants(CFG, L, torch.device("cpu"))), "consts"),
}


@pytest.mark.skipif(not CUDA, reason="a device mismatch needs a CUDA device")
@pytest.mark.parametrize("case", DEVICE_CASES)
def test_op_device_mismatch(case):
    _assert_refused(*DEVICE_CASES[case])


# ---------------------------------------------------------------------------------------------
# Unusual but valid op inputs: overlapping memory (stride 0), non-contiguous, mixed dtypes.

def _close(a, b, tol=1e-6):
    assert rel_err(a, b) <= tol, rel_err(a, b)


@needs_triton
def test_rect_consolidate_expanded_and_strided_inputs():
    first, later = _plans()
    later_ref = ref_fit.on_device(ref_fit.consolidation_fit(CFG, L), DEVICE, torch.float32)
    frames, past, bins = _randn(S, L, E, seed=1), _randn(S, N, E, seed=2), _bins()
    plain = ops.rect_consolidate(frames, past, later, bins)
    _close(plain, ref_consolidate.consolidate_segmented(frames, past, bins.long(), later_ref, False), 1e-5)
    # past expanded over the streams (stride 0): read only, so the same as its contiguous copy.
    shared = past[:1].expand(S, N, E)
    assert torch.equal(ops.rect_consolidate(frames, shared, later, bins),
                       ops.rect_consolidate(frames, shared.contiguous(), later, bins))
    # sample bins expanded over the streams, and given once for all streams ([M] and [1, M]).
    row = bins[:1]
    expected = ops.rect_consolidate(frames, past, later, row.expand(S, M).contiguous())
    for given in (row.expand(S, M), row, row[0]):
        assert torch.equal(ops.rect_consolidate(frames, past, later, given), expected)
    # Frames with stride 0 along time and along the tokens, and frames transposed (no unit stride).
    still = frames[:, :1].expand(S, L, E)
    _close(ops.rect_consolidate(still, past, later, bins), ops.rect_consolidate(still.contiguous(), past, later, bins))
    tokens = frames[:, :, None].expand(S, L, 5, E)
    _close(ops.rect_consolidate(tokens, None, first), ops.rect_consolidate(frames, None, first))
    transposed = frames.transpose(1, 2).contiguous().transpose(1, 2)
    assert transposed.stride(-1) != 1
    _close(ops.rect_consolidate(transposed, past, later, bins), plain)


@needs_triton
def test_slot_attention_expanded_strided_and_mixed_dtypes():
    query, keys, values = _randn(S, Q, D, seed=4), _randn(S, N, D, seed=5), _randn(S, N, D, seed=6)
    context, mass = ops.slot_attention(query, keys, values, H)
    # keys / values shared by the streams (stride 0) and a query broadcast over the streams.
    k1, v1, q1 = keys[:1].expand(S, N, D), values[:1].expand(S, N, D), query[:1].expand(S, Q, D)
    for a, b in zip(ops.slot_attention(q1, k1, v1, H), ops.slot_attention(q1.contiguous(), k1.contiguous(),
                                                                          v1.contiguous(), H)):
        assert torch.equal(a, b)
    # A query whose last dimension is strided is made row-contiguous: the same numbers.
    strided = query.transpose(1, 2).contiguous().transpose(1, 2)
    for a, b in zip(ops.slot_attention(strided, keys, values, H), (context, mass)):
        assert torch.equal(a, b)
    # A float16 query with float32 keys, float64 values (cast to the keys' dtype): the reference
    # on the same rounded values; context in the query's dtype.
    half = query.half()
    ctx16, _ = ops.slot_attention(half, keys, values.double(), H)
    assert ctx16.dtype == torch.float16
    ctx32, _ = ops.slot_attention(half.float(), keys, values, H)
    _close(ctx16, ctx32, 1e-3)


@needs_triton
def test_quantile_bins_expanded_and_strided_mass():
    mass = torch.rand(1, H, 11, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    shared = mass.expand(S, H, 11)
    got = ops.quantile_bins(shared, 13)
    assert torch.equal(got, ops.quantile_bins(shared.contiguous(), 13))
    assert torch.equal(got.long(), sticky.quantile_bins(shared, 13)[0])
    strided = mass.expand(S, H, 11).transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(ops.quantile_bins(strided, 13), got)


# ---------------------------------------------------------------------------------------------
# LongTermMemory beyond forward's arguments: configuration, reset, state dicts.

CONFIG_CASES = [  # kwargs, argument named (each distinct from tests/test_bad_input.py's)
    (dict(tau=True), "tau"), (dict(tau=None), "tau"), (dict(ridge=math.inf), "ridge"), (dict(ridge="0.5"), "ridge"),
    (dict(past_samples=-1), "past_samples"), (dict(num_basis="8"), "num_basis"), (dict(num_basis=-4), "num_basis"),
    (dict(quad_points=2.5), "quad_points"), (dict(sampling=None), "sampling"), (dict(preset="Exact"), "preset"),
    (dict(basis="Rectangular"), "basis"), (dict(sigmas=0.01), "sigmas"), (dict(density=""), "density"),
    (dict(sticky=1), "sticky"), (dict(backend="CUDA"), "backend"), (dict(backend=None), "backend"),
] + ([] if "cuda" in available_backends() else [(dict(backend="cuda"), "backend")])  # refused where not built


@pytest.mark.parametrize("kwargs,name", CONFIG_CASES, ids=[repr(k) for k, _ in CONFIG_CASES])
def test_bad_configuration(kwargs, name):
    for make in (LongTermMemory, MemoryConfig):
        if make is MemoryConfig and "backend" in kwargs:
            continue
        with pytest.raises(ERRORS) as info:
            make(**kwargs)
        assert name in str(info.value), f"{make.__name__}: message does not name {name!r}: {info.value}"


def test_unknown_backend_in_the_environment(monkeypatch):
    monkeypatch.setenv("INFVIDEO_BACKEND", "fastest")
    with pytest.raises(ValueError, match="INFVIDEO_BACKEND"):
        LongTermMemory()


def _good(streams=S, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(frames=torch.randn(streams, L, E, generator=gen), query=torch.randn(streams, Q, D, generator=gen),
                proj_key=random_linear(E, D, 10), proj_value=random_linear(E, D, 11), num_heads=H)



@pytest.fixture(params=["quantile", "multinomial"])
def holding(request):
    """A memory holding two chunks, and a twin that never sees a bad input."""
    generator = torch.Generator().manual_seed(5) if request.param == "multinomial" else None
    memory = LongTermMemory(num_basis=N, past_samples=M, sampling=request.param, generator=generator)
    with torch.no_grad():
        memory(**_good(seed=1))
        memory(**_good(seed=2))
    return memory, copy.deepcopy(memory)


def _state(memory, **change):
    state = copy.deepcopy(memory.state_dict())
    state.update(change)
    return {key: value for key, value in state.items() if value is not None}


STATE_CASES = {  # name: (state dict from the held one, argument named in the message)
    "coef-other-num-basis": (lambda m: _state(m, coef=torch.randn(S, N + 1, E)), "coef"),
    "coef-2d": (lambda m: _state(m, coef=torch.randn(S, N)), "coef"),
    "coef-int": (lambda m: _state(m, coef=torch.ones(S, N, E, dtype=torch.int64)), "coef"),
    "coef-nan": (lambda m: _state(m, coef=torch.full((S, N, E), math.nan)), "coef"),
    "coef-not-a-tensor": (lambda m: _state(m, coef=[[0.0] * E] * N), "coef"),
    "filled-float": (lambda m: _state(m, filled=torch.ones(S)), "filled"),
    "filled-other-streams": (lambda m: _state(m, filled=torch.ones(S + 1, dtype=torch.bool)), "filled"),
    "stats-other-bins": (lambda m: _state(m, sticky_stats=torch.rand(S, H, N - 1)), "sticky_stats"),
    "stats-inf": (lambda m: _state(m, sticky_stats=torch.full((S, H, N), math.inf)), "sticky_stats"),
    "missing-filled": (lambda m: {k: v for k, v in _state(m).items() if k != "filled"}, "filled"),
    "extra-state-not-a-dict": (lambda m: _state(m, _extra_state=[1, 2]), "_extra_state"),
    "extra-state-wrong-keys": (lambda m: _state(m, _extra_state={"seed": 3}), "_extra_state"),
    "generator-state-truncated": (lambda m: _state(m, _extra_state={
        "generator_state": torch.zeros(16, dtype=torch.uint8), "generator_device": "cpu"}), "generator_state"),
    "generator-device-unknown": (lambda m: _state(m, _extra_state={
        "generator_state": torch.Generator().get_state(), "generator_device": "tpu:7"}), "device"),
}


def _next_call_matches_twin(memory, twin):
    good = _good(seed=9)
    with torch.no_grad():
        out, ref = memory(**good), twin(**good)
    assert torch.equal(out, ref)
    assert torch.equal(memory.coef, twin.coef) and torch.equal(memory.sticky_stats, twin.sticky_stats)


@pytest.mark.parametrize("case", STATE_CASES)
def test_bad_state_dict_keeps_state(case, holding):
    memory, twin = holding
    state = STATE_CASES[case][0](memory)
    before = snapshot(memory)
    generator = None if memory.generator is None else memory.generator.get_state()
    with pytest.raises((RuntimeError, *ERRORS)) as info:
        memory.load_state_dict(state)
    assert STATE_CASES[case][1] in str(info.value), f"message does not name {STATE_CASES[case][1]!r}: {info.value}"
    assert_unchanged(memory, before)
    if generator is not None:
        assert torch.equal(memory.generator.get_state(), generator)
    _next_call_matches_twin(memory, twin)


@pytest.mark.parametrize("streams", ["0", {"stream": 0}, object()], ids=["str", "dict", "object"])
def test_reset_with_unusable_streams(streams, holding):
    memory, twin = holding
    before = snapshot(memory)
    with pytest.raises(TypeError, match="streams"):
        memory.reset(streams=streams)
    assert_unchanged(memory, before)
    _next_call_matches_twin(memory, twin)


def test_stream_count_change_after_a_partial_reset(holding):
    memory, twin = holding
    memory.reset(streams=[0])
    twin.reset(streams=[0])
    before = snapshot(memory)
    with pytest.raises(ValueError, match="streams"):
        with torch.no_grad():
            memory(**_good(streams=S + 1))
    assert_unchanged(memory, before)
    _next_call_matches_twin(memory, twin)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_frames_on_another_device_than_the_memory(backend, holding):
    memory, twin = holding  # the memory's buffers stay on the CPU
    memory.backend = backend
    before = snapshot(memory)
    good = _good()
    moved = dict(good, frames=good["frames"].cuda(), query=good["query"].cuda(),
                 proj_key=good["proj_key"].cuda(), proj_value=good["proj_value"].cuda())
    with pytest.raises(ERRORS) as info:
        with torch.no_grad():
            memory(**moved)
    assert "frames" in str(info.value)
    assert_unchanged(memory, before)
    _next_call_matches_twin(memory, twin)


# Inputs LongTermMemory takes as they are: a result equal to that of the plain input.
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_memory_handles_mixed_dtypes_and_overlapping_inputs(backend):
    good = _good(seed=3)
    frames, query = good["frames"], good["query"]
    variants = {  # name: (frames, query) given, (frames, query) they must behave as
        "fp16-frames-fp32-query": ((frames.half(), query), (frames.half().float(), query)),
        "fp32-frames-bf16-query": ((frames, query.bfloat16()), (frames, query.bfloat16().float())),
        "frames-stride0-streams": ((frames[:1].expand(S, L, E), query),
                                   (frames[:1].expand(S, L, E).contiguous(), query)),
        "frames-stride0-tokens": ((frames[:, :, None].expand(S, L, 3, E), query), (frames, query)),
        "frames-transposed": ((frames.transpose(1, 2).contiguous().transpose(1, 2), query), (frames, query)),
        "query-stride0-streams": ((frames, query[:1].expand(S, Q, D)),
                                  (frames, query[:1].expand(S, Q, D).contiguous())),
    }
    for name, (given, plain) in variants.items():
        outs = []
        for f, q in (given, plain):
            memory = LongTermMemory(num_basis=N, past_samples=M, backend=backend).to(DEVICE)
            with torch.no_grad():
                for _ in range(2):
                    out = memory(f.to(DEVICE), q.to(DEVICE), good["proj_key"].to(DEVICE),
                                 good["proj_value"].to(DEVICE), H)
            outs.append((out, memory.coef))
        (out, coef), (ref, ref_coef) = outs
        assert out.dtype == given[1].dtype, name
        if backend == "torch" and "tokens" not in name:  # the same arithmetic on the same numbers
            assert torch.equal(out, ref.to(out.dtype)) and torch.equal(coef, ref_coef), name
        else:  # pooled in another order; a half-precision context within one rounding
            assert rel_err(coef, ref_coef) <= 1e-6, name
            assert rel_err(out.float(), ref.float()) <= (1e-6 if out.dtype == torch.float32 else 1e-2), name


# ---------------------------------------------------------------------------------------------
# The transformers patch.

TQ, TL, TT, TE, TD, TH = 4, 2, 4, 12, 16, 2  # queries, frames, tokens per frame, widths, heads


@pytest.fixture(scope="module")
def qformer():
    transformers = pytest.importorskip("transformers")
    config = transformers.Blip2QFormerConfig(hidden_size=TD, num_attention_heads=TH, num_hidden_layers=1,
                                             cross_attention_frequency=1, encoder_hidden_size=TE,
                                             intermediate_size=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.Blip2QFormerModel(config).eval()


PATCH_CASES = {  # name: (apply_infvideo's arguments besides the model, argument named)
    "alpha-string": (dict(alpha="0.5"), "alpha"),
    "alpha-none": (dict(alpha=None), "alpha"),
    "alpha-inf": (dict(alpha=math.inf), "alpha"),
    "tokens-negative": (dict(tokens_per_frame=-1), "tokens_per_frame"),
    "tokens-bool": (dict(tokens_per_frame=True), "tokens_per_frame"),
    "tokens-string": (dict(tokens_per_frame="32"), "tokens_per_frame"),
    "memory-kwarg-unknown": (dict(window=8), "window"),
    "memory-kwarg-bad-sampling": (dict(sampling="Quantile"), "sampling"),
    "memory-kwarg-bad-tau": (dict(tau=0.0), "tau"),
}


@pytest.mark.parametrize("case", PATCH_CASES)
def test_apply_infvideo_bad_arguments_leave_the_model_unpatched(case, qformer):
    kwargs, name = PATCH_CASES[case]
    model = copy.deepcopy(qformer)
    with pytest.raises(ERRORS) as info:
        apply_infvideo(model, **{"tokens_per_frame": TT, **kwargs})
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"
    assert not any(isinstance(m, LongTermMemory) for m in model.modules())


def test_apply_infvideo_on_none():
    with pytest.raises(TypeError, match="model"):
        apply_infvideo(None)


def _qformer_call(model, encoder, streams=S):
    query = torch.randn(streams, TQ, TD, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(query_embeds=query, encoder_hidden_states=encoder).last_hidden_state


def _memories(model):
    return [m for m in model.modules() if isinstance(m, LongTermMemory)]


@pytest.mark.parametrize("bad", ["length-not-divisible", "other-stream-count", "streams-string"])
def test_patched_model_bad_calls_keep_the_memories(bad, qformer):
    model = apply_infvideo(copy.deepcopy(qformer), alpha=0.5, tokens_per_frame=TT, num_basis=N, past_samples=M)
    gen = torch.Generator().manual_seed(0)
    _qformer_call(model, torch.randn(S, TL * TT, TE, generator=gen))
    twin = copy.deepcopy(model)
    before = [snapshot(m) for m in _memories(model)]
    with pytest.raises(ERRORS) as info:
        if bad == "length-not-divisible":
            _qformer_call(model, torch.randn(S, TL * TT + 1, TE))
        elif bad == "other-stream-count":
            _qformer_call(model, torch.randn(S + 1, TL * TT, TE), streams=S + 1)
        else:
            reset_memory(model, streams="all")
    named = {"length-not-divisible": "tokens_per_frame", "other-stream-count": "streams",
             "streams-string": "streams"}[bad]
    assert named in str(info.value), f"message does not name {named!r}: {info.value}"
    for memory, saved in zip(_memories(model), before):
        assert_unchanged(memory, saved)
    encoder = torch.randn(S, TL * TT, TE, generator=gen)
    assert torch.equal(_qformer_call(model, encoder), _qformer_call(twin, encoder))


@needs_triton
def test_float64_projections_with_float32_frames_on_triton():
    """float32 frames and query run the fused step, whose consolidation also writes the
    coefficients in the projections' dtype: for float64 projections that is a plain cast (the
    kernel's rounding store only narrows; it used to fail inside Triton)."""
    good = _good(seed=4)
    pk, pv = good["proj_key"].double().to(DEVICE), good["proj_value"].double().to(DEVICE)
    outs = []
    for backend in ("torch", "triton"):
        memory = LongTermMemory(num_basis=N, past_samples=M, backend=backend).to(DEVICE)
        with torch.no_grad():
            for seed in range(3):
                chunk = _good(seed=seed)
                out = memory(chunk["frames"].to(DEVICE), chunk["query"].to(DEVICE), pk, pv, H)
        outs.append((out, memory.coef))
    assert outs[1][0].dtype == torch.float32
    assert rel_err(outs[1][0], outs[0][0]) <= 1e-5 and rel_err(outs[1][1], outs[0][1]) <= 1e-5


@needs_triton
def test_rect_consolidate_cast_to_float64():
    frames, past, bins = _randn(S, L, E, seed=1), _randn(S, N, E, seed=2), _bins()
    coef, cast = ops.rect_consolidate(frames, past, _plans()[1], bins, cast_dtype=torch.float64)
    assert cast.dtype == torch.float64 and torch.equal(cast, coef.double())
    coef32, same = ops.rect_consolidate(frames, past, _plans()[1], bins, cast_dtype=torch.float32)
    assert same is coef32 and torch.equal(coef32, coef)
