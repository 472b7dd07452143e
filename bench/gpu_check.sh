#!/usr/bin/env bash
# A session's GPU check in one call: build the extension with its CUDA kernels, run the test suite
# on the GPU, then the benchmarks named. Results land under $OUT (default ./gpu_check_out):
# environment.txt, build.log, info.txt, pytest.log, and per benchmark its own files and <name>.txt.
#
#   OUT=/some/dir bash bench/gpu_check.sh build test step          # stages in order
#   OUT=/some/dir bash bench/gpu_check.sh test backward quadrature projections
#
# Stages: build, test, step (bench_step_gpu), backward (bench_backward_gpu), projections
# (bench_projections_gpu), split (bench_split_products_gpu), quadrature (bench_quadrature_gpu),
# profile (profile_step_gpu), sync (profile_step_gpu --sync-check: where an eager step waits for
# the GPU), tune-folded (tune_factored_attention), tune-consolidate (tune_consolidate at S=64),
# few-streams (bench_many_streams at S = 1, 1, 1, 4, 16, 64 against the few-stream switches before,
# then the S = 1 replay's timeline).
# The test and bench stages build first when the extension lacks its CUDA kernels. Without a checkout
# installed (the device machine), the kernels are linked into the package and PYTHONPATH is set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
[ -e infvideo/kernels ] || ln -sfn ../kernels infvideo/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export INFVIDEO_COMMIT="${INFVIDEO_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
START=$(date +%s)

elapsed() { echo "$(( $(date +%s) - START ))s"; }

build() {
    {
        nvidia-smi || true
        python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
        echo "commit $INFVIDEO_COMMIT"
    } > "$OUT/environment.txt" 2>&1
    CXX=/usr/bin/g++ INFVIDEO_CUDA_ARCHS=9.0 INFVIDEO_FORCE_EXTENSION=1 \
        python setup.py build_ext --inplace > "$OUT/build.log" 2>&1
    echo "build exit $? ($(elapsed))" | tee -a "$OUT/build.log"
}

ensure_built() {
    python -c "import infvideo, sys; i = infvideo.info(); print(i); sys.exit('cuda' not in i['built'])" \
        > "$OUT/info.txt" 2>&1 || build
}

run_tests() {
    # -rs lists every skip: on the GPU machine none should be for a missing build or device.
    python -m pytest tests -q -rs -n 8 --timeout 250 -p no:cacheprovider ${PYTEST_ARGS:-} > "$OUT/pytest.log" 2>&1
    echo "pytest exit $? ($(elapsed))"
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pytest.log" | tail -n 20
}

run_bench() {  # name, script, arguments
    local name=$1 script=$2
    shift 2
    python "bench/$script" --out "$OUT" "$@" > "$OUT/$name.txt" 2>&1
    echo "$name exit $? ($(elapsed))"
    grep -E "^\|" "$OUT/$name.txt" | tail -n 20
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test)
for stage in "${stages[@]}"; do
    case "$stage" in
        build) build ;;
        test) ensure_built; run_tests ;;
        step) ensure_built; run_bench step bench_step_gpu.py ;;
        backward) ensure_built; run_bench backward bench_backward_gpu.py ;;
        projections) run_bench projections bench_projections_gpu.py ;;
        split) run_bench split bench_split_products_gpu.py ;;
        quadrature) run_bench quadrature bench_quadrature_gpu.py ;;
        profile) python bench/profile_step_gpu.py > "$OUT/profile.txt" 2>&1; echo "profile exit $? ($(elapsed))" ;;
        sync) python bench/profile_step_gpu.py --case s64 --case s1 --sync-check > "$OUT/sync.txt" 2>&1
              echo "sync exit $? ($(elapsed))"; grep "^==" "$OUT/sync.txt" ;;
        tune-folded) python bench/tune_factored_attention.py > "$OUT/tune_folded.txt" 2>&1
                     echo "tune-folded exit $? ($(elapsed))"; grep -E "K/V|best" "$OUT/tune_folded.txt" ;;
        tune-consolidate) python bench/tune_consolidate.py --streams 64 > "$OUT/tune_consolidate.txt" 2>&1
                          echo "tune-consolidate exit $? ($(elapsed))"; sort -t: -k2 -n "$OUT/tune_consolidate.txt" | head -5 ;;
        few-streams) (cd bench && python bench_many_streams_gpu.py --streams 1 1 1 4 16 64 --compare frames warps \
                          > "$OUT/few_streams.md" 2>&1)
                     echo "few-streams exit $? ($(elapsed))"; grep -E "^\|" "$OUT/few_streams.md"
                     python bench/profile_step_gpu.py --case s1 --graph-timeline > "$OUT/profile_s1.txt" 2>&1
                     grep -A7 "CUDA-graph replay" "$OUT/profile_s1.txt" ;;
        *) echo "usage: bash bench/gpu_check.sh STAGE... (build test step backward projections split quadrature" \
                "profile sync tune-folded tune-consolidate few-streams)" >&2
           exit 2 ;;
    esac
done
