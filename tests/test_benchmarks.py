"""pytest-benchmark timings of the benchmarked ops at small sizes on the CPU, with their outputs checked.

Same ops and providers as the benchmark grid (infvideo/benchmarks/cases.py) at S=2, L=16, N=16: each
provider's output is compared with the torch reference once, outside the timed part, so a
benchmark of a wrong op fails. The published-cost baseline is checked against the paper preset,
whose outputs it reproduces. torch.compile'd providers are left to the grid (compiling takes
tens of seconds). Run alone with ``python -m pytest tests/test_benchmarks.py --benchmark-only``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("pytest_benchmark")

from infvideo import LongTermMemory  # noqa: E402
from infvideo.benchmarks.cases import OPS, PROVIDERS, Case, Inputs, extra_backends, relative_error  # noqa: E402
from infvideo.benchmarks.published import published_step  # noqa: E402

CPU = torch.device("cpu")
PROVIDER_NAMES = ["torch", "baseline", *extra_backends(CPU)]


def _case(basis: str) -> Case:
    return Case(streams=2, frames=16, basis_count=16, basis=basis, dtype="fp32", device=CPU)


@pytest.mark.parametrize("provider_name", PROVIDER_NAMES)
@pytest.mark.parametrize("basis", ["rectangular", "gaussian"])
@pytest.mark.parametrize("op", OPS)
def test_op_benchmark(benchmark, op, basis, provider_name):
    case = _case(basis)
    inputs = Inputs(case)
    with torch.no_grad():
        providers = {p.name: p for p in PROVIDERS[op](case, inputs, compile_ref=False)}
        if provider_name not in providers:
            pytest.skip(f"{provider_name} has no {op} for the {basis} basis")
        provider = providers[provider_name]
        reference = providers["torch"].fn()
        if not provider.reference and provider.comparable:  # checked once, outside the timing
            error = relative_error(provider.fn(), reference)
            assert error is not None, f"{provider_name} {op}: output shape differs from the reference"
            assert error <= 1e-4, f"{provider_name} {op} ({basis}): relative error {error:.2e} against the reference"
        # The baseline is slow by design (hundreds of ms even here): one timed round keeps CI short.
        benchmark.pedantic(provider.fn, rounds=1 if provider_name == "baseline" else 3, iterations=1)


def test_published_baseline_reproduces_paper_preset():
    """The baseline's step equals the paper preset with sticky sampling off, chunk after chunk."""
    torch.manual_seed(0)
    streams, length, basis_count, width, heads = 2, 16, 32, 48, 4
    proj_key, proj_value = nn.Linear(width, width), nn.Linear(width, width)
    memory = LongTermMemory(num_basis=basis_count, past_samples=64, sticky=False, preset="paper", backend="torch")
    past = None
    with torch.no_grad():
        for _ in range(3):
            frames, query = torch.randn(streams, length, width), torch.randn(streams, 8, width)
            expected = memory(frames, query, proj_key, proj_value, heads)
            context, past = published_step(frames, past, query, proj_key, proj_value, heads, num_basis=basis_count,
                                           samples=64)
            torch.testing.assert_close(context, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(past, memory.coef, rtol=1e-5, atol=1e-6)


def test_cli_bench_runs_the_grid(tmp_path, capsys):
    """``python -m infvideo bench`` passes every argument to the grid (infvideo/benchmarks/grid.py),
    which prints a markdown table and writes its CSV and plot."""
    from infvideo.cli import main
    main(["bench", "--quick", "--bases", "rectangular", "--ops", "sticky_sampling", "attention", "--compile", "none",
          "--budget", "0.01", "--out", str(tmp_path), "--prefix", "t_"])
    out = capsys.readouterr().out
    assert "| op | S | L | N | basis | dtype |" in out
    assert (tmp_path / "t_grid.csv").read_text().count("\n") >= 3
    plots = importlib.util.find_spec("matplotlib") is not None  # the optional plot extra
    assert not plots or (tmp_path / "t_grid.png").read_bytes().startswith(b"\x89PNG")
    # The tables and plot again from the CSV alone (how committed results are redrawn).
    main(["bench", "--from-csv", str(tmp_path / "t_grid.csv"), "--out", str(tmp_path), "--prefix", "r_"])
    redrawn, measured = ((tmp_path / f"{p}_grid.md").read_text().splitlines() for p in ("r", "t"))
    # The CSV keeps 4 significant digits: the same rows, each starting with the same case.
    assert [line.split("|")[1:7] for line in redrawn[1:]] == [line.split("|")[1:7] for line in measured[1:]]
    assert not plots or (tmp_path / "r_grid.png").is_file()


def test_backward_bench_parses_and_redraws(tmp_path):
    """bench/bench_backward_gpu.py (a GPU benchmark) imports here, parses its arguments, refuses
    to measure without a GPU, and redraws its table from a CSV in its own format."""
    spec = importlib.util.spec_from_file_location("bench_backward_gpu",
                                                  Path(__file__).resolve().parents[1] / "bench" / "bench_backward_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--streams", "1", "16", "64", "--no-compile", "--out", str(tmp_path)])
    assert args.streams == [1, 16, 64] and args.no_compile
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a GPU"):
            bench.main(["--out", str(tmp_path)])
    csv_path = tmp_path / "backward.csv"
    csv_path.write_text("S,provider,p20_us,p50_us,p80_us,peak_mib,device,torch,triton,commit\n"
                        "1,torch reference,10,11,12,5.5,test,2,3,abc\n16,torch reference,20,21,22,,test,2,3,abc\n")
    bench.main(["--from-csv", str(csv_path), "--out", str(tmp_path)])  # written before the graph column
    assert "| torch reference |" in (tmp_path / "backward.md").read_text()
    csv_path.write_text("S,provider,p20_us,p50_us,p80_us,graph_us,peak_mib,device,torch,triton,commit\n"
                        "1,torch reference,10,11,12,4.5,5.5,test,2,3,abc\n16,torch reference,20,21,22,,,test,2,3,abc\n")
    bench.main(["--from-csv", str(csv_path), "--out", str(tmp_path)])
    assert "| torch reference | 11 | 21 | 4.5 |" in (tmp_path / "backward.md").read_text()
