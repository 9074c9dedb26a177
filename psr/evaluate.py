"""Evaluate upscaling on a benchmark set with the standard SR protocol (``psr.evaluate``, ``psr eval``).

Protocol (the one that reproduces the seed paper's table; see ``../shared/data/README.md``):

1. mod-crop the HR image to a multiple of the scale ``s``;
2. LR = MATLAB-compatible ``imresize(HR, 1/s)`` (Keys a=-0.5, antialiased, symmetric padding),
   rounded to uint8 (:func:`psr.resize.imresize`);
3. upscale with :func:`psr.upscale` (``model="bicubic"`` is the MATLAB-compatible bicubic baseline),
   uint8 in and rounded uint8 out;
4. shave ``s`` pixels from every border;
5. PSNR (float64, peak 255) and SSIM (11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03) on
   Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, not rounded; gray images on raw intensities;
6. the perceptual column: the relu2_2 feature distance (``mse(phi(SR), phi(HR))``, as in the paper's
   feature loss) on the shared Caffe VGG-16, over the same shaved RGB images. It is lower when the
   output is closer to the ground truth in feature space. Skipped (None) without VGG weights.

Reported scores are means of the per-image values. ``psr eval`` runs several models, scales and
histogram-matching settings at once and writes a markdown table, JSON and optional figure strips.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import metrics as _m
from .data import IMAGE_SUFFIXES, default_shared_dir, find_images
from .resize import imresize

__all__ = ["evaluate", "load_hr", "markdown_table", "make_strip", "add_arguments", "run", "PROTOCOL"]

PROTOCOL = (
    "mod-crop to the scale; LR = MATLAB-compatible bicubic imresize(HR, 1/s) rounded to uint8; upscale; "
    "shave s pixels; PSNR (float64, peak 255) and SSIM (Gaussian 11x11, sigma 1.5) on Y (BT.601, not rounded; "
    "gray images on raw intensities); perceptual = relu2_2 MSE on the Caffe VGG-16; means of per-image values"
)
FEATURE_LAYER = "relu2_2"


# ---------------------------------------------------------------------------------------------
# data


def _files(data: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Path], str]:
    """Image files and a short name for the set."""
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if p.is_dir():
            return find_images(p), p.name
        if p.is_file():
            return [p], p.stem
        raise FileNotFoundError(f"data: {str(p)!r} is neither a folder nor an image file")
    if isinstance(data, Sequence):
        files = [Path(f) for f in data]
        if not files:
            raise ValueError("data: the list of image files is empty")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"data: image files not found: {missing}")
        return files, "custom"
    raise TypeError(f"data must be a folder, an image file or a list of image files, got {type(data).__name__}")


def load_hr(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit HR image: (H, W, 3) uint8 RGB, or (H, W) uint8 for gray files.

    Alpha is dropped and palettes are expanded; images deeper than 8 bits are refused because
    the protocol's PSNR peak is 255.
    """
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{str(path)!r}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
    from .data import refuse_wide_png

    refuse_wide_png(path)
    with Image.open(path) as im:
        if im.mode in ("L", "LA", "1"):  # 1-bit is gray too, scored on its raw intensities
            arr = np.asarray(im.convert("L"))
        elif im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
            arr = np.asarray(im.convert("RGB"))
        else:
            raise ValueError(f"{str(path)!r}: mode {im.mode!r} is not an 8-bit gray or RGB image")
    return np.ascontiguousarray(arr)


def _degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """LR by the MATLAB-compatible imresize(HR, 1/s), uint8 in, rounded uint8 out."""
    lr = imresize(hr, 1.0 / scale, channel_axis=None if hr.ndim == 2 else -1)
    assert isinstance(lr, np.ndarray)
    return lr


def _luma(img: np.ndarray) -> np.ndarray:
    return _m.rgb_to_y(img) if img.ndim == 3 else img.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# evaluation


def _model_label(model: str | os.PathLike | nn.Module) -> str:
    if isinstance(model, nn.Module):
        return str(getattr(model, "name", type(model).__name__))
    p = Path(model)
    return p.stem if p.suffix == ".safetensors" else str(model)


def _resolve_device(device: str | torch.device) -> torch.device:
    from .api import _resolve_device as resolve  # one set of checks and messages for every entry point

    return resolve(device, None)


class _Perceptual:
    """relu2_2 distances with the HR features cached per (file, scale, shave) within one run."""

    def __init__(self, weights: str | os.PathLike | None, device: torch.device, cache: dict | None) -> None:
        from . import losses

        self.path = losses.resolve_vgg_weights(weights)
        self.vgg = None
        self.cache = cache if cache is not None else {}
        if self.path is not None:
            self.vgg = losses._cached_vgg(FEATURE_LAYER, self.path)
            self.vgg.to(device)
            self.device = device

    @property
    def available(self) -> bool:
        return self.vgg is not None

    def _features(self, img: np.ndarray) -> torch.Tensor:
        from .losses import _as_image_tensor

        assert self.vgg is not None
        with torch.no_grad():
            return self.vgg(_as_image_tensor(img, "image").to(self.device), (FEATURE_LAYER,))[FEATURE_LAYER]

    def distance(self, key: tuple, sr: np.ndarray, hr: np.ndarray) -> float:
        full_key = (str(self.path), *key)
        f_hr = self.cache.get(full_key)
        if f_hr is None:
            f_hr = self._features(hr)
            self.cache[full_key] = f_hr
        f_sr = self._features(sr)
        return float(torch.mean((f_sr.double() - f_hr.double()) ** 2))

    def describe(self) -> dict[str, Any] | None:
        if self.vgg is None:
            return None
        return {
            "layer": FEATURE_LAYER,
            "distance": "mean squared difference of features (the paper's feature loss)",
            "weights": str(self.path),
            "convention": self.vgg.convention,
        }


def evaluate(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    scale: int = 4,
    model: str | os.PathLike | nn.Module = "bicubic",
    *,
    match_histogram: bool | None = None,
    shave: int | None = None,
    perceptual: bool = True,
    vgg_weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    tile: int | None = 256,
    progress: Callable[[int, int], None] | None = None,
    _outputs: dict[str, np.ndarray] | None = None,
    _feature_cache: dict | None = None,
) -> dict[str, Any]:
    """Score an upscaler on a set of HR images with the standard SR protocol (module docstring).

    Parameters
    ----------
    data : folder, image file, or list of image files
        HR ground truth (8-bit RGB or gray). A folder is searched recursively.
    scale : int
        Upscaling factor, 2..8.
    model : str, path or nn.Module
        ``"bicubic"`` (MATLAB-compatible baseline), a shipped name, a weights file, or a module as
        accepted by :func:`psr.upscale`.
    match_histogram : bool, optional
        Histogram matching of the output to the LR input; None: the model's default.
    shave : int, optional
        Border pixels excluded from every metric; default ``scale``.
    perceptual : bool
        Compute the relu2_2 feature distance (None in the result when no VGG weights are found).
    vgg_weights : path, optional
        VGG-16 weights for the perceptual column (default lookup: see :mod:`psr.losses`; the
        torchvision download is never used here).
    device : "auto", str or torch.device
        Where the model and the VGG run.
    tile : int or None
        Passed to :func:`psr.upscale`.
    progress : callable, optional
        ``progress(done, total)`` after each image.

    Returns
    -------
    dict
        ``model``, ``scale``, ``match_histogram`` (resolved), ``psnr``, ``ssim``, ``perceptual``
        (means of per-image values; ``perceptual`` None if skipped), ``images`` (per image:
        ``name``, ``shape`` of the mod-cropped HR, ``psnr``, ``ssim``, ``perceptual``) and
        ``settings`` (protocol, shave, data, VGG weights, device, seconds).
    """
    from . import __version__
    from .api import resolve_model, upscale

    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 2 <= scale <= 8:
        raise ValueError(f"scale must be an integer in 2..8, got {scale!r}")
    scale = int(scale)
    if shave is None:
        shave = scale
    if isinstance(shave, bool) or not isinstance(shave, (int, np.integer)) or shave < 0:
        raise ValueError(f"shave must be a non-negative integer or None, got {shave!r}")
    shave = int(shave)
    if match_histogram is not None and not isinstance(match_histogram, (bool, np.bool_)):
        raise TypeError(f"match_histogram must be True, False or None, got {match_histogram!r}")
    files, set_name = _files(data)
    dev = _resolve_device(device)
    net = resolve_model(model, scale, dev)  # validates name and scale before any work
    if match_histogram is None:
        match_histogram = bool(getattr(net, "metadata", {}).get("match_histogram", False))
    match_histogram = bool(match_histogram)
    percep = _Perceptual(vgg_weights, dev, _feature_cache) if perceptual else None

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for i, path in enumerate(files):
        hr = _m.mod_crop(load_hr(path), scale)
        if min(hr.shape[:2]) < scale:
            raise ValueError(f"{str(path)!r}: image of shape {hr.shape} is smaller than scale={scale}")
        # Checked before the (costly) upscale: SSIM's 11x11 window needs that much after the shave.
        if not _m.fits_ssim(hr.shape[0], hr.shape[1], shave):
            raise ValueError(
                f"{str(path)!r}: image of shape {hr.shape} (mod-cropped to x{scale}) is too small: shaving "
                f"{shave} pixels per border leaves less than SSIM's {_m.SSIM_WINDOW}x{_m.SSIM_WINDOW} window"
            )
        lr = _degrade(hr, scale)
        sr = upscale(lr, scale, model=net, match_histogram=match_histogram, device=dev, tile=tile)
        assert sr.shape == hr.shape and sr.dtype == np.uint8, (sr.shape, hr.shape, sr.dtype)
        y_sr, y_hr = _m.shave(_luma(sr), shave), _m.shave(_luma(hr), shave)
        row: dict[str, Any] = {
            "name": path.name,
            "shape": list(hr.shape),
            "psnr": _m.psnr(y_sr, y_hr, data_range=255),
            "ssim": _m.ssim(y_sr, y_hr, data_range=255),
            "perceptual": None,
        }
        if percep is not None and percep.available:
            b = shave
            crop = (slice(b, hr.shape[0] - b), slice(b, hr.shape[1] - b))
            row["perceptual"] = percep.distance((str(path.resolve()), scale, shave), sr[crop], hr[crop])
        rows.append(row)
        if _outputs is not None:
            _outputs[path.name] = sr
        if progress is not None:
            progress(i + 1, len(files))

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    if percep is None:
        percep_settings: Any = "off"
    else:
        percep_settings = percep.describe() or "skipped: no VGG-16 weights found (see psr.losses)"
    return {
        "model": _model_label(model),
        "scale": scale,
        "match_histogram": match_histogram,
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "perceptual": mean("perceptual"),
        "images": rows,
        "settings": {
            "data": set_name,
            "files": [str(f) for f in files],
            "protocol": PROTOCOL,
            "shave": shave,
            "perceptual": percep_settings,
            "device": str(dev),
            "tile": tile,
            "seconds": round(time.perf_counter() - t0, 3),
            "psr_version": __version__,
        },
    }


# ---------------------------------------------------------------------------------------------
# reporting


def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def markdown_table(results: Sequence[dict[str, Any]], *, per_image: bool = False) -> str:
    """A markdown table of :func:`evaluate` results (one row each), optionally with per-image tables."""
    head = "| data | scale | model | hist. match | PSNR (dB) | SSIM | relu2_2 distance |"
    lines = [head, "|---|---|---|---|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['settings']['data']} | x{r['scale']} | {r['model']} | {'on' if r['match_histogram'] else 'off'} "
            f"| {_fmt(r['psnr'], 2)} | {_fmt(r['ssim'], 4)} | {_fmt(r['perceptual'], 0)} |"
        )
    if per_image:
        for r in results:
            hm = "on" if r["match_histogram"] else "off"
            lines += [
                "",
                f"{r['settings']['data']} x{r['scale']} {r['model']}, hist. match {hm}:",
                "",
                "| image | PSNR (dB) | SSIM | relu2_2 distance |",
                "|---|---:|---:|---:|",
            ]
            lines += [
                f"| {im['name']} | {_fmt(im['psnr'], 2)} | {_fmt(im['ssim'], 4)} | {_fmt(im['perceptual'], 0)} |"
                for im in r["images"]
            ]
    return "\n".join(lines) + "\n"


def _detail_crop(hr: np.ndarray, size: int, border: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most gradient energy (away from the border)."""
    y = _luma(hr)
    g = np.zeros_like(y)
    g[:-1, :] += np.abs(np.diff(y, axis=0))
    g[:, :-1] += np.abs(np.diff(y, axis=1))
    h, w = y.shape
    lo_y, lo_x = min(border, h - size), min(border, w - size)
    hi_y, hi_x = max(lo_y, h - size - border), max(lo_x, w - size - border)
    # Window sums from the integral image.
    s = np.pad(g.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys, xs = np.arange(lo_y, hi_y + 1), np.arange(lo_x, hi_x + 1)
    tot = s[ys[:, None] + size, xs[None, :] + size] - s[ys[:, None], xs[None, :] + size]
    tot = tot - s[ys[:, None] + size, xs[None, :]] + s[ys[:, None], xs[None, :]]
    iy, ix = np.unravel_index(int(np.argmax(tot)), tot.shape)
    return int(ys[iy]), int(xs[ix])


def make_strip(
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    crop: int = 64,
    zoom: int | None = None,
    corner: tuple[int, int] | None = None,
    border: int = 0,
) -> np.ndarray:
    """A labelled strip of the same crop of each panel, enlarged with nearest-neighbour.

    Parameters
    ----------
    panels : sequence of (label, image)
        Same-shape uint8 images, (H, W, 3) or (H, W); the first is the reference (HR) used to place
        the crop where it has the most detail when ``corner`` is None.
    crop : int
        Crop side in image pixels (clipped to the image).
    zoom : int, optional
        Integer enlargement; default makes each panel about 256 pixels wide.
    corner : (y, x), optional
        Top-left corner of the crop.
    border : int
        Pixels near the edge the automatic crop avoids (the shaved border).

    Returns
    -------
    (H', W', 3) uint8 image.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not panels:
        raise ValueError("panels must not be empty")
    ref = panels[0][1]
    for label, img in panels:
        if img.shape != ref.shape or img.dtype != np.uint8:
            raise ValueError(f"panel {label!r}: expected uint8 of shape {ref.shape}, got {img.dtype} {img.shape}")
    h, w = ref.shape[:2]
    crop = max(1, min(int(crop), h, w))
    zoom = max(1, round(256 / crop)) if zoom is None else int(zoom)
    cy, cx = _detail_crop(ref, crop, border) if corner is None else corner
    if not (0 <= cy <= h - crop and 0 <= cx <= w - crop):
        raise ValueError(f"corner {corner} puts a {crop}-pixel crop outside the {h}x{w} image")
    gap, band = 4, 22
    side = crop * zoom
    out = Image.new("RGB", (len(panels) * side + (len(panels) - 1) * gap, side + band), "white")
    draw = ImageDraw.Draw(out)
    try:
        font: Any = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    for k, (label, img) in enumerate(panels):
        patch = img[cy : cy + crop, cx : cx + crop]
        if patch.ndim == 2:
            patch = np.repeat(patch[..., None], 3, axis=2)
        big = patch.repeat(zoom, axis=0).repeat(zoom, axis=1)  # nearest-neighbour: pixels stay visible
        x0 = k * (side + gap)
        out.paste(Image.fromarray(np.ascontiguousarray(big)), (x0, band))
        draw.text((x0 + 3, 3), label, fill="black", font=font)
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``psr eval``'s options to ``p``."""
    from .losses import vgg_lookup_help

    p.add_argument(
        "--data",
        type=Path,
        action="append",
        default=None,
        help="folder (or image file) of HR ground truth; repeatable "
        f"(default: the shared Set5, here {default_shared_dir() / 'data' / 'Set5'})",
    )
    p.add_argument("--scale", type=int, nargs="+", default=[4], help="one or more scales (default: 4)")
    p.add_argument(
        "--model",
        nargs="+",
        default=["all"],
        help="'bicubic', shipped names, weights files, or 'all' (bicubic + every shipped model of the scale) "
        "(default: all)",
    )
    p.add_argument(
        "--match-histogram",
        choices=("both", "off", "on", "default"),
        default="both",
        help="rows without and with histogram matching to the LR input, or the model's default (default: both)",
    )
    p.add_argument("--shave", type=int, default=None, help="border pixels left out of the metrics (default: scale)")
    p.add_argument("--no-perceptual", dest="perceptual", action="store_false", help="skip the relu2_2 column")
    p.add_argument(
        "--vgg-weights",
        type=Path,
        default=None,
        help=f"VGG-16 weights for the relu2_2 column (default: {vgg_lookup_help('the column is skipped')})",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results (with per-image values) as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write the table as markdown")
    p.add_argument("--per-image", action="store_true", help="add per-image tables to the markdown")
    p.add_argument("--figure", type=Path, default=None, metavar="DIR", help="write per-image crop strips to DIR")
    p.add_argument("--crop", type=int, default=64, help="figure crop side in HR pixels (default: 64)")
    p.add_argument(
        "--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N' (default: auto)"
    )
    p.add_argument("--tile", type=int, default=256, help="tile size for the networks (0: whole image; default: 256)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _models_for(requested: Sequence[str], scale: int) -> list[str]:
    """Expand 'all' and drop models of another scale (said on stderr); style weights are refused."""
    from .weights import _meta_scale, list_models, read_metadata

    shipped = list_models()
    out: list[str] = []
    for name in requested:
        if name == "all":
            out.append("bicubic")
            out += [n for n, meta in shipped.items() if meta.get("scale") == scale and meta.get("task", "sr") == "sr"]
            continue
        if name != "bicubic":
            try:
                meta = shipped.get(name) or read_metadata(name)
            except (ValueError, FileNotFoundError) as exc:
                raise SystemExit(f"psr eval: --model {name}: {exc}") from None
            if meta.get("task", "sr") != "sr":
                raise SystemExit(
                    f"psr eval: --model {name} holds a {meta.get('task')!r} model, not a super-resolution model; "
                    "psr eval scores upscaling (psr stylize applies styles)"
                )
            model_scale = _meta_scale(meta)
            if model_scale != scale:
                print(f"psr eval: {name} is a x{model_scale} model; skipped at x{scale}", file=sys.stderr)
                continue
        out.append(name)
    return list(dict.fromkeys(out))  # keep order, drop duplicates


def _figure_label(result: dict[str, Any], name: str) -> str:
    im = next(r for r in result["images"] if r["name"] == name)
    hm = " +HM" if result["match_histogram"] else ""
    return f"{result['model']}{hm} {_fmt(im['psnr'], 2)} dB"


def run(args: argparse.Namespace) -> int:
    """``psr eval``: evaluate every requested model x scale x histogram setting; print the table."""
    from tqdm import tqdm

    datasets = args.data or [default_shared_dir() / "data" / "Set5"]
    hm_settings: list[bool | None] = {
        "both": [False, True],
        "off": [False],
        "on": [True],
        "default": [None],
    }[args.match_histogram]
    tile = None if args.tile == 0 else args.tile
    _check_outputs(args)
    # Every model checked against every scale before any work; nothing to evaluate is an error.
    plan = {scale: _models_for(args.model, scale) for scale in dict.fromkeys(args.scale)}
    if not any(plan.values()):
        scales = ", ".join(f"x{s}" for s in plan)
        raise SystemExit(
            f"psr eval: nothing to evaluate: no requested model ({' '.join(args.model)}) upscales by {scales}"
        )
    results: list[dict[str, Any]] = []
    cache: dict = {}
    for data in datasets:
        files, _ = _files(data)
        for scale, models in plan.items():
            outputs: dict[tuple[str, bool], dict[str, np.ndarray]] = {}
            for model in models:
                for hm in hm_settings:
                    bar = None if args.quiet else tqdm(total=len(files), desc=f"x{scale} {model}", leave=False)

                    def tick(done: int, total: int, bar: Any = bar) -> None:
                        if bar is not None:
                            bar.update(1)

                    keep: dict[str, np.ndarray] | None = {} if args.figure else None
                    res = evaluate(
                        files,
                        scale,
                        model,
                        match_histogram=hm,
                        shave=args.shave,
                        perceptual=args.perceptual,
                        vgg_weights=args.vgg_weights,
                        device=args.device,
                        tile=tile,
                        progress=tick,
                        _outputs=keep,
                        _feature_cache=cache,
                    )
                    if bar is not None:
                        bar.close()
                    res["settings"]["data"] = Path(data).name
                    results.append(res)
                    if keep is not None:
                        outputs[(res["model"], res["match_histogram"])] = keep
            if args.figure:
                _write_figures(args, Path(data).name, files, scale, results, outputs)

    table = markdown_table(results, per_image=args.per_image)
    print(table, end="")
    if results and results[0]["settings"]["perceptual"] not in ("off",) and results[0]["perceptual"] is None:
        print("(relu2_2 column skipped: no VGG-16 weights found)", file=sys.stderr)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"Protocol: {PROTOCOL}.\n\n{table}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"protocol": PROTOCOL, "results": results}, indent=2, allow_nan=True) + "\n")
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """``--markdown``, ``--json`` and ``--figure`` checked before the evaluation (minutes), not after."""
    from .cli import check_writable_folder

    for flag, path in (("--markdown", args.markdown), ("--json", args.json)):
        if path is not None:
            if path.is_dir():
                raise SystemExit(f"psr eval: {flag} {path} is a folder; expected a file name")
            check_writable_folder(f"psr eval: {flag} {path}", path.parent)
    if args.figure:
        if args.figure.exists() and not args.figure.is_dir():
            raise SystemExit(f"psr eval: --figure {args.figure} is a file; expected a folder")
        check_writable_folder(f"psr eval: --figure {args.figure}", args.figure)


def _write_figures(
    args: argparse.Namespace,
    set_name: str,
    files: list[Path],
    scale: int,
    results: list[dict[str, Any]],
    outputs: dict[tuple[str, bool], dict[str, np.ndarray]],
) -> None:
    from PIL import Image

    args.figure.mkdir(parents=True, exist_ok=True)
    mine = [r for r in results if r["scale"] == scale and (r["model"], r["match_histogram"]) in outputs]
    # One panel per model: its histogram-matching-off row when present (the raw output).
    chosen: dict[str, dict[str, Any]] = {}
    for r in mine:
        if r["model"] not in chosen or (chosen[r["model"]]["match_histogram"] and not r["match_histogram"]):
            chosen[r["model"]] = r
    shave = scale if args.shave is None else args.shave
    for path in files:
        hr = _m.mod_crop(load_hr(path), scale)
        panels = [("HR", hr)]
        for r in chosen.values():
            panels.append((_figure_label(r, path.name), outputs[(r["model"], r["match_histogram"])][path.name]))
        strip = make_strip(panels, crop=args.crop, border=shave)
        out = args.figure / f"{set_name}_{path.stem}_x{scale}.png"
        Image.fromarray(strip).save(out)
        if not args.quiet:
            print(f"psr eval: wrote {out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m psr.evaluate``: the same as ``psr eval``."""
    p = argparse.ArgumentParser(
        prog="psr eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
