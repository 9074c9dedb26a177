"""The ``psr`` command line: upscale files, train, export, evaluate, benchmark, build the extension.

Subcommand modules are imported only when their subcommand runs, so ``psr upscale`` never loads
torchvision or the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "read_image", "write_image"]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_SAMPLES = ("astronaut", "chelsea", "coffee", "camera")


# ---------------------------------------------------------------------------------------------
# image files


def read_image(path: Path) -> tuple[object, dict]:
    """Array or PIL image plus what is needed to write a matching output (format, resolution)."""
    import numpy as np

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            page = tif.pages[0]
            tags = page.tags
            info: dict = {"format": "tiff", "imagej": tif.is_imagej, "imagej_metadata": tif.imagej_metadata}
            if "XResolution" in tags and "YResolution" in tags:
                info["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
                unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
                info["resolutionunit"] = int(unit)
            info["photometric"] = (
                "rgb" if (data.ndim >= 3 and data.shape[-1] in (3, 4) and page.photometric == 2) else None
            )
        return np.asarray(data), info
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "LA", "PA", "CMYK", "YCbCr", "1"):
            im = im.convert("RGBA" if ("A" in im.mode or "transparency" in im.info) else "RGB")
        elif im.mode in ("I;16B", "I;16L"):
            im = im.convert("I;16")
        elif im.mode in ("I", "F"):
            return np.asarray(im), {"format": "pil-array", "mode": im.mode}
        return im.copy(), {"format": "pil"}


def _fraction_times(value: object, f: int) -> object:
    # TIFF resolution is a rational (numerator, denominator) in pixels per unit.
    if isinstance(value, tuple) and len(value) == 2:
        return (int(value[0]) * f, int(value[1]))
    return float(value) * f  # type: ignore[arg-type]


def write_image(path: Path, image: object, info: dict, scale: int) -> None:
    """Write atomically (temp file, then rename) so a failed write leaves no half-written file."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(image)
            kwargs: dict = {}
            if info.get("format") == "tiff":
                if "resolution" in info:
                    xr, yr = info["resolution"]
                    # The pixel size shrinks by f: pixels per unit grow by f.
                    kwargs["resolution"] = (_fraction_times(xr, scale), _fraction_times(yr, scale))
                    kwargs["resolutionunit"] = info.get("resolutionunit", 1)
                if info.get("photometric"):
                    kwargs["photometric"] = info["photometric"]
                if info.get("imagej") and arr.dtype in (np.uint8, np.uint16, np.float32):
                    kwargs["imagej"] = True
                    meta = dict(info.get("imagej_metadata") or {})
                    kwargs["metadata"] = {k: meta[k] for k in ("unit", "spacing", "axes") if k in meta}
                    kwargs.pop("resolutionunit", None)
            elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
                kwargs["photometric"] = "rgb"
            tifffile.imwrite(tmp, arr, **kwargs)
        else:
            from PIL import Image

            im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]
            if fmt == "JPEG" and im.mode not in ("L", "RGB"):
                raise ValueError(f"{path}: JPEG cannot store mode {im.mode}; write a .png or .tif instead")
            im.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in _SUFFIXES)
            if not found:
                raise SystemExit(f"psr upscale: no {'/'.join(_SUFFIXES)} files in {p}")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in _SUFFIXES:
                raise SystemExit(f"psr upscale: {p}: unsupported file type; expected one of {', '.join(_SUFFIXES)}")
            files.append(p)
        else:
            raise SystemExit(f"psr upscale: {p}: no such file or directory")
    return files


# ---------------------------------------------------------------------------------------------
# subcommands


def _cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import upscale

    if args.sample:
        return _upscale_sample(args)
    if not args.inputs:
        raise SystemExit("psr upscale: give INPUT files/folders or --sample NAME")
    files = _collect_inputs(args.inputs)
    out = Path(args.output)
    single_file = len(files) == 1 and out.suffix.lower() in _SUFFIXES
    model = "bicubic" if args.bicubic else args.model
    with tqdm(total=len(files), unit="image", disable=args.quiet, desc="upscale") as bar:
        for f in files:
            image, info = read_image(f)
            tile_bar = tqdm(leave=False, unit="tile", disable=args.quiet, desc=f.name)

            def progress(done: int, total: int, tile_bar: tqdm = tile_bar) -> None:
                tile_bar.total = total
                tile_bar.update(done - tile_bar.n)

            result = upscale(
                image,
                args.scale,
                model=model,
                match_histogram=args.match_histogram,
                tile=args.tile or None,
                device=args.device,
                precision=args.precision,
                progress=progress,
            )
            tile_bar.close()
            target = out if single_file else out / f"{f.stem}_x{args.scale}{f.suffix.lower()}"
            if target.exists() and not args.overwrite:
                raise SystemExit(f"psr upscale: {target} exists; pass --overwrite to replace it")
            write_image(target, result, info, args.scale)
            bar.set_postfix_str(str(target))
            bar.update(1)
    return 0


def _upscale_sample(args: argparse.Namespace) -> int:
    """The README's main job: downscale a bundled photo x f, upscale it back, write before/after."""
    import numpy as np
    from PIL import Image

    from .api import upscale
    from .metrics import psnr, rgb_to_y, shave
    from .resize import imresize

    if args.sample not in _SAMPLES:
        raise SystemExit(f"psr upscale: --sample must be one of {', '.join(_SAMPLES)}")
    import skimage.data

    hr = getattr(skimage.data, args.sample)()
    if hr.ndim == 2:
        hr = np.stack([hr] * 3, axis=-1)
    hr = hr[: hr.shape[0] - hr.shape[0] % args.scale, : hr.shape[1] - hr.shape[1] % args.scale]
    lr = np.moveaxis(imresize(np.moveaxis(hr, -1, 0), 1 / args.scale), 0, -1)  # MATLAB bicubic, uint8
    model = "bicubic" if args.bicubic else args.model
    sr = upscale(
        lr, args.scale, model=model, match_histogram=args.match_histogram, device=args.device, precision=args.precision
    )
    bic = upscale(lr, args.scale, model="bicubic")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name, f = args.sample, args.scale
    paths = {
        "input": out / f"{name}_lr.png",
        "bicubic": out / f"{name}_bicubic_x{f}.png",
        "psr": out / f"{name}_psr_x{f}.png",
        "original": out / f"{name}_original.png",
        "compare": out / f"{name}_compare.png",
    }
    for key, arr in (("input", lr), ("bicubic", bic), ("psr", sr), ("original", hr)):
        write_image(paths[key], arr, {"format": "pil"}, f)
    # Side by side: input enlarged by pixel replication (what the LR really holds), bicubic, psr, original.
    nearest = np.repeat(np.repeat(lr, f, axis=0), f, axis=1)
    gap = np.full((hr.shape[0], 8, 3), 255, np.uint8)
    strip = np.concatenate([nearest, gap, bic, gap, sr, gap, hr], axis=1)
    write_image(paths["compare"], Image.fromarray(strip), {"format": "pil"}, f)
    s = shave(rgb_to_y(hr), f)
    print(f"input {lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]} ({model or f'x{f}-pixel'})")
    print(
        f"PSNR (Y) vs original: bicubic {psnr(shave(rgb_to_y(bic), f), s):.2f} dB, psr {psnr(shave(rgb_to_y(sr), f), s):.2f} dB"
    )
    for key, p in paths.items():
        print(f"  {key:9s} {p}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from .weights import list_models

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2, sort_keys=True))
        return 0
    if not models:
        print("no shipped models")
    for name, meta in models.items():
        score = ""
        if "set5_psnr" in meta:
            score = f"Set5 x{meta.get('scale')} {meta['set5_psnr']:.2f} dB / {meta.get('set5_ssim', float('nan')):.4f}"
            if "set5_relu2_2" in meta:
                score += f" / relu2_2 {meta['set5_relu2_2']:.0f}"
        print(
            f"{name:16s} x{meta.get('scale')}  loss={meta.get('loss')}  degradation={meta.get('degradation')}  {score}"
        )
    styles = list_models(task="style")
    if styles:
        print(f"styles: {', '.join(styles)} (psr stylize --list)")
    return 0


def _cmd_stylize(args: argparse.Namespace) -> int:
    # importlib: the package attribute ``psr.stylize`` is the function, not the module.
    return int(importlib.import_module("psr.stylize").run(args) or 0)


def _cmd_train(args: argparse.Namespace) -> int:
    from . import train

    train.main(args)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from . import train

    train.export_main(args)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    # importlib: the package attribute ``psr.evaluate`` is the function, not the module.
    evaluate = importlib.import_module("psr.evaluate")
    return int(evaluate.run(args) or 0)


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    script = root / f"bench_{args.what}.py"
    if not script.is_file():
        raise SystemExit(f"psr bench: {script} not found (benchmarks live in the source tree)")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_build_ext(args: argparse.Namespace) -> int:
    from . import _build

    try:
        path = _build.build(force=args.force, verbose=args.verbose)
    except RuntimeError as exc:
        print(f"psr build-ext: {exc}", file=sys.stderr)
        return 1
    print(f"psr extension built: {path} (CUDA kernels: {_build.extension_info()['cuda']})")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from . import train

    p = sub.add_parser("train", help="train a network", description=train.__doc__)
    train.add_arguments(p)
    p.set_defaults(func=_cmd_train)
    if hasattr(train, "add_export_arguments"):
        e = sub.add_parser("export", help="export a training run as a shipped-weights file")
        train.add_export_arguments(e)
        e.set_defaults(func=_cmd_export)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    evaluate = importlib.import_module("psr.evaluate")

    p = sub.add_parser("eval", help="evaluate models on a benchmark set", description=evaluate.__doc__)
    evaluate.add_arguments(p)
    p.set_defaults(func=_cmd_eval)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psr", description="Perceptual-loss super-resolution.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"psr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("upscale", help="upscale image files (PNG, JPEG, TIFF)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output folder, or a file name for a single input")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--model", default=None, help="shipped model name or weights file (default x{scale}-pixel)")
    p.add_argument("--bicubic", action="store_true", help="MATLAB-compatible bicubic instead of a network")
    hm = p.add_mutually_exclusive_group()
    hm.add_argument("--match-histogram", dest="match_histogram", action="store_true", default=None)
    hm.add_argument("--no-match-histogram", dest="match_histogram", action="store_false")
    p.add_argument("--tile", type=int, default=256, help="tile size in input pixels (0: whole image)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="network arithmetic: bfloat16 is 3-4x faster on bf16-capable CPUs and GPUs (about -0.001 dB)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--sample", choices=_SAMPLES, help="demo: downscale a bundled photo and upscale it back")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_upscale)

    p = sub.add_parser("stylize", help="stylise image files (real-time style transfer)")
    importlib.import_module("psr.stylize").add_arguments(p)
    p.set_defaults(func=_cmd_stylize)

    p = sub.add_parser("models", help="list shipped models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    p.add_argument("what", choices=("upscale", "ops", "train"))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("build-ext", help="build the C++/CUDA extension ahead of time")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_build_ext)

    # Heavy subcommands register only when asked for, so `psr upscale` stays light.
    command = next((a for a in (argv or []) if not a.startswith("-")), None)
    if command in (None, "train", "export"):
        _add_train(sub)
    if command in (None, "eval"):
        _add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if os.environ.get("PSR_DEBUG"):
            raise
        print(f"psr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
