#!/usr/bin/env bash
# The GPU check: build, GPU tests, GPU benchmark grid against torch.nn.LSTM (cuDNN),
# records to OUTDIR, a short table last.  Sized for one H100 / H200 in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        (default: bench-out/gpu)
#
# Environment: MAX_JOBS (default 16), TORCH_CUDA_ARCH_LIST (default 9.0), PYTHON
# (default python3), FUSEDRNN_GPU_CHECK_TESTS=0 / FUSEDRNN_GPU_CHECK_BENCH=0 to skip a part.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FUSEDRNN_CUDA=1
export PYTHONUNBUFFERED=1
status=0
t0=$(date +%s)

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.csv"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); import triton; print('triton', triton.__version__)" | tee "$OUT/versions.txt"

echo "== build (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - t0 )) s"

echo "== designs"
$PY - <<'PYEOF' | tee "$OUT/designs.txt"
import torch, fusedrnn
from fusedrnn.bench.suite import PRESETS, DTYPES
from fusedrnn.backends.native import cuda_design
from fusedrnn.ops import Config
print("available:", fusedrnn.available_backends("cuda"))
if not torch.cuda.is_available():
    print("no CUDA device: designs not known")
    raise SystemExit(0)
for p in PRESETS["anchors"]["points"]:
    cfg = Config("cuda", DTYPES[p.dtype], p.T, p.B, p.H, p.H, False, None, False, False, None, True)
    print(f"B={p.B} T={p.T} H={p.H} {p.dtype}: cuda {cuda_design(cfg, torch.device('cuda'), True)}")
PYEOF

if [ "${FUSEDRNN_GPU_CHECK_TESTS:-1}" != 0 ]; then
  echo "== GPU tests"
  timeout 240 $PY -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" \
      -o addopts="" -rf > "$OUT/gpu-tests.log" 2>&1
  rc=$?; [ $rc -ne 0 ] && status=1
  grep -E "^(FAILED|ERROR)" "$OUT/gpu-tests.log" | head -40
  tail -3 "$OUT/gpu-tests.log"
  echo "tests done at $(( $(date +%s) - t0 )) s (exit $rc)"
fi

if [ "${FUSEDRNN_GPU_CHECK_BENCH:-1}" != 0 ]; then
  echo "== benchmark grid (anchors)"
  timeout 270 $PY -m fusedrnn bench --preset anchors --out "$OUT" --no-progress --budget-s 4 \
      > "$OUT/bench.log" 2>&1
  rc=$?; [ $rc -ne 0 ] && status=1 && tail -20 "$OUT/bench.log"
  echo "bench done at $(( $(date +%s) - t0 )) s (exit $rc)"
  $PY -m fusedrnn.bench.summary "$OUT"/*.jsonl --short
fi
exit $status
