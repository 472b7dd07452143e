"""Every Triton kernel the package launches compiles for a Hopper GPU (sm_90), here on the CPU.

The interpreter that runs the other tests on the CPU executes the kernels' Python semantics and
never calls Triton's compiler, so a kernel it accepts can still fail to build for a GPU.
``bench/compile_for_gpu.py`` records the launches of memory steps in every configuration (and the
launchers no CPU step reaches, and steps at the benchmarks' widths), with the GPU's own choices of
dot precision and the launches' alignment specialisations, and compiles each to a cubin with
Triton's bundled ptxas. It runs in a subprocess: the compiler needs the kernels as
``triton.jit`` functions, which TRITON_INTERPRET=1 (set for this suite) replaces.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _nvidia_backend() -> bool:
    return importlib.util.find_spec("triton") is not None and \
        importlib.util.find_spec("triton.backends.nvidia") is not None


# Its own limit, above the subprocess's: bench/gpu_check.sh gives each test 250 s (pytest-timeout),
# which this one exceeded when its compilations shared the machine with seven busy workers.
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not _nvidia_backend(), reason="Triton without its NVIDIA backend")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "compile_for_gpu.py"), "--arch", "90"],
                          capture_output=True, text=True, env=env, timeout=1200)
    failed = [line for line in done.stdout.splitlines() if "FAILED" in line]
    assert done.returncode == 0, "\n".join(failed) or (done.stdout[-3000:] + done.stderr[-3000:])
    assert " 0 failed" in done.stdout.splitlines()[-1]
