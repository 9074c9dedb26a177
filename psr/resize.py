"""Separable cubic resampling: MATLAB's ``imresize`` and torch's bicubic, in pure torch.

One generic routine, :func:`resample_axis`, covers both conventions the project needs:

* MATLAB ``imresize(x, s, 'bicubic')``: Keys kernel a=-0.5, antialiased (kernel stretched by 1/s)
  when downscaling, symmetric (half-sample mirror) padding, output size ``ceil(s * n)``.
  This is the benchmark degradation and the project's "bicubic" baseline.
* ``F.interpolate(mode="bicubic", align_corners=False)``: Keys a=-0.75, indices clamped at the
  border, no antialiasing.

Both map output sample ``i`` (0-based) to input coordinate ``(i + 0.5) / s - 0.5``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._checks import channel_axis_arg, channel_axis_index, int_arg

__all__ = ["cubic_kernel", "resample_axis", "imresize", "resize_weights"]


def cubic_kernel(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter ``a``, evaluated elementwise."""
    ax = x.abs()
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


_MAX_WEIGHTS = 1 << 27  # taps x outputs of one axis: 1 GiB of float64 weights


def resize_weights(
    in_len: int,
    out_len: int,
    scale: float,
    *,
    a: float = -0.5,
    antialias: bool = True,
    padding: str = "symmetric",
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(out_len, P)`` into the input and weights ``(out_len, P)`` for one axis.

    ``padding="symmetric"`` mirrors as MATLAB does (``[x0 .. xn-1, xn-1 .. x0]`` repeated);
    ``padding="clamp"`` repeats the edge sample as torch does. Weights are normalised to sum to 1
    per output sample (MATLAB does this; for torch's unstretched kernel the sum is already 1).
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"axis lengths must be positive, got in_len={in_len}, out_len={out_len}")
    if padding not in ("symmetric", "clamp"):
        raise ValueError(f"padding must be 'symmetric' or 'clamp', got {padding!r}")
    width = 4.0
    stretch = scale < 1 and antialias
    if stretch:
        width = width / scale
    if out_len * (math.ceil(width) + 1) > _MAX_WEIGHTS:
        raise ValueError(
            f"scale {scale:g} is too small for an antialiased resize of {in_len} samples: the kernel would "
            f"span {math.ceil(width)} of them for each of {out_len} outputs; resize in steps or pass antialias=False"
        )
    # float64 for the coordinates: MATLAB computes them in double.
    x = torch.arange(out_len, dtype=torch.float64)
    u = (x + 0.5) / scale - 0.5
    left = torch.floor(u - width / 2) + 1
    taps = int(math.ceil(width)) + 1
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = u[:, None] - idx
    w = scale * cubic_kernel(scale * dist, a) if stretch else cubic_kernel(dist, a)
    w = w / w.sum(dim=1, keepdim=True)
    idx = idx.long()
    if padding == "symmetric":
        period = 2 * in_len
        m = torch.remainder(idx, period)
        idx = torch.where(m < in_len, m, period - 1 - m)
    else:
        idx = idx.clamp(0, in_len - 1)
    return idx, w.to(dtype)


def resample_axis(
    x: torch.Tensor,
    dim: int,
    out_len: int,
    scale: float,
    *,
    a: float = -0.5,
    antialias: bool = True,
    padding: str = "symmetric",
) -> torch.Tensor:
    """Resample ``x`` along ``dim`` to ``out_len`` samples with the cubic kernel (see module doc).

    Works in ``x``'s floating dtype and is differentiable. Memory is about twice the output: it
    accumulates one tap at a time instead of gathering all taps at once.
    """
    dim = dim % x.ndim
    idx, w = resize_weights(x.shape[dim], out_len, scale, a=a, antialias=antialias, padding=padding, dtype=x.dtype)
    # Drop taps whose weight is zero for every output sample (MATLAB does the same).
    keep = (w != 0).any(dim=0)
    idx, w = idx[:, keep].to(x.device), w[:, keep].to(x.device)
    shape = [1] * x.ndim
    shape[dim] = out_len
    out = None
    for k in range(idx.shape[1]):
        term = x.index_select(dim, idx[:, k]) * w[:, k].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


def imresize(
    image: torch.Tensor | np.ndarray,
    scale: float | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    antialias: bool = True,
    channel_axis: int | str | None = "auto",
) -> torch.Tensor | np.ndarray:
    """MATLAB-compatible ``imresize(image, scale, 'bicubic')`` over the two spatial axes.

    Parameters
    ----------
    image : ndarray or Tensor
        (..., H, W), or with a channel axis (see ``channel_axis``). Floating input is resized in
        its own precision; integer input is resized in float64 and rounded (halves away from
        zero) and clipped back to its dtype, as MATLAB does for uint8.
    scale : float, optional
        Scale factor for both axes; output size is ``ceil(scale * n)`` as in MATLAB.
    output_shape : (int, int), optional
        Explicit output (H, W); the scale per axis is then ``out / in``.
    antialias : bool
        Stretch the kernel when downscaling (MATLAB's default).
    channel_axis : "auto", int or None
        The axis holding channels; the spatial axes are then the last two others. ``"auto"``: a
        numpy array of 3 or more dimensions whose last axis is 1, 3 or 4 long is (..., H, W, C),
        as MATLAB and scikit-image read an RGB array; anything else (a last axis of 2 or 5-7 too,
        which :func:`psr.upscale` refuses as ambiguous), and every tensor ((N, C, H, W) as torch
        lays it out), is resized over its last two axes. ``None``: always the last two axes.

    Returns
    -------
    Same kind (numpy or torch), dtype and layout as ``image``.
    """
    is_numpy = isinstance(image, np.ndarray)
    if is_numpy:
        if image.dtype.kind == "f" and image.dtype.itemsize > 8:
            raise TypeError(f"image dtype {image.dtype} is not supported; convert it to float64")
        arr = np.ascontiguousarray(image)
        if not arr.dtype.isnative:  # big-endian data (TIFF, FITS): torch reads native byte order only
            arr = arr.astype(arr.dtype.newbyteorder("="))
        # torch warns on read-only arrays (np.asarray of a PIL image): resize a private copy.
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        t = image
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"image must have a real integer or floating-point dtype, got {t.dtype}")
    if t.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., H, W), got shape {tuple(t.shape)}")
    channel_axis = channel_axis_arg(channel_axis)
    if channel_axis == "auto":
        ch = t.ndim - 1 if is_numpy and t.ndim >= 3 and t.shape[-1] in (1, 3, 4) else None
    elif channel_axis is None:
        ch = None
    else:
        ch = channel_axis_index(channel_axis, tuple(t.shape))
    if ch is not None:  # channels just before the spatial axes; moved back at the end
        t = t.movedim(ch, -3)
    h, w = t.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image must be non-empty, got shape {tuple(t.shape)}")
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale or output_shape")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a positive finite number, got {scale!r}")
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        scale = float(scale)  # a numpy float32/float16 scale would round the sizes in its own precision
        # MATLAB: ceil(scale * n); guard against 0.25 * 400 = 100.00000000000001.
        out_h = max(1, math.ceil(round(scale * h, 9)))
        out_w = max(1, math.ceil(round(scale * w, 9)))
        sh = sw = float(scale)
    else:
        try:  # not a pair, or an element that is not a positive integer
            out_h, out_w = (int_arg(v, "output_shape", 1, None, "") for v in output_shape)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"output_shape must be two positive integers (H, W), got {output_shape!r}") from None
        sh, sw = out_h / h, out_w / w
    orig_dtype = t.dtype
    work = t if t.is_floating_point() else t.to(torch.float64)
    # MATLAB resizes the axis with the smaller scale first; for equal scales, rows first.
    order = [(-2, out_h, sh), (-1, out_w, sw)]
    if sw < sh:
        order.reverse()
    for dim, n, s in order:
        work = resample_axis(work, dim, n, s, a=-0.5, antialias=antialias, padding="symmetric")
    if not t.is_floating_point():
        info = torch.iinfo(orig_dtype)
        work = _round_half_away(work).clamp(info.min, info.max)
        if info.bits == 64:  # in numpy: torch has no masked fill for uint64
            np_dtype = torch.empty(0, dtype=orig_dtype).numpy().dtype
            work = torch.from_numpy(saturating_int_cast(work.cpu().numpy(), np_dtype)).to(t.device)
        else:
            work = work.to(orig_dtype)
    if ch is not None:
        work = work.movedim(-3, ch)
    if is_numpy:
        return np.ascontiguousarray(work.numpy()).astype(image.dtype, copy=False)  # the caller's byte order
    return work


def saturating_int_cast(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rounded float64 values, already clipped to ``dtype``'s range, as that integer dtype. The
    64-bit maxima are not exact in float64 (they round up to 2^63 or 2^64, past the type, and a
    plain cast wraps them to the minimum): values there saturate at the maximum."""
    dtype = np.dtype(dtype)
    if dtype.itemsize < 8:
        return v.astype(dtype)
    top = np.iinfo(dtype).max
    over = v >= float(top)
    out = np.where(over, 0.0, v).astype(dtype)
    out[over] = top
    return out


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``round``: halves away from zero (torch.round takes them to even)."""
    r = torch.round(x)
    frac = x - torch.trunc(x)  # exact in floating point
    return torch.where(frac.abs() == 0.5, torch.trunc(x) + torch.sign(x), r)
