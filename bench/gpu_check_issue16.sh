#!/usr/bin/env bash
# Issue 16's GPU checks, in one run on one GPU (an H200 with torch 2.11 / triton 3.6 here), from the
# repository root with the package installed (pip install --no-build-isolation -e ".[test,triton,hf,plot]").
# Writes everything under $OUT (default ./out_issue16); each part is logged and a failing part does
# not stop the others; the exit status is the number of parts that failed. About 6-8 minutes; the
# parts run in order of importance and write as they go, so a run cut at 10 minutes keeps the first.
#
#   1. float64: tests/test_float64.py on CUDA (two memories given the same float64 inputs agree to
#      ≤ 1e-12; float32 projections in a float64 step give what their float64 copies give), and the
#      test that found the bug, where it still exists.
#   2. The README's speed table and plot: bench/bench_step_gpu.py (triton.testing.do_bench /
#      do_bench_cudagraph), S = 1, 4, 16, 64 -> step.csv, step.md, step.png.
#   3. The benchmark grid as an installed user runs it: python -m infvideo bench (do_bench), the
#      step and attention at L = N = 256 -> grid/h200_grid.{csv,md,png}.
#   4. csrc CUDA against Triton (do_bench and do_bench_cudagraph), where the extension has CUDA.
#   5. The demo on the GPU with its picture (demo.png) and the CLI / benchmark tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out_issue16}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export INFVIDEO_COMMIT="${INFVIDEO_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
failed=0

part() {  # part NAME COMMAND...: run, log to $OUT/NAME.log, report
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then
        echo "   ok ($((SECONDS - start)) s)"
    else
        echo "   FAILED ($((SECONDS - start)) s): tail of $OUT/$name.log"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
        failed=$((failed + 1))
    fi
}

part info python -m infvideo info
python -c "import matplotlib" 2> /dev/null || echo "   (matplotlib is missing: the PNGs are skipped, CSV and markdown are still written)"

float64_tests=(tests/test_float64.py)
[ -f tests/test_launch_plans.py ] && float64_tests+=("tests/test_launch_plans.py::test_steps_a_plan_cannot_replay_keep_the_python_path")
part float64 python -m pytest -q -rs "${float64_tests[@]}"

part step timeout 240 python bench/bench_step_gpu.py --out "$OUT/step"

part grid timeout 240 python -m infvideo bench --out "$OUT/grid" --prefix h200_ --streams 1 16 64 --frames 256 \
    --basis-counts 256 --dtypes bf16 fp32 --ops attention step --compile none --baseline-max-streams 1 --deadline 150

if python -c "import infvideo, sys; sys.exit('cuda' not in infvideo.info()['built'])"; then
    part cuda_vs_triton timeout 150 python bench/bench_cuda_vs_triton.py --out "$OUT/cuda_vs_triton.csv" --streams 1 64
else
    echo "== cuda_vs_triton: skipped (the extension was built without CUDA)"
fi

part demo python -m infvideo demo --png "$OUT/demo.png" --quiet
part tests timeout 150 python -m pytest -q tests/test_cli.py tests/test_benchmarks.py

echo "== $failed part(s) failed; results in $OUT"
exit "$failed"
