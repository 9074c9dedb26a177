"""Sweep the CUDA kernels' tuning knobs side by side, to set their defaults from measurements.

* ``PSR_CUDA_TILE_ROWS``: input rows per tile of the bicubic source (default: the tallest of
  16, 8, 4, 2, 1 that leaves every SM 16 tiles, capped by the 12 KiB shared-memory patch). Each
  tile also stages 4 halo rows, so taller is
  less work, shorter is more parallelism. Timed on the binned fused op (bins 1024) at the sizes of
  the GPU goal.
* ``PSR_CUDA_PLANAR_MAX_PIXELS``: exact mode sorts float32 planes of up to this many pixels a chunk
  of planes at a time with 64-bit keys (default 2^21), larger ones one plane at a time with 32-bit
  keys. Timed on the exact fused op for RGB images with planes of 2^18 to 2^24 pixels (the last above
  the default), with batching off (1), the default, and always on (2^30).
* ``PSR_CUDA_GENERIC_SCALE``: 1 makes the bicubic source run its generic row loop (S a run-time
  value) instead of the one compiled for scales 2, 3, 4 and 8 (2 and 4 since the tenth session, 3
  and 8 since the eleventh; never measured on a GPU).
  Timed on the binned fused op at x2, x3, x4 and x8. Since the eleventh session the histogram pass also
  tests an input row's S values at once in that loop, so 1 times that change too.
* ``PSR_CUDA_MAP_MIN_BLOCKS``: 1 runs the float32 map kernels compiled without their default cap
  of 64 registers (4 resident blocks per SM): ptxas then takes 80 with a residual, i.e. 3 blocks,
  for the same row loop (eleventh session, never measured on a GPU). Timed on the binned fused op
  with and without a residual.

Medians of CUDA-event times; every setting of a case is timed in the same process, in turns. Run by
``benchmarks/gpu_check.sh`` (step ``tune``):

    python benchmarks/tune_cuda.py --markdown tune_cuda.md
    python benchmarks/tune_cuda.py --device cpu --quick   # a dry run (the knobs act on CUDA only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import timed_ms  # noqa: E402

from psr import ops  # noqa: E402

BINNED = [(1, 1024, 8), (3, 512, 8), (3, 1024, 4), (3, 1024, 8)]  # (C, LR size, scale): outputs >= 100 MB
EXACT = [(3, 128, 4), (3, 256, 4), (3, 512, 4), (3, 1024, 2), (3, 1024, 4)]  # planes of 2^18 .. 2^24 px
ROWS = ["auto", "1", "2", "4", "8", "16", "32"]
PLANAR = ["1", "default", str(2**30)]
SCALED = [(3, 1024, 4), (1, 1024, 4), (3, 1024, 2), (3, 512, 8), (3, 1024, 3)]  # scales with a specialised row loop
GENERIC = ["default", "1"]
MIN_BLOCKS = ["default", "1"]


def sweep(name: str, values: list[str], fn: Callable[[], object], device: str, rounds: int) -> dict[str, float]:
    """Median ms of fn per value of environment variable name, the values taken in turns."""
    times: dict[str, list[float]] = {v: [] for v in values}
    try:
        for r in range(rounds + 1):
            for v in values:
                if v in ("auto", "default"):
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = v
                t = timed_ms(fn, device)
                if r > 0:  # the first round warms up
                    times[v].append(t)
    finally:
        os.environ.pop(name, None)
    return {v: statistics.median(ts) for v, ts in times.items()}


def table(title: str, values: list[str], rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    out = [f"### {title}", "", "| case | " + " | ".join(values) + " | best |", "|---|" + "---:|" * (len(values) + 1)]
    for case, ms in rows:
        best = min(ms, key=ms.__getitem__)
        out.append(f"| {case} | " + " | ".join(f"{ms[v]:.3f}" for v in values) + f" | {best} |")
    return out + [""]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per case (after one warm-up round)")
    p.add_argument("--quick", action="store_true", help="tiny cases, 2 rounds (a dry run, no meaningful times)")
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    dev = torch.device(args.device)
    rounds = 2 if args.quick else args.rounds
    binned_cases = [(1, 16, 2)] if args.quick else BINNED
    exact_cases = [(3, 16, 2)] if args.quick else EXACT
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    out = [f"## CUDA work-split sweep on {name} (torch {torch.__version__}; ms, medians of {rounds})", ""]

    sweeps = [  # knob, its values, cases, bins, title
        ("PSR_CUDA_TILE_ROWS", ROWS, binned_cases, 1024, "binned fused op (bins 1024)"),
        (
            "PSR_CUDA_PLANAR_MAX_PIXELS",
            PLANAR,
            exact_cases,
            None,
            "exact fused op (1: a plane at a time; 2^30: all batched)",
        ),
        (
            "PSR_CUDA_GENERIC_SCALE",
            GENERIC,
            [(3, 16, 4)] if args.quick else SCALED,
            1024,
            "binned fused op (1: the generic row loop)",
        ),
        (
            "PSR_CUDA_MAP_MIN_BLOCKS",
            MIN_BLOCKS,
            [(3, 16, 4)] if args.quick else [(3, 1024, 4), (3, 512, 8)],
            1024,
            "binned fused op (1: map kernels not capped at 64 registers)",
        ),
    ]
    for knob, values, cases, bins, title in sweeps:
        rows = []
        residuals = [False, True] if knob == "PSR_CUDA_MAP_MIN_BLOCKS" else [False]
        for (c, size, s), with_res in ((case, r) for case in cases for r in residuals):
            x = torch.rand(1, c, size, size, device=dev)
            res = torch.rand(1, c, size * s, size * s, device=dev) * 0.1 if with_res else None
            ms = sweep(
                knob,
                values,
                lambda x=x, s=s, b=bins, r=res: ops.upsample_match(x, s, residual=r, bins=b, check=False),
                args.device,
                rounds,
            )
            label = f"{c}x{size}^2 x{s}: {c} planes of {(size * s) ** 2} px, {c * (size * s) ** 2 * 4 / 1e6:.0f} MB"
            rows.append((label + (", residual" if with_res else ""), ms))
            print(rows[-1], flush=True)
            del res
        out += table(f"{title} by {knob}", values, rows)

    text = "\n".join(out)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
