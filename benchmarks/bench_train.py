"""Training throughput (iterations per second) at the paper's settings, through ``psr train`` itself.

Rows, one run each, same machine, measured after the first step (warm-up, cuDNN autotuning):
- SR, relu2_2 perceptual loss, batch 4 of 288x288 HR patches, x4 (the paper's recipe);
- SR, per-pixel loss, same batch and patches;
- style transfer, batch 4 of 256x256 content images, Gram loss at four layers (the paper's).
Each runs ``--iterations`` steps of real data loading (``--workers`` processes), forward, backward
and Adam, without validation; the time for the paper's 200k iterations is projected from the rate.
Goal (issue 4): 200k SR iterations in at most 20 minutes on one H100, i.e. >= 167 it/s.

    python benchmarks/bench_train.py --device cuda --iterations 200 [--json out.json]
    python benchmarks/bench_train.py --device cpu --iterations 20      # this CPU: minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from psr import train
from psr.data import default_shared_dir

PAPER_ITERATIONS = 200_000
GOAL_MINUTES = 20.0


def _run(flags: list[str]) -> float:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    summary = train.main(p.parse_args(flags))
    return float(summary.get("it_per_s", float("nan")))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iterations", type=int, default=200, help="timed steps per row (after one warm-up step)")
    p.add_argument("--workers", type=int, default=None, help="data workers (default: 6 on CUDA, 0 on the CPU)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rows", nargs="+", default=["perceptual", "pixel", "style"])
    p.add_argument("--shared", type=Path, default=default_shared_dir())
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    workers = args.workers if args.workers is not None else (6 if args.device.startswith("cuda") else 0)
    data = args.shared / "data" / "train"
    style = args.shared / "data" / "styles" / "starry_night.jpg"
    if not data.is_dir():
        raise SystemExit(f"no training images at {data} (set --shared or PSR_SHARED)")

    # --stop-at: the run ends after N steps without the end-of-run validation of --iterations.
    common = ["--device", args.device, "--workers", str(workers), "--threads", str(args.threads), "--quiet"]
    common += ["--iterations", str(PAPER_ITERATIONS), "--stop-at", str(args.iterations + 1), "--data", str(data)]
    common += ["--val-every", str(10**9), "--checkpoint-every", str(10**9), "--batch-size", "4"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            out = ["--out", str(Path(tmp) / row)]
            if row == "style":
                flags = [*common, *out, "--task", "style", "--style", str(style), "--image-size", "256"]
                label = "style, batch 4 x 256^2, Gram relu1_2..relu4_3 + relu2_2"
            else:
                flags = [*common, *out, "--loss", row, "--scale", "4", "--patch", "288"]
                label = f"SR x4 {row}, batch 4 x 288^2" + (", relu2_2" if row == "perceptual" else "")
            rate = _run(flags)
            minutes = PAPER_ITERATIONS / rate / 60 if rate > 0 else float("inf")
            rows.append({"row": row, "what": label, "it_per_s": rate, "minutes_for_200k": minutes})
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": workers,
        "timed_iterations": args.iterations,
        "rows": rows,
    }
    lines = [
        f"{device}; torch {torch.__version__}; {workers} data workers; {args.iterations} timed steps per row",
        "",
        "| run | it/s | 200k iterations |",
        "|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['what']} | {r['it_per_s']:.2f} | {r['minutes_for_200k']:.0f} min |")
    sr = next((r for r in rows if r["row"] == "perceptual"), None)
    if sr is not None:
        ok = sr["minutes_for_200k"] <= GOAL_MINUTES
        lines.append("")
        lines.append(
            f"- GOAL 200k perceptual SR iterations <= {GOAL_MINUTES:.0f} min: {'PASS' if ok else 'FAIL'} "
            f"({sr['minutes_for_200k']:.1f} min, {sr['minutes_for_200k'] / GOAL_MINUTES:.2f}x the goal)"
        )
    text = "\n".join(lines)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
