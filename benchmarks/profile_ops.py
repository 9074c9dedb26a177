"""Per-kernel time of the fused op, binned and exact, from torch.profiler.

Where bench_ops.py says how fast ``psr.ops.upsample_match`` is, this says where its time goes:
the self time of every kernel (CUDA) or operator (CPU) over a few calls, for the sizes of the GPU
goal (outputs of 100 MB and more). ``benchmarks/gpu_check.sh`` runs it after the benchmark (step
``profile``) and keeps the tables in ``$OUT/profile_ops.md``.

    python benchmarks/profile_ops.py                      # CUDA, the four goal cases
    python benchmarks/profile_ops.py --device cpu --quick # a tiny dry run of this script
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import sync  # noqa: E402

from psr import ops  # noqa: E402

CASES = [(1, 1024, 8), (3, 512, 8), (3, 1024, 4), (3, 1024, 8)]  # (C, LR size, scale)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--calls", type=int, default=5, help="profiled calls per case (after 3 warm-up calls)")
    p.add_argument("--rows", type=int, default=20, help="kernels listed per table")
    p.add_argument("--quick", action="store_true", help="one tiny case (a dry run, no meaningful times)")
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    dev = torch.device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    cases = [(1, 16, 2)] if args.quick else CASES
    out = [
        f"# psr.ops.upsample_match per-kernel times on {torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}",
        "",
    ]
    for c, size, s in cases:
        x = torch.rand(1, c, size, size, device=dev)
        for mode, bins in (("binned 1024", 1024), ("exact", None)):
            for _ in range(3):
                ops.upsample_match(x, s, bins=bins, check=False)
            sync(dev.type)
            with profile(activities=activities) as prof:
                for _ in range(args.calls):
                    ops.upsample_match(x, s, bins=bins, check=False)
                sync(dev.type)
            title = f"## {c}x{size}^2 x{s}, {mode}: totals over {args.calls} calls"
            table = prof.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=70)
            print(f"\n{title}\n{table}", flush=True)
            out += [title, "", "```", table, "```", ""]
    if args.markdown:
        args.markdown.write_text("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
