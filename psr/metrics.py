"""Image-quality metrics under the standard SR protocol (Y channel, shaved borders)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import int_arg

__all__ = ["rgb_to_y", "shave", "psnr", "ssim", "mod_crop"]


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
    if border <= 0:
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


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, computed in float64; ``inf`` for identical images."""
    data_range = _check_range(data_range)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> float:
    """SSIM with the 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03 (Wang et al. 2004).

    ``a`` and ``b`` are single-channel (H, W) images (the Y channel under the SR protocol), at least
    11x11, the window's size.
    """
    from skimage.metrics import structural_similarity

    data_range = _check_range(data_range)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 2 or min(a.shape) < 11:
        raise ValueError(f"images must be (H, W) with H, W >= 11 (the 11x11 window), got shape {a.shape}")
    return float(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
        )
    )
