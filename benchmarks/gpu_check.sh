#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (H100/H200; python3 3.12 with torch 2.11 cu130,
# nvcc 13, ninja, pytest, hypothesis, scikit-image preinstalled; no internet). Run it from the
# repository root, e.g. through the device tool:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (default ./gpu_out)
#
# The machine gets only this repository: first run benchmarks/prepare_gpu_shared.sh here, which
# copies the VGG-16 weights, Set5, the styles and a part of the training images into .gpu_shared/
# (git-ignored; about 39 MB, so that with the ~24 MB tree it stays under the 64 MiB a call carries), and
# carry that folder:
#
#     device run, carry [".gpu_shared"]:  PSR_SHARED=.gpu_shared bash benchmarks/gpu_check.sh
#
# Steps and time plan (the device budget is 15 minutes in all, machine start included; one
# command at most 10). The script stops starting steps at PSR_GPU_DEADLINE seconds (default 560)
# and cuts each step's limit to what is left, so it returns inside one call:
#   0. environment report                               ~5 s
#   1. build the extension, CPU + CUDA kernels (sm_90)  ~1 min on 16 cores (47 s on an H100 machine; limit 420 s)
#   2. CUDA tests against the references                ~1 min (limit 240 s), then the other
#      CUDA-parametrised tests (upscale, models, training)  ~1 min (limit 150 s)
#   3. compute-sanitizer memcheck and racecheck over every op and mode (gpu_sanitize_ops.py)
#                                                       ~1 min (limit 100 s each)
#   3b. ops benchmark, fused vs (a), floors             ~1-2 min (limit 240 s)
#   3c. per-kernel profile of the fused op (profile_ops.py -> profile_ops.md)      ~30 s (limit 90 s)
#   3d. tuning sweep: tile rows (binned), planar sort threshold (exact), the row loop compiled for
#       scales 2, 3, 4, 8 against the generic one, the map kernels with and without their register cap
#       (tune_cuda.py -> tune_cuda.md)                  ~50 s (limit 90 s)
#   3e. (opt-in, step "ncu") Nsight Compute sections of the binned passes (the input's min/max, the
#       histogram, the map)                             ~30 s (limit 120 s)
#   4. speed: psr.upscale / network fp32 vs bf16, stylize 512 / 1024 (< 5 ms goal)   ~1 min (limit 150 s)
#   5. training throughput at the paper's batch and patch (200k-in-20-min goal)      ~1 min (limit 150 s)
#   6. GPU training for PSR_GPU_TRAIN_MINUTES (default 1.5) each: x4-perceptual fine-tuned from
#      x4-pixel at the paper's batch 4 x 288^2, and the starry_night style at 256^2; each exported
#      with its validation and Set5 scores to $OUT/weights/ (compare with the shipped ones there)
# The plan adds up to more than the deadline: a default run reaches the later steps only when the
# earlier ones finish early; PSR_GPU_STEPS names the steps a run needs, e.g. "build tests sanitize
# bench profile tune" for the ops alone. Every step is time-boxed and logs to $OUT; a failing step
# does not stop the later ones (the script exits non-zero at the end if any failed). On exit the
# logs, JSON and Markdown files are packed into $OUT/logs.tar.gz (the device tool returns at most
# 8 files); summary.txt and weights/*.safetensors stay as they are.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PACK=0  # pack logs on exit (below) only into an $OUT that starts empty and is not this repository
if [ -z "$(ls -A "$OUT")" ] && [ "$(cd "$OUT" && pwd -P)" != "$(pwd -P)" ]; then PACK=1; fi
STEPS=${PSR_GPU_STEPS:-"build tests sanitize bench profile tune speed train_bench train"}
DEADLINE=${PSR_GPU_DEADLINE:-560}
TRAIN_MINUTES=${PSR_GPU_TRAIN_MINUTES:-1.5}
DEV=${PSR_GPU_DEVICE:-cuda}                           # "cpu" only to dry-run this script elsewhere
# PSR_GPU_QUICK=1: tiny sizes and counts, to dry-run every step's command line on a CPU machine.
if [ -n "${PSR_GPU_QUICK:-}" ]; then
  UP_SIZES="32"; ST_SIZES="64"; REPEATS=1; BENCH_ITERS=2; BENCH_ROWS="pixel style"; PATCH=96; IMG=64
else
  UP_SIZES="256 512"; ST_SIZES="512 1024"; REPEATS=20; BENCH_ITERS=150; BENCH_ROWS="perceptual pixel style"
  PATCH=288; IMG=256
fi
if [ -d .gpu_shared ] && [ -z "${PSR_SHARED:-}" ]; then export PSR_SHARED=$PWD/.gpu_shared; fi
SHARED=${PSR_SHARED:-../shared}
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

# The device tool brings back at most 8 files: on exit, everything this script wrote under $OUT but
# summary.txt and the exported weights goes into one archive, logs.tar.gz (3 or 4 files in all).
pack() {
  [ "$PACK" -eq 1 ] || return 0
  (
    cd "$OUT" || exit 0
    find . -type f ! -name summary.txt ! -name '*.safetensors' ! -name logs.tar.gz -print0 |
      tar --null -czf logs.tar.gz --files-from=- --remove-files ||
      echo "pack: tar failed; the files stay as they are" >>summary.txt
    find . -mindepth 1 -type d -empty -delete
  )
}
trap pack EXIT

step() {  # step NAME LIMIT_S LOGFILE CMD...
  local name=$1 limit=$2 logf=$3
  shift 3
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then
    log "skip $name: ${left}s left before the ${DEADLINE}s deadline"
    return 124
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
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

# Whether a step that uses the compiled ops can run: built here, or the build not asked for.
have_ops() {
  if [ "$built" -eq 1 ] || ! want build; then return 0; fi
  log "skip $1: the build failed"
  return 1
}

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
if want tests && have_ops tests; then
  # All of tests/test_ops.py: the [cuda]-parametrised tests compare the CUDA kernels with the
  # same independent references as the CPU ones (and the CPU ones run on this image too). The
  # compile-only and wheel tests are for CI machines.
  # PSR_GPU_TESTS_K narrows the selection (e.g. "cuda": the CUDA-parametrised tests alone, about
  # half the time, for a rerun after a kernel change whose CPU tests passed at home).
  step tests 240 tests_cuda.log $PY -m pytest -q -rs -p no:cacheprovider tests/test_ops.py \
    -k "not cuda_sources_compile and not wheel${PSR_GPU_TESTS_K:+ and ($PSR_GPU_TESTS_K)}" -o addopts="" \
    --junitxml="$OUT/tests_cuda.xml"
  grep -E "passed|failed|error" "$OUT/tests_cuda.log" | tail -n 3 | tee -a "$summary"
  # The other CUDA-parametrised tests: psr.upscale / the models / bf16 training on the GPU.
  [ -n "${PSR_GPU_SKIP_TESTS_MORE:-}" ] || step tests_more 150 tests_more.log $PY -m pytest -q -rs -p no:cacheprovider tests/test_api.py \
    tests/test_models.py tests/test_stylize.py tests/test_train.py -k "cuda or intensity_backward" -o addopts=""
  [ -f "$OUT/tests_more.log" ] && grep -E "passed|failed|error" "$OUT/tests_more.log" | tail -n 3 | tee -a "$summary"
  if grep -q "SKIPPED.*no CUDA device" "$OUT/tests_cuda.log"; then
    log "FAIL: the CUDA tests were skipped (torch sees no CUDA device)"
    status=1
  fi
fi

# 3. compute-sanitizer ------------------------------------------------------------------------
if want sanitize && have_ops sanitize; then
  SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
  for tool in memcheck racecheck; do
    # Without torch's caching allocator every tensor is its own allocation, so memcheck sees a
    # read past a tensor's end (inside a pooled block it would not).
    step "sanitize_$tool" 100 "sanitize_$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 1 \
      $PY benchmarks/gpu_sanitize_ops.py
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all ok|FAILED" "$OUT/sanitize_$tool.log" | tail -n 3 | tee -a "$summary"
  done
fi

# 3b. benchmark ---------------------------------------------------------------------------------
if want bench && have_ops bench; then
  if [ -n "${PSR_GPU_QUICK:-}" ]; then BENCH_SIZES=""; else BENCH_SIZES="--sizes 256 512 1024"; fi
  # shellcheck disable=SC2086
  step bench 240 bench_cuda.log $PY benchmarks/bench_ops.py --device "$DEV" $BENCH_SIZES ${PSR_GPU_QUICK:+--quick} \
    --json "$OUT/bench_cuda.json" --markdown "$OUT/bench_cuda.md"
  grep -E "^- GOAL|bandwidth" "$OUT/bench_cuda.log" | tee -a "$summary"
fi

# 3c. per-kernel profile ------------------------------------------------------------------------
if want profile && have_ops profile; then
  step profile 90 profile_ops.log $PY benchmarks/profile_ops.py --device "$DEV" --markdown "$OUT/profile_ops.md" \
    ${PSR_GPU_QUICK:+--quick}
fi

# 3d. work-split sweep ----------------------------------------------------------------------------
if want tune && have_ops tune; then
  step tune 90 tune_cuda.log $PY benchmarks/tune_cuda.py --device "$DEV" --markdown "$OUT/tune_cuda.md" \
    ${PSR_GPU_QUICK:+--quick}
  grep -E "^\|" "$OUT/tune_cuda.log" | tee -a "$summary"
fi

# 3e. Nsight Compute: where the binned passes stall (one 3x1024^2 x4 call; opt-in step "ncu") ------
if want ncu && have_ops ncu; then
  NCU=$(command -v ncu || echo "$CUDA_HOME/bin/ncu")
  step ncu 120 ncu.log "$NCU" --clock-control none -k "regex:minmax_kernel|hist_kernel|map_kernel" -c 3 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    $PY -c "
import torch
from psr import ops
x = torch.rand(1, 3, 1024, 1024, device='$DEV')
ops.upsample_match(x, 4, bins=1024, check=False)
torch.cuda.synchronize()
"
  grep -E "^  [a-z_]+kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" \
    "$OUT/ncu.log" | sed 's/^ *//' | cut -c1-160 | tee -a "$summary"
fi

# 4. upscale and stylize speed -----------------------------------------------------------------
if want speed; then
  step speed_upscale 90 speed_upscale.log $PY benchmarks/bench_upscale.py --device "$DEV" --size $UP_SIZES \
    --repeats $REPEATS --json "$OUT/speed_upscale.json"
  grep -E "^\||Set5" "$OUT/speed_upscale.log" | tee -a "$summary"
  step speed_stylize 60 speed_stylize.log $PY benchmarks/bench_stylize.py --device "$DEV" --sizes $ST_SIZES \
    --repeats $REPEATS --json "$OUT/speed_stylize.json" --markdown "$OUT/speed_stylize.md"
  grep -E "^\||GOAL|PASS|FAIL" "$OUT/speed_stylize.log" | tee -a "$summary"
fi

# 5. training throughput --------------------------------------------------------------------------
if want train_bench; then
  step train_bench 150 train_bench.log $PY benchmarks/bench_train.py --device "$DEV" --iterations $BENCH_ITERS \
    --rows $BENCH_ROWS --json "$OUT/train_bench.json" --markdown "$OUT/train_bench.md"
  grep -E "^\||GOAL" "$OUT/train_bench.log" | tee -a "$summary"
fi

# 6. GPU training, weights back under $OUT/weights ------------------------------------------------
if want train; then
  mkdir -p "$OUT/weights"
  runs="$OUT/runs"
  # x4-perceptual: the shipped recipe (fine-tune x4-pixel with the relu2_2 loss) at the paper's batch
  # and patch; lr 1e-4 after a short warm-up, as on the CPU.
  step train_sr $(( ${TRAIN_MINUTES%.*} * 60 + 90 )) train_sr.log $PY -m psr.train --device "$DEV" \
    --init-from x4-pixel --scale 4 --loss perceptual --degradation bicubic --patch $PATCH --batch-size 4 \
    --iterations 200000 --lr 1e-4 --warmup 100 --max-minutes "$TRAIN_MINUTES" --val-every 500 \
    --checkpoint-every 500 --workers 6 --quiet --out "$runs/x4-perceptual" --name x4-perceptual
  step export_sr 150 export_sr.log $PY -m psr.train export "$runs/x4-perceptual" --device "$DEV" \
    -o "$OUT/weights/x4-perceptual-gpu.safetensors" --name x4-perceptual
  grep -E '"(iterations|val_relu2_2|set5_psnr|set5_relu2_2|wall_time_s)"' "$OUT/export_sr.log" | tee -a "$summary"
  step train_style $(( ${TRAIN_MINUTES%.*} * 60 + 90 )) train_style.log $PY -m psr.train --device "$DEV" \
    --task style --style "$SHARED/data/styles/starry_night.jpg" --name starry_night --image-size $IMG \
    --style-size 512 --style-weight 3e-5 --batch-size 4 --iterations 200000 --max-minutes "$TRAIN_MINUTES" \
    --val-every 500 --checkpoint-every 500 --workers 6 --quiet --out "$runs/starry_night"
  step export_style 120 export_style.log $PY -m psr.train export "$runs/starry_night" --which last \
    --device "$DEV" -o "$OUT/weights/starry_night-gpu.safetensors"
  grep -E '"(iterations|all_lower|ratio)"' "$OUT/export_style.log" | tee -a "$summary"
  rm -rf "$runs"   # checkpoints hold optimiser state: only the exported weights come back
fi

log "done: status=$status"
exit "$status"
