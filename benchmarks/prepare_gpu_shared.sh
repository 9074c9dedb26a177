#!/usr/bin/env bash
# Copy what benchmarks/gpu_check.sh needs from ../shared into .gpu_shared/ (git-ignored), because a
# lent GPU machine gets only this repository: the Caffe VGG-16 (30 MB), Set5, the styles and as many
# training images as fit a 6 MB budget (the device tool carries at most 64 MiB in all). Then:
#
#     device run, carry [".gpu_shared"]:  PSR_SHARED=.gpu_shared bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${PSR_SHARED:-../shared}
DST=.gpu_shared
BUDGET=${TRAIN_BUDGET_BYTES:-6000000}
rm -rf "$DST"
mkdir -p "$DST/weights" "$DST/data/train"
cp "$SRC/weights/vgg16_caffe_relu4_3.safetensors" "$SRC/weights/README.md" "$DST/weights/"
cp -r "$SRC/data/Set5" "$SRC/data/styles" "$DST/data/"
cp "$SRC/data/README.md" "$DST/data/"
total=0
n=0
# Every other image in sorted order, so the held-out validation split (psr.data.split_train_val) and
# the variety of the set survive the cut.
dst_train=$(cd "$DST/data/train" && pwd)
while IFS= read -r f; do
  size=$(stat -c %s "$SRC/data/train/$f")
  if [ $((total + size)) -gt "$BUDGET" ]; then break; fi
  (cd "$SRC/data/train" && cp --parents "$f" "$dst_train/")
  total=$((total + size))
  n=$((n + 1))
done < <(cd "$SRC/data/train" && find . -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) | sort | awk 'NR % 2 == 1')
echo "copied $n training images ($((total / 1000000)) MB) and the VGG-16 weights into $DST ($(du -sh "$DST" | cut -f1))"
