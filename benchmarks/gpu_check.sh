#!/usr/bin/env bash
# The GPU check, sized for one fresh H100 / H200 (16 cores) in at most 7 minutes:
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--only STAGES] [OUTDIR]   (default OUTDIR: bench-out/gpu)
#
# Stages, in order of what a cut-short run must keep:
#   1. device and versions                 -> OUTDIR/versions.txt
#   2. build (pip install -e ., sm_90)      -> OUTDIR/build.log
#   3. correctness: every design (CUDA persistent / per-step, Triton persistent / per-step)
#      against cuDNN and the float64 reference at the anchor and edge shapes, bf16 / fp16,
#      plain and v+bn; a verdict table  -> OUTDIR/correctness.{md,json}
#   4. the benchmark grid vs cuDNN (preset anchors; records appended after every group,
#      so a timeout keeps what was measured) -> OUTDIR/<gpu>.jsonl, bench.log
#   5. the GPU tests (-m gpu and not inductor), a per-test timeout -> OUTDIR/gpu-tests.log / .xml
#   6. compute-sanitizer memcheck, racecheck, synccheck over small shapes of every CUDA
#      kernel                             -> OUTDIR/sanitize-*.log
#   7. the slow inductor tests             -> OUTDIR/gpu-tests-inductor.log / .xml
#   8. the short table and each stage's status -> OUTDIR/stages.txt
# A total-time guard (FUSEDRNN_GPU_CHECK_BUDGET_S, default 420 s) gives each stage at most
# what is left and skips a stage with under 20 s left: on a fresh machine the build, the
# correctness step and the grid take most of it, so a second call on the still-warm machine
# runs what stages.txt lists as skipped, e.g. --only gpu-tests,sanitize,inductor (the build
# stage always runs; warm, it is a no-op rebuild).  Stage names: build, correctness, bench,
# gpu-tests, sanitize, inductor.  Triton autotuning is off
# (FUSEDRNN_TRITON_AUTOTUNE=0: the heuristic's plans); the Python-loop baseline runs at
# one point of the grid only.
#
# --dry-run: the whole flow on a CPU-only machine in under 3 minutes (CI runs it): the
# installed build is used (make install built it), correctness runs the native backend
# against torch's CPU LSTM at short T and lists the GPU designs as skipped, the benchmark
# runs the quick preset on the CPU, the sanitizer stage lists its cases, the GPU tests are
# collected and skipped.  Exits 0 when every stage that ran passed.
#
# Environment: PYTHON (default python3), MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (9.0).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --only)
      if [ $# -lt 2 ]; then echo "gpu_check: --only needs a comma-separated list of stages" >&2; exit 2; fi
      ONLY=",$2,"; shift 2 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
for s_ in $(echo "${ONLY//,/ }"); do
  case "$s_" in build|correctness|bench|gpu-tests|sanitize|inductor) ;;
    *) echo "gpu_check: --only: unknown stage $s_" >&2; exit 2 ;;
  esac
done
OUT=${1:-bench-out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${FUSEDRNN_GPU_CHECK_BUDGET_S:-420}
export PYTHONUNBUFFERED=1 FUSEDRNN_TRITON_AUTOTUNE=0
t0=$(date +%s)
status=0
SKIPPED=""  # stage groups the time guard skipped: a second call runs them (--only)
if [ -z "$ONLY" ]; then : > "$OUT/stages.txt"; else echo "== --only ${ONLY:1:-1}" >> "$OUT/stages.txt"; fi

elapsed() { echo $(( $(date +%s) - t0 )); }
record() { echo "$1: $2 (at $(elapsed) s)" | tee -a "$OUT/stages.txt"; }

# stage NAME CAP_S LOG CMD...: run CMD under timeout min(CAP_S, time left - 10 s) with its
# output in LOG; record its status; a failure makes the check fail.
# group_of NAME: the stage group --only names (sanitize-* are "sanitize", gpu-tests-inductor
# is "inductor").  selected NAME: whether --only (if given) lists it; the build always runs.
group_of() { case "$1" in sanitize-*) echo sanitize ;; gpu-tests-inductor) echo inductor ;; *) echo "$1" ;; esac; }
selected() {
  local group; group=$(group_of "$1")
  [ -z "$ONLY" ] || [ "$group" = build ] || [[ "$ONLY" == *",$group,"* ]]
}

stage() {
  local name=$1 cap=$2 log=$3; shift 3
  if ! selected "$name"; then record "$name" "not selected (--only)"; return 0; fi
  local left=$(( BUDGET - $(elapsed) - 10 ))
  if [ "$left" -lt 20 ]; then
    record "$name" "skipped (time guard: $(( left + 10 )) s left)"
    local group; group=$(group_of "$name")
    [[ ",$SKIPPED," == *",$group,"* ]] || SKIPPED="${SKIPPED:+$SKIPPED,}$group"
    return 0
  fi
  local limit=$(( cap < left ? cap : left ))
  echo "== $name (limit $limit s)"
  timeout -k 10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then record "$name" "ok"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" "TIMEOUT after $limit s"; status=1
  else record "$name" "FAILED (exit $rc)"; status=1
  fi
  return $rc
}

echo "== device"
if [ $DRY = 1 ]; then
  echo "dry run on $(hostname): no GPU is used" | tee "$OUT/versions.txt"
else
  export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FUSEDRNN_CUDA=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 \
    | tee "$OUT/versions.txt"
fi
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); import triton; print('triton', triton.__version__)" \
  2>&1 | tee -a "$OUT/versions.txt"

if [ $DRY = 1 ]; then
  stage build 60 "$OUT/build.log" $PY -c "import fusedrnn._C as C; print('installed build, CUDA targets:', getattr(C, 'CUDA_TARGETS', ''))"
else
  stage build 240 "$OUT/build.log" $PY -m pip install --no-build-isolation --no-deps -e .
fi
if [ $? -ne 0 ]; then tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; fi
$PY - <<'PYEOF' 2>&1 | tee "$OUT/designs.txt"
import torch, fusedrnn
print("backends on cuda:", fusedrnn.available_backends("cuda"), "| on cpu:", fusedrnn.available_backends("cpu"))
if torch.cuda.is_available():
    from fusedrnn.backends.cuda import cuda_design
    from fusedrnn.bench.suite import PRESETS, DTYPES
    from fusedrnn.core.contract import Config
    for p in PRESETS["anchors"]["points"]:
        x = torch.empty(p.T, p.B, p.I, dtype=DTYPES[p.dtype], device="cuda")
        m = fusedrnn.LSTM(p.I, p.H, backend="cuda", device="cuda", dtype=DTYPES[p.dtype])
        for _, cfg in m.layer_configs(x):
            print(f"B={p.B} T={p.T} H={p.H} {p.dtype}: cuda {cuda_design(cfg, x.device)}")
PYEOF

DRYFLAG=(); [ $DRY = 1 ] && DRYFLAG=(--dry-run)
stage correctness 90 "$OUT/correctness.log" $PY -m fusedrnn.bench.correctness "${DRYFLAG[@]}" --budget-s 50 --out "$OUT"
selected correctness && grep -E "^(correctness:|\| .*FAIL|\| .*refused)" "$OUT/correctness.log" 2>/dev/null | head -20

if [ $DRY = 1 ]; then
  BENCH=(--preset quick --device cpu --reps 2 --budget-s 0.5)
else
  BENCH=(--preset anchors --budget-s 3)
fi
stage bench 170 "$OUT/bench.log" $PY -m fusedrnn bench "${BENCH[@]}" --out "$OUT" --no-progress --no-plots
selected bench && tail -3 "$OUT/bench.log" 2>/dev/null

export FUSEDRNN_TEST_TIMEOUT_S=${FUSEDRNN_TEST_TIMEOUT_S:-60}
GPU_TESTS=(tests/test_cuda.py tests/test_triton_gpu.py tests/test_determinism_memory.py tests/test_autocast.py
           tests/test_models.py tests/test_train.py tests/test_user_paths.py
           tests/test_compile.py)
PYTEST=($PY -m pytest -q -p no:cacheprovider -o addopts="" -rf)
stage gpu-tests 300 "$OUT/gpu-tests.log" "${PYTEST[@]}" -m "gpu and not inductor" --junitxml="$OUT/gpu-tests.xml" "${GPU_TESTS[@]}"
selected gpu-tests && { grep -E "^(FAILED|ERROR)" "$OUT/gpu-tests.log" | head -30; tail -1 "$OUT/gpu-tests.log"; } 2>/dev/null
# a backend whose GPU test file passed whole is validated for this GPU class at its installed
# kernels' fingerprint (fusedrnn/ops/gpu_evidence.json: commit it with the records)
if [ $DRY = 0 ] && selected gpu-tests && [ -s "$OUT/gpu-tests.xml" ]; then
  $PY -m fusedrnn evidence record-junit "$OUT/gpu-tests.xml" --note "$(date -u +%F): benchmarks/gpu_check.sh, $OUT" \
    2>&1 | tee -a "$OUT/stages.txt"
fi

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ $DRY = 1 ] || [ ! -x "$SAN" ]; then
  stage sanitize-cases 30 "$OUT/sanitize.log" $PY -m fusedrnn.bench.correctness --sanitize --dry-run
  record sanitize "not run ($([ $DRY = 1 ] && echo 'dry run' || echo 'no compute-sanitizer'))"
else
  for tool in memcheck racecheck synccheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 stage "sanitize-$tool" 60 "$OUT/sanitize-$tool.log" \
      "$SAN" --tool "$tool" --error-exitcode 9 $PY -m fusedrnn.bench.correctness --sanitize
    selected sanitize && grep -E "ERROR SUMMARY|RACECHECK SUMMARY|========= (Invalid|Race|Barrier)" "$OUT/sanitize-$tool.log" 2>/dev/null | head -5
  done
fi

stage gpu-tests-inductor 120 "$OUT/gpu-tests-inductor.log" "${PYTEST[@]}" -m "gpu and inductor" --junitxml="$OUT/gpu-tests-inductor.xml" "${GPU_TESTS[@]}"
selected inductor && { grep -E "^(FAILED|ERROR)" "$OUT/gpu-tests-inductor.log" | head -10; tail -1 "$OUT/gpu-tests-inductor.log"; } 2>/dev/null

echo "== summary ($(elapsed) s)"
mapfile -t GRID < <(ls "$OUT"/*.jsonl 2>/dev/null)  # the grid's records
[ ${#GRID[@]} -gt 0 ] && $PY -m fusedrnn.bench.summary "${GRID[@]}" --short
cat "$OUT/stages.txt"
if [ -n "$SKIPPED" ]; then
  echo "gpu_check: not run for time: $SKIPPED; on the still-warm machine: bash benchmarks/gpu_check.sh --only $SKIPPED $OUT" \
    | tee -a "$OUT/stages.txt"
fi
echo "gpu_check: $([ $status = 0 ] && echo ok || echo FAILED)${SKIPPED:+ (incomplete: $SKIPPED not run)} in $(elapsed) s"
exit $status
