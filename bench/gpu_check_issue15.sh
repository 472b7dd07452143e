#!/usr/bin/env bash
# GPU check of issue 15 (one schema per op, one backend registry, the memory's CUDA graphs by
# default with the asynchronous finiteness check): build the extension with its CUDA kernels, run
# the whole test suite on the GPU, then the step benchmark. Results land under $OUT (default
# ./gpu_check_out): environment.txt, build.log, info.txt, pytest.log, bench_step_gpu.{csv,txt}.
#
#   OUT=/some/dir bash bench/gpu_check_issue15.sh            # all three stages (about 10 minutes)
#   OUT=/some/dir bash bench/gpu_check_issue15.sh build      # or one stage at a time: build, test, bench
#
# The test and bench stages build first when the installed extension lacks its CUDA kernels.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
STAGE="${1:-all}"
mkdir -p "$OUT"

build() {
    {
        nvidia-smi || true
        python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
        git rev-parse --short HEAD 2>/dev/null || true
    } > "$OUT/environment.txt" 2>&1
    CXX=/usr/bin/g++ INFVIDEO_CUDA_ARCHS=9.0 INFVIDEO_FORCE_EXTENSION=1 \
        python -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
    echo "build exit $?" | tee -a "$OUT/build.log"
    tail -n 5 "$OUT/build.log"
}

has_cuda_kernels() {
    python -c "import infvideo, sys; i = infvideo.info(); print(i); sys.exit('cuda' not in i['built'])" \
        > "$OUT/info.txt" 2>&1
}

ensure_built() {
    has_cuda_kernels || build
    has_cuda_kernels
    echo "extension with CUDA kernels: exit $? ($(tail -n 1 "$OUT/info.txt"))"
}

run_tests() {
    # -rs lists every skip: on the GPU machine none should be for a missing build or device.
    python -m pytest tests -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} > "$OUT/pytest.log" 2>&1
    echo "pytest exit $?" | tee -a "$OUT/pytest.log"
    grep -E "^SKIPPED|passed|failed|error" "$OUT/pytest.log" | tail -n 30
}

run_bench() {
    python bench/bench_step_gpu.py --out "$OUT" > "$OUT/bench_step_gpu.txt" 2>&1
    echo "bench exit $?" | tee -a "$OUT/bench_step_gpu.txt"
    tail -n 40 "$OUT/bench_step_gpu.txt"
}

case "$STAGE" in
    build) build; ensure_built ;;
    test) ensure_built; run_tests ;;
    bench) ensure_built; run_bench ;;
    all) build; ensure_built; run_tests; run_bench ;;
    *) echo "usage: bash bench/gpu_check_issue15.sh [all|build|test|bench]" >&2; exit 2 ;;
esac
