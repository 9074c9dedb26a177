"""Benchmark real-time style transfer (issue 7): the StyleNet forward pass and ``psr.stylize`` end to end.

For each size (default 512 and 1024, square RGB):

* ``net fp32``: the network alone on a float32 (1, 3, S, S) tensor already on the device;
* ``net bf16``: the same under bf16 autocast with channels_last (CUDA only; what a GPU deployment runs);
* ``stylize``: ``psr.stylize`` on a uint8 numpy (S, S, 3) image, whole (``tile=None``): host
  transfers, normalisation and rounding included;
* ``stylize tiled``: the same with ``tile=256`` (instance-norm statistics over the whole image first).

Reported as median milliseconds over ``--repeats`` runs and frames per second. Goals: the paper's
20 FPS at 512x512 (Titan X); on an H100 under 5 ms per 512x512 frame for the network. The weights
do not change the speed: a shipped style is used when given (``--style``), else a random network of
the same architecture.

Examples::

    python benchmarks/bench_stylize.py                                # CPU, 512 and 1024
    python benchmarks/bench_stylize.py --device cuda --markdown out.md
    python benchmarks/bench_stylize.py --quick                         # tiny smoke run (no meaningful timings)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psr.models import StyleConfig, StyleNet  # noqa: E402
from psr.stylize import resolve_style, stylize  # noqa: E402

SECTION = "## Style transfer (issue 7)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--style", default=None, help="shipped style name or weights file (default: random weights)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 2 repeats")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write a markdown table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.repeats = [64], 2
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = resolve_style(args.style, dev) if args.style else StyleNet(StyleConfig()).to(dev).eval()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or 'x86'})"
    rows = []
    for s in args.sizes:
        x = torch.rand(1, 3, s, s, device=dev)
        img = (np.random.default_rng(0).random((s, s, 3)) * 255).astype(np.uint8)
        row: dict = {"size": s}
        with torch.no_grad():
            row["net_fp32_ms"] = median_ms(lambda x=x: net(x), dev, args.repeats)
            if dev.type == "cuda":
                net_cl = net.to(memory_format=torch.channels_last)
                xc = x.contiguous(memory_format=torch.channels_last)

                def bf16(xc: torch.Tensor = xc, m: torch.nn.Module = net_cl) -> object:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return m(xc)

                row["net_bf16_ms"] = median_ms(bf16, dev, args.repeats)
        row["stylize_ms"] = median_ms(lambda img=img: stylize(img, net, tile=None, device=dev), dev, args.repeats)
        row["stylize_tiled_ms"] = median_ms(lambda img=img: stylize(img, net, tile=256, device=dev), dev, args.repeats)
        for k in [k for k in row if k.endswith("_ms")]:
            row[k.replace("_ms", "_fps")] = round(1000 / row[k], 2)
            row[k] = round(row[k], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    cols = [c for c in ("net_fp32", "net_bf16", "stylize", "stylize_tiled") if f"{c}_ms" in rows[0]]
    lines = [
        f"{SECTION}: speed on {name} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "| size | " + " | ".join(f"{c} ms (FPS)" for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(f"| {r['size']} | " + " | ".join(f"{r[c + '_ms']} ({r[c + '_fps']})" for c in cols) + " |")
    if dev.type == "cuda":
        r512 = next((r for r in rows if r["size"] == 512), None)
        if r512 is not None:
            best = min(r512.get("net_bf16_ms", np.inf), r512["net_fp32_ms"])
            lines.append("")
            lines.append(f"{'PASS' if best < 5 else 'FAIL'}: 512x512 network forward {best:.2f} ms (goal < 5 ms)")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
