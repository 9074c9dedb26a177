#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (H100/H200; python3 3.12 with torch 2.11 cu130,
# nvcc 13, ninja, pytest, hypothesis, scikit-image preinstalled; no internet). Run it from the
# repository root, e.g. through the device tool:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (default ./gpu_out)
#
# Steps and time plan (the device budget is 15 minutes in all, one command at most 10):
#   0. environment report                               ~5 s
#   1. build the extension, CPU + CUDA kernels (sm_90)  ~2-3 min on 16 cores (limit 420 s)
#   2. CUDA tests against the references                ~1 min (limit 240 s)
#   3. ops benchmark, fused vs (a), floors              ~1-2 min (limit 240 s)
#   -- the training and style issues append their GPU steps below, inside the same plan --
# Every step is time-boxed and logs to $OUT; a failing step does not stop the later ones (the
# script exits non-zero at the end if any failed). PSR_GPU_STEPS="build tests bench" picks steps.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STEPS=${PSR_GPU_STEPS:-"build tests bench"}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # psr from this tree, no install needed
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}        # torch's own guess can be wrong
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/psr_torch_extensions}
export MAX_JOBS=${MAX_JOBS:-16}
export PSR_BUILD_VERBOSE=1
PY=${PYTHON:-python3}
status=0
summary="$OUT/summary.txt"
: >"$summary"

log() { echo "[$(date +%T)] $*" | tee -a "$summary"; }

step() {  # step NAME LIMIT_S LOGFILE CMD...
  local name=$1 limit=$2 logf=$3
  shift 3
  log "start $name (limit ${limit}s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$logf" 2>&1
  rc=$?
  log "end $name: rc=$rc after $((SECONDS - t0)) s (log: $logf)"
  if [ "$rc" -ne 0 ]; then
    status=1
    tail -n 30 "$OUT/$logf" | sed 's/^/    /' | tee -a "$summary"
  fi
  return "$rc"
}

want() { [[ " $STEPS " == *" $1 "* ]]; }

# 0. environment ------------------------------------------------------------------------------
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
  "$CUDA_HOME/bin/nvcc" --version | tail -n 2 || true
  $PY -c "
import sys, torch
print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
  $PY -c "
import skimage, numpy, hypothesis, pytest
print('skimage', skimage.__version__, 'numpy', numpy.__version__, 'hypothesis', hypothesis.__version__,
      'pytest', pytest.__version__)"
  nproc
} >"$OUT/env.txt" 2>&1
log "environment: $(tr '\n' ' ' <"$OUT/env.txt" | cut -c1-400)"

# 1. build --------------------------------------------------------------------------------------
built=0
if want build; then
  if step build 420 build.log $PY -c "
from psr import _build
lib = _build.build_extension(verbose=True)
info = _build.extension_info()
print('LIB', lib); print('INFO', info)
assert info['cuda'], 'built without the CUDA kernels'
from psr import ops
assert ops.backend('cuda') == 'extension', ops.backend('cuda')
"; then built=1; fi
  grep -E "^(LIB|INFO)" "$OUT/build.log" | tee -a "$summary"
fi

# 2. CUDA tests ---------------------------------------------------------------------------------
if want tests; then
  if [ "$built" -eq 1 ] || ! want build; then
    # All of tests/test_ops.py: the [cuda]-parametrised tests compare the CUDA kernels with the
    # same independent references as the CPU ones (and the CPU ones run on this image too). The
    # compile-only and wheel tests are for CI machines.
    step tests 240 tests_cuda.log $PY -m pytest -q -rs -p no:cacheprovider tests/test_ops.py \
      -k "not cuda_sources_compile and not wheel" -o addopts="" --junitxml="$OUT/tests_cuda.xml"
    grep -E "passed|failed|error" "$OUT/tests_cuda.log" | tail -n 3 | tee -a "$summary"
    if grep -q "SKIPPED.*no CUDA device" "$OUT/tests_cuda.log"; then
      log "FAIL: the CUDA tests were skipped (torch sees no CUDA device)"
      status=1
    fi
  else
    log "skip tests: the build failed"
  fi
fi

# 3. benchmark ----------------------------------------------------------------------------------
if want bench; then
  if [ "$built" -eq 1 ] || ! want build; then
    step bench 240 bench_cuda.log $PY benchmarks/bench_ops.py --device cuda --sizes 256 512 1024 \
      --json "$OUT/bench_cuda.json" --markdown "$OUT/bench_cuda.md"
    grep -E "^- GOAL|bandwidth" "$OUT/bench_cuda.log" | tee -a "$summary"
  else
    log "skip bench: the build failed"
  fi
fi

# -- further GPU steps (training, style) go here ------------------------------------------------

log "done: status=$status"
exit "$status"
