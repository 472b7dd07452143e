#!/usr/bin/env bash
# GPU check of issue 15 (one schema per op, one backend registry, CUDA graphs by default with the
# asynchronous finiteness check): build the extension with its CUDA kernels, run the whole test
# suite on the GPU, then the step benchmark. Results land under $OUT (default ./gpu_check_out).
#
#   OUT=/some/dir bash bench/gpu_check_issue15.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
{
    nvidia-smi || true
    python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    git rev-parse --short HEAD 2>/dev/null || true
} > "$OUT/environment.txt" 2>&1

CXX=/usr/bin/g++ INFVIDEO_CUDA_ARCHS=9.0 INFVIDEO_FORCE_EXTENSION=1 \
    pip install --no-build-isolation -e . > "$OUT/build.log" 2>&1
echo "build exit $?" | tee -a "$OUT/build.log"
python -c "import infvideo, sys; i = infvideo.info(); print(i); sys.exit('cuda' not in i['built'])" \
    > "$OUT/info.txt" 2>&1
echo "extension with CUDA kernels: exit $?" | tee -a "$OUT/info.txt"

# The full suite; -rs lists every skip (none should be for a missing build on the GPU machine).
python -m pytest tests -q -rs -p no:cacheprovider > "$OUT/pytest.log" 2>&1
echo "pytest exit $?" | tee -a "$OUT/pytest.log"
tail -n 40 "$OUT/pytest.log"

python bench/bench_step_gpu.py --out "$OUT" > "$OUT/bench_step_gpu.txt" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench_step_gpu.txt"
tail -n 45 "$OUT/bench_step_gpu.txt"
