"""x4 upscaling throughput (megapixels of output per second) on this machine, side by side.

Variants, all on the same input in one run: the network eager fp32, channels_last fp32,
channels_last + bf16 autocast, and the full ``psr.upscale`` (tiling, normalisation, conversion)
in float32 and with ``precision="bfloat16"``. Also reports what bf16 does to Set5 x4 PSNR
(standard protocol) when the shared data is present.

    python benchmarks/bench_upscale.py [--size 128] [--repeats 5] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import psr
from psr.data import default_shared_dir
from psr.metrics import mod_crop, psnr, rgb_to_y, shave
from psr.models import SRConfig, SRNet
from psr.resize import imresize


def _time(fn, repeats: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up (allocator, oneDNN primitive cache, cuDNN autotuning)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(name: str) -> tuple[SRNet, str]:
    try:
        return psr.load_model(name), name
    except ValueError:
        return SRNet(SRConfig(scale=4)).fuse(), "untrained x4 (no shipped model)"


def bf16_psnr(model: SRNet, shared: Path, device: torch.device) -> dict[str, float] | None:
    set5 = shared / "data" / "Set5"
    if not set5.is_dir():
        return None
    from PIL import Image

    res: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for f in sorted(set5.glob("*.png")):
        hr = mod_crop(np.asarray(Image.open(f).convert("RGB")), 4)
        lr = imresize(hr, 0.25)  # (H, W, 3)
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().to(device) / 255
        for mode in ("fp32", "bf16"):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                y = model(x.contiguous(memory_format=torch.channels_last)).float()
            sr = np.rint(y[0].permute(1, 2, 0).cpu().numpy() * 255).clip(0, 255)
            res[mode].append(psnr(shave(rgb_to_y(sr), 4), shave(rgb_to_y(hr), 4), data_range=255))
    return {k: float(np.mean(v)) for k, v in res.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs="+", default=[128, 256], help="LR input side(s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="x4-pixel")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model, label = _model(args.model)
    model = model.to(device)
    torch.manual_seed(0)
    rows = []
    for size in args.size:
        x = torch.rand(1, 3, size, size).to(device)
        mp = (4 * size) ** 2 / 1e6
        xl = x.contiguous(memory_format=torch.channels_last)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # .to() is in place
        img = (x[0].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)

        @torch.no_grad()
        def run_net(net: torch.nn.Module, inp: torch.Tensor, bf16: bool = False) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                net(inp)

        variants = {
            "eager fp32": lambda x=x: run_net(model, x),
            "channels_last fp32": lambda xl=xl, m=model_cl: run_net(m, xl),
            "channels_last bf16": lambda xl=xl, m=model_cl: run_net(m, xl, bf16=True),
            "psr.upscale fp32": lambda img=img: psr.upscale(
                img, 4, model=model, tile=256, match_histogram=False, device=device
            ),
            "psr.upscale bf16": lambda img=img: psr.upscale(
                img, 4, model=model, tile=256, match_histogram=False, device=device, precision="bfloat16"
            ),
        }
        for name, fn in variants.items():
            t = _time(fn, args.repeats, device)
            rows.append({"input": f"{size}x{size}", "variant": name, "median_s": t, "mp_per_s": mp / t})
    base = {r["input"]: r["median_s"] for r in rows if r["variant"] == "eager fp32"}
    for r in rows:
        r["speedup_vs_eager"] = base[r["input"]] / r["median_s"]
    quality = bf16_psnr(model, default_shared_dir(), device)
    result = {
        "model": label,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "set5_x4_psnr": quality,
    }
    print(f"model: {label}; {result['device']}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print("| input | variant | median (ms) | MP/s out | vs eager |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['input']} | {r['variant']} | {r['median_s'] * 1e3:.0f} | {r['mp_per_s']:.2f} | {r['speedup_vs_eager']:.2f}x |"
        )
    if quality:
        print(
            f"Set5 x4 PSNR (Y): fp32 {quality['fp32']:.3f} dB, bf16 autocast {quality['bf16']:.3f} dB "
            f"(difference {quality['bf16'] - quality['fp32']:+.3f} dB)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
