"""Image-quality metrics under the standard SR protocol (Y channel, shaved borders)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import int_arg

__all__ = ["rgb_to_y", "shave", "psnr", "ssim", "mod_crop", "SSIM_WINDOW", "fits_ssim"]

SSIM_WINDOW = 11  # the side of ssim's Gaussian window: the smallest image it scores


def fits_ssim(height: int, width: int, shave: int) -> bool:
    """Whether an image of this size still holds :data:`SSIM_WINDOW` pixels a side once ``shave``
    pixels are taken off every border (the SR protocol's scoring)."""
    return min(height, width) - 2 * shave >= SSIM_WINDOW


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma as in MATLAB's ``rgb2ycbcr``: 16 + (65.481 R + 128.553 G + 24.966 B) / 255.

    ``rgb`` is (H, W, 3) with values in 0..255 (any dtype); the result is float64, not rounded.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {rgb.shape}")
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that H and W, the first two axes ((H, W) or (H, W, C)), are multiples of ``scale``."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1, 3, 4, got shape {image.shape}")
    scale = int_arg(scale, "scale", 1, None, "a positive integer")
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def shave(image: np.ndarray, border: int) -> np.ndarray:
    """``image`` without ``border`` pixels on each side of its first two axes (H, W); the SR
    protocol shaves the scale factor. ``border=0`` returns it unchanged."""
    image = np.asarray(image)
    border = int_arg(border, "border", 0, None, "a non-negative integer")
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (H, W), got shape {image.shape}")
    if border == 0:
        return image
    if image.shape[0] <= 2 * border or image.shape[1] <= 2 * border:
        raise ValueError(f"image of shape {image.shape} is too small to shave {border} pixels per border")
    return image[border:-border, border:-border]


def _check_range(data_range: object) -> float:
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real):
        raise TypeError(f"data_range must be a positive number, got {data_range!r}")
    if not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return float(data_range)


def _pair(a: np.ndarray, b: np.ndarray, data_range: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Both images as float64 and the data range: given, or the span of their common integer
    dtype (255 for uint8, as skimage infers it); floats need it given, their scale is unknown."""
    a, b = np.asarray(a), np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.dtype == np.bool_ or x.dtype.kind not in "uif":
            raise TypeError(f"{name} must hold integers or floats, got dtype {x.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"images are empty: shape {a.shape}")
    if data_range is None:
        if a.dtype != b.dtype or a.dtype.kind not in "ui":
            raise ValueError(
                f"data_range must be given for {a.dtype} and {b.dtype} images (it is inferred only for two "
                "images of one integer dtype); the SR protocol's Y channel on 0..255 takes data_range=255"
            )
        info = np.iinfo(a.dtype)
        data_range = float(info.max) - float(info.min)
    data_range = _check_range(data_range)
    a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("images contain NaN or Inf values")
    return a, b, data_range


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, computed in float64; ``inf`` for identical images.

    ``data_range``: the span of possible values (255 for the SR protocol's Y channel on 0..255).
    Default: inferred for two images of one integer dtype (255 for uint8, 65535 for uint16);
    required for floats.
    """
    a, b, data_range = _pair(a, b, data_range)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float | None = None) -> float:
    """SSIM with the 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03 (Wang et al. 2004).

    ``a`` and ``b`` are single-channel (H, W) images (the Y channel under the SR protocol), at least
    11x11, the window's size. ``data_range`` as for :func:`psnr`.
    """
    from skimage.metrics import structural_similarity

    a, b, data_range = _pair(a, b, data_range)
    if a.ndim != 2 or not fits_ssim(*a.shape, 0):
        raise ValueError(f"images must be (H, W) with H, W >= 11 (the 11x11 window), got shape {a.shape}")
    return float(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
        )
    )
