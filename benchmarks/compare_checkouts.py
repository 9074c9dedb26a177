"""Time the same CPU cases in several checkouts of psr side by side, in interleaved rounds.

Each round runs one fresh process per checkout (``--worker``), which imports psr from that checkout
(its own extension build) and times:

* ``binned``: ``psr.ops.upsample_match(x, S, bins=1024, check=False)`` on ``torch.rand`` inputs;
* ``exact``: the same with ``bins=None`` (a yardstick of this host's noise when it did not change);
* ``host``: ``psr.upscale`` of a uint8 RGB image at ``tile=256`` with a nearly free stand-in
  network (nearest-neighbour x4), i.e. psr.upscale's own work around the network.

Medians of 5 calls per case and round; the table gives each checkout's median over rounds (and its
best round). Made the tenth session's before/after tables in benchmarks/RESULTS.md::

    git worktree add /tmp/before 0802d78
    python benchmarks/compare_checkouts.py /tmp/before . --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

OPS_CASES = [(3, 256, 4), (3, 512, 4), (1, 512, 8), (3, 512, 2)]  # (C, LR size, scale)
HOST_SIZES = [256, 512, 1024]


def _median_ms(fn, calls: int) -> float:
    # not bench_ops.median_ms: importing bench_ops puts this checkout's psr first on the path
    fn()  # warm-up
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def worker(repo: Path, quick: bool) -> dict[str, float]:
    sys.path.insert(0, str(repo))
    import numpy as np
    import torch
    from torch import nn

    import psr
    from psr import ops

    if not Path(psr.__file__).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"psr came from {psr.__file__}, not from {repo}")

    class StandIn(nn.Module):  # a nearly free network: what is left is psr.upscale's own work
        scale = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(4, -1).repeat_interleave(4, -2)

    calls = 1 if quick else 5
    ops_cases = [(1, 16, 2)] if quick else OPS_CASES
    host_sizes = [16] if quick else HOST_SIZES
    torch.manual_seed(0)
    res: dict[str, float] = {}
    for c, size, s in ops_cases:
        x = torch.rand(1, c, size, size)
        for mode, bins in (("binned", 1024), ("exact", None)):
            res[f"{mode} {c}x{size}^2 x{s}"] = _median_ms(
                lambda x=x, s=s, bins=bins: ops.upsample_match(x, s, bins=bins, check=False), calls
            )
    rng = np.random.default_rng(0)
    net = StandIn()
    for size in host_sizes:
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        res[f"host {size}^2"] = _median_ms(
            lambda img=img: psr.upscale(img, 4, model=net, tile=256, match_histogram=False), calls
        )
    return res


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="*", type=Path, help="repository roots to compare")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="tiny cases, one call each (a dry run)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.quick)))
        return 0
    if not args.checkouts:
        p.error("name at least one checkout")
    times: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for repo in args.checkouts:
            cmd = [sys.executable, __file__, "--worker", str(repo)] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for case, ms in json.loads(out.strip().splitlines()[-1]).items():
                times.setdefault(case, {}).setdefault(str(repo), []).append(ms)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    names = [str(c) for c in args.checkouts]
    lines = ["| case (ms) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for case, by_repo in times.items():
        cells = [f"{statistics.median(by_repo[n]):.1f} (best {min(by_repo[n]):.1f})" for n in names]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
