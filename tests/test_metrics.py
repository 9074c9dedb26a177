"""psr.metrics argument handling; the values themselves are tested in test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from psr.metrics import mod_crop, psnr, shave, ssim


def test_mod_crop_layouts(rng: np.random.Generator) -> None:
    for shape in [(13, 22), (13, 22, 3), (13, 22, 1), (13, 22, 4)]:
        img = rng.random(shape)
        out = mod_crop(img, 4)
        assert out.shape[:2] == (12, 20) and out.shape[2:] == shape[2:]
        np.testing.assert_array_equal(out, img[:12, :20])
    assert mod_crop(rng.random((8, 8)), 1).shape == (8, 8)


@pytest.mark.parametrize(
    ("image", "scale", "match"),
    [
        (np.zeros((3, 9, 10)), 4, r"\(H, W\) or \(H, W, C\)"),  # channels first: refused, not cropped to (0, 8, 10)
        (np.zeros(9), 2, r"\(H, W\) or \(H, W, C\)"),
        (np.zeros((9, 9)), 0, "scale must be a positive integer"),
        (np.zeros((9, 9)), 2.5, "scale must be a positive integer"),
        (np.zeros((9, 9)), True, "scale must be a positive integer"),
    ],
)
def test_mod_crop_errors(image: np.ndarray, scale: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mod_crop(image, scale)  # type: ignore[arg-type]


def test_psnr_ssim_equal_skimage_with_a_data_range(rng: np.random.Generator) -> None:
    a, b = rng.random((23, 17)), rng.random((23, 17))
    assert psnr(a, b, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
    want = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert ssim(a, b, data_range=1.0) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("metric", [psnr, ssim])
@pytest.mark.parametrize(
    ("data_range", "exc"),
    [
        (-1.0, ValueError),
        (0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("255", TypeError),
        (True, TypeError),
    ],
)
def test_bad_data_range(metric: object, data_range: object, exc: type) -> None:
    a = np.zeros((12, 12))
    with pytest.raises(exc, match="data_range"):
        metric(a, a + 1, data_range=data_range)  # type: ignore[operator]


def test_ssim_needs_a_single_channel_image_of_the_window_size() -> None:
    for shape in [(10, 40), (40, 10), (20, 20, 3)]:
        with pytest.raises(ValueError, match="H, W >= 11"):
            ssim(np.zeros(shape), np.ones(shape))
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((12, 12)), np.zeros((12, 13)))
    with pytest.raises(ValueError, match="too small to shave"):
        shave(np.zeros((8, 8)), 4)
