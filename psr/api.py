"""``psr.upscale``: numpy, PIL or torch in, the same kind out."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import ops
from ._checks import channel_axis_arg, channel_axis_index
from .models import SRNet
from .resize import saturating_int_cast
from .weights import WEIGHTS_DIR, _file_version, _resolve, _weights_key, load_model

__all__ = ["upscale", "Upscaler", "resolve_model", "BICUBIC"]

BICUBIC = "bicubic"
_PIL_MODES = {"L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32, "RGB": np.uint8, "RGBA": np.uint8}
# 16-bit gray in a stated byte order (Pillow opens big-endian 16-bit TIFFs as I;16B): read as
# uint16 and returned in the same mode.
_PIL_16 = {"I;16B": ">u2", "I;16L": "<u2", "I;16N": "=u2"}
_PIL_MODES.update(dict.fromkeys(_PIL_16, np.uint16))
# What to convert other PIL modes to first (psr returns the mode it was given, which these cannot
# hold after upscaling: a palette, 1-bit, or a colour space the networks were not trained on).
_PIL_CONVERT = {
    "1": "L",
    "P": "RGB') (or image.convert('RGBA') where it has transparency",
    "PA": "RGBA",
    "LA": "RGBA",
    "La": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_MAX_NDIM = 6


# ---------------------------------------------------------------------------------------------
# models


class _Bicubic(nn.Module):
    """The MATLAB-compatible bicubic baseline (Keys a=-0.5, symmetric padding) as a 'model'."""

    receptive_radius = 3
    metadata = {"name": BICUBIC, "match_histogram": False}
    name = BICUBIC

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        y = ops.upsample_bicubic(x, self.scale, a=-0.5, check=False)
        return y.clamp(0, 1) if clamp else y


@functools.lru_cache(maxsize=8)
def _cached_model(version: tuple[str, int, int, int], device: str) -> SRNet:
    # Keyed on the file's absolute path, inode, mtime and size (weights._file_version), not the name as typed.
    return load_model(version[0], device=device)


def resolve_model(model: str | os.PathLike | nn.Module | None, scale: int, device: torch.device) -> nn.Module:
    """The network for ``model`` (None: the shipped ``x{scale}-pixel``), checked against ``scale``."""
    if model is None:
        name = f"x{scale}-pixel"
        if not (WEIGHTS_DIR / f"{name}.safetensors").is_file():
            from .weights import list_models

            shipped = ", ".join(f"{k} (x{v.get('scale')})" for k, v in sorted(list_models(task="sr").items()))
            raise ValueError(
                f"scale={scale}: no shipped model {name!r}; pass model='bicubic' or a weights file "
                f"(shipped upscaling models: {shipped or 'none'})"
            )
        model = name
    if isinstance(model, str) and model == BICUBIC:
        return _Bicubic(scale)
    if isinstance(model, (str, os.PathLike)):
        net = _cached_model(_file_version(_resolve(_weights_key(model))), str(device))
    elif isinstance(model, nn.Module):
        net = model.to(device).eval()
    else:
        raise TypeError(
            f"model must be None, 'bicubic', a shipped name, a path or an nn.Module, got {type(model).__name__}"
        )
    net_scale = getattr(net, "scale", None)
    if net_scale is None and isinstance(model, nn.Module):
        return net  # a plain module: its output shape is checked on the first tile instead
    if net_scale != scale:
        raise ValueError(f"model {getattr(net, 'name', model)!r} upscales by {net_scale}, but scale={scale} was asked")
    return net


# ---------------------------------------------------------------------------------------------
# input canonicalisation


@dataclass
class _Layout:
    """How to undo the canonicalisation (B, C, H, W) -> caller's array."""

    kind: str  # "numpy" | "pil" | "torch"
    dtype: Any  # numpy dtype of the caller's data (torch dtype for tensors)
    shape: tuple[int, ...]  # caller's shape after moving the channel axis last
    channel_axis: int | None  # caller's channel axis (normalised, >= 0), None for no channel axis
    rgb: bool  # channels are RGB(A) rather than independent gray images
    pil_mode: str | None = None
    torch_device: torch.device | None = None


def _as_array(image: Any) -> tuple[np.ndarray | torch.Tensor, str, str | None]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        if image.mode not in _PIL_MODES:
            hint = _PIL_CONVERT.get(image.mode)
            raise ValueError(
                f"image: PIL mode {image.mode!r} is not supported; expected one of {sorted(_PIL_MODES)}"
                + (f" (convert it first: image.convert('{hint}'))" if hint else "")
            )
        arr = np.asarray(image)
        if image.mode == "I;16" or image.mode in _PIL_16:
            arr = arr.astype(np.uint16)  # native byte order
        return arr, "pil", image.mode
    if isinstance(image, torch.Tensor):
        return image, "torch", None
    if isinstance(image, np.ndarray):
        return image, "numpy", None
    raise TypeError(f"image must be a numpy array, PIL.Image or torch.Tensor, got {type(image).__name__}")


def _all_finite(arr: np.ndarray) -> bool:
    """No NaN or Inf in ``arr`` (always true for integers), tested in slices so that the
    temporary stays small however large the image."""
    if arr.dtype.kind != "f":
        return True
    flat = arr.reshape(-1)
    step = 1 << 24
    return all(np.isfinite(flat[i : i + step]).all() for i in range(0, flat.size, step))


def _check_dtype(dtype: np.dtype) -> None:
    if dtype == np.bool_ or dtype.kind not in "uif":
        raise TypeError(f"image dtype must be an integer or floating type, got {dtype}")


# With channel_axis="auto", a last axis this small that is not 1, 3 or 4 could be channels or a
# very narrow image: refuse to guess.
_AUTO_MIN_WIDTH = 8


def _check_flag(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise TypeError(f"{name} must be None, True or False, got {value!r}")


def _channel_layout(
    shape: tuple[int, ...], channel_axis: int | str | None, rgb: bool | None, kind: str
) -> tuple[int | None, bool]:
    """(channel axis normalised to >= 0 or None, whether it holds RGB(A)) for an image of ``shape``."""
    ndim = len(shape)
    channel_axis = channel_axis_arg(channel_axis)
    if channel_axis == "auto":
        if kind == "torch":
            if ndim not in (2, 3, 4):
                raise ValueError(
                    f"image: a tensor must be (H, W), (C, H, W) or (N, C, H, W) with channel_axis='auto', got "
                    f"shape {shape}; pass channel_axis for other layouts"
                )
            ch_axis = None if ndim == 2 else ndim - 3
            if ch_axis is not None and shape[ch_axis] not in (1, 3, 4):
                raise ValueError(
                    f"image: tensor channels must be 1, 3 or 4, got {shape[ch_axis]} in shape {shape}; pass "
                    "channel_axis (None: a stack of gray images) for other layouts"
                )
        elif ndim >= 3 and shape[-1] in (1, 3, 4):
            ch_axis = ndim - 1
        elif ndim >= 3 and shape[-1] < _AUTO_MIN_WIDTH:
            raise ValueError(
                f"image: shape {shape} is ambiguous with channel_axis='auto' (a last axis of {shape[-1]} is "
                f"neither 1, 3 nor 4 channels); pass channel_axis=-1 for {shape[-1]} channels or channel_axis=None "
                f"for a stack of {shape[-2]}x{shape[-1]} images"
            )
        else:
            ch_axis = None
        default_rgb = ch_axis is not None and shape[ch_axis] in (3, 4)
    elif channel_axis is None:
        ch_axis, default_rgb = None, False
    else:
        if kind == "pil":
            raise ValueError(f"channel_axis={channel_axis!r}: a PIL image's layout is fixed; leave channel_axis='auto'")
        ch_axis, default_rgb = channel_axis_index(channel_axis, shape), False
    if channel_axis is None and kind == "pil":
        raise ValueError("channel_axis=None: a PIL image's layout is fixed; leave channel_axis='auto'")
    is_rgb = default_rgb if rgb is None else rgb
    if is_rgb and (ch_axis is None or shape[ch_axis] not in (3, 4)):
        got = "no channel axis" if ch_axis is None else f"{shape[ch_axis]} channels"
        raise ValueError(f"rgb=True needs 3 or 4 channels on the channel axis, got {got} in shape {shape}")
    return ch_axis, is_rgb


def _canonical(image: Any, channel_axis: int | str | None, rgb: bool | None) -> tuple[np.ndarray, _Layout]:
    """(B, H, W, C) numpy array (any dtype) plus the layout to undo it."""
    rgb = _check_flag("rgb", rgb)
    arr, kind, pil_mode = _as_array(image)
    torch_device = None
    if kind == "torch":
        t = arr
        assert isinstance(t, torch.Tensor)
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"image dtype must be an integer or floating type, got {t.dtype}")
        torch_device = t.device
        tdtype = t.dtype
        # bfloat16 has no numpy twin; compute in float32 and cast back at the end.
        arr = (t.detach().float() if t.dtype in (torch.bfloat16, torch.float16) else t.detach()).cpu().numpy()
    else:
        assert isinstance(arr, np.ndarray)
        tdtype = arr.dtype
        _check_dtype(arr.dtype)
    if arr.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (H, W), got shape {tuple(arr.shape)}")
    if arr.ndim > _MAX_NDIM:
        raise ValueError(f"image has {arr.ndim} dimensions; at most {_MAX_NDIM} are supported")
    if any(s == 0 for s in arr.shape):
        raise ValueError(f"image is empty: shape {tuple(arr.shape)} has a zero-size axis")
    ch_axis, is_rgb = _channel_layout(tuple(arr.shape), channel_axis, rgb, kind)
    if not _all_finite(arr):
        raise ValueError("image contains NaN or Inf values; expected finite intensities")
    moved = arr if ch_axis is None else np.moveaxis(arr, ch_axis, -1)
    layout = _Layout(kind, tdtype, moved.shape, ch_axis, is_rgb, pil_mode, torch_device)
    if ch_axis is None:
        canon = moved.reshape(-1, *moved.shape[-2:], 1)
    elif is_rgb:
        canon = moved.reshape(-1, *moved.shape[-3:])
    else:  # independent gray channels: fold channels into the batch
        b = moved.reshape(-1, *moved.shape[-3:])
        canon = np.moveaxis(b, -1, 1).reshape(-1, *b.shape[1:3], 1)
    return canon, layout


def _result_shape(layout: _Layout, scale: int) -> tuple[int, ...]:
    """The caller's shape of the result: :func:`_restore`'s output shape."""
    sh = list(layout.shape)
    if layout.channel_axis is None:
        sh[-2:] = [sh[-2] * scale, sh[-1] * scale]
        return tuple(sh)
    sh[-3:-1] = [sh[-3] * scale, sh[-2] * scale]
    c = sh.pop()
    sh.insert(layout.channel_axis, c)
    return tuple(sh)


def _canonical_out(out: Any, image: Any, layout: _Layout, scale: int) -> np.ndarray:
    """The caller's ``out`` with the channel axis moved last (a view, any strides), checked against
    the result :func:`upscale` would return; :func:`_out_image` picks each image's part."""
    if layout.kind != "numpy":
        raise TypeError(f"out is for numpy images; got a {layout.kind} image (use the returned result)")
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array (or memmap), got {type(out).__name__}")
    want = _result_shape(layout, scale)
    if out.shape != want or out.dtype != layout.dtype:
        raise ValueError(
            f"out must have the result's shape {want} and dtype {layout.dtype}, got {out.shape} {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if np.may_share_memory(out, image):
        raise ValueError("out overlaps image; pass a separate array")
    return out if layout.channel_axis is None else np.moveaxis(out, layout.channel_axis, -1)


def _independent(layout: _Layout) -> bool:
    """Whether the channels are independent gray images (folded into the batch, channel fastest)."""
    return layout.channel_axis is not None and not layout.rgb


def _out_image(moved: np.ndarray, layout: _Layout, i: int) -> np.ndarray:
    """The (fH, fW, C) view of :func:`_canonical_out`'s array that canonical image ``i`` fills: the
    stack axes are indexed, never merged, so any strides work."""
    if layout.channel_axis is None:
        stack = moved.shape[:-2]
        return moved[np.unravel_index(i, stack) if stack else ()][..., None]
    stack = moved.shape[:-3]
    if layout.rgb:
        return moved[np.unravel_index(i, stack) if stack else ()]
    plane, k = divmod(i, layout.shape[-1])  # independent channels: channel fastest
    return moved[np.unravel_index(plane, stack) if stack else ()][..., k : k + 1]


def _restore(out: np.ndarray, layout: _Layout, scale: int) -> Any:
    """Inverse of :func:`_canonical` for an output (B, fH, fW, C)."""
    sh = list(layout.shape)
    if layout.channel_axis is None:
        sh[-2:] = [sh[-2] * scale, sh[-1] * scale]
        res = out.reshape(sh)
    else:
        sh[-3:-1] = [sh[-3] * scale, sh[-2] * scale]
        if layout.rgb:
            res = out.reshape(sh)
        else:
            c = sh[-1]
            b = out.reshape(-1, c, sh[-3], sh[-2])
            res = np.moveaxis(b, 1, -1).reshape(sh)
        res = np.moveaxis(res, -1, layout.channel_axis)
    res = np.ascontiguousarray(res)
    if layout.kind == "pil":
        from PIL import Image

        if layout.pil_mode in _PIL_16:  # the byte order asked for, which fromarray cannot give
            h, w = res.shape
            return Image.frombytes(layout.pil_mode, (w, h), res.astype(_PIL_16[layout.pil_mode]).tobytes())
        # Pillow infers L / I;16 / RGB / RGBA from the dtype and channel count.
        return Image.fromarray(res)
    if layout.kind == "torch":
        t = torch.from_numpy(res)
        return t.to(device=layout.torch_device, dtype=layout.dtype)
    return res


# ---------------------------------------------------------------------------------------------
# intensity mapping


# Output dtypes whose map back runs in torch (on the tiles' device), with the torch dtype that
# carries the result to the host exactly (float16 stays on the host: torch rounds float64 ->
# float16 through float32, numpy directly; 64-bit and unsigned 32-bit integers too: beyond int32,
# and numpy's own cast of 2^63 is platform-defined).
_TORCH_OUT = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.uint16): torch.int32,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


@dataclass
class _Intensity:
    """Affine map of the caller's values to the network's [0, 1] and back, with output clipping."""

    lo: float
    hi: float
    clip_lo: np.ndarray  # per channel
    clip_hi: np.ndarray
    dtype: np.dtype

    def forward(self, a: np.ndarray) -> np.ndarray:
        if a.dtype.itemsize <= 2 or a.dtype == np.float32:  # exact enough in float32 (uint16 is exact)
            return ((a.astype(np.float32) - np.float32(self.lo)) / np.float32(self.hi - self.lo)).astype(np.float32)
        # 32/64-bit ints and float64: subtract in float64, or values far from 0 lose their low bits.
        return ((a.astype(np.float64) - self.lo) / (self.hi - self.lo)).astype(np.float32)

    def backward(self, y: np.ndarray) -> np.ndarray:
        v = y.astype(np.float64) * (self.hi - self.lo) + self.lo
        v = np.clip(v, self.clip_lo[: v.shape[-1]], self.clip_hi[: v.shape[-1]])
        if self.dtype.kind in "ui":
            return saturating_int_cast(np.rint(v), self.dtype)
        return v.astype(self.dtype)

    def backward_into(self, dst: np.ndarray, y: torch.Tensor, band_values: int = 1 << 22) -> None:
        """``dst[...] = backward(y)`` for a (C, h, w) tensor ``y`` and an (h, w, C) host array view.

        Where torch has the output dtype the map runs on ``y``'s device (a CUDA device, or the
        CPU's threads) in bands of rows: each band is made channel-last there, mapped with
        ``backward``'s float64 operations in the same order (bit for bit the same result, tested),
        and crosses to the host once, contiguous (1-4 bytes a value), straight into ``dst``'s rows.
        On an H100 the numpy map of float32 tiles on one core took most of ``psr.upscale``'s time,
        and a strided (channel-first) result cost a transposing copy on the host. Other output
        dtypes (float16, uint32, 64-bit integers) use ``backward``.
        """
        if self.dtype not in _TORCH_OUT:
            dst[...] = self.backward(y.permute(1, 2, 0).float().cpu().numpy())
            return
        c, h, w = y.shape
        clip_lo, clip_hi = self.clip_lo[:c], self.clip_hi[:c]
        uniform = bool(np.all(clip_lo == clip_lo[0]) and np.all(clip_hi == clip_hi[0]))
        if not uniform:  # per-channel bounds, on y's device once for all bands
            lo = torch.as_tensor(clip_lo, dtype=torch.float64, device=y.device)
            hi = torch.as_tensor(clip_hi, dtype=torch.float64, device=y.device)
        rows = max(1, band_values // max(1, w * c))
        for r0 in range(0, h, rows):
            band = y[:, r0 : r0 + rows].permute(1, 2, 0).contiguous()  # channel-last, in y's dtype
            v = band.to(torch.float64).mul_(self.hi - self.lo).add_(self.lo)
            if uniform:  # clamp is max then min, np.clip's order; scalars avoid a broadcast
                v = v.clamp_(float(clip_lo[0]), float(clip_hi[0]))
            else:
                v = torch.minimum(torch.maximum(v, lo, out=v), hi, out=v)
            if self.dtype.kind in "ui":
                v = v.round_()
            dst[r0 : r0 + rows] = v.to(_TORCH_OUT[self.dtype]).cpu().numpy()


def _intensities(canon: np.ndarray, layout: _Layout, normalize: tuple[float, float] | None) -> list[_Intensity]:
    """The intensity maps of ``canon``'s images: image ``i`` uses entry ``i % len(result)``.

    Independent gray channels (folded into the batch by :func:`_canonical`, channel fastest) get
    one map each over all their planes, so that a dim channel beside a bright one is not squeezed
    into a corner of [0, 1]; anything else gets one map over the whole input.
    """
    groups = layout.shape[-1] if _independent(layout) else 1
    return [_intensity(canon[k::groups], layout.rgb, normalize) for k in range(groups)]


def _intensity(canon: np.ndarray, rgb: bool, normalize: tuple[float, float] | None) -> _Intensity:
    dtype = canon.dtype
    c = canon.shape[-1]
    colour = canon[..., :3] if rgb and c == 4 else canon
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        clip_lo, clip_hi = np.full(c, float(info.min)), np.full(c, float(info.max))
    else:
        # Floats stay within the input's own range per channel group (bicubic rings past it).
        clip_lo, clip_hi = np.full(c, float(colour.min())), np.full(c, float(colour.max()))
        if rgb and c == 4:
            clip_lo[3], clip_hi[3] = float(canon[..., 3].min()), float(canon[..., 3].max())
    if dtype == np.uint8:
        return _Intensity(0.0, 255.0, clip_lo, clip_hi, dtype)
    if normalize is None:
        if dtype.kind in "ui" and dtype.itemsize >= 4:
            raise ValueError(
                f"normalize=None maps {dtype}'s full range to [0, 1], which the network's float32 cannot "
                "resolve; use normalize=(lo, hi) percentiles (the default (0.1, 99.9))"
            )
        if dtype.kind in "ui":
            return _Intensity(float(clip_lo[0]), float(clip_hi[0]), clip_lo, clip_hi, dtype)
        if clip_lo.min() < 0 or clip_hi.max() > 1:
            raise ValueError(
                f"normalize=None expects floats in [0, 1], got values in [{clip_lo.min():.9g}, {clip_hi.max():.9g}]; "
                "use normalize=(lo, hi) percentiles instead"
            )
        # Like uint8 within 0..255: the caller's [0, 1] is the valid range.
        return _Intensity(0.0, 1.0, np.zeros(c), np.ones(c), dtype)
    try:
        plo, phi = (float(v) for v in normalize)
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be None or a (lo, hi) pair of percentiles, got {normalize!r}") from None
    if not 0 <= plo < phi <= 100:
        raise ValueError(f"normalize percentiles must satisfy 0 <= lo < hi <= 100, got {normalize!r}")
    lo, hi = (float(v) for v in np.percentile(colour, [plo, phi]))
    if hi <= lo:  # a (nearly) constant image: any positive span maps it back exactly
        hi = lo + 1.0
    return _Intensity(lo, hi, clip_lo, clip_hi, dtype)


# ---------------------------------------------------------------------------------------------
# tiling


def _tiles(n: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


_PRECISIONS = {"float32": False, "bfloat16": True, "bf16": True}


def _check_precision(precision: str) -> bool:
    """Whether ``precision`` asks for bf16 autocast; ValueError for an unknown one."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, _PRECISIONS))}, got {precision!r}")
    return _PRECISIONS[precision]


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # psr's own networks skip their final clamp: the caller clips after mapping intensities back.
    if isinstance(net, (SRNet, _Bicubic)):
        return net(x, clamp=False)
    return net(x)


def _run_tiled(
    run: Callable[[int, int, int, int], torch.Tensor],
    h: int,
    w: int,
    scale: int,
    tile: int | None,
    overlap: int,
    write: Callable[[slice, slice, torch.Tensor], None],
) -> None:
    """Call ``run(y0, y1, x0, x1)`` on overlapping tiles of an (h, w) input; ``write`` each centre.

    Each tile is extended by ``overlap`` input pixels on every side that lies inside the image and
    only its centre is kept: with ``overlap`` at least the network's receptive radius the result
    equals the whole-image result, since every output pixel then sees the same input pixels.
    """
    if tile is None or (h <= tile and w <= tile):
        write(slice(0, h * scale), slice(0, w * scale), run(0, h, 0, w))
        return
    for y0, y1 in _tiles(h, tile):
        for x0, x1 in _tiles(w, tile):
            ey0, ey1 = max(0, y0 - overlap), min(h, y1 + overlap)
            ex0, ex1 = max(0, x0 - overlap), min(w, x1 + overlap)
            y = run(ey0, ey1, ex0, ex1)
            oy, ox = (y0 - ey0) * scale, (x0 - ex0) * scale
            block = y[..., oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
            write(slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale), block)


def _count_tiles(h: int, w: int, tile: int | None) -> int:
    if tile is None or (h <= tile and w <= tile):
        return 1
    return math.ceil(h / tile) * math.ceil(w / tile)


def _resolve_device(device: str | torch.device, image: Any) -> torch.device:
    # Checked here, before any model loads (upscale and stylize resolve the device first).
    if isinstance(image, torch.Tensor) and image.device.type == "meta":
        raise ValueError("image is a tensor on the meta device, which holds no data")
    if isinstance(device, str) and device == "auto":
        if isinstance(image, torch.Tensor) and image.device.type != "cpu":
            return image.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}") from None
    if dev.type == "meta":
        raise ValueError(f"device={device!r}: the meta device holds no data; use 'cpu', 'cuda' or 'auto'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: there are {torch.cuda.device_count()} CUDA devices (0-based)")
    return dev


def _output_bytes(n_values: int, scale: int, itemsize: int) -> int:
    """What :func:`upscale` counts for the result of ``n_values`` input values (at least 4 bytes a
    value: its float32 tiles), and refuses above the machine's memory."""
    return n_values * scale * scale * max(4, itemsize)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def upscale(
    image: Any,
    scale: int = 4,
    *,
    model: str | os.PathLike | nn.Module | None = None,
    match_histogram: bool | None = None,
    channel_axis: int | str | None = "auto",
    rgb: bool | None = None,
    normalize: tuple[float, float] | None = (0.1, 99.9),
    tile: int | None = 256,
    tile_overlap: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "float32",
    progress: Callable[[int, int], None] | None = None,
    out: np.ndarray | None = None,
) -> Any:
    """Upscale an image by an integer factor with a trained network.

    Parameters
    ----------
    image : ndarray, PIL.Image or Tensor
        numpy: (H, W) gray, (..., H, W, 3|4) RGB(A) with ``channel_axis="auto"``, or any layout
        with an explicit ``channel_axis``. PIL: modes L, I;16, I, F, RGB, RGBA (convert others first). torch:
        (H, W), (C, H, W) or (N, C, H, W) with C in {1, 3, 4}.
    scale : int
        Upscaling factor; must equal the model's.
    model : str, path or nn.Module, optional
        A shipped name (see :func:`psr.list_models`), a weights file, a module mapping RGB [0, 1]
        (N, 3, H, W) to (N, 3, fH, fW), or ``"bicubic"`` for the MATLAB-compatible bicubic
        baseline. Default: the shipped ``x{scale}-pixel``. A plain name (no path separator, no
        ``.safetensors`` suffix) of a shipped model loads it even where a file or folder of that
        name exists in the working directory; write ``./name`` for the local file. A module without
        a ``scale`` attribute is trusted to upscale by ``scale`` and its output shape is checked;
        its tiles overlap by 16 input pixels unless it has a ``receptive_radius`` attribute.
    match_histogram : bool, optional
        Match each output channel's histogram to the LR input's (the paper's post-processing), once
        over the whole image. Default: the model's own default, chosen on validation data.
    channel_axis : "auto", None or int
        ``"auto"``: for numpy, a last axis of 3 or 4 is RGB(A) and 1 is a gray channel, whatever
        the number of leading (stack) axes; a last axis of 2 or 5-7 is ambiguous and refused; any
        other shape has no channel axis. For tensors, (C, H, W) or (N, C, H, W) with C in
        {1, 3, 4}. ``None``: every axis before the last two is a stack of gray images. An integer
        names the channel axis (numpy and tensors); each channel is then a gray image unless
        ``rgb=True``. PIL images take only ``"auto"``.
    rgb : bool, optional
        Whether the channel axis holds RGB(A) (True needs 3 or 4 channels). Default: True for a
        3- or 4-channel axis found by ``"auto"``, else False; ``rgb=False`` upscales 3 or 4
        channels as independent gray images.
    normalize : (lo, hi) or None
        For inputs other than uint8: percentiles mapped to 0 and 1 before the network and back
        after, computed once over the whole input, or once per channel over all its planes where
        the channels are independent gray images (``channel_axis`` given, not RGB). ``None``: floats are already in [0, 1], 8- and
        16-bit ints use their dtype's full range (refused for 32/64-bit ints, whose full range
        the network's float32 cannot resolve).
    tile : int or None
        Tile size in input pixels; ``None`` processes each image whole. Tiles overlap so that the
        result equals the whole-image result.
    tile_overlap : int, optional
        Overlap in input pixels; default the model's receptive radius.
    device : "auto", str or torch.device
        "auto": the input tensor's device, else CUDA when available, else the CPU.
    precision : {"float32", "bfloat16"}
        Arithmetic of the network. ``"bfloat16"`` runs it under bf16 autocast with channels-last
        tensors: about 2-7x faster on CPUs with bf16 support (by host and size), faster on GPUs, for about -0.001 dB on Set5
        x4 (benchmarks/RESULTS.md). Tiles then agree with the whole image to bf16 rounding, not
        exactly. Intensity mapping, the bicubic skip and histogram matching stay in float32.
    progress : callable, optional
        Called as ``progress(done, total)`` after each tile; raise from it to cancel.
    out : ndarray, optional
        For numpy images: a writable array of the result's shape and dtype to write into, for
        example a ``numpy.memmap`` or ``tifffile.memmap`` of an output file, so that a result
        larger than the machine's memory is written to disk as it is made (the memory check is
        then the caller's). It must not overlap ``image``. Returned.

    Returns
    -------
    The same kind as ``image``: numpy with the same dtype and layout, PIL of the same mode, or a
    tensor of the same dtype on the input's device. Spatial axes are ``scale`` times larger.
    Integer outputs are rounded and clipped to their dtype; float outputs are clipped to [0, 1]
    with ``normalize=None`` and to the input's value range otherwise (each independent channel's
    own range).

    Notes
    -----
    Gray images go through the RGB network replicated to three channels and are averaged back.
    Alpha is upscaled with the bicubic baseline, never by the network.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2 or scale > 8:
        raise ValueError(f"scale must be an integer in 2..8, got {scale!r}")
    scale = int(scale)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 8):
        raise ValueError(f"tile must be None or an integer >= 8, got {tile!r}")
    bf16 = _check_precision(precision)
    match_histogram = _check_flag("match_histogram", match_histogram)
    dev = _resolve_device(device, image)
    net = resolve_model(model, scale, dev)
    if tile_overlap is None:
        tile_overlap = int(getattr(net, "receptive_radius", 16))
    elif isinstance(tile_overlap, bool) or not isinstance(tile_overlap, (int, np.integer)) or tile_overlap < 0:
        raise ValueError(f"tile_overlap must be a non-negative integer, got {tile_overlap!r}")
    if match_histogram is None:
        match_histogram = bool(getattr(net, "metadata", {}).get("match_histogram", False))

    canon, layout = _canonical(image, channel_axis, rgb)
    b, h, w, c = canon.shape
    if out is None:
        out_bytes = _output_bytes(b * h * w * c, scale, canon.dtype.itemsize)
        if out_bytes > _physical_memory():
            raise ValueError(
                f"image of shape {tuple(layout.shape)} would upscale x{scale} to {out_bytes / 2**30:.1f} GiB, "
                "more than this machine's memory; pass out= (e.g. a tifffile.memmap) to write it to disk"
            )
        result = None
        canon_out = np.empty((b, h * scale, w * scale, c), dtype=canon.dtype)
        dest: Callable[[int], np.ndarray] = canon_out.__getitem__
    else:
        result = out
        dest = functools.partial(_out_image, _canonical_out(out, image, layout, scale), layout)
    intens = _intensities(canon, layout, normalize)
    total = b * _count_tiles(h, w, tile)
    done = 0

    for i in range(b):
        img = canon[i]  # (H, W, C) in the caller's dtype
        inten = intens[i % len(intens)]

        def run(y0: int, y1: int, x0: int, x1: int, img: np.ndarray = img, inten: _Intensity = inten) -> torch.Tensor:
            x = torch.from_numpy(inten.forward(img[y0:y1, x0:x1])).permute(2, 0, 1)[None].to(dev)
            colour = x[:, :3] if c >= 3 else x.expand(1, 3, *x.shape[-2:])
            if bf16:
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    y = _forward(net, colour.contiguous(memory_format=torch.channels_last)).float()
                y = y.contiguous()
            else:
                y = _forward(net, colour.contiguous())
            if y.shape != (1, 3, (y1 - y0) * scale, (x1 - x0) * scale):
                raise ValueError(
                    f"model {getattr(net, 'name', type(net).__name__)!r} returned shape {tuple(y.shape)} for an "
                    f"input of shape {tuple(colour.shape)}; expected (1, 3, {(y1 - y0) * scale}, {(x1 - x0) * scale}) "
                    f"at scale={scale}"
                )
            if c < 3:  # gray through the RGB network: averaged back
                y = y.mean(dim=1, keepdim=True)
            if c == 4:  # alpha is coverage, not image content: bicubic, never the network
                y = torch.cat([y, ops.upsample_bicubic(x[:, 3:4], scale, a=-0.5, check=False)], dim=1)
            return y

        if match_histogram:
            # Matching needs the whole output: a float32 buffer of it is the one allocation that
            # grows with the image beyond the input and output arrays.
            buf = torch.empty((1, c, h * scale, w * scale), dtype=torch.float32, device=dev)

            def write(ys: slice, xs: slice, block: torch.Tensor, buf: torch.Tensor = buf) -> None:
                nonlocal done
                buf[..., ys, xs] = block
                done += 1
                if progress is not None:
                    progress(done, total)

            _run_tiled(run, h, w, scale, tile, tile_overlap, write)
            nc = 3 if c >= 3 else 1
            ref = torch.from_numpy(inten.forward(img[..., :nc])).permute(2, 0, 1)[None].to(dev)
            buf[:, :nc] = ops.match_histograms(buf[:, :nc], ref, check=False)
            inten.backward_into(dest(i), buf[0])
        else:
            out_i = dest(i)

            def write(
                ys: slice, xs: slice, block: torch.Tensor, out_i: np.ndarray = out_i, inten: _Intensity = inten
            ) -> None:
                nonlocal done
                inten.backward_into(out_i[ys, xs], block[0])
                done += 1
                if progress is not None:
                    progress(done, total)

            _run_tiled(run, h, w, scale, tile, tile_overlap, write)
    return _restore(canon_out, layout, scale) if result is None else result


class Upscaler(nn.Module):
    """A thin module over :func:`upscale` for RGB float tensors (N, 3, H, W) in [0, 1].

    The network is a registered submodule: ``.to("cuda")`` moves it, and it then runs there. With
    the network on the CPU (as built) and no ``device`` given, it runs where :func:`upscale`'s
    ``device="auto"`` says: the input's device, else CUDA when available. Inference only:
    :func:`upscale` runs under ``torch.no_grad`` and its output carries no gradient (train with
    :mod:`psr.train`). Other keyword arguments go to :func:`upscale` (``normalize`` defaults to
    None: inputs are already in [0, 1]; with that default, floating inputs are clamped to [0, 1]
    first, as an upstream network's output a rounding error past 1 would otherwise be refused).
    """

    def __init__(self, scale: int = 4, model: str | os.PathLike | nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.scale = scale
        if isinstance(model, str) and model == BICUBIC:
            self.net: nn.Module = _Bicubic(scale)
        elif isinstance(model, nn.Module):
            net_scale = getattr(model, "scale", None)
            if net_scale is not None and net_scale != scale:
                raise ValueError(f"model {type(model).__name__!r} upscales by {net_scale}, but scale={scale} was asked")
            self.net = model  # the caller's module, left where it is until it runs
        else:
            if model is None and not (WEIGHTS_DIR / f"x{scale}-pixel.safetensors").is_file():
                resolve_model(None, scale, torch.device("cpu"))  # raises the unshipped-scale error
            # A fresh copy, not the cache psr.upscale shares: .to() on this module must not move
            # other callers' network.
            self.net = load_model(f"x{scale}-pixel" if model is None else _weights_key(model), device="cpu")
            if self.net.scale != scale:
                raise ValueError(f"model {self.net.name!r} upscales by {self.net.scale}, but scale={scale} was asked")
        self.kwargs = {"normalize": None, **kwargs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = list(self.net.parameters())
        if params and params[0].dtype != torch.float32:
            raise ValueError(
                f"Upscaler runs its network in float32, but its parameters are {params[0].dtype}; "
                "pass precision='bfloat16' instead of calling .half() or .bfloat16()"
            )
        x, kwargs = _module_call(self.net, x, self.kwargs)
        return upscale(x, self.scale, model=self.net, **kwargs)


def _module_call(net: nn.Module, x: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """What :class:`Upscaler` and :class:`psr.Stylizer` pass on: ``device="auto"`` becomes the
    network's device where ``.to()`` moved it, and under ``normalize=None`` a floating input is
    clamped to [0, 1], the network's domain (NaN is kept, and refused downstream)."""
    kwargs = dict(kwargs)
    param = next(net.parameters(), None)
    if kwargs.get("device", "auto") == "auto" and param is not None and param.device.type != "cpu":
        kwargs["device"] = param.device
    if kwargs.get("normalize") is None and isinstance(x, torch.Tensor) and x.is_floating_point():
        x = x.clamp(0, 1)
    return x, kwargs
