"""C++ launch plans (``infvideo.launch_plans``): recorded steps replayed from C++ equal the steps
launched from Python bit for bit, and a plan is used only where it was recorded."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
import torch

from infvideo import LongTermMemory, launch_plans
from conftest import random_linear

plans_built = pytest.mark.skipif(not (torch.cuda.is_available() and launch_plans.available()),
                                 reason="launch plans need a GPU and the extension built with CUDA")
S, L, T, E, D, H, Q = 3, 24, 5, 40, 36, 4, 9


def _inputs(count, dtype=torch.float32, streams=S, seed=0, layout="tokens"):
    gen = torch.Generator().manual_seed(seed)
    shape = (streams, L, T, E) if layout == "tokens" else (streams, L, E)
    frames = [torch.randn(shape, generator=gen).to("cuda", dtype) for _ in range(count)]
    queries = [torch.randn(streams, Q, D, generator=gen).to("cuda", dtype) for _ in range(count)]
    return frames, queries


def _pair(**kwargs):
    return [LongTermMemory(num_basis=20, past_samples=30, check_finite=False, launch_plans=plans, **kwargs).cuda()
            for plans in (False, True)]


def _assert_identical(python, planned, a, b):
    assert torch.equal(a, b)
    assert torch.equal(python.coef, planned.coef)
    assert torch.equal(python.sticky_stats, planned.sticky_stats)


@plans_built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, dict(sticky=False), dict(preset="paper")], ids=["sticky", "uniform", "paper"])
@pytest.mark.parametrize("layout", ["tokens", "pooled"])
def test_planned_steps_equal_python_steps(dtype, kwargs, layout):
    pk, pv = random_linear(E, D, seed=1).cuda().to(dtype), random_linear(E, D, seed=2).cuda().to(dtype)
    python, planned = _pair(**kwargs)
    frames, queries = _inputs(6, dtype, layout=layout)
    with torch.no_grad():
        for f, q in zip(frames, queries):
            _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
    if kwargs.get("preset") == "paper":
        # Its fits drop a frame, so its steps consolidate on the reference: no plans at all.
        assert planned._plans is None
        return
    assert planned._plans.refused == {}
    assert len(planned._plans.plans) == 1, "steps 4-6 should have run the plan recorded at step 3"


@plans_built
@pytest.mark.parametrize("streams", [1, 2, 17])
def test_planned_steps_equal_python_steps_across_stream_counts(streams):
    pk, pv = random_linear(E, D, seed=3).cuda(), random_linear(E, D, seed=4).cuda()
    python, planned = _pair()
    frames, queries = _inputs(5, torch.bfloat16, streams=streams, seed=streams)
    with torch.no_grad():
        for f, q in zip(frames, queries):
            _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
    assert len(planned._plans.plans) == 1


@plans_built
def test_plan_is_left_when_inputs_state_or_weights_change():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    python, planned = _pair()
    frames, queries = _inputs(14)
    side = torch.cuda.Stream()
    with torch.no_grad():
        for i, (f, q) in enumerate(zip(frames, queries)):
            if i == 5:
                f = f.transpose(0, 1).contiguous().transpose(0, 1)  # other strides: another signature
            if i == 6:
                q = torch.empty(q.numel() + 1, device="cuda")[1:].view_as(q).copy_(q)  # 4-byte aligned
            if i == 7:
                for memory in (python, planned):
                    memory.reset(streams=[1])
            if i == 9:
                pk.weight.mul_(1.5)  # in place: the plan's stacked K|V weight would be stale
            if i == 11:
                saved = {k: v.clone() for k, v in python.state_dict().items()}
                saved["sticky_stats"] = saved["sticky_stats"].sum(1, keepdim=True)  # another statistic shape
                for memory in (python, planned):
                    memory.load_state_dict(saved)
            if i == 12:
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
                torch.cuda.current_stream().wait_stream(side)
                continue
            _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
    assert planned._plans.refused == {}


@plans_built
def test_steps_a_plan_cannot_replay_keep_the_python_path():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    frames, queries = _inputs(5)
    # A Gaussian basis never runs on the fused kernels alone: such a memory keeps no plans.
    python, planned = (LongTermMemory(num_basis=20, basis="gaussian", quad_points=50, check_finite=False,
                                      launch_plans=plans).cuda() for plans in (False, True))
    assert planned._plans is None
    # float64 frames take the reference step: the recorder sees its ATen calls and refuses it.
    python64, planned64 = _pair(sticky=False)  # (sticky bins could flip on last-bit differences)
    with torch.no_grad():
        for f, q in zip(frames, queries):
            _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
            # (the float64 reference on the GPU is not bit-reproducible between two memories)
            f64 = f.double()
            torch.testing.assert_close(planned64(f64, q, pk, pv, H), python64(f64, q, pk, pv, H),
                                       rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(planned64.coef, python64.coef, rtol=1e-9, atol=1e-9)
    assert planned64._plans.plans == {}
    (why,) = planned64._plans.refused.values()
    assert "aten." in why, why


@plans_built
def test_plan_with_the_host_check_raises_before_any_state_changes():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    python, planned = (LongTermMemory(num_basis=20, past_samples=30, launch_plans=plans).cuda()
                       for plans in (False, True))
    frames, queries = _inputs(5)
    with torch.no_grad():
        for f, q in zip(frames, queries):
            _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
        assert len(planned._plans.plans) == 1
        before = planned.coef.clone(), planned.sticky_stats.clone()
        bad = frames[0].clone()
        bad[1, 3, 2, 5] = float("nan")
        with pytest.raises(ValueError, match="frames"):
            planned(bad, queries[0], pk, pv, H)
        assert torch.equal(planned.coef, before[0]) and torch.equal(planned.sticky_stats, before[1])


@plans_built
def test_no_plan_under_autograd_and_none_inside_a_capture():
    pk, pv = random_linear(E, D, seed=1).cuda(), random_linear(E, D, seed=2).cuda()
    frames, queries = _inputs(6)
    graded = LongTermMemory(num_basis=20, past_samples=30, check_finite=False).cuda()
    for f, q in zip(frames, queries):
        graded(f, q, pk, pv, H)  # grad enabled, weights require grad: the reference runs
    assert graded._plans.plans == {}

    python, planned = _pair()
    with torch.no_grad():
        for f, q in zip(frames[:4], queries[:4]):
            _assert_identical(python, planned, python(f, q, pk, pv, H), planned(f, q, pk, pv, H))
        assert len(planned._plans.plans) == 1
        static_f, static_q = frames[4].clone(), queries[4].clone()
        graphs, contexts = [], []
        for memory in (python, planned):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                contexts.append(memory(static_f, static_q, pk, pv, H))
            graphs.append(graph)
        for f, q in zip(frames[4:], queries[4:]):
            static_f.copy_(f)
            static_q.copy_(q)
            for graph in graphs:
                graph.replay()
            _assert_identical(python, planned, *contexts)


# Without a GPU: the program a recording turns into.

class _FakeKernel(SimpleNamespace):
    """What a plan reads of a compiled Triton kernel."""


def _fake_kernel(signature, ptx_params, name="k", **meta):
    params = ",\n".join(f"  .param .{kind} {name}_param_{i}" for i, kind in enumerate(ptx_params))
    defaults = dict(name=name, num_warps=4, shared=256, num_ctas=1, cluster_dims=(1, 1, 1))
    return _FakeKernel(metadata=SimpleNamespace(**(defaults | meta)), src=SimpleNamespace(signature=signature),
                       asm={"ptx": f".visible .entry {name}(\n{params}\n)\n{{ ret; }}"}, function=0xABC)


def test_program_encodes_slots_offsets_scalars_and_scratch_pointers():
    frames, past = torch.zeros(2, 8), torch.zeros(3, 4)
    constant = torch.zeros(5)
    program = launch_plans._Program([frames, past])
    out = torch.empty(2, 6)
    program.alloc(out)
    kernel = _fake_kernel({"a": "*fp32", "b": "*fp32", "c": "*fp32", "n": "i32", "x": "fp32", "B": "constexpr"},
                          ["u64", "u64", "u64", "u32", "f32", "u64", "u64"])
    program.launch(kernel, (3, 1, 1), [past[1:], out[:, 2:], constant, 7, 0.5, 16])
    code, constants = program.encode([out[:, 2:]])
    assert constants == [constant]
    half = struct.unpack("<i", struct.pack("<f", 0.5))[0]
    launch = [1, 0xABC, 3, 1, 1, 128, 256, 7, 0, 1, 16, 0, 2, 8, 0, 3, 0, 1, 7, 0, 3, half, 0, 4, 0, 0, 4, 0, 0]
    # version, 2 inputs, 4 slots, 1 constant in slot 3, 2 ops, 1 output; the inputs' shapes
    assert code[:7] == [1, 2, 4, 1, 3, 2, 1]
    heads = [2, 2, 8, 8, 1, 6, frames.data_ptr() & 15, 2, 3, 4, 4, 1, 6, past.data_ptr() & 15]
    alloc = [0, 2, 2, 2, 6, 6, 1, 6]
    assert code[7:] == heads + alloc + launch + [2, 2, 2, 2, 4, 6, 1]


def test_program_refuses_what_it_cannot_replay():
    program = launch_plans._Program([torch.zeros(4)])
    with pytest.raises(launch_plans.Refused, match="PTX parameters"):
        program.launch(_fake_kernel({"a": "*fp32", "n": "i32"}, ["u64", "u64"]), (1, 1, 1), [torch.zeros(4), 3])
    with pytest.raises(launch_plans.Refused, match="launch options"):
        program.launch(_fake_kernel({"a": "*fp32"}, ["u64"], num_ctas=2), (1, 1, 1), [torch.zeros(4)])
    with pytest.raises(launch_plans.Refused, match="parameter"):
        program.launch(_fake_kernel({"a": "*fp32"}, ["u64"]), (1, 1, 1), [None])
    with pytest.raises(launch_plans.Refused, match="share memory"):
        shared = torch.zeros(8)
        launch_plans._Program([shared[:4], shared[4:]])


def test_recorder_refuses_aten_calls_other_than_allocations_views_and_products():
    recorder = launch_plans._Recorder()
    x, bias = torch.randn(3, 4), torch.zeros(5)
    with recorder:
        y = torch.empty(4, 5)
        z = torch.addmm(bias, x, y)
        z.view(15, 1).t()
    assert recorder.refusal is None
    assert [event[0] for event in recorder.events] == ["alloc", "matmul"]
    with recorder:
        x.float().add(1)
    assert "aten.add" in recorder.refusal
    recorder = launch_plans._Recorder()
    with recorder:
        torch.promote_types(torch.float16, torch.bfloat16)
        torch.result_type(x, bias)
    assert recorder.refusal is None and recorder.events == []


needs_extension = pytest.mark.skipif(not launch_plans._csrc.built(), reason="the C++ extension is not built")


def _valid_program() -> list[int]:
    """One [2, 3] float32 input, one allocation, one mm of the input by a view of the allocation."""
    x = torch.zeros(2, 3)
    program = launch_plans._Program([x])
    y = torch.empty(3, 4)
    program.alloc(y)
    out = torch.mm(x, y)
    program.matmul(torch.ops.aten.mm.default, (x, y), out)
    code, constants = program.encode([out])
    assert constants == []
    return code


@needs_extension
def test_plan_create_accepts_a_well_formed_program():
    plan = torch.ops.infvideo.launch_plan_create(_valid_program(), [], 0)
    assert isinstance(plan, int)
    torch.ops.infvideo.launch_plan_release(plan)


@needs_extension
@pytest.mark.parametrize("edit, message", [
    (lambda p: p[:-1], "ends early"),
    (lambda p: p + [0], "trailing program entries"),
    (lambda p: [2] + p[1:], "version"),
    (lambda p: p[:3] + [1, 1] + p[4:], "names 1 constants, got 0"),
    # offsets: header 0-5, the input's spec 6-12, the allocation 13-20, the product 21-37
    (lambda p: p[:11] + [99] + p[12:], "dtype code 99"),              # the input's dtype
    (lambda p: p[:13] + [7] + p[14:], "unknown op 7"),                # the allocation's op code
    (lambda p: p[:31] + [2] + p[32:], "slot 2 is read before it is written"),  # the product's own output
    (lambda p: p[:14] + [0] + p[15:], "cannot write slot 0"),         # the allocation into the input's slot
], ids=["truncated", "trailing", "version", "constants", "dtype", "op", "unwritten slot", "input slot"])
def test_plan_create_rejects_malformed_programs(edit, message):
    program = _valid_program()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.infvideo.launch_plan_create(edit(program), [], 0)


@needs_extension
def test_plan_create_rejects_constants_on_another_device():
    x, weight = torch.zeros(2, 3), torch.zeros(3, 4)
    program = launch_plans._Program([x])
    out = torch.mm(x, weight)
    program.matmul(torch.ops.aten.mm.default, (x, weight), out)
    code, constants = program.encode([out])
    assert constants == [weight]
    with pytest.raises(RuntimeError, match="a constant is on cpu"):
        torch.ops.infvideo.launch_plan_create(code, constants, 0)


def test_a_failing_plan_warns_and_leaves_the_signature_to_python(monkeypatch):
    def broken(inputs):
        raise RuntimeError("cuLaunchKernel failed")

    memory = LongTermMemory(num_basis=4, past_samples=4, check_finite=False)
    memory.register_buffer("coef", torch.zeros(1, 4, 3))
    memory.register_buffer("sticky_stats", torch.zeros(1, 1, 4))
    coef = memory.coef
    monkeypatch.setattr(launch_plans, "eligible", lambda memory, frames: True)
    plans = launch_plans.StepPlans()
    plans.plans["key"] = broken
    with pytest.warns(RuntimeWarning, match="cuLaunchKernel failed"):
        assert plans.run(memory, "key", torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)) is None
    assert plans.plans == {} and plans.refused == {"key": "cuLaunchKernel failed"}
    assert memory.coef is coef
    assert not plans.wants(memory, "key", torch.zeros(1, 2, 3))
