"""MATLAB-compatible imresize against hand-derived values, a loop transliteration and PIL."""

from __future__ import annotations

import math
import warnings
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psr.resize import cubic_kernel, imresize, resample_axis


def keys(x: float, a: float = -0.5) -> float:
    ax = abs(x)
    if ax <= 1:
        return (a + 2) * ax**3 - (a + 3) * ax**2 + 1
    if ax < 2:
        return a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a
    return 0.0


def matlab_resize_1d(x: np.ndarray, scale: float, out_len: int, antialias: bool = True) -> np.ndarray:
    """A line-by-line transliteration of MATLAB's imresize contributions(), 1-based, in float64."""
    n = len(x)
    width = 4.0
    if scale < 1 and antialias:
        h = lambda t: scale * keys(scale * t)  # noqa: E731
        width = width / scale
    else:
        h = keys
    out = np.zeros(out_len)
    for i1 in range(1, out_len + 1):
        u = i1 / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        p = math.ceil(width) + 2
        idx = [left + k for k in range(p)]
        w = np.array([h(u - j) for j in idx])
        w /= w.sum()
        acc = 0.0
        for j, wj in zip(idx, w, strict=True):
            # symmetric padding: aux = [1:n, n:-1:1]; index = aux(mod(j - 1, 2n) + 1)
            m = (j - 1) % (2 * n)
            src = m if m < n else 2 * n - 1 - m
            acc += wj * x[src]
        out[i1 - 1] = acc
    return out


def test_cubic_kernel_values() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.25, 1.5, 2.0, 2.5, -0.75], dtype=torch.float64)
    expected = torch.tensor([keys(float(v)) for v in x], dtype=torch.float64)
    torch.testing.assert_close(cubic_kernel(x, -0.5), expected)
    # Interpolating: 1 at 0, 0 at the other integers.
    assert cubic_kernel(torch.tensor([0.0, 1.0, 2.0, -1.0]), -0.75).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_upscale_two_samples_by_hand() -> None:
    # x2 of [0, 1]: the first output sits at u = -0.25 with taps at -2, -1, 0, 1 whose Keys weights
    # (a = -0.5) are k(1.75) = -0.0234375, k(0.75), k(0.25), k(1.25) = -0.0703125; symmetric padding
    # maps the taps -2, -1 to samples 1, 0. So y0 = -0.0234375 * 1 + (-0.0703125) * 1 = -0.09375.
    y = imresize(torch.tensor([[0.0, 1.0]], dtype=torch.float64), 2.0)
    assert y.shape == (2, 4)
    assert y[0, 0].item() == pytest.approx(-0.09375, abs=1e-15)
    # Symmetric in the mirrored signal: the last output is 1 + 0.09375.
    assert y[0, 3].item() == pytest.approx(1.09375, abs=1e-15)


def test_downscale_constant_and_ramp_by_hand() -> None:
    # Weights sum to 1: constants stay constant. A linear ramp stays linear in the interior because
    # the Keys kernel reproduces linear functions: x/2 at output i equals the input at u = 2i + 0.5.
    ramp = torch.arange(40, dtype=torch.float64)[None].repeat(3, 1)
    y = imresize(ramp, 0.5)
    assert y.shape == (2, 20)
    torch.testing.assert_close(y[:, 3:-3], (2 * torch.arange(20, dtype=torch.float64) + 0.5)[3:-3].expand(2, -1))
    c = imresize(torch.full((7, 9), 3.25, dtype=torch.float64), 0.25)
    torch.testing.assert_close(c, torch.full((2, 3), 3.25, dtype=torch.float64))


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 2.0, 3.0, 4.0, 8.0])
def test_matches_matlab_transliteration(rng: np.random.Generator, scale: float) -> None:
    h, w = int(rng.integers(5, 23)), int(rng.integers(5, 23))
    x = rng.random((h, w))
    out = imresize(torch.from_numpy(x), scale).numpy()
    oh, ow = math.ceil(round(scale * h, 9)), math.ceil(round(scale * w, 9))
    assert out.shape == (oh, ow)
    # MATLAB: the axis with the smaller scale first; equal here, so rows first.
    rows = np.stack([matlab_resize_1d(x[:, j], scale, oh) for j in range(w)], axis=1)
    ref = np.stack([matlab_resize_1d(rows[i], scale, ow) for i in range(oh)], axis=0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def _matlab_round(ref: np.ndarray) -> np.ndarray:
    """MATLAB's round, halves away from zero, by exact decimal arithmetic on each float64."""
    up = [float(Decimal(v).quantize(Decimal(1), rounding=ROUND_HALF_UP)) for v in ref.ravel().tolist()]
    return np.asarray(up).reshape(ref.shape)


@pytest.mark.parametrize(("shape", "scale"), [((2, 3, 17, 13), 0.25), ((2000, 4, 4), 2.0)])
def test_uint8_rounds_and_clips_like_matlab(rng: np.random.Generator, shape: tuple, scale: float) -> None:
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    out = imresize(x, scale, channel_axis=None)  # a stack of 4x4 images, not 4 channels
    assert out.dtype == np.uint8 and out.shape[-2:] == tuple(math.ceil(scale * n) for n in shape[-2:])
    ref = imresize(x.astype(np.float64), scale, channel_axis=None)
    if scale == 2.0:  # thousands of upscales: some land exactly on a half, where MATLAB rounds up
        assert np.any(np.abs(ref - np.trunc(ref)) == 0.5)
    np.testing.assert_array_equal(out, np.clip(_matlab_round(ref), 0, 255).astype(np.uint8))


def test_argument_errors() -> None:
    x = np.zeros((4, 4), np.uint8)
    for kw, exc, match in [
        ({"scale": True}, TypeError, "scale must be"),
        ({"scale": "2"}, TypeError, "scale must be"),
        ({"output_shape": (2.5, 3)}, ValueError, "output_shape must be two positive integers"),
        ({"output_shape": (3,)}, ValueError, "output_shape must be two positive integers"),
        ({"scale": 1e-9}, ValueError, "too small"),
    ]:
        with pytest.raises(exc, match=match):
            imresize(x, **kw)
    for bad in (np.zeros((4, 4), bool), np.zeros((4, 4), complex)):
        with pytest.raises(TypeError, match="real integer or floating-point dtype"):
            imresize(bad, 2.0)
    assert imresize(x, 1e-9, antialias=False).shape == (1, 1)


def test_interior_matches_pil(rng: np.random.Generator) -> None:
    # PIL's bicubic is Keys a=-0.5 with kernel stretching when downscaling, but it renormalises at the
    # border instead of mirroring; away from the border the two agree.
    from PIL import Image

    # Sizes divisible by 4 so that PIL's out/in ratio equals the scale MATLAB uses for coordinates.
    x = rng.random((44, 36)).astype(np.float32)
    for scale in (0.5, 0.25, 2.0, 3.0):
        oh, ow = round(44 * scale), round(36 * scale)
        pil = np.asarray(Image.fromarray(x, mode="F").resize((ow, oh), Image.BICUBIC))
        ours = imresize(torch.from_numpy(x.astype(np.float64)), scale).numpy()
        m = int(math.ceil(3 / min(scale, 1) * max(scale, 1)))
        np.testing.assert_allclose(ours[m:-m, m:-m], pil[m:-m, m:-m], atol=2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_clamp_padding_matches_torch_bicubic(dtype: torch.dtype, tol: float, scale: int) -> None:
    x = torch.rand(2, 3, 11, 7, dtype=dtype)
    y = resample_axis(x, -2, 11 * scale, float(scale), a=-0.75, antialias=False, padding="clamp")
    y = resample_axis(y, -1, 7 * scale, float(scale), a=-0.75, antialias=False, padding="clamp")
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(y, ref, atol=tol, rtol=0)


def test_differentiable() -> None:
    x = torch.rand(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, 0.5), (x,))


def test_output_shape_option_and_errors() -> None:
    x = np.zeros((10, 12), np.float32) + 0.5
    assert imresize(x, output_shape=(5, 3)).shape == (5, 3)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x)
    with pytest.raises(ValueError, match="scale"):
        imresize(x, -1.0)
    with pytest.raises(ValueError, match="2 dimensions"):
        imresize(np.zeros(5), 2.0)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        imresize([[1.0]], 2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_channel_axis(rng: np.random.Generator, dtype: type, channels: int) -> None:
    """(H, W, C) numpy arrays resize over H and W, as MATLAB's imresize does for an RGB array: each
    channel equals the 2-D resize of that channel alone (an independent per-plane oracle)."""
    hr = rng.integers(0, 256, (2, 13, 17, channels)).astype(dtype)
    out = imresize(hr, 0.5)  # "auto": channels last
    assert out.shape == (2, 7, 9, channels) and out.dtype == dtype and out.flags.c_contiguous
    for i in range(2):
        for c in range(channels):
            np.testing.assert_array_equal(out[i, ..., c], imresize(np.ascontiguousarray(hr[i, ..., c]), 0.5))
    np.testing.assert_array_equal(imresize(hr, 0.5, channel_axis=-1), out)
    # The same planes elsewhere: explicit channel axes, tensors (last two axes by default).
    chw = np.ascontiguousarray(np.moveaxis(hr, -1, 1))
    np.testing.assert_array_equal(np.moveaxis(imresize(chw, 0.5, channel_axis=1), 1, -1), out)
    t = torch.from_numpy(hr)
    np.testing.assert_array_equal(imresize(t, 0.5, channel_axis=-1).numpy(), out)
    np.testing.assert_array_equal(imresize(t.movedim(-1, 1), 0.5).movedim(1, -1).numpy(), out)
    # None: the last two axes, whatever their length.
    assert imresize(hr[0], 2.0, channel_axis=None).shape == (13, 34, 2 * channels)
    assert imresize(hr[0, :5, :8], 2.0).shape == (10, 16, channels)


def test_channel_axis_errors() -> None:
    x = np.zeros((4, 5, 3))
    for bad in ("last", 1.0, True):
        with pytest.raises(ValueError, match="channel_axis must be"):
            imresize(x, 2.0, channel_axis=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        imresize(x, 2.0, channel_axis=3)
    with pytest.raises(ValueError, match="3 or more dimensions"):
        imresize(np.zeros((4, 5)), 2.0, channel_axis=0)


def test_read_only_arrays_resize_without_a_warning() -> None:
    x = np.arange(48, dtype=np.uint8).reshape(6, 8)
    x.flags.writeable = False  # as np.asarray(PIL.Image) gives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = imresize(x, 2.0)
    np.testing.assert_array_equal(out, imresize(x.copy(), 2.0))


def test_numpy_float_scales_give_matlab_sizes() -> None:
    """A float32/float16 scale is the same number as the Python float: ceil(2 * 11) = 22, not 23
    from 22.000002 (float32 rounding) or an overflow (float16)."""
    for scale in (np.float32(2.0), np.float16(2), np.float64(0.25)):
        want = imresize(np.zeros((9, 11)), float(scale)).shape
        assert imresize(np.zeros((9, 11)), scale).shape == want


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integers_saturate(dtype: type) -> None:
    """The largest 64-bit values round up past the type in float64: they must clip, not wrap."""
    top = np.iinfo(dtype).max
    a = np.full((6, 6), top, dtype)
    a[2:4, 2:4] = 0
    out = imresize(a, 2)
    assert out.dtype == dtype and out.max() == top
    ref = np.clip(imresize(a.astype(np.float64), 2), np.iinfo(dtype).min, float(top))
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(imresize(np.full((3, 3), top, dtype), 1), np.full((3, 3), top, dtype))


def test_big_endian_arrays_and_unsupported_floats(rng: np.random.Generator) -> None:
    little = rng.integers(0, 65536, (5, 7)).astype("<u2")
    big = little.astype(">u2")
    out = imresize(big, 2)
    assert out.dtype == np.dtype(">u2")  # the caller's dtype, byte order included
    np.testing.assert_array_equal(out, imresize(little, 2))
    np.testing.assert_array_equal(imresize(little.astype(">f4"), 2), imresize(little.astype("<f4"), 2))
    if np.dtype(np.longdouble).itemsize > 8:
        with pytest.raises(TypeError, match="convert it to float64"):
            imresize(np.zeros((4, 4), np.longdouble), 2)
