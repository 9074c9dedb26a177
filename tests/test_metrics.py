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
            ssim(np.zeros(shape), np.ones(shape), data_range=255)
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((12, 12)), np.zeros((12, 13)), data_range=255)
    with pytest.raises(ValueError, match="too small to shave"):
        shave(np.zeros((8, 8)), 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_data_range_is_inferred_for_integer_images_as_skimage_does(dtype: type) -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, int(info.max) + 1, (15, 17)).astype(dtype)
    b = rng.integers(info.min, int(info.max) + 1, (15, 17)).astype(dtype)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b), abs=1e-10)
    want = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(want, abs=1e-10)


def test_float_images_need_a_data_range_and_bad_values_are_refused() -> None:
    a = np.random.default_rng(4).random((12, 12))
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match="data_range must be given for float64"):
            metric(a, a * 0.5)
        with pytest.raises(ValueError, match="data_range must be given"):
            metric(a.astype(np.uint8), a.astype(np.uint16))  # two integer dtypes: which span?
        bad = a.copy()
        bad[3, 4] = np.nan
        with pytest.raises(ValueError, match="NaN or Inf"):
            metric(bad, a, data_range=1)
        with pytest.raises(TypeError, match="dtype bool"):
            metric(a > 0.5, a > 0.5, data_range=1)
    with pytest.raises(ValueError, match="empty"):
        psnr(np.zeros((0, 4)), np.zeros((0, 4)), data_range=1)


def test_shave_checks_its_arguments() -> None:
    img = np.arange(48).reshape(6, 8)
    np.testing.assert_array_equal(shave(img, 2), img[2:-2, 2:-2])
    assert shave(img, 0) is not None and shave(img, 0).shape == (6, 8)
    for bad in (True, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="border must be a non-negative integer"):
            shave(img, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        shave(np.zeros(9), 1)
