"""Shared helpers for the infvideo tests: golden vectors, projections, relative error."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

# Without a GPU the Triton kernels run in Triton's interpreter; the variable must be set before
# anything imports infvideo.kernels, so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """INFVIDEO_GOLDEN, else the copy in tests/golden, else <repo>/../shared/golden (SPEC section 11)."""
    env = os.environ.get("INFVIDEO_GOLDEN")
    if env:
        return Path(env)
    vendored = REPO / "tests" / "golden"
    return vendored if any(vendored.glob("*.pt")) else REPO.parent / "shared" / "golden"


def golden_files() -> list[Path]:
    folder = golden_dir()
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


@pytest.fixture(params=golden_files() or [None], ids=lambda p: p.stem if p is not None else "absent")
def golden(request):
    """One golden case (dict as stored); skips when the golden folder is absent."""
    if request.param is None:
        pytest.skip(f"golden folder {golden_dir()} is absent or holds no *.pt (set INFVIDEO_GOLDEN)")
    return torch.load(request.param, weights_only=False)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """nn.Linear with the given weight [out, in] (and bias [out]), in the weight's dtype."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def random_linear(in_features: int, out_features: int, seed: int, dtype=torch.float32, scale: float = 1.0,
                  bias: bool = True) -> nn.Linear:
    """A Linear layer with seeded random weights of std ``scale / sqrt(in)``."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen, dtype=torch.float64) * scale / in_features ** 0.5
    b = torch.randn(out_features, generator=gen, dtype=torch.float64) * 0.1 if bias else None
    return make_linear(w.to(dtype), None if b is None else b.to(dtype))


def assert_compiled_steps_match(fused, reference, frames_shape: tuple, query: torch.Tensor, pk, pv, heads: int,
                                gen: torch.Generator, device, chunks: int = 3) -> None:
    """One eager step of both memories (it puts the fused step's constants on the device), then
    ``chunks`` steps of ``torch.compile(fused, fullgraph=True)`` (inductor on CUDA, dynamo alone on
    the CPU) against the reference's: context and coefficients within 1e-4."""
    with torch.no_grad():
        frames = torch.randn(*frames_shape, generator=gen).to(device)
        fused(frames, query, pk, pv, heads)
        reference(frames, query, pk, pv, heads)
        step = torch.compile(fused, fullgraph=True, backend="inductor" if device == "cuda" else "eager")
        for _ in range(chunks):
            frames = torch.randn(*frames_shape, generator=gen).to(device)
            out = step(frames, query, pk, pv, heads)
            expected = reference(frames, query, pk, pv, heads)
            assert rel_err(out, expected) < 1e-4
            assert rel_err(fused.coef, reference.coef) < 1e-4


def assert_steps_match(fused, reference, frames_shape: tuple, query_shape: tuple, pk, pv, heads: int,
                       gen: torch.Generator, device, chunks: int = 3) -> None:
    """``chunks`` no-grad steps of both memories on the same random chunks: context, coefficients
    and sticky statistic within 1e-4. The statistic is compared summed over its groups, what the
    samplers read: how a backend groups queries (per head, per block of 16) is its own choice."""
    with torch.no_grad():
        for _ in range(chunks):
            frames = torch.randn(*frames_shape, generator=gen).to(device)
            query = torch.randn(*query_shape, generator=gen).to(device)
            assert rel_err(fused(frames, query, pk, pv, heads), reference(frames, query, pk, pv, heads)) < 1e-4
            assert rel_err(fused.coef, reference.coef) < 1e-4
            torch.testing.assert_close(fused.sticky_stats.sum(1), reference.sticky_stats.sum(1), rtol=1e-4, atol=1e-6)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (on the CPU, so the two may live on different devices)."""
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def gaussian_basis_values(t: torch.Tensor, n: int, sigmas: tuple) -> torch.Tensor:
    """ψ_n(t) = 𝒩(t; μ_n, σ_n²) written from SPEC section 4 alone (N/k centres linspace(0, 1),
    centre-major over σ), independent of the package: [T, N] in float64."""
    k = len(sigmas)
    centres = [j / (n // k - 1) for j in range(n // k)]
    mu = torch.tensor([c for c in centres for _ in sigmas], dtype=torch.float64)
    sigma = torch.tensor([s for _ in centres for s in sigmas], dtype=torch.float64)
    z = (t[:, None] - mu) / sigma
    return torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))


def paper_membership(t32: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's float32 bin rule lo_n ≤ t < hi_n (SPEC section 4), written independently of the
    package: [T, N] float64 0/1."""
    edges = torch.linspace(0, 1, n + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    width = torch.ones(n) / n
    lo, hi = mid - width / 2, mid + width / 2
    return ((t32[:, None] >= lo) & (t32[:, None] < hi)).to(torch.float64)


def snapshot(memory) -> dict:
    """Copies of a memory's buffers, to prove a rejected call changed nothing."""
    return {name: buf.clone() for name, buf in memory.named_buffers()}


def assert_unchanged(memory, before: dict) -> None:
    """Every buffer is bit-identical to the snapshot (same names, shapes, dtypes, values)."""
    after = dict(memory.named_buffers())
    assert set(after) == set(before)
    for name, value in before.items():
        assert after[name].shape == value.shape and after[name].dtype == value.dtype, name
        assert torch.equal(after[name], value), f"{name} changed by a rejected call"


# Which kernels exist here, for tests parametrised over backends (the registry of infvideo.backends).
def _kernel_pairs() -> list[tuple[str, str]]:
    from infvideo import backends
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    pairs = [("cpu", "cpu")] if "cpu" in backends.built() else []
    pairs += [("cpu", "triton")] if backends.triton_runs_on(cpu) else []
    if torch.cuda.is_available():
        pairs += [("cuda", "triton")] if backends.triton_runs_on(cuda) else []
        pairs += [("cuda", "cuda")] if "cuda" in backends.built() else []
    return pairs


# (device, backend) of every op kernel present: the C++ CPU one, Triton (the interpreter on the
# CPU), and on a GPU Triton and the C++ CUDA one.
OP_KERNELS = _kernel_pairs()
CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def kernel_id(value) -> str:
    """pytest id of a (device, backend) pair, or of one of its values (pytest asks per value)."""
    return value if isinstance(value, str) else "-".join(value)


def config_id(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


def kernel_cases(small: list, large: list = (), gpu: list = ()) -> list:
    """(device, backend, case) triples for pytest.mark.parametrize: the ``small`` shapes on every
    kernel, the ``large`` ones too except under the (slow) Triton interpreter, the ``gpu`` ones on
    CUDA tensors."""
    def cases(device, backend):
        return [*small, *(large if (device, backend) != ("cpu", "triton") else ()), *(gpu if device == "cuda" else ())]
    return [pytest.param(device, backend, case, id=f"{device}-{backend}-{case}")
            for device, backend in OP_KERNELS for case in cases(device, backend)]


def tokens_shape(streams, length, tokens, width):
    return (streams, length, *tokens, width) if tokens else (streams, length, width)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[S, rows, H·d] -> [S, H, rows, d] in float32."""
    s, rows, model = x.shape
    return x.reshape(s, rows, heads, model // heads).transpose(1, 2).float()


# Gradient tolerances (relative, ‖a − b‖ / ‖b‖) of a kernel's backward against float64 reference
# gradients: float32 kernels accumulate in float32 (1e-4, the bound); float16 / bfloat16
# inputs round the tensors the backward reads and the gradients it writes (a few units of their
# epsilon, 2^-11 / 2^-8, summed over the row).
GRAD_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def grads_of(fn, inputs: list, cotangents: list) -> list:
    """∂/∂inputs of Σ_k ⟨fn(*inputs)[k], cotangents[k]⟩ (None cotangents skip an output): one
    backward through whatever fn records, for comparing two implementations at the same point."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    loss = sum((out.to(torch.float64) * w.to(out.device, torch.float64)).sum()
               for out, w in zip(outputs, cotangents) if w is not None)
    return list(torch.autograd.grad(loss, leaves, allow_unused=True))


def parameter_grads(layer: nn.Module) -> torch.Tensor:
    """A layer's parameter gradients as one float64 vector (weight and bias together: the key
    bias alone has a gradient near 0, since softmax ignores a score added to every slot)."""
    return torch.cat([p.grad.detach().reshape(-1).to("cpu", torch.float64) for p in layer.parameters()])
