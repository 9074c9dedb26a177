"""The ``psr`` command line: upscale files, train, export, evaluate, benchmark, build the extension.

Subcommand modules are imported only when their subcommand runs, so ``psr upscale`` never loads
torchvision or the training stack, and ``psr --help`` does not load torch: ``stylize``, ``train``,
``export`` and ``eval`` are listed by placeholder parsers and get their real ones only when named
on the command line.

Exit status: 0 on success, 2 for usage and input errors (bad arguments, missing or unreadable
inputs, outputs that exist, unknown models), 1 for failures at run time (out of memory, a write
error). Errors are one line on stderr; ``PSR_DEBUG=1`` re-raises them with their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._env import env_flag

__all__ = ["main", "build_parser", "read_image", "write_image", "UsageError"]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_SAMPLES = ("astronaut", "chelsea", "coffee", "camera")
# Suffixes that name an image format psr does not write: ``-o out.webp`` is refused, not made a folder.
_IMAGE_LIKE = frozenset(
    ".webp .bmp .dib .gif .apng .ico .icns .cur .tga .jp2 .j2k .jpx .jpf .jxl .jfif .jpe .exr .hdr .pfm "
    ".pbm .pgm .ppm .pnm .psd .dds .qoi .pcx .sgi .ras .xbm .xpm .heic .heif .avif .svg .dng .raw .cr2 "
    ".nef .arw .fits .fit".split()
)
_BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
_BENCH_KNOWN = ("cli", "ops", "stylize", "train", "upscale")  # when benchmarks/ is absent (an installed wheel)
# Modes Pillow writes to each format (what a result of the input's mode can be saved as).
_WRITABLE = {"JPEG": ("L", "RGB"), "PNG": ("1", "L", "LA", "I;16", "P", "RGB", "RGBA")}
_LAZY_HELP = {
    "stylize": "stylise image files (real-time style transfer)",
    "train": "train a network (psr train --help)",
    "export": "export a training run as a shipped-weights file",
    "eval": "evaluate models on a benchmark set",
}
_EPILOG = """\
exit status:
  0  success
  1  a failure at run time: out of memory, a device or write error, a failed build
  2  a usage or input error: bad arguments, missing or unreadable inputs, outputs that
     exist (without --overwrite), unknown models or styles
Errors are printed on one line; set PSR_DEBUG=1 to see their Python traceback."""
_EPILOG_SHORT = "exit status: 0 success, 1 a failure at run time, 2 a usage or input error (see psr --help)"


class UsageError(SystemExit):
    """A usage or input error: :func:`main` prints it on one line and exits with status 2.

    A :class:`SystemExit` so that a subcommand's ``run`` called outside :func:`main` still stops
    with the message rather than a traceback.
    """


# ---------------------------------------------------------------------------------------------
# argument types


def _number_arg(
    convert: Callable[[str], Any], valid: Callable[[Any], bool], expected: str, bounds: str
) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)`` (else "``expected``, got ...") that ``valid`` accepts
    (else "``bounds``, got ...")."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{bounds}, got {text}")
        return value

    return parse


_tile_arg = _number_arg(
    int, lambda v: v == 0 or v >= 8, "expected an integer", "must be 0 (the whole image at once) or at least 8 pixels"
)
_scale_arg = _number_arg(int, lambda v: 2 <= v <= 8, "expected an integer", "must be an integer from 2 to 8")


# ---------------------------------------------------------------------------------------------
# image files


def _pil_result_mode(mode: str, transparency: bool) -> str:
    """The mode :func:`read_image` gives a PIL image of ``mode`` (and the result keeps)."""
    if mode in ("L", "LA", "RGB", "RGBA", "I;16", "I", "F"):
        return mode
    if mode.startswith("I;16"):
        return "I;16"
    if mode in ("1", "La"):
        return {"1": "L", "La": "LA"}[mode]
    return "RGBA" if ("A" in mode or "a" in mode or transparency) else "RGB"


def _array_mode(dtype: Any, shape: tuple[int, ...]) -> str | None:
    """The PIL mode ``Image.fromarray`` gives an array of this dtype and shape, or None."""
    import numpy as np

    dtype = np.dtype(dtype)
    if len(shape) == 2:
        return {"u1": "L", "u2": "I;16", "i4": "I", "f4": "F", "b1": "1"}.get(f"{dtype.kind}{dtype.itemsize}")
    if len(shape) == 3 and dtype == np.uint8:
        return {2: "LA", 3: "RGB", 4: "RGBA"}.get(shape[-1])
    return None


# The first input's TIFF decoding, kept from the check up front (_probe) for its processing (_read),
# keyed on the file's identity: a one-file run decodes its TIFF once.
_DECODED: dict[tuple[str, int, int, int], tuple[Any, dict]] = {}


def _physical_memory() -> int:
    from .api import _physical_memory

    return _physical_memory()


def _file_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)


def _probe(path: Path, keep: bool = False) -> str | None:
    """Check that ``path`` opens as an image psr can upscale (decoded in full; TIFF: also its data extent,
    dtype and finiteness); its result's PIL mode, or None. ``keep``: a TIFF's decoding is kept for
    :func:`_read` (one at a time)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            key = _file_key(path)
            data, info = _read_tiff(path)  # decoded in full: a corrupt segment is found here
            _check_values(path, data)
            if keep and data.nbytes <= _physical_memory() // 8:  # not beside the next inputs' decoding if large
                _DECODED.clear()
                _DECODED[key] = (data, info)
            return _array_mode(data.dtype, tuple(data.shape))
        from .data import refuse_wide_png

        try:
            refuse_wide_png(path)  # an input error of its own, not "cannot read it"
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        from PIL import Image

        with Image.open(path) as im:
            im.load()  # the whole file: a truncated PNG/JPEG is found here, before any output is written
            return _pil_result_mode(im.mode, "transparency" in im.info)
    except (MemoryError, UsageError):
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _check_values(path: Path, data: Any) -> None:
    """Refuse what :func:`psr.upscale` would refuse in an array read from ``path`` (its dtype, NaN or
    Inf), here in the check before any work, not after earlier inputs' outputs were written."""
    from .api import _all_finite, _check_dtype

    try:
        _check_dtype(data.dtype)
    except TypeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not _all_finite(data):
        raise UsageError(f"{path}: the image contains NaN or Inf values; expected finite intensities")


def _check_tiff_extent(series: Any, size: int) -> None:
    """A truncated TIFF's header still parses: check that its image data lie inside the file
    (without decoding it), so that it is refused before any output is written."""
    offset = getattr(series, "dataoffset", None)
    if offset is not None:  # one contiguous block (ImageJ hyperstacks, uncompressed stacks)
        end = offset + series.nbytes
        if end > size:
            raise ValueError(f"truncated: its image data end at byte {end}, the file has {size}")
        return
    for page in series.pages:
        if page is None:
            continue
        for off, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if off + count > size:
                raise ValueError(f"truncated: a data segment ends at byte {off + count}, the file has {size}")


def _unreadable(path: Path, exc: BaseException) -> UsageError:
    """The input error for an image file that does not open or decode."""
    return UsageError(f"{path}: cannot read it as an image ({_describe(exc)})")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tiff_alpha_axis(axes: str, shape: tuple[int, ...], page: Any) -> int | None:
    """The samples axis of a gray + alpha TIFF (two samples, the second an extra sample: alpha), or None."""
    if "S" not in axes or len(axes) != len(shape) or page.photometric not in (0, 1):  # MINISWHITE/BLACK
        return None
    s = axes.index("S")
    extrasamples = tuple(int(e) for e in (page.extrasamples or ()))
    return s if shape[s] == 2 and extrasamples in ((1,), (2,)) else None


def _tiff_order(axes: str) -> list[int]:
    """The permutation that takes a TIFF series' axes to psr's order: every other axis (stacks,
    ImageJ channels) as stored, then Y, X and the samples (S)."""
    tail = [axes.index(a) for a in "YXS" if a in axes]
    return [i for i in range(len(axes)) if i not in tail] + tail


def _read_tiff(path: Path) -> tuple[Any, dict]:
    import numpy as np
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_tiff_extent(series, path.stat().st_size)  # before decoding: a clear message
        data = np.asarray(series.asarray())
        axes = str(series.axes)
        page = tif.pages[0]
        tags = page.tags
        info: dict = {"format": "tiff", "imagej": tif.is_imagej, "axes": axes}
        if tif.is_imagej:
            info["imagej_metadata"] = dict(tif.imagej_metadata or {})
        if "XResolution" in tags and "YResolution" in tags:
            info["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
            unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
            info["resolutionunit"] = int(unit)
        photometric = None if page.photometric is None else int(page.photometric)
        # JPEG-compressed YCbCr is decoded to RGB (imagecodecs), as Pillow reads it.
        if photometric == 6 and int(page.compression) in (6, 7) and "S" in axes and data.shape[axes.index("S")] == 3:
            photometric = 2
        if "InterColorProfile" in tags and photometric in (0, 1, 2, 3):
            # Gray, RGB or palette pixels keep their colour space; CMYK, YCbCr or Lab ones are read
            # as other values, which the profile would mislabel.
            info["icc_profile"] = bytes(tags["InterColorProfile"].value)
        alpha = _tiff_alpha_axis(axes, data.shape, page) is not None
        extrasamples = [int(e) for e in (page.extrasamples or ())]
        colormap = page.colormap if photometric == 3 and not tif.is_imagej else None
    if len(axes) != data.ndim or "Y" not in axes or "X" not in axes:  # never seen; psr.upscale's own reading
        info["axes"] = None
        return data, info
    if "S" in axes:  # where the samples are stored: contiguous (last) or planar
        info["planarconfig"] = "contig" if axes.index("S") == len(axes) - 1 else "separate"
    # psr's order: stack axes, then Y, X and the samples; write_image and write_tiff_streamed put
    # the axes back as stored (info["order"]).
    order = _tiff_order(axes)
    if order != list(range(len(axes))):
        data = np.transpose(data, order)
        info["order"] = order
    proc_axes = "".join(axes[i] for i in order)
    if colormap is not None and "S" not in axes:
        # Palette indices are not intensities: the colours they name, as psr reads a mode "P" PNG
        # (ImageJ's palette files are intensities with a display LUT: kept as gray).
        cmap = np.asarray(colormap, np.uint16)  # 16-bit colours: 8-bit ones times 257, or times 256 (Pillow)
        cmap = (cmap // 257 if not (cmap % 257).any() else cmap >> 8).astype(np.uint8)
        data = np.moveaxis(cmap[:, data.astype(np.intp) if data.dtype == np.bool_ else data], 0, -1)
        axes, proc_axes, photometric = axes + "S", proc_axes + "S", 2
        info.update(axes=axes, planarconfig="contig")
        if "order" in info:  # the new samples axis is last, stored and processed
            info["order"] = [*info["order"], len(info["order"])]
    elif data.dtype == np.bool_:  # bilevel: 8-bit gray, as psr reads a mode "1" PNG
        data = data.astype(np.uint8) * np.uint8(255)
    info["proc_axes"] = proc_axes
    rgb = photometric == 2
    # The network sees planes of Y and X; samples (S), else ImageJ channels (C), are channels, every
    # other axis is a stack.
    if alpha:
        # Gray + alpha (one page or a stack, samples contiguous or planar), as a gray+alpha PNG: the
        # gray planes upscaled, the alpha planes bicubic (_process).
        info.update(mode="LA", channel_axis=data.ndim - 1, rgb=False, extrasamples=extrasamples)
    elif "S" in proc_axes:
        info["channel_axis"] = data.ndim - 1
        info["rgb"] = rgb and data.shape[-1] in (3, 4)
        if info["rgb"]:
            info["photometric"] = "rgb"
    elif "C" in proc_axes:  # ImageJ hyperstack channels (CYX, TZCYX): independent gray images, each
        info["channel_axis"] = proc_axes.index("C")  # normalised on its own (psr.upscale, channel_axis)
        info["rgb"] = False
    else:
        info["channel_axis"] = None
    if photometric == 0 and not info.get("rgb"):
        # MINISWHITE: 0 is white. The network expects 0 to be black, as psr reads such a file with
        # Pillow: integer gray is inverted here, and back in a TIFF output, which stays MINISWHITE.
        info["photometric"] = "miniswhite"
        if data.dtype.kind in "ui":  # in place: data (or the array it views) is our own decoding
            gray = data[..., 0] if alpha else data
            np.invert(gray, out=gray)
            info["inverted"] = True
    return data, info


def read_image(path: Path) -> tuple[Any, dict]:
    """Array or PIL image plus what is needed to process it and write a matching output.

    TIFF: the first series as an array, with its axes (``info["axes"]``, tifffile's, e.g. ``ZYX``
    or ``TZCYX``), its resolution and its ImageJ metadata; ``info["channel_axis"]`` and
    ``info["rgb"]`` say how :func:`psr.upscale` must read it (samples, else ImageJ channels, are
    channels: each independent channel is normalised on its own). Gray+alpha pages (a stack too)
    come as (..., H, W, 2) with ``info["mode"] == "LA"``; bilevel pages as 8-bit gray, palette
    indices as RGB, MINISWHITE integer gray inverted (``info["inverted"]``), as Pillow reads them.
    PNG/JPEG: a PIL image turned upright by its EXIF orientation, with its DPI (``info["dpi"]``);
    gray+alpha is an (H, W, 2) array with ``info["mode"] == "LA"`` (gray and alpha are processed
    apart, see :func:`_process`); 32-bit and float images are arrays too.
    """
    import numpy as np

    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff(path)
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        transparency = "transparency" in im.info
        dpi = im.info.get("dpi")
        icc = im.info.get("icc_profile")
        orientation = im.getexif().get(0x0112, 1)
        im = ImageOps.exif_transpose(im)  # upright pixels; the copy has no orientation tag
    info: dict = {"format": "pil"}
    if icc and im.mode not in ("CMYK", "YCbCr", "LAB", "HSV"):
        # The colour space of the pixel values: upscaling keeps it, so the output carries it (not
        # where the pixels are converted to RGB below: the profile describes the old space).
        info["icc_profile"] = bytes(icc)
    if dpi and all(float(d) > 0 for d in dpi):
        # Orientations 5-8 swap the axes, and with them the horizontal and vertical densities.
        info["dpi"] = (float(dpi[1]), float(dpi[0])) if orientation in (5, 6, 7, 8) else (float(dpi[0]), float(dpi[1]))
    mode = _pil_result_mode(im.mode, transparency)
    if mode != im.mode:
        im = im.convert(mode)
    info["mode"] = mode
    if mode in ("I", "F", "LA"):
        return np.asarray(im), {**info, "format": "pil-array"}
    return im, info


def _process(
    image: Any,
    info: dict,
    run: Callable[..., Any],
    run_alpha: Callable[..., Any],
    out: Any = None,
) -> Any:
    """``run(image, channel_axis=..., rgb=...)`` as :func:`read_image` says to read ``image``.

    Gray+alpha: ``run`` on the gray plane, ``run_alpha`` on the alpha plane (alpha is coverage,
    not content: psr upscales it with the bicubic baseline, as :func:`psr.upscale` does for RGBA).
    ``out``: the result's array to write into (:func:`write_tiff_streamed`), passed on to ``run``
    and ``run_alpha`` as ``out=``.
    """
    import numpy as np

    if info.get("mode") == "LA":
        arr = np.asarray(image)
        gray, alpha = np.ascontiguousarray(arr[..., 0]), np.ascontiguousarray(arr[..., 1])
        if out is not None:
            run(gray, channel_axis=None, rgb=None, out=out[..., 0])
            run_alpha(alpha, out=out[..., 1])
            return out
        return np.stack([run(gray, channel_axis=None, rgb=None), run_alpha(alpha)], axis=-1)
    channel_axis = info.get("channel_axis", "auto")
    rgb = info.get("rgb") if isinstance(channel_axis, int) else None
    if out is not None:
        return run(image, channel_axis=channel_axis, rgb=rgb, out=out)
    return run(image, channel_axis=channel_axis, rgb=rgb)


def _fraction_times(value: object, f: int) -> object:
    # TIFF resolution is a rational (numerator, denominator) in pixels per unit.
    if isinstance(value, tuple) and len(value) == 2:
        return (int(value[0]) * f, int(value[1]))
    return float(value) * f  # type: ignore[arg-type]


def _as_float(value: object) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]) / float(value[1]) if value[1] else 0.0
    return float(value)  # type: ignore[arg-type]


# ImageJ metadata that tifffile computes from the shape and axes, or that holds pixel coordinates
# (overlays, ROIs) that upscaling invalidates; the rest (unit, spacing, finterval, fps, loop, min,
# max, mode, Ranges, LUTs, Labels, Info, Properties, ...) still holds for the upscaled image.
_IMAGEJ_DROP = frozenset({"ImageJ", "images", "channels", "slices", "frames", "hyperstack", "axes", "Overlays", "ROI"})


def _imagej_metadata(info: dict, scale: int) -> dict:
    meta = {k: v for k, v in (info.get("imagej_metadata") or {}).items() if k not in _IMAGEJ_DROP}
    for key in ("xorigin", "yorigin"):  # in pixels: the origin's pixel coordinate grows with the pixels
        if isinstance(meta.get(key), (int, float)):
            meta[key] = meta[key] * scale
    axes = _imagej_axes(info.get("axes"))
    if axes:
        meta["axes"] = axes
    return meta


def _imagej_axes(axes: str | None) -> str | None:
    """``axes`` as ImageJ can store them (a subsequence of TZCYXS), or None. tifffile names an
    ImageJ image sequence without slices or frames ``I`` (``images=`` only): ImageJ reads it as Z."""
    if not axes:
        return None
    if "Z" not in axes and axes.count("I") == 1:
        axes = axes.replace("I", "Z")
    it = iter("TZCYXS")
    return axes if all(a in it for a in axes) else None


def _dpi(info: dict) -> tuple[float, float] | None:
    """Pixels per inch of the input (PNG/JPEG DPI, or a TIFF's inch or centimetre resolution)."""
    dpi = info.get("dpi")
    if dpi is None and info.get("resolutionunit") in (2, 3) and "resolution" in info:
        per_inch = 1.0 if info["resolutionunit"] == 2 else 2.54  # INCH or CENTIMETER
        dpi = tuple(_as_float(v) * per_inch for v in info["resolution"])
    return dpi


def _tiff_kwargs(info: dict, shape: tuple[int, ...], dtype: Any, scale: int) -> dict:
    """tifffile's write arguments for a result of ``shape`` (as stored) and ``dtype``: the input's
    metadata with the pixel size divided by ``scale``."""
    import numpy as np

    kwargs: dict = {}
    if info.get("format") == "tiff":
        if "resolution" in info:
            xr, yr = info["resolution"]
            # The pixel size shrinks by f: pixels per unit grow by f.
            kwargs["resolution"] = (_fraction_times(xr, scale), _fraction_times(yr, scale))
            kwargs["resolutionunit"] = info.get("resolutionunit", 1)
        if info.get("photometric"):
            kwargs["photometric"] = info["photometric"]
            if info.get("planarconfig") and info.get("rgb") and not info.get("imagej"):
                kwargs["planarconfig"] = info["planarconfig"]
        if info.get("mode") == "LA":  # gray + alpha samples, where they were read from
            photometric = info.get("photometric", "minisblack")
            planar = info.get("planarconfig", "contig")
            kwargs.update(photometric=photometric, planarconfig=planar, extrasamples=info["extrasamples"])
        if (
            info.get("imagej")
            and np.dtype(dtype) in (np.uint8, np.uint16, np.float32)
            and (not info.get("axes") or _imagej_axes(info["axes"]))
        ):
            kwargs["imagej"] = True
            kwargs["metadata"] = _imagej_metadata(info, scale)
            kwargs.pop("resolutionunit", None)
        elif info.get("axes"):
            kwargs["metadata"] = {"axes": info["axes"]}
    else:
        if len(shape) == 3 and shape[-1] in (3, 4):
            kwargs["photometric"] = "rgb"
        elif len(shape) == 3 and info.get("mode") == "LA":  # gray + unassociated alpha, one page
            kwargs.update(photometric="minisblack", planarconfig="contig", extrasamples=[2])
        dpi = _dpi(info)
        if dpi:
            kwargs["resolution"] = (dpi[0] * scale, dpi[1] * scale)
            kwargs["resolutionunit"] = "INCH"
    if info.get("icc_profile"):
        kwargs["iccprofile"] = info["icc_profile"]
    return kwargs


def _as_stored(arr: Any, info: dict) -> Any:
    """A result in :func:`read_image`'s axis order as the TIFF stores it (a view)."""
    import numpy as np

    order = info.get("order") if info.get("format") == "tiff" else None
    return arr if order is None else np.transpose(arr, np.argsort(order))


def _invert_gray(arr: Any, info: dict) -> None:
    """Undo :func:`_read_tiff`'s inversion of MINISWHITE integer gray, in place."""
    import numpy as np

    gray = arr[..., 0] if info.get("mode") == "LA" else arr
    np.invert(gray, out=gray)  # in place: no temporary of the image's size, memory maps included


def _temp_name(path: Path) -> Path:
    """A new hidden file beside ``path`` to write it atomically (then renamed over it): unique, so
    that two runs writing the same output do not write into one temporary file."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def _atomic_write(path: Path) -> Iterator[Path]:
    """A new temporary file beside ``path`` to write; renamed over ``path`` when the block ends,
    removed if it fails, so that nothing half-written is ever left. An OSError on the temporary
    file is reworded to name ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None or str(exc.filename) != str(tmp):
            raise
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_tiff(target: Path, image: Any, info: dict, scale: int) -> None:
    """``image`` (in :func:`read_image`'s layout) as a TIFF at ``target``, with its metadata."""
    import numpy as np
    import tifffile

    arr = np.asarray(image)
    if info.get("inverted"):  # MINISWHITE integer gray, inverted by _read_tiff: back
        arr = arr.copy()
        _invert_gray(arr, info)
    arr = _as_stored(arr, info)
    tifffile.imwrite(target, arr, **_tiff_kwargs(info, arr.shape, arr.dtype, scale))


def write_image(path: Path, image: object, info: dict, scale: int) -> None:
    """Write atomically (temp file, then rename) so a failed write leaves no half-written file.

    Metadata follows the image: TIFF axes, ImageJ metadata, resolution and DPI (pixels per unit
    grow by ``scale``: the pixel size shrinks by it). EXIF orientation is not written: read_image
    already turned the pixels upright.
    """
    import numpy as np

    with _atomic_write(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            _write_tiff(tmp, image, info, scale)
            return
        from PIL import Image

        if isinstance(image, Image.Image):
            im = image
        else:
            arr = np.asarray(image)
            im = Image.fromarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))  # e.g. big-endian TIFF
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]
        if im.mode not in _WRITABLE[fmt]:
            raise ValueError(f"{path}: {fmt} cannot store mode {im.mode}; write a .png or .tif instead")
        save: dict = {"quality": 95} if fmt == "JPEG" else {}
        if info.get("icc_profile"):
            save["icc_profile"] = info["icc_profile"]
        dpi = _dpi(info)
        if dpi:
            save["dpi"] = (dpi[0] * scale, dpi[1] * scale)
        im.save(tmp, format=fmt, **save)


def write_tiff_streamed(path: Path, image: Any, info: dict, scale: int, fill: Callable[[Any], None]) -> None:
    """Write the TIFF result of ``image`` (read by :func:`read_image`) as ``fill(out)`` makes it:
    ``out`` is a memory map of the output file, in ``image``'s layout with the Y and X axes
    ``scale`` times larger, so a result larger than memory goes straight to disk. Atomic and with
    the metadata of :func:`write_image` (bit for bit the same file content, tested)."""
    import numpy as np
    import tifffile

    proc_axes = str(info["proc_axes"])
    shape = list(np.shape(image))
    for ax in ("Y", "X"):
        shape[proc_axes.index(ax)] *= scale
    order = info.get("order") or list(range(len(shape)))
    stored_shape = [shape[k] for k in np.argsort(order)]  # as _as_stored transposes
    dtype = np.asarray(image).dtype
    nbytes = math.prod(stored_shape) * dtype.itemsize  # contiguous from the data offset (as tifffile.memmap maps it)
    with _atomic_write(path) as tmp:
        free = shutil.disk_usage(path.parent).free
        if nbytes > free:  # before any work, also where the blocks cannot be reserved below
            raise OSError(
                errno.ENOSPC,
                f"cannot write {path}: its pixels take {nbytes / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free",
            )
        kwargs = _tiff_kwargs(info, stored_shape, dtype, scale)
        offset, _ = tifffile.imwrite(tmp, shape=stored_shape, dtype=dtype, returnoffset=True, **kwargs)
        with open(tmp, "r+b") as fh:
            # Reserve the blocks now: a full disk (another writer may fill it) is an error here,
            # not a SIGBUS in the middle of writing through the memory map. Where reserving is not
            # supported (no posix_fallocate on macOS, some file systems) the check above stands.
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fh.fileno(), offset, nbytes)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise OSError(
                        exc.errno, f"cannot write {path}: {exc.strerror} (its pixels take {nbytes / 2**30:.2f} GiB)"
                    ) from exc
        try:
            mm = np.memmap(tmp, dtype=dtype, mode="r+", offset=offset, shape=tuple(stored_shape))
        except OSError as exc:  # a file system without shared memory maps (some FUSE mounts): in memory
            if exc.errno not in (errno.ENODEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENXIO):
                raise
            result = np.empty(shape, dtype)
            fill(result)
            _write_tiff(tmp, result, info, scale)
            return
        out = np.transpose(mm, order)  # read_image's axis order (a view)
        fill(out)
        if info.get("inverted"):
            _invert_gray(out, info)
        mm.flush()
        del out, mm


def _streamable(target: Path, image: Any, info: dict) -> bool:
    """Whether :func:`write_tiff_streamed` can write this result: a TIFF output of a TIFF input
    whose axes are known, in native byte order (memory maps are)."""
    import numpy as np

    return (
        target.suffix.lower() in (".tif", ".tiff")
        and info.get("format") == "tiff"
        and bool(info.get("proc_axes"))
        and isinstance(image, np.ndarray)
        and image.dtype.isnative
    )


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """The image files named or held (not recursively) by ``inputs``; a file named twice counts once."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in _SUFFIXES)
            if not found:
                raise UsageError(f"no {'/'.join(_SUFFIXES)} files in {p}")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in _SUFFIXES:
                raise UsageError(f"{p}: unsupported file type; expected one of {', '.join(_SUFFIXES)}")
            files.append(p)
        elif p.exists():
            raise UsageError(f"{p}: not a file or folder")
        else:
            raise UsageError(f"{p}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _plan_outputs(
    files: Sequence[Path], out: Path, name: Callable[[Path], str], overwrite: bool
) -> list[tuple[Path, Path]]:
    """``(input, target)`` pairs, all checked before any work so that nothing is left half done.

    ``out`` is the target itself for one input and a file name with a supported suffix (or an
    existing file of one), otherwise a folder that gets ``name(input)`` for each input. Refused:
    an image suffix psr cannot write, a file name for several inputs, an existing file where a
    folder is needed, two inputs with the same target, existing targets without ``overwrite``,
    unreadable inputs, and results their target format cannot store (e.g. alpha in a JPEG).
    """
    suffix = out.suffix.lower()
    supported = ", ".join(_SUFFIXES)
    if out.is_dir():
        single = False
    elif suffix in _SUFFIXES:
        if len(files) > 1:
            what = "is an existing file" if out.exists() else "looks like a file name"
            raise UsageError(
                f"-o {out} {what}, but there are {len(files)} inputs: -o must be a folder for several inputs"
            )
        single = True
    elif suffix in _IMAGE_LIKE:
        raise UsageError(f"-o {out}: cannot write {suffix} files; supported: {supported} (or name a folder)")
    elif out.exists():
        raise UsageError(f"-o {out} is an existing file, not a folder")
    else:
        single = False
    check_writable_folder(f"-o {out}", out.parent if single else out)
    plan = [(f, out if single else out / name(f)) for f in files]

    by_target: dict[Path, list[Path]] = {}
    for f, target in plan:
        by_target.setdefault(target, []).append(f)
    clashes = [(t, srcs) for t, srcs in by_target.items() if len(srcs) > 1]
    if clashes:
        lines = "; ".join(f"{t} <- {', '.join(map(str, srcs))}" for t, srcs in clashes)
        raise UsageError(
            f"several inputs would be written to the same file: {lines}; give them separate -o folders or rename them"
        )
    _refuse_existing([t for _, t in plan], overwrite)
    _DECODED.clear()
    try:
        for i, (f, target) in enumerate(plan):
            if target.exists() and target.is_dir():
                raise UsageError(f"{target} is a folder; cannot write {f} there")
            mode = _probe(f, keep=i == 0)  # the first input is processed first: keep its decoding
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(target.suffix.lower())
            if fmt is not None and mode not in _WRITABLE[fmt]:
                what = f"mode {mode}" if mode else "this kind of image (a stack, several channels, or its dtype)"
                alt = ".png or .tif" if mode in _WRITABLE["PNG"] else ".tif"
                raise UsageError(f"{f}: {fmt} cannot store {what} (-o {out}); write a {alt} instead")
    except BaseException:
        _DECODED.clear()
        raise
    return plan


def _read(path: Path) -> tuple[Any, dict]:
    """:func:`read_image`, with a failure named as an input error (the header already opened)."""
    try:
        kept = _DECODED.pop(_file_key(path), None) if _DECODED else None
        _DECODED.clear()  # one use: a stale decoding (the file changed since its check) goes too
        return kept if kept is not None else read_image(path)
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc


# ---------------------------------------------------------------------------------------------
# subcommands


def _check_model(args: argparse.Namespace) -> str | None:
    """The ``model`` argument for :func:`psr.upscale`, checked against ``--scale`` before any work."""
    from .weights import _meta_scale, list_models, read_metadata

    if args.bicubic and args.model not in (None, "bicubic"):
        raise UsageError(f"--bicubic and --model {args.model} ask for two different upscalers; give one of them")
    if args.bicubic or args.model == "bicubic":
        return "bicubic"
    if args.model is None:
        models = list_models()
        if f"x{args.scale}-pixel" not in models:
            scales = sorted({int(m["scale"]) for m in models.values() if isinstance(m.get("scale"), int)})
            shipped = ", ".join(f"x{s}" for s in scales) or "none"
            raise UsageError(
                f"--scale {args.scale}: no shipped model upscales by {args.scale} (shipped scales: {shipped}); "
                "use --bicubic or --model FILE"
            )
        return None
    try:
        meta = read_metadata(args.model)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--model {args.model}: {exc}") from None
    if meta.get("task", "sr") != "sr":
        raise UsageError(f"--model {args.model} is a {meta.get('task')} model; use psr stylize for styles")
    scale = _meta_scale(meta)
    if scale is not None and int(scale) != args.scale:
        raise UsageError(f"--model {args.model} upscales by {scale}, not {args.scale}; pass --scale {scale}")
    return args.model


def check_writable_folder(what: str, folder: Path) -> None:
    """Refuse, before any work, a folder that cannot be made or written into: its nearest existing
    ancestor must be a folder that takes a new file (tried: permission bits do not tell for a
    read-only mount, or for root). ``what`` names the option in the message, e.g. ``-o out``."""
    import tempfile

    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what}: {parent} is a file, not a folder")
            try:
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise UsageError(f"{what}: cannot write into {parent} ({reason})") from None
            return


def _refuse_existing(targets: Sequence[Path], overwrite: bool) -> None:
    """Outputs that exist stop the run before any work, unless --overwrite."""
    existing = [t for t in targets if t.exists()]
    if overwrite or not existing:
        return
    more = f" (and {len(existing) - 3} more)" if len(existing) > 3 else ""
    shown = ", ".join(map(str, existing[:3]))
    verb = "exists; pass --overwrite to replace it" if len(existing) == 1 else "exist; pass --overwrite to replace them"
    raise UsageError(f"{shown}{more} {verb}")


def _check_device(args: argparse.Namespace) -> None:
    """``--device`` checked before any input is read (CUDA asked for where there is none)."""
    from .api import _resolve_device

    try:
        _resolve_device(args.device, None)
    except ValueError as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None


def _cmd_upscale(args: argparse.Namespace) -> int:
    if args.sample:
        if args.inputs:
            raise UsageError(
                f"--sample {args.sample} upscales a bundled photo; it takes no INPUT files "
                f"(got {' '.join(args.inputs)}): give either"
            )
        return _upscale_sample(args)
    if not args.inputs:
        raise UsageError("give INPUT files/folders or --sample NAME")
    model = _check_model(args)
    _check_device(args)
    files = _collect_inputs(args.inputs)
    plan = _plan_outputs(
        files, Path(args.output), lambda f: f"{f.stem}_x{args.scale}{f.suffix.lower()}", args.overwrite
    )

    from tqdm import tqdm

    from .api import upscale

    tile = args.tile or None
    with tqdm(total=len(plan), unit="image", disable=args.quiet, desc="upscale") as bar:
        for f, target in plan:
            image, info = _read(f)
            with tqdm(leave=False, unit="tile", disable=args.quiet, desc=f.name) as tile_bar:

                def progress(done: int, total: int, tile_bar: tqdm = tile_bar) -> None:
                    tile_bar.total = total
                    tile_bar.update(done - tile_bar.n)

                def run(img: Any, progress: Callable[[int, int], None] = progress, **layout: Any) -> Any:
                    return upscale(
                        img,
                        args.scale,
                        model=model,
                        match_histogram=args.match_histogram,
                        tile=tile,
                        device=args.device,
                        precision=args.precision,
                        progress=progress,
                        **layout,
                    )

                def run_alpha(alpha: Any, **out: Any) -> Any:  # (H, W), or a stack of alpha planes
                    return upscale(
                        alpha, args.scale, model="bicubic", channel_axis=None, tile=tile, device=args.device, **out
                    )

                def fill(out: Any, image: Any = image, info: dict = info, run: Callable[..., Any] = run) -> None:
                    _process(image, info, run, run_alpha, out=out)

                result = None
                try:
                    if _streamable(target, image, info):
                        # Straight into a memory map of the output file: a stack whose result
                        # is larger than memory is written as it is made.
                        write_tiff_streamed(target, image, info, args.scale, fill)
                    else:
                        result = _process(image, info, run, run_alpha)
                except (ValueError, TypeError) as exc:  # refused by psr.upscale: say which input
                    raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"{f}: {exc}") from exc
            if result is not None:
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
        raise UsageError(f"--sample must be one of {', '.join(_SAMPLES)}")
    model = _check_model(args)
    if model == "bicubic":
        raise UsageError("--sample compares a network with bicubic; with --bicubic there is nothing to compare")
    _check_device(args)
    out = Path(args.output)
    name, f = args.sample, args.scale
    paths = {
        "input": out / f"{name}_lr.png",
        "bicubic": out / f"{name}_bicubic_x{f}.png",
        "psr": out / f"{name}_psr_x{f}.png",
        "original": out / f"{name}_original.png",
        "compare": out / f"{name}_compare.png",
    }
    # The same checks as for files, before any work: -o names a folder, outputs are new (or --overwrite).
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; --sample writes a folder of PNGs")
    check_writable_folder(f"-o {out}", out)
    _refuse_existing(list(paths.values()), args.overwrite)
    import skimage.data

    hr = getattr(skimage.data, args.sample)()
    if hr.ndim == 2:
        hr = np.stack([hr] * 3, axis=-1)
    hr = hr[: hr.shape[0] - hr.shape[0] % args.scale, : hr.shape[1] - hr.shape[1] % args.scale]
    lr = imresize(hr, 1 / args.scale)  # MATLAB bicubic over (H, W, 3), uint8
    sr = upscale(
        lr,
        args.scale,
        model=model,
        match_histogram=args.match_histogram,
        tile=args.tile or None,
        device=args.device,
        precision=args.precision,
    )
    bic = upscale(lr, args.scale, model="bicubic")
    out.mkdir(parents=True, exist_ok=True)
    for key, arr in (("input", lr), ("bicubic", bic), ("psr", sr), ("original", hr)):
        write_image(paths[key], arr, {"format": "pil"}, f)
    # Side by side: input enlarged by pixel replication (what the LR really holds), bicubic, psr, original.
    nearest = np.repeat(np.repeat(lr, f, axis=0), f, axis=1)
    gap = np.full((hr.shape[0], 8, 3), 255, np.uint8)
    strip = np.concatenate([nearest, gap, bic, gap, sr, gap, hr], axis=1)
    write_image(paths["compare"], Image.fromarray(strip), {"format": "pil"}, f)
    if args.quiet:
        return 0
    s = shave(rgb_to_y(hr), f)
    print(f"input {lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]} ({model or f'x{f}-pixel'})")
    print(
        f"PSNR (Y) vs original: bicubic {psnr(shave(rgb_to_y(bic), f), s, data_range=255):.2f} dB, "
        f"psr {psnr(shave(rgb_to_y(sr), f), s, data_range=255):.2f} dB"
    )
    for key, p in paths.items():
        print(f"  {key:9s} {p}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from .weights import list_models

    models = list_models()
    if args.json:  # every shipped network, styles too (each record says its task)
        print(json.dumps(list_models(task=None), indent=2, sort_keys=True))
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


def _bench_choices() -> tuple[str, ...]:
    """The benchmarks present in the source tree's benchmarks/ (bench_NAME.py), else the known ones."""
    found = sorted(p.stem[len("bench_") :] for p in _BENCHMARKS.glob("bench_*.py")) if _BENCHMARKS.is_dir() else []
    return tuple(found) or _BENCH_KNOWN


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = _BENCHMARKS / f"bench_{args.what}.py"
    if not script.is_file():
        raise UsageError(f"{script} not found (benchmarks live in the source tree)")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_build_ext(args: argparse.Namespace) -> int:
    from . import _build

    try:
        path = _build.build(force=args.force, verbose=args.verbose)
    except RuntimeError as exc:
        print(f"psr build-ext: error: {exc}", file=sys.stderr)
        return 1
    print(f"psr extension built: {path} (CUDA kernels: {_build.extension_info()['cuda']})")
    return 0


def _cmd_placeholder(args: argparse.Namespace) -> int:
    # Only reached if build_parser did not see the command name; build the real parser and rerun.
    return main([args.command, *args.rest])


def _add_heavy(sub: argparse._SubParsersAction, name: str, real: bool) -> None:
    """Register ``stylize``, ``train``, ``export`` or ``eval``: the real parser, or a placeholder
    that lists it."""
    if not real:
        p = sub.add_parser(name, help=_LAZY_HELP[name], add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_cmd_placeholder)
        return
    if name == "stylize":
        # importlib: the package attribute ``psr.stylize`` is the function, not the module.
        p = sub.add_parser(name, help=_LAZY_HELP[name], epilog=_EPILOG_SHORT)
        importlib.import_module("psr.stylize").add_arguments(p)
        p.set_defaults(func=_cmd_stylize)
        return
    if name in ("train", "export"):
        from . import train

        if name == "train":
            p = sub.add_parser(
                name,
                help=_LAZY_HELP[name],
                description=train.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the docstring's list
            )
            train.add_arguments(p)
            p.set_defaults(func=_cmd_train)
        else:
            p = sub.add_parser(name, help=_LAZY_HELP[name])
            train.add_export_arguments(p)
            p.set_defaults(func=_cmd_export)
        return
    evaluate = importlib.import_module("psr.evaluate")
    p = sub.add_parser(name, help=_LAZY_HELP[name], description=evaluate.__doc__)
    evaluate.add_arguments(p)
    p.set_defaults(func=_cmd_eval)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``psr`` parser for ``argv``.

    ``stylize``, ``train``, ``export`` and ``eval`` import torch (the last three the training
    stack) to build their options, so they get their real parsers only when ``argv`` names them
    (or when ``argv`` is None: everything); otherwise placeholders list them in ``psr --help`` and
    in "invalid choice" messages.
    """
    parser = argparse.ArgumentParser(
        prog="psr",
        description="Perceptual-loss super-resolution.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"psr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Subcommands whose options need torch get their real parsers only when asked for, so
    # `psr --help` and `psr upscale` stay light.
    command = None if argv is None else next((a for a in argv if not a.startswith("-")), None)

    p = sub.add_parser("upscale", help="upscale image files (PNG, JPEG, TIFF)", epilog=_EPILOG_SHORT)
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files or folders (a file given twice is upscaled once)"
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder (made if needed; it gets NAME_x{scale}.EXT for each input), or a .png/.jpg/.tif file "
        "name for a single input",
    )
    p.add_argument("--scale", type=_scale_arg, default=4, help="upscaling factor, 2 to 8 (default 4)")
    p.add_argument("--model", default=None, help="shipped model name or weights file (default x{scale}-pixel)")
    p.add_argument("--bicubic", action="store_true", help="MATLAB-compatible bicubic instead of a network")
    hm = p.add_mutually_exclusive_group()
    hm.add_argument(
        "--match-histogram",
        dest="match_histogram",
        action="store_true",
        default=None,
        help="histogram-match the output to the input (the paper's post-process; default: what the model's "
        "metadata says, off for the shipped models)",
    )
    hm.add_argument("--no-match-histogram", dest="match_histogram", action="store_false", help="never match")
    p.add_argument("--tile", type=_tile_arg, default=256, help="tile size in input pixels, >= 8 (0: whole image)")
    p.add_argument("--device", default="auto", help="auto (CUDA where available, else CPU), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="network arithmetic: bfloat16 is about 2-7x faster on bf16-capable CPUs, faster on GPUs (about -0.001 dB)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--sample", choices=_SAMPLES, help="demo: downscale a bundled photo and upscale it back")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary; errors only")
    p.set_defaults(func=_cmd_upscale)

    _add_heavy(sub, "stylize", real=argv is None or command == "stylize")

    p = sub.add_parser("models", help="list shipped models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    p.add_argument("what", choices=_bench_choices(), help="which benchmarks/bench_WHAT.py to run")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the script's own options (psr bench WHAT --help)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("build-ext", help="build the C++/CUDA extension ahead of time")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_build_ext)

    for name in ("train", "export", "eval"):
        _add_heavy(sub, name, real=argv is None or command == name)
    return parser


def _error(args: argparse.Namespace, message: object, status: int) -> int:
    text = str(message)
    prefix = f"psr {getattr(args, 'command', '')}".rstrip()
    print(text if text.startswith(prefix + ":") else f"{prefix}: error: {text}", file=sys.stderr)
    return status


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (a job scheduler's or ``kill``'s stop) as ``SystemExit(143)``: cleanup runs, so
    no temporary file of an output being written is left behind. Only where SIGTERM has its
    default action and in the main thread (a caller's own handler is left alone)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``psr``; returns the exit status (0 ok, 1 a failure at run time, 2 a usage or input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        debug = env_flag("PSR_DEBUG")
    except ValueError as exc:
        return _error(args, exc, 2)
    try:
        with _sigterm_as_exit():
            return int(args.func(args) or 0)
    except SystemExit as exc:  # UsageError, or a subcommand's SystemExit("message")
        if not isinstance(exc.code, str):
            raise
        _traceback_if(debug)
        return _error(args, exc.code, 2)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # bad arguments, found out by the API
        _traceback_if(debug)
        return _error(args, exc, 2)
    except (OSError, RuntimeError, MemoryError) as exc:  # disk, device, out of memory
        _traceback_if(debug)
        return _error(args, f"{_describe(exc)}" + ("" if debug else " (PSR_DEBUG=1 for a traceback)"), 1)


def _traceback_if(debug: bool) -> None:
    # PSR_DEBUG=1: the traceback too, then the same one-line error and exit status.
    if debug:
        import traceback

        traceback.print_exc()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
