"""``psr upscale`` on a TIFF stack: wall time and peak memory, streamed vs in-memory output, side by side.

A TIFF result of a TIFF input is upscaled straight into a memory map of the output file
(``psr.cli.write_tiff_streamed``); the alternative holds the whole result in memory and writes it
at the end (``psr.cli.write_image``). Each variant runs in a fresh process on the same input; the
peak of the process's anonymous memory (``RssAnon``, Linux: the memory a run needs, page cache of
the output file aside) is sampled every 10 ms.

    python benchmarks/bench_cli.py [--planes 100] [--size 512] [--scale 4] [--model bicubic] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import sys, threading, time
peak = [0]
def watch():
    while True:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
import psr.cli as cli
src, out, mode, scale, model = sys.argv[1:6]
if mode == "memory":
    cli._streamable = lambda *a, **k: False
args = ["upscale", src, "-o", out, "--scale", scale, "--quiet", "--overwrite"]
args += ["--bicubic"] if model == "bicubic" else ["--model", model]
t0 = time.perf_counter()
rc = cli.main(args)
wall = time.perf_counter() - t0
time.sleep(0.03)
print(rc, wall, peak[0])
"""


def run_variant(src: Path, out: Path, mode: str, scale: int, model: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(out), mode, str(scale), model],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{mode} run failed: {proc.stderr[-2000:]}")
    rc, wall, peak = proc.stdout.split()[-3:]
    if int(rc) != 0:
        raise RuntimeError(f"{mode} run: psr upscale exited {rc}: {proc.stderr[-2000:]}")
    return {"mode": mode, "seconds": float(wall), "peak_anon_mib": int(peak) / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--planes", type=int, default=100, help="Z planes of the uint16 stack")
    p.add_argument("--size", type=int, default=512, help="plane side in pixels")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--model", default="bicubic", help="bicubic, a shipped name or a weights file")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("bench_cli needs Linux (/proc/self/status for RssAnon)", file=sys.stderr)
        return 2

    import tifffile

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "stack.tif"
        stack = rng.integers(0, 4096, (args.planes, args.size, args.size)).astype(np.uint16)
        tifffile.imwrite(src, stack, imagej=True, metadata={"axes": "ZYX"})
        in_mib = stack.nbytes / 2**20
        out_mib = in_mib * args.scale**2
        del stack
        rows = []
        for mode in ("streamed", "memory"):
            out = Path(d) / f"{mode}.tif"
            rows.append(run_variant(src, out, mode, args.scale, args.model))
            out.unlink()
    print(
        f"psr upscale x{args.scale} ({args.model}): {args.planes} x {args.size}^2 uint16, "
        f"input {in_mib:.0f} MiB, result {out_mib:.0f} MiB"
    )
    print("| output | wall (s) | peak anonymous memory (MiB) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']:.2f} | {r['peak_anon_mib']:.0f} |")
    ratio = rows[1]["peak_anon_mib"] / max(rows[0]["peak_anon_mib"], 1e-9)
    print(f"memory / streamed peak: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"input_mib": in_mib, "result_mib": out_mib, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
