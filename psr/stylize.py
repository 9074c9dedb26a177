"""``psr.stylize``: real-time style transfer (Johnson et al. 2016) with the same input rules as ``psr.upscale``.

One forward pass of a :class:`~psr.models.StyleNet` trained for one style (``psr train --task
style``). Inputs and outputs follow :func:`psr.upscale` (numpy, PIL or torch in, the same kind,
dtype and layout out; percentile normalisation; tiles; progress callback), at scale 1.

Tiles are seamless: instance normalisation would otherwise normalise each tile by its own
statistics, so they are computed once over the whole image first (one no-grad pass) and every tile
is normalised with them; tile borders are aligned to the network's stride of 4 and overlap by its
receptive radius, so the tiled result equals the whole-image one up to float rounding. The
statistics pass holds a few full-resolution 32-channel activations at once (about 0.5 KB per pixel in
float32), so tiles bound the memory of the stylisation itself, not of that pass.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .api import (
    _canonical,
    _check_precision,
    _count_tiles,
    _intensities,
    _Intensity,
    _module_call,
    _resolve_device,
    _restore,
    _run_tiled,
)
from .models import StyleNet
from .weights import (
    _file_version,
    _has_separator,
    _is_plain_name,
    _resolve,
    _shipped_file,
    _weights_key,
    list_models,
    load_style_model,
)

__all__ = ["stylize", "Stylizer", "resolve_style", "luminance", "style_grid", "add_arguments", "run"]

# ITU-R BT.601 luma: adding the same amount to R, G and B changes Y by that amount and leaves Cb, Cr
# unchanged (their coefficients sum to 0), so "swap Y" is "add the luma difference to each channel".
_LUMA = (0.299, 0.587, 0.114)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB (N, 3, H, W), as (N, 1, H, W)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be RGB (N, 3, H, W), got shape {tuple(x.shape)}")
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


@functools.lru_cache(maxsize=8)
def _cached_style(version: tuple[str, int, int, int], device: str) -> StyleNet:
    # Keyed on the file's absolute path, inode, mtime and size (weights._file_version), not the name as typed.
    return load_style_model(version[0], device=device)


def resolve_style(style: str | os.PathLike | nn.Module, device: torch.device) -> nn.Module:
    """The network for ``style``: a shipped style name, a style weights file, or a module.

    A string with no path separator (neither ``os.sep`` nor ``"/"``) that does not end in
    ``.safetensors`` and names a shipped style (``psr/weights/<name>.safetensors``) is that shipped
    style, even if a file or folder of that name exists in the working directory: to load a local
    file of that name, write ``./wave``. Anything else (a ``PathLike``, a string with a separator
    or the ``.safetensors`` suffix, or an existing file that is not a shipped name) is a path.

    Raises
    ------
    ValueError
        An unknown name (the message lists the shipped styles), no shipped style at all, or a
        weights file of another task.
    """
    if isinstance(style, nn.Module):
        return style.to(device).eval()
    if not isinstance(style, (str, os.PathLike)):
        raise TypeError(
            f"style must be a shipped style name, a weights file or an nn.Module, got {type(style).__name__}"
        )
    shipped = _shipped_file(style)
    if shipped is not None:
        return _cached_style(_file_version(shipped), str(device))  # by its full path: no local file can shadow it
    text = _weights_key(style)
    if _is_plain_name(style) and (not text or not Path(text).exists()):
        names = sorted(list_models(task="style"))
        if not names:
            raise ValueError(
                f"style={text!r}: no style models are shipped yet; train one with "
                "`psr train --task style --style IMAGE --out RUN`, export it with `psr export RUN -o FILE`, "
                "and pass style=FILE"
            )
        raise ValueError(f"style={text!r} is unknown; shipped styles: {', '.join(names)}, or a weights file")
    # A path: spelled with a separator, so that no name lookup downstream takes it for a shipped style.
    path = _resolve(text if _has_separator(text) else os.path.join(os.curdir, text), task="style")
    return _cached_style(_file_version(path), str(device))


def _check_unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return v


@torch.no_grad()
def stylize(
    image: Any,
    style: str | os.PathLike | nn.Module = "starry_night",
    *,
    strength: float = 1.0,
    preserve_color: bool = False,
    channel_axis: int | str | None = "auto",
    rgb: bool | None = None,
    normalize: tuple[float, float] | None = (0.1, 99.9),
    tile: int | None = 512,
    tile_overlap: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Stylise an image with a feed-forward style network in one pass.

    Parameters
    ----------
    image : ndarray, PIL.Image or Tensor
        As for :func:`psr.upscale`: numpy (H, W) gray or (..., H, W, 3|4) RGB(A) with
        ``channel_axis="auto"`` (or any layout with an explicit ``channel_axis``); PIL modes L,
        I;16, I, F, RGB, RGBA; torch (H, W), (C, H, W) or (N, C, H, W) with C in {1, 3, 4}.
    style : str, path or nn.Module
        A shipped style (``psr.list_models(task="style")``), a style weights file, or a module
        mapping RGB [0, 1] (N, 3, H, W) to the same shape.
    strength : float
        In [0, 1]: ``input + strength * (stylised - input)``; 0 returns the input (up to rounding).
    preserve_color : bool
        Transfer luminance only: the stylised image's BT.601 luma with the input's chroma.
    channel_axis, rgb, normalize
        As for :func:`psr.upscale`.
    tile : int or None
        Tile size in pixels (rounded up to a multiple of 4); ``None`` processes each image whole.
        Tiles use the whole image's instance-norm statistics, so they join without seams.
    tile_overlap : int, optional
        Overlap in pixels (rounded up to a multiple of 4); default the network's receptive radius.
    device : "auto", str or torch.device
        "auto": the input tensor's device, else CUDA when available, else the CPU.
    precision : {"float32", "bfloat16"}
        Arithmetic of the network: ``"bfloat16"`` runs it (and the whole-image instance-norm
        statistics) under bf16 autocast with channels-last tensors, as :func:`psr.upscale` does.
    progress : callable, optional
        Called as ``progress(done, total)`` after each tile; raise from it to cancel.

    Returns
    -------
    The same kind, shape, dtype and layout as ``image``. Gray images go through the RGB network
    (replicated to three channels) and come back as the mean of its output; alpha is kept as is.
    """
    strength = _check_unit(strength, "strength")
    if not isinstance(preserve_color, (bool, np.bool_)):
        raise TypeError(f"preserve_color must be a bool, got {type(preserve_color).__name__}")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 8):
        raise ValueError(f"tile must be None or an integer >= 8, got {tile!r}")
    bf16 = _check_precision(precision)
    dev = _resolve_device(device, image)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    net = resolve_style(style, dev)
    if tile_overlap is None:
        tile_overlap = int(getattr(net, "receptive_radius", 64))
    elif isinstance(tile_overlap, bool) or not isinstance(tile_overlap, (int, np.integer)) or tile_overlap < 0:
        raise ValueError(f"tile_overlap must be a non-negative integer, got {tile_overlap!r}")
    if isinstance(net, StyleNet):
        # Tile origins on multiples of 4 keep both stride-2 grids aligned with the whole image's.
        m = StyleNet.multiple
        tile = None if tile is None else -(-int(tile) // m) * m
        tile_overlap = -(-int(tile_overlap) // m) * m

    canon, layout = _canonical(image, channel_axis, rgb)
    b, h, w, c = canon.shape
    intens = _intensities(canon, layout, normalize)
    out = np.empty_like(canon)
    total = b * _count_tiles(h, w, tile)
    done = 0
    param = next(net.parameters(), None)
    net_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    for i in range(b):
        inten = intens[i % len(intens)]
        x_all = torch.from_numpy(inten.forward(canon[i])).permute(2, 0, 1)[None].to(dev)
        colour_all = x_all[:, :3] if c >= 3 else x_all.expand(1, 3, h, w)
        colour_all = colour_all.to(net_dtype).contiguous()
        stats = None
        if isinstance(net, StyleNet) and _count_tiles(h, w, tile) > 1:
            with autocast():
                stats = net.instance_stats(colour_all.contiguous(memory_format=memory_format)) or None

        def run(
            y0: int, y1: int, x0: int, x1: int, colour_all: torch.Tensor = colour_all, stats: Any = stats
        ) -> torch.Tensor:
            x = colour_all[..., y0:y1, x0:x1].contiguous(memory_format=memory_format)
            with autocast():
                y = net(x, stats=stats) if isinstance(net, StyleNet) else net(x)
            y, x = y.contiguous(), x.contiguous()
            if y.shape != x.shape:
                raise ValueError(f"the style network returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
            y, x = y.float(), x.float()
            if preserve_color:
                y = x + (luminance(y) - luminance(x))
            return x + strength * (y - x)

        out_i = out[i]

        def write(
            ys: slice, xs: slice, block: torch.Tensor, out_i: np.ndarray = out_i, i: int = i, inten: _Intensity = inten
        ) -> None:
            nonlocal done
            if c == 3:  # mapped back on the tensor's device (see _Intensity.backward_into)
                inten.backward_into(out_i[ys, xs], block[0])
            else:
                rgb_block = block[0].permute(1, 2, 0).cpu().numpy()
                if c < 3:
                    res = rgb_block.mean(axis=-1, keepdims=True)
                else:  # alpha is coverage, not content: passed through unchanged
                    res = np.concatenate([rgb_block, inten.forward(canon[i, ys, xs, 3:4])], axis=-1)
                out_i[ys, xs] = inten.backward(res)
            done += 1
            if progress is not None:
                progress(done, total)

        _run_tiled(run, h, w, 1, tile, tile_overlap, write)
    return _restore(out, layout, 1)


class Stylizer(nn.Module):
    """A thin module over :func:`stylize` for RGB float tensors (N, 3, H, W) in [0, 1].

    As :class:`psr.Upscaler`: the style network is a registered submodule (a private copy of a
    shipped or file style; a module given is used as is), ``.to("cuda")`` moves it and it then runs
    there; other keyword arguments go to :func:`stylize` (``normalize`` defaults to None, and
    floating inputs are then clamped to [0, 1] first). Inference only.
    """

    def __init__(self, style: str | os.PathLike | nn.Module = "starry_night", **kwargs: Any) -> None:
        super().__init__()
        if isinstance(style, nn.Module):
            self.net: nn.Module = style
        else:
            # A copy, not the cache psr.stylize shares: .to() on this module must not move it.
            self.net = copy.deepcopy(resolve_style(style, torch.device("cpu")))
        self.style = None if isinstance(style, nn.Module) else style  # a module is self.net, once
        self.kwargs = {"normalize": None, **kwargs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, kwargs = _module_call(self.net, x, self.kwargs)
        return stylize(x, self.net, **kwargs)


def _rgb8(image: Any) -> np.ndarray:
    """A picture as uint8 RGB (H, W, 3) for :func:`style_grid`'s panels.

    16-bit images are divided by 257 (the uint16 range onto the uint8 one) and 32-bit integer and
    float images by their own maximum, instead of being clipped to 255 as Pillow's ``convert``
    does; gray becomes three equal channels and alpha is dropped.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            arr: np.ndarray = np.asarray(image)
        elif image.mode in ("1", "L", "LA", "La"):
            arr = np.asarray(image.convert("L"))
        else:
            arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # gray or RGB with alpha: the picture only
        arr = arr[..., : arr.shape[-1] - 1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3) or arr.dtype.kind not in "uif":
        raise ValueError(f"image must be gray (H, W) or RGB (H, W, 3), or a PIL image, got {arr.dtype} {arr.shape}")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if arr.dtype == np.uint16:
            a = a / 257.0
        else:
            top = float(a.max())
            a = a * (255.0 / top) if top > 0 else np.zeros_like(a)
        arr = np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr


def style_grid(
    image: Any,
    styles: list[str | os.PathLike | nn.Module] | None = None,
    *,
    size: int = 384,
    device: str | torch.device = "auto",
    **kwargs: Any,
) -> np.ndarray:
    """A uint8 RGB row: ``image`` then its stylisation by each style, each ``size`` pixels high.

    ``image``: a PIL image of any mode, or a gray or RGB array (uint8, uint16, or other integers
    and floats scaled by their maximum; see :func:`_rgb8`). ``styles`` defaults to every shipped
    style (ValueError if there is none). ``kwargs`` go to :func:`stylize` for every panel
    (``strength``, ``preserve_color``, ``tile``, ``precision``). For the README grid.
    """
    from PIL import Image

    if styles is None:
        styles = list(list_models(task="style"))
        if not styles:
            raise ValueError("styles=None: no style models are shipped yet")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    arr = _rgb8(image)
    h, w = arr.shape[:2]
    small = np.asarray(Image.fromarray(arr).resize((max(1, round(w * size / h)), size), Image.LANCZOS))
    tiles = [small] + [stylize(small, s, device=device, **kwargs) for s in styles]
    gap = np.full((size, 4, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], axis=1)


# ---------------------------------------------------------------------------------------------
# command line: ``psr stylize``


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``psr stylize``'s options to ``p``."""
    from .cli import _number_arg, _tile_arg

    strength = _number_arg(
        float, lambda v: 0.0 <= v <= 1.0, "expected a number from 0 to 1", "must be a number from 0 to 1"
    )

    p.add_argument("inputs", nargs="*", help="image files or folders (PNG, JPEG, TIFF; a file given twice runs once)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output folder (made if needed; it gets NAME_STYLE.EXT for each input), or a .png/.jpg/.tif file "
        "name for a single input (default: stylized)",
    )
    p.add_argument(
        "--style",
        default=None,
        help="shipped style name or style weights file (default starry_night; --grid: all). A shipped name wins "
        "over a file or folder of that name in the working directory: write ./NAME for the local one",
    )
    p.add_argument("--strength", type=strength, default=1.0, help="blend with the input, 0..1")
    p.add_argument("--preserve-color", action="store_true", help="transfer luminance only, keep the input's colours")
    p.add_argument("--tile", type=_tile_arg, default=512, help="tile size in pixels, >= 8 (0: whole image)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision", default="float32", choices=("float32", "bfloat16"), help="network arithmetic (as psr upscale)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--list", action="store_true", help="list the shipped styles and exit")
    p.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="write INPUT then INPUT in every shipped style (or --style) side by side to this .png/.jpg/.tif file "
        "(with --strength, --preserve-color, --tile and --precision as given; not with -o; --overwrite to "
        "replace it)",
    )
    p.add_argument("--quiet", action="store_true")


def _open_picture(path: Path) -> Any:
    """``path`` as an upright PIL image (EXIF orientation applied), for ``--grid``."""
    from PIL import Image, ImageOps

    from .cli import UsageError, _unreadable

    if not path.is_file():
        raise UsageError(f"{path}: {'not a file' if path.exists() else 'no such file or directory'}")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def run(args: argparse.Namespace) -> int:
    """Run ``psr stylize``; returns the exit status.

    Input and output errors raise :class:`psr.cli.UsageError` (a SystemExit; ``psr`` exits with 2),
    all found before any stylisation: see :func:`psr.cli._plan_outputs`.
    """
    from .cli import (
        _SUFFIXES,
        UsageError,
        _collect_inputs,
        _plan_outputs,
        _process,
        _read,
        _refuse_existing,
        check_writable_folder,
        write_image,
    )

    if args.list:
        styles = list_models(task="style")
        if not styles:
            print("no shipped styles")
        for name, meta in styles.items():
            print(f"{name:20s} style image {meta.get('style_image')}  iterations {meta.get('iterations')}")
        return 0
    if not args.inputs:
        raise UsageError("give INPUT files or folders")
    try:
        dev = _resolve_device(args.device, None)
        if args.grid is None or args.style is not None:  # fail before any work on an unknown style
            resolve_style(args.style or "starry_night", dev)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if args.grid is not None:
        from PIL import Image

        if len(args.inputs) != 1:
            raise UsageError("--grid: give exactly one INPUT image")
        if args.output is not None:
            raise UsageError("--grid names its own output file: leave out -o/--output")
        if args.grid.suffix.lower() not in _SUFFIXES:
            raise UsageError(f"--grid {args.grid}: name a .png, .jpg or .tif file")
        if args.grid.is_dir():
            raise UsageError(f"--grid {args.grid} is a folder; name a .png, .jpg or .tif file")
        check_writable_folder(f"--grid {args.grid}", args.grid.parent)
        _refuse_existing([args.grid], args.overwrite)  # as for every other output
        picture = _open_picture(Path(args.inputs[0]))
        styles = None if args.style is None else [args.style]
        try:
            grid = style_grid(
                picture,
                styles,
                device=dev,
                strength=args.strength,
                preserve_color=args.preserve_color,
                tile=args.tile or None,
                precision=args.precision,
            )
        except ValueError as exc:
            raise UsageError(f"--grid: {exc}") from None
        write_image(args.grid, Image.fromarray(grid), {"format": "pil"}, 1)  # atomically
        return 0
    style = args.style or "starry_night"
    tag = Path(str(style)).stem
    files = _collect_inputs(args.inputs)
    plan = _plan_outputs(
        files, Path(args.output or "stylized"), lambda f: f"{f.stem}_{tag}{f.suffix.lower()}", args.overwrite
    )

    from tqdm import tqdm

    tile = args.tile or None
    with tqdm(total=len(plan), unit="image", disable=args.quiet, desc="stylize") as bar:
        for f, target in plan:
            image, info = _read(f)

            def one(img: Any, **layout: Any) -> Any:
                return stylize(
                    img,
                    style,
                    strength=args.strength,
                    preserve_color=args.preserve_color,
                    tile=tile,
                    device=dev,
                    precision=args.precision,
                    **layout,
                )

            try:
                result = _process(image, info, one, lambda alpha: alpha)  # alpha is kept as is
            except (ValueError, TypeError) as exc:  # refused by stylize: say which input
                raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"{f}: {exc}") from exc
            write_image(target, result, info, 1)
            bar.set_postfix_str(str(target))
            bar.update(1)
    return 0
