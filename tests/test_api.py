"""psr.upscale: every row of the contract table, tiling, histogram matching, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import psr
from psr import _reference
from psr.api import resolve_model
from psr.resize import imresize

from .conftest import DEVICES, make_tiny_model


def _net_on_float(model_path: Path, x01: np.ndarray) -> np.ndarray:
    """Independent path: the loaded network on (H, W, 3) floats in [0, 1], no clamp, whole image."""
    net = psr.load_model(model_path)
    t = torch.from_numpy(x01.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return net(t, clamp=False)[0].permute(1, 2, 0).double().numpy()


# --------------------------------------------------------------------------------- contract rows


def test_uint8_rgb(tiny_model: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    out = psr.upscale(img, 4, model=tiny_model, match_histogram=False)
    assert out.dtype == np.uint8 and out.shape == (52, 68, 3)
    ref = np.clip(np.rint(_net_on_float(tiny_model, img / 255.0) * 255), 0, 255)
    assert np.abs(out.astype(int) - ref).max() <= 1  # float32 vs rounding boundary


def test_uint16_percentile_normalisation(tiny_model: Path, rng: np.random.Generator) -> None:
    img = rng.integers(100, 4000, (11, 9, 3)).astype(np.uint16)
    out = psr.upscale(img, 4, model=tiny_model, match_histogram=False)
    assert out.dtype == np.uint16 and out.shape == (44, 36, 3)
    lo, hi = np.percentile(img, [0.1, 99.9])
    y = _net_on_float(tiny_model, (img - lo) / (hi - lo)) * (hi - lo) + lo
    ref = np.clip(np.rint(y), 0, 65535)
    assert np.abs(out.astype(np.int64) - ref).max() <= 1
    # Explicit percentiles and normalize=None (full dtype range) are honoured.
    out2 = psr.upscale(img, 4, model=tiny_model, match_histogram=False, normalize=None)
    y2 = _net_on_float(tiny_model, img / 65535.0) * 65535
    assert np.abs(out2.astype(np.int64) - np.clip(np.rint(y2), 0, 65535)).max() <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint32])
def test_other_dtypes_roundtrip_dtype(tiny_model: Path, rng: np.random.Generator, dtype: type) -> None:
    img = (rng.random((9, 10)) * 1000 - (200 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
    out = psr.upscale(img, 4, model=tiny_model)
    assert out.dtype == dtype and out.shape == (36, 40)
    if np.dtype(dtype).kind == "f":
        # Floats stay within the input's range.
        assert out.min() >= img.min() and out.max() <= img.max()


def test_float_normalize_none_requires_unit_range(tiny_model: Path, rng: np.random.Generator) -> None:
    img = rng.random((8, 8, 3)).astype(np.float32)
    out = psr.upscale(img, 4, model=tiny_model, normalize=None, match_histogram=False)
    np.testing.assert_allclose(out, np.clip(_net_on_float(tiny_model, img), 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="normalize=None"):
        psr.upscale(img * 2, 4, model=tiny_model, normalize=None)


def test_gray_replicated_and_averaged(tiny_model: Path, rng: np.random.Generator) -> None:
    img = rng.random((10, 12)).astype(np.float64)
    out = psr.upscale(img, 4, model=tiny_model, normalize=None, match_histogram=False)
    assert out.shape == (40, 48)
    ref = _net_on_float(tiny_model, np.repeat(img[..., None], 3, axis=-1)).mean(-1)
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-5)


def test_rgba_alpha_is_bicubic(tiny_model: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    out = psr.upscale(img, 4, model=tiny_model, match_histogram=False)
    assert out.shape == (36, 44, 4)
    alpha = np.clip(np.rint(imresize(img[..., 3].astype(np.float64), 4.0)), 0, 255)
    np.testing.assert_array_equal(out[..., 3], alpha.astype(np.uint8))
    rgb = psr.upscale(np.ascontiguousarray(img[..., :3]), 4, model=tiny_model, match_histogram=False)
    np.testing.assert_array_equal(out[..., :3], rgb)


def test_stacks_and_channel_axis(tiny_model: Path, rng: np.random.Generator) -> None:
    stack = rng.random((3, 2, 7, 8)).astype(np.float32)  # (T, Z, H, W)
    out = psr.upscale(stack, 2, model="bicubic", normalize=None)
    assert out.shape == (3, 2, 14, 16)
    one = psr.upscale(np.ascontiguousarray(stack[1, 0]), 2, model="bicubic", normalize=None)
    np.testing.assert_allclose(out[1, 0], one, atol=1e-6)
    # Explicit channel axis: each channel a gray image, layout kept.
    chw = rng.random((5, 7, 8)).astype(np.float32)  # 5 channels first
    out = psr.upscale(chw, 4, model=tiny_model, channel_axis=0, normalize=None)
    assert out.shape == (5, 28, 32)
    np.testing.assert_allclose(
        out[2], psr.upscale(np.ascontiguousarray(chw[2]), 4, model=tiny_model, normalize=None), atol=1e-6
    )
    # Channel axis first with rgb=True equals channels-last RGB.
    rgb_first = rng.random((3, 6, 5)).astype(np.float32)
    a = psr.upscale(rgb_first, 4, model=tiny_model, channel_axis=0, rgb=True, normalize=None)
    b = psr.upscale(np.moveaxis(rgb_first, 0, -1).copy(), 4, model=tiny_model, normalize=None)
    np.testing.assert_allclose(np.moveaxis(a, 0, -1), b, atol=1e-6)
    # RGB stacks: (Z, H, W, 3).
    assert psr.upscale(rng.random((2, 5, 6, 3)), 4, model=tiny_model).shape == (2, 20, 24, 3)


@pytest.mark.parametrize(
    "mode,shape,dtype",
    [
        ("L", (9, 7), np.uint8),
        ("I;16", (9, 7), np.uint16),
        ("I", (9, 7), np.int32),
        ("F", (9, 7), np.float32),
        ("RGB", (9, 7, 3), np.uint8),
        ("RGBA", (9, 7, 4), np.uint8),
    ],
)
def test_pil_modes(tiny_model: Path, rng: np.random.Generator, mode: str, shape: tuple, dtype: type) -> None:
    arr = rng.integers(0, 256 if dtype == np.uint8 else 60000, shape).astype(dtype)
    im = Image.fromarray(arr)
    assert im.mode == mode
    out = psr.upscale(im, 4, model=tiny_model)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (28, 36)
    np.testing.assert_array_equal(np.asarray(out), psr.upscale(arr, 4, model=tiny_model))


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I;16N"])
def test_pil_16_bit_byte_orders(tiny_model: Path, rng: np.random.Generator, mode: str) -> None:
    """16-bit gray in a stated byte order (a big-endian TIFF opens as I;16B) is 16-bit gray, and
    comes back in its own mode."""
    arr = rng.integers(0, 65536, (9, 7)).astype(np.uint16)
    order = {"I;16B": ">u2", "I;16L": "<u2", "I;16N": "=u2"}[mode]
    im = Image.frombytes(mode, (7, 9), arr.astype(order).tobytes())
    out = psr.upscale(im, 4, model=tiny_model)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (28, 36)
    got = np.frombuffer(out.tobytes(), dtype=order).reshape(36, 28)
    np.testing.assert_array_equal(got, psr.upscale(arr, 4, model=tiny_model))


@pytest.mark.parametrize("mode,hint", [("P", "RGBA"), ("LA", "RGBA"), ("1", "L"), ("CMYK", "RGB"), ("YCbCr", "RGB")])
def test_pil_modes_refused_with_a_hint(rng: np.random.Generator, mode: str, hint: str) -> None:
    im = Image.fromarray(rng.integers(0, 256, (9, 7, 3), np.uint8)).convert(mode)
    with pytest.raises(ValueError, match=rf"PIL mode '{mode}' is not supported.*image\.convert\('.*{hint}"):
        psr.upscale(im, 4, model="bicubic")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 7), (3, 6, 7), (6, 7), (1, 1, 6, 7), (2, 4, 6, 7)])
def test_torch_tensors(tiny_model: Path, device: str, shape: tuple) -> None:
    t = torch.rand(shape, device=device)
    out = psr.upscale(t, 4, model=tiny_model, normalize=None, device=device)
    assert isinstance(out, torch.Tensor) and out.device.type == device and out.dtype == t.dtype
    assert out.shape == (*shape[:-2], shape[-2] * 4, shape[-1] * 4)
    if len(shape) == 4 and shape[1] == 3:
        arr = t[1].permute(1, 2, 0).cpu().numpy()
        ref = psr.upscale(arr.copy(), 4, model=tiny_model, normalize=None)
        np.testing.assert_allclose(out[1].permute(1, 2, 0).cpu().numpy(), ref, atol=1e-6)
    # uint8 tensors follow the uint8 rule; channels_last and non-contiguous inputs are fine.
    u8 = (torch.rand(1, 3, 6, 7) * 255).to(torch.uint8).to(memory_format=torch.channels_last)
    o8 = psr.upscale(u8, 4, model=tiny_model, device=device)
    assert o8.dtype == torch.uint8
    np.testing.assert_array_equal(
        o8[0].permute(1, 2, 0).cpu().numpy(),
        psr.upscale(u8[0].permute(1, 2, 0).contiguous().numpy(), 4, model=tiny_model),
    )


def test_non_contiguous_numpy(tiny_model: Path, rng: np.random.Generator) -> None:
    big = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = big[::2, ::3]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(psr.upscale(view, 4, model=tiny_model), psr.upscale(view.copy(), 4, model=tiny_model))


# --------------------------------------------------------------------------------- tiles, matching


@pytest.mark.parametrize("tile", [8, 13, 21])
def test_tiled_equals_whole(tiny_model: Path, rng: np.random.Generator, tile: int) -> None:
    img = rng.random((37, 29, 3)).astype(np.float32)
    whole = psr.upscale(img, 4, model=tiny_model, tile=None, normalize=None)
    tiled = psr.upscale(img, 4, model=tiny_model, tile=tile, normalize=None)
    np.testing.assert_allclose(tiled, whole, atol=2e-6, rtol=0)
    # With matching, it runs once over the whole image: still identical.
    m1 = psr.upscale(img, 4, model=tiny_model, tile=None, match_histogram=True, normalize=None)
    m2 = psr.upscale(img, 4, model=tiny_model, tile=tile, match_histogram=True, normalize=None)
    # Matching ranks ~17k outputs against ~1k reference values: a float-rounding swap of two nearly
    # equal outputs moves each by about a reference gap / 16, so compare at that scale.
    np.testing.assert_allclose(m1, m2, atol=5e-4, rtol=0)
    assert np.mean(np.abs(m1 - m2) > 2e-6) < 1e-3


def test_bfloat16_precision_close_to_float32(tiny_model: Path, rng: np.random.Generator) -> None:
    """bf16 autocast: the independent float32 network within bf16 rounding, tiles included."""
    img = rng.random((37, 29, 3)).astype(np.float32)
    ref = np.clip(_net_on_float(tiny_model, img), 0, 1)
    for tile in (None, 13):
        got = psr.upscale(img, 4, model=tiny_model, tile=tile, normalize=None, precision="bfloat16")
        assert got.dtype == np.float32 and got.shape == ref.shape
        err = np.abs(got - ref)
        # bf16 keeps 8 significant bits: a few 1e-3 per conv layer of a residual branch at most.
        assert err.max() < 0.02 and err.mean() < 2e-3, (err.max(), err.mean())
        assert err.max() > 0  # it really ran in bf16
    u8 = (img * 255).astype(np.uint8)
    a = psr.upscale(u8, 4, model=tiny_model, precision="bf16").astype(int)
    b = psr.upscale(u8, 4, model=tiny_model).astype(int)
    assert np.abs(a - b).max() <= 12 and np.mean(np.abs(a - b)) < 1.0


def test_too_small_overlap_differs(tiny_model: Path, rng: np.random.Generator) -> None:
    # The equality above is not vacuous: with no overlap, tile seams change the result.
    img = rng.random((37, 29, 3)).astype(np.float32)
    whole = psr.upscale(img, 4, model=tiny_model, tile=None, normalize=None)
    seams = psr.upscale(img, 4, model=tiny_model, tile=8, tile_overlap=0, normalize=None)
    assert np.abs(seams - whole).max() > 1e-3


def test_progress_and_cancel(tiny_model: Path) -> None:
    calls: list[tuple[int, int]] = []
    psr.upscale(
        np.zeros((2, 20, 20), np.float32) + 0.5, 4, model=tiny_model, tile=8, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (18, 18) and [d for d, _ in calls] == list(range(1, 19))

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        psr.upscale(np.zeros((20, 20), np.float32), 4, model=tiny_model, tile=8, progress=cancel)


def test_histogram_matching_matches_skimage(tiny_model: Path, rng: np.random.Generator) -> None:
    from skimage.exposure import match_histograms

    img = rng.random((12, 10, 3)).astype(np.float32)
    raw = psr.upscale(img, 4, model=tiny_model, match_histogram=False, normalize=None)
    unclipped = _net_on_float(tiny_model, img).astype(np.float32)
    matched = psr.upscale(img, 4, model=tiny_model, match_histogram=True, normalize=None)
    ref = match_histograms(unclipped, img, channel_axis=-1)
    np.testing.assert_allclose(matched, ref, atol=1e-6)
    # The output now has the LR input's distribution: each output quantile lies
    # between neighbouring order statistics of the input (120 samples per channel,
    # so a fixed atol on the quantiles would be flaky where the samples are sparse).
    q = np.linspace(0.05, 0.95, 7)
    n = img.shape[0] * img.shape[1]
    got = np.quantile(matched, q, axis=(0, 1))
    srt = np.sort(img.reshape(n, 3), axis=0)
    lo = srt[np.maximum(np.floor(q * n).astype(int) - 2, 0)]
    hi = srt[np.minimum(np.ceil(q * n).astype(int) + 1, n - 1)]
    assert np.all((got >= lo - 1e-6) & (got <= hi + 1e-6)), (got, lo, hi)
    assert not np.allclose(raw, matched)


def test_bicubic_model_is_matlab_imresize(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (3, 11, 13), dtype=np.uint8)
    out = psr.upscale(img, 4, model="bicubic", channel_axis=0, rgb=True)
    ref = imresize(img, 4.0)
    assert np.abs(out.astype(int) - ref).max() <= 1


def test_model_defaults_and_mismatch(tmp_path: Path) -> None:
    p = make_tiny_model(tmp_path / "m2.safetensors", scale=2, match_histogram=True)
    with pytest.raises(ValueError, match="upscales by 2"):
        psr.upscale(np.zeros((5, 5)), 4, model=p)
    net = resolve_model(p, 2, torch.device("cpu"))
    assert net.metadata["match_histogram"] is True
    # The metadata default is applied: output equals explicit matching.
    img = np.random.default_rng(1).random((6, 7, 3))
    np.testing.assert_array_equal(psr.upscale(img, 2, model=p), psr.upscale(img, 2, model=p, match_histogram=True))
    if not (Path(psr.weights.WEIGHTS_DIR) / "x8-pixel.safetensors").exists():
        with pytest.raises(ValueError, match="no shipped model"):
            psr.upscale(np.zeros((5, 5)), 8)


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "image,kwargs,exc,match",
    [
        (np.array([[np.nan, 1.0], [0.0, 0.0]]), {}, ValueError, "NaN or Inf"),
        (np.array([[np.inf, 1.0], [0.0, 0.0]], np.float32), {}, ValueError, "NaN or Inf"),
        (np.zeros((0, 5)), {}, ValueError, "empty"),
        (np.zeros((4, 0, 3)), {}, ValueError, "empty"),
        (np.zeros(5), {}, ValueError, "at least 2 dimensions"),
        (np.zeros((1,) * 7), {}, ValueError, "at most 6"),
        (np.zeros((4, 4), bool), {}, TypeError, "dtype"),
        (np.zeros((4, 4), complex), {}, TypeError, "dtype"),
        (np.zeros((4, 4), object), {}, TypeError, "dtype"),
        ([[1, 2], [3, 4]], {}, TypeError, "numpy array, PIL.Image or torch.Tensor"),
        (np.zeros((4, 4)), {"scale": 3}, ValueError, "upscales by 4"),
        (np.zeros((4, 4)), {"scale": 16}, ValueError, "scale must be"),
        (np.zeros((4, 4)), {"scale": 2.5}, ValueError, "scale must be"),
        (np.zeros((4, 4)), {"channel_axis": 5}, ValueError, "channel_axis"),
        (np.zeros((4, 4, 5)), {"channel_axis": -1, "rgb": True}, ValueError, "rgb=True"),
        (np.zeros((4, 4)), {"normalize": (50, 10)}, ValueError, "percentiles"),
        (np.zeros((4, 4)), {"tile": 2}, ValueError, "tile"),
        (np.zeros((4, 4)), {"device": "tpu9"}, ValueError, "device"),
        (np.zeros((4, 4)), {"precision": "float16"}, ValueError, "precision"),
        (torch.zeros(2, 5, 4, 4), {}, ValueError, "channels must be 1, 3 or 4"),
        (torch.zeros(1, 1, 1, 4, 4), {}, ValueError, "tensor must be"),
        (torch.zeros(4, 4, dtype=torch.complex64), {}, TypeError, "dtype"),
        (Image.new("CMYK", (4, 4)), {}, ValueError, "PIL mode"),
        (np.zeros((5, 5, 0)), {}, ValueError, "empty"),
        (np.zeros((0, 5, 5)), {}, ValueError, "empty"),
        (np.zeros((6, 9, 2)), {}, ValueError, "ambiguous"),
        (np.zeros((3, 6, 9, 5)), {}, ValueError, "ambiguous"),
        (np.zeros((6, 9)), {"rgb": True}, ValueError, "rgb=True needs 3 or 4 channels"),
        (np.zeros((6, 9, 10)), {"rgb": True}, ValueError, "rgb=True needs 3 or 4 channels"),
        (np.zeros((3, 6, 9)), {"channel_axis": None, "rgb": True}, ValueError, "rgb=True"),
        (np.zeros((6, 9, 3)), {"rgb": "no"}, TypeError, "rgb must be None, True or False"),
        (np.zeros((6, 9, 3)), {"match_histogram": "no"}, TypeError, "match_histogram must be None, True or False"),
        (np.zeros((6, 9)), {"device": "meta"}, ValueError, "meta device"),
        (torch.zeros(3, 6, 9, device="meta"), {}, ValueError, "tensor on the meta device"),
        (Image.new("RGB", (4, 4)), {"channel_axis": None}, ValueError, "PIL image's layout is fixed"),
        (Image.new("RGB", (4, 4)), {"channel_axis": 0}, ValueError, "PIL image's layout is fixed"),
        (np.zeros((6, 9), np.int32), {"normalize": None}, ValueError, "normalize=None maps int32"),
        (np.zeros((6, 9), np.uint64), {"normalize": None}, ValueError, "normalize=None maps uint64"),
    ],
)
def test_bad_input(tiny_model: Path, image: object, kwargs: dict, exc: type, match: str) -> None:
    kwargs = {"scale": 4, **kwargs}
    kwargs.setdefault("model", tiny_model)
    with pytest.raises(exc, match=match):
        psr.upscale(image, **kwargs)


def test_tiny_and_constant_images(tiny_model: Path) -> None:
    one = np.array([[200]], np.uint8)
    out = psr.upscale(one, 4, model=tiny_model)
    assert out.shape == (4, 4) and out.dtype == np.uint8
    const = np.full((5, 6), 1234, np.uint16)
    out = psr.upscale(const, 4, model="bicubic")
    np.testing.assert_array_equal(out, np.full((20, 24), 1234, np.uint16))
    # Matching a constant source maps it to the reference's maximum (skimage's rule).
    out = psr.upscale(const, 4, model="bicubic", match_histogram=True)
    np.testing.assert_array_equal(out, np.full((20, 24), 1234, np.uint16))


def test_huge_image_refused_before_allocating(tiny_model: Path) -> None:
    # A broadcast view: looks like 1e6 x 1e6 pixels without using memory.
    huge = np.broadcast_to(np.zeros(1, np.uint8), (1_000_000, 1_000_000))
    with pytest.raises(ValueError, match="more than this machine's memory"):
        psr.upscale(huge, 4, model=tiny_model)


def test_reference_match_histograms_semantics(rng: np.random.Generator) -> None:
    from skimage.exposure import match_histograms

    src = rng.integers(0, 7, (1, 2, 9, 11)).astype(np.float64)  # many ties
    ref = rng.random((1, 2, 5, 4))
    ours = _reference.match_histograms(torch.from_numpy(src), torch.from_numpy(ref)).numpy()
    theirs = match_histograms(src[0], ref[0], channel_axis=0)
    np.testing.assert_allclose(ours[0], theirs, atol=1e-12)


# --------------------------------------------------------------------------------- imports


def test_inference_path_never_imports_torchvision_or_triton() -> None:
    code = (
        "import sys, numpy as np, psr\n"
        "psr.upscale(np.random.rand(9, 9, 3).astype('float32'), 4, model='bicubic', match_histogram=True)\n"
        "bad = [m for m in ('torchvision', 'triton', 'torch._dynamo') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_names_load_on_first_use() -> None:
    """``import psr`` does not import torch; every public name resolves on first use, and
    ``psr.evaluate``/``psr.stylize`` stay the functions after their submodules are imported."""
    code = (
        "import importlib, sys, types, psr\n"
        "assert 'torch' not in sys.modules, 'import psr imported torch'\n"
        "import psr.evaluate, psr.stylize, psr.api\n"
        "importlib.import_module('psr.evaluate'); importlib.import_module('psr.stylize')\n"
        "assert callable(psr.evaluate) and callable(psr.stylize), (psr.evaluate, psr.stylize)\n"
        "assert psr.evaluate is sys.modules['psr.evaluate'].evaluate\n"
        "assert psr.stylize is sys.modules['psr.stylize'].stylize\n"
        "assert isinstance(sys.modules['psr.stylize'], types.ModuleType)\n"
        "for name in psr.__all__:\n"
        "    assert getattr(psr, name) is not None and name in dir(psr), name\n"
        "from psr import upscale, Upscaler, evaluate\n"
        "assert evaluate is psr.evaluate and upscale is psr.api.upscale\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="nosuch"):
        psr.nosuch  # noqa: B018


def test_upscaler_module(tiny_model: Path) -> None:
    x = torch.rand(2, 3, 5, 6)
    mod = psr.Upscaler(4, model=tiny_model)
    torch.testing.assert_close(mod(x), psr.upscale(x, 4, model=tiny_model, normalize=None))
    # A rounding error past [0, 1] (an upstream network's output) is clamped, not refused.
    off = x.clone()
    off[0, 0, 0, 0], off[1, 2, 4, 5] = 1 + 1e-6, -1e-6
    torch.testing.assert_close(mod(off), mod(off.clamp(0, 1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="NaN"):
        mod(torch.full((1, 3, 5, 6), float("nan")))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("normalize", [None, (0.1, 99.9)])
def test_intensity_backward_in_torch_equals_numpy(dtype: type, normalize: tuple | None) -> None:
    """The map back to the caller's dtype in torch (``backward_into``, which tiles take on every
    device) equals numpy's bit for bit: random and out-of-range values, and values that land on .5
    before rounding; every dtype here runs the torch path (float16, uint32 and 64-bit integers stay
    in numpy)."""
    from psr.api import _intensity

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        canon = rng.integers(info.min, info.max, size=(1, 13, 17, 3), endpoint=True).astype(dtype)
    else:
        canon = rng.random((1, 13, 17, 3)).astype(dtype)
    if normalize is None and info is None:
        canon = np.clip(canon, 0, 1)
    if normalize is None and np.dtype(dtype).itemsize >= 4 and info is not None:
        with pytest.raises(ValueError, match="normalize=None maps int32's full range"):
            _intensity(canon, True, normalize)
        return
    inten = _intensity(canon, True, normalize)
    y = rng.uniform(-0.3, 1.3, size=(29, 31, 3)).astype(np.float32)
    span = inten.hi - inten.lo
    y[0, :, 0] = ((np.arange(31) + 0.5) / span).astype(np.float32)  # near .5 after the affine map
    y[1, :, 1] = np.float32(0.5)
    from psr.api import _TORCH_OUT

    assert np.dtype(dtype) in _TORCH_OUT  # else this would compare numpy with itself

    def mapped(chw: torch.Tensor, **kwargs: int) -> np.ndarray:  # a (C, h, w) tile into a new (h, w, C) array
        out = np.empty((*chw.shape[1:], chw.shape[0]), dtype=inten.dtype)
        inten.backward_into(out, chw, **kwargs)
        return out

    want = inten.backward(y)
    got = mapped(torch.from_numpy(y).permute(2, 0, 1))
    assert got.dtype == want.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)
    chw = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))  # as tiles come
    np.testing.assert_array_equal(mapped(chw, band_values=100), want)  # in bands of rows
    if torch.cuda.is_available():
        np.testing.assert_array_equal(mapped(chw.cuda()), want)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float16])
def test_backward_into_a_view(rng: np.random.Generator, device: str, dtype: type) -> None:
    """The map back as tiles use it: a (C, h, w) tile into an (h, w, C) view of the output, in bands
    of rows, RGBA with alpha's own clip range (per-channel clipping) and RGB (one range): equal to
    the numpy map bit for bit, and nothing outside the view is written."""
    from psr.api import _intensity

    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    for c in (3, 4):
        if info is not None:
            canon = rng.integers(info.min, info.max, size=(1, 9, 11, c), endpoint=True).astype(dtype)
        else:
            canon = rng.random((1, 9, 11, c)).astype(dtype)
            canon[..., 3:] = canon[..., 3:] * 0.5 + 0.25  # alpha's range differs from colour's
        inten = _intensity(canon, True, None if dtype == np.uint8 else (0.1, 99.9))
        if c == 4 and info is None:  # floats: alpha keeps its own clip range
            assert inten.clip_lo[3] != inten.clip_lo[0]
        y = torch.from_numpy(rng.uniform(-0.3, 1.3, size=(c, 23, 19)).astype(np.float32)).to(device)
        want = inten.backward(y.permute(1, 2, 0).cpu().numpy())
        sentinel = np.zeros((1, 1), dtype=dtype) + 7
        out = np.broadcast_to(sentinel, (30, 40, c)).copy()
        inten.backward_into(out[4:27, 10:29], y, band_values=100)  # several bands
        np.testing.assert_array_equal(out[4:27, 10:29], want)
        out[4:27, 10:29] = 7
        assert np.all(out == 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_numpy_images_on_cuda_agree_with_cpu(tiny_model: Path, rng: np.random.Generator, dtype: type) -> None:
    """Numpy in, GPU inside (the map back to the dtype runs there), numpy out: as on the CPU up to
    the network's float rounding on either device (TF32 off: one uint8 level where rounding flips)."""
    img = (rng.random((37, 41, 3)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cpu = psr.upscale(img, 4, model=tiny_model, device="cpu", tile=24)
        gpu = psr.upscale(img, 4, model=tiny_model, device="cuda", tile=24)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape == (148, 164, 3)
    diff = np.abs(gpu.astype(np.float64) - cpu.astype(np.float64))
    assert diff.max() <= (1 if dtype == np.uint8 else 1e-5), diff.max()
    if dtype == np.uint8:  # float32 results differ in the last bits almost everywhere; uint8 rarely
        assert np.mean(diff > 0) < 0.01


# --------------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_independent_channels_are_normalised_apart(tiny_model: Path, rng: np.random.Generator, dtype: type) -> None:
    """Independent gray channels (channel_axis given, not RGB) are independent images: each one's
    result is that channel upscaled alone, so a dim channel beside a bright one keeps its detail."""
    dim = rng.integers(0, 100, (2, 9, 11))
    bright = rng.integers(20000, 60000, (2, 9, 11))
    stack = np.stack([dim, bright], axis=1).astype(dtype)  # (Z, C, Y, X)
    out = psr.upscale(stack, 4, model=tiny_model, channel_axis=1)
    assert out.shape == (2, 2, 36, 44) and out.dtype == dtype
    for c, chan in enumerate((dim, bright)):
        alone = psr.upscale(chan.astype(dtype), 4, model=tiny_model, channel_axis=None)
        np.testing.assert_array_equal(out[:, c], alone)


def test_trailing_gray_channel_in_stacks(tiny_model: Path, rng: np.random.Generator) -> None:
    """(Z, H, W, 1) is a stack of gray images with a channel axis, as (H, W, 1) is: each slice as
    its own (H, W) image (before, only 3-D arrays were read so and (Z, H, W, 1) came out as
    (Z, H, 4W, 4))."""
    stack = rng.integers(0, 256, (3, 7, 9, 1), dtype=np.uint8)
    out = psr.upscale(stack, 4, model=tiny_model)
    assert out.shape == (3, 28, 36, 1)
    for z in range(3):
        np.testing.assert_array_equal(
            out[z, ..., 0], psr.upscale(np.ascontiguousarray(stack[z, ..., 0]), 4, model=tiny_model)
        )
    # Explicit layouts for what "auto" refuses: 2 or 5 channels, or a stack of narrow images.
    two = rng.random((7, 9, 2)).astype(np.float32)
    out = psr.upscale(two, 4, model="bicubic", channel_axis=-1, normalize=None)
    assert out.shape == (28, 36, 2)
    np.testing.assert_array_equal(
        out[..., 1], psr.upscale(np.ascontiguousarray(two[..., 1]), 4, model="bicubic", normalize=None)
    )
    narrow = psr.upscale(two, 4, model="bicubic", channel_axis=None, normalize=None)
    assert narrow.shape == (7, 36, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_channel_axis_and_rgb_are_honoured(tiny_model: Path, device: str) -> None:
    """Tensors take channel_axis and rgb as numpy arrays do (they were silently ignored)."""
    hwc = torch.rand(7, 9, 3, device=device)
    out = psr.upscale(hwc, 4, model=tiny_model, channel_axis=-1, normalize=None)
    assert isinstance(out, torch.Tensor) and out.shape == (28, 36, 3) and out.device.type == device
    want = psr.upscale(hwc.cpu().numpy(), 4, model=tiny_model, channel_axis=-1, normalize=None)
    np.testing.assert_allclose(out.cpu().numpy(), want, atol=1e-6)
    out = psr.upscale(hwc, 4, model=tiny_model, channel_axis=-1, rgb=True, normalize=None)
    want = psr.upscale(hwc.cpu().numpy(), 4, model=tiny_model, normalize=None)  # "auto": RGB last
    np.testing.assert_allclose(out.cpu().numpy(), want, atol=1e-6)
    chw = hwc.permute(2, 0, 1)
    per_channel = psr.upscale(chw, 4, model=tiny_model, rgb=False, normalize=None)
    for k in range(3):
        one = psr.upscale(chw[k], 4, model=tiny_model, normalize=None)
        torch.testing.assert_close(per_channel[k], one, atol=1e-6, rtol=0)
    assert not torch.allclose(per_channel, psr.upscale(chw, 4, model=tiny_model, normalize=None), atol=1e-3)
    stack = psr.upscale(torch.rand(2, 5, 6, device=device), 4, model="bicubic", channel_axis=None, normalize=None)
    assert stack.shape == (2, 20, 24)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64])
def test_wide_integers_keep_their_low_bits(dtype: type, rng: np.random.Generator) -> None:
    """Values far from zero are mapped to [0, 1] in float64: an offset of 10^9 shifts the result by
    exactly that (the float32 subtraction it replaced was off by up to 40 counts)."""
    g = rng.integers(0, 256, (11, 13))
    offset = 10**9
    out = psr.upscale((g + offset).astype(dtype), 4, model="bicubic")
    assert out.dtype == dtype
    ref = np.rint(imresize(g.astype(np.float64), 4.0))
    assert np.abs(out.astype(np.float64) - offset - ref).max() <= 1


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integers_at_the_top_of_their_range_saturate(dtype: type) -> None:
    """The largest 64-bit values are not exact in float64 (they round up past the type): bicubic
    overshoot there must clip to the type's maximum, not wrap to its minimum."""
    import warnings

    top = np.iinfo(dtype).max
    a = np.full((16, 16), top, dtype)
    a[::4, ::4] = 2**62
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        out = psr.upscale(a, 2, model="bicubic")
    assert out.dtype == dtype and out.max() == top
    ref = imresize(a.astype(np.float64), 2.0)  # float64 reference, clipped to the type's range
    # float32 inside: about 1e-7 of the value range (2^63 - 2^62) off at most
    np.testing.assert_allclose(out.astype(np.float64), np.clip(ref, 0, float(top)), rtol=0, atol=2**62 * 1e-6)


def test_plain_module_without_scale_and_output_check(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = psr.upscale(img, 4, model=torch.nn.Upsample(scale_factor=4, mode="nearest"))
    np.testing.assert_array_equal(out, np.repeat(np.repeat(img, 4, axis=0), 4, axis=1))
    with pytest.raises(ValueError, match=r"returned shape \(1, 3, 14, 18\).*expected \(1, 3, 28, 36\)"):
        psr.upscale(img, 4, model=torch.nn.Upsample(scale_factor=2, mode="nearest"))


def test_shipped_name_wins_over_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (Path(psr.weights.WEIGHTS_DIR) / "x4-pixel.safetensors").exists():
        pytest.skip("no shipped x4-pixel")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x4-pixel").mkdir()  # e.g. a training run folder named after its model
    img = np.random.default_rng(3).integers(0, 256, (9, 11), dtype=np.uint8)
    assert psr.upscale(img, 4).shape == (36, 44)
    assert psr.upscale(img, 4, model="x4-pixel").shape == (36, 44)
    with pytest.raises(ValueError, match="is a folder"):
        psr.upscale(img, 4, model="./x4-pixel")
    with pytest.raises(ValueError, match="no shipped model 'x5-pixel'") as info:
        psr.upscale(img, 5)
    assert "wave" not in str(info.value) and "starry_night" not in str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_upscaler_registers_its_network(tiny_model: Path, device: str) -> None:
    mod = psr.Upscaler(4, model=tiny_model)
    assert len(list(mod.parameters())) > 0
    mod = mod.to(device)
    assert all(p.device.type == device for p in mod.parameters())
    x = torch.rand(1, 3, 5, 7)  # on the CPU: runs where the module lives, returns to the input's device
    y = mod(x.to(device))
    assert y.device.type == device and y.shape == (1, 3, 20, 28)
    torch.testing.assert_close(y.cpu(), psr.upscale(x, 4, model=tiny_model, normalize=None), atol=1e-5, rtol=0)
    assert psr.Upscaler(4, model="bicubic")(x).shape == (1, 3, 20, 28)
    with pytest.raises(ValueError, match="precision='bfloat16'"):
        mod.half()(x.to(device))
    # The module's copy is its own: moving it does not move psr.upscale's cached network.
    if (Path(psr.weights.WEIGHTS_DIR) / "x4-pixel.safetensors").exists():
        assert psr.Upscaler(4).net is not resolve_model(None, 4, torch.device("cpu"))


def test_pathlike_model_is_always_a_path(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Path("x4-pixel")`` names the local file (str() of it would name the shipped model)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_model, tmp_path / "x4-pixel")
    img = np.random.default_rng(5).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    want = psr.upscale(img, 4, model=tiny_model)
    np.testing.assert_array_equal(psr.upscale(img, 4, model=Path("x4-pixel")), want)
    np.testing.assert_array_equal(
        psr.Upscaler(4, model=Path("x4-pixel")).net(torch.zeros(1, 3, 4, 4)).shape, (1, 3, 16, 16)
    )
    if (Path(psr.weights.WEIGHTS_DIR) / "x4-pixel.safetensors").exists():
        assert not np.array_equal(psr.upscale(img, 4, model="x4-pixel"), want)  # the plain name: shipped


def test_a_rewritten_or_other_weights_file_is_not_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loaded-network cache is keyed on the file, not on the name as typed: the same relative
    name in another directory, or a file rewritten in place, gives that file's network."""
    img = np.random.default_rng(8).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for d, seed in (("a", 1), ("b", 2)):
        (tmp_path / d).mkdir()
        make_tiny_model(tmp_path / d / "m.safetensors", seed=seed)
    want_a = psr.upscale(img, 4, model=tmp_path / "a" / "m.safetensors")
    want_b = psr.upscale(img, 4, model=tmp_path / "b" / "m.safetensors")
    assert not np.array_equal(want_a, want_b)
    monkeypatch.chdir(tmp_path / "a")
    np.testing.assert_array_equal(psr.upscale(img, 4, model="m.safetensors"), want_a)
    monkeypatch.chdir(tmp_path / "b")
    np.testing.assert_array_equal(psr.upscale(img, 4, model="m.safetensors"), want_b)
    make_tiny_model(tmp_path / "b" / "m.safetensors", seed=1)  # rewritten as psr writes (atomically)
    np.testing.assert_array_equal(psr.upscale(img, 4, model="m.safetensors"), want_a)


def test_upscaler_leaves_a_callers_module_in_place(tiny_model: Path) -> None:
    net = psr.load_model(tiny_model)

    def moved(*a: object, **k: object) -> None:
        raise AssertionError("Upscaler moved the caller's module when built")

    net.to = moved  # type: ignore[method-assign]
    mod = psr.Upscaler(4, model=net)
    assert mod.net is net
    with pytest.raises(ValueError, match="upscales by 4, but scale=2"):
        psr.Upscaler(2, model=psr.load_model(tiny_model))


@pytest.mark.parametrize(
    ("shape", "channel_axis", "rgb"),
    [
        ((13, 17), "auto", None),
        ((2, 13, 17, 3), "auto", None),
        ((3, 13, 17), None, None),
        ((2, 3, 13, 17), 1, None),  # independent channels, planes of them
        ((3, 13, 17), 0, True),  # planar RGB
        ((2, 13, 17, 5), -1, None),
        ((13, 17, 4), "auto", None),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("match", [False, True])
def test_out_receives_the_result(
    tiny_model: Path,
    rng: np.random.Generator,
    tmp_path: Path,
    shape: tuple,
    channel_axis: object,
    rgb: object,
    dtype: type,
    match: bool,
) -> None:
    """out= (here a memmap of a file) gets exactly the array upscale returns, for every layout."""
    image = (rng.random(shape) * 200).astype(dtype)
    kw = dict(model=tiny_model, channel_axis=channel_axis, rgb=rgb, match_histogram=match, tile=16)
    want = psr.upscale(image, 4, **kw)
    out = np.memmap(tmp_path / "out.raw", dtype=dtype, mode="w+", shape=want.shape)
    assert psr.upscale(image, 4, out=out, **kw) is out
    np.testing.assert_array_equal(np.asarray(out), want)


def test_out_is_checked_and_lifts_the_memory_check(
    tiny_model: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = rng.integers(0, 256, (2, 11, 13), np.uint8)
    want = psr.upscale(image, 4, model=tiny_model, channel_axis=None)
    monkeypatch.setattr(psr.api, "_physical_memory", lambda: 1000)
    with pytest.raises(ValueError, match="more than this machine's memory; pass out="):
        psr.upscale(image, 4, model=tiny_model, channel_axis=None)
    out = np.empty_like(want)
    psr.upscale(image, 4, model=tiny_model, channel_axis=None, out=out)  # the caller's memory: no check
    np.testing.assert_array_equal(out, want)
    bad = {
        "shape": (np.empty((2, 44, 48), np.uint8), ValueError, r"shape \(2, 44, 52\) and dtype uint8"),
        "dtype": (np.empty((2, 44, 52), np.uint16), ValueError, "dtype uint8"),
        "list": ([0], TypeError, "out must be a numpy array"),
        "overlap": (None, ValueError, "overlaps image"),
    }
    ro = np.empty_like(want)
    ro.flags.writeable = False
    bad["readonly"] = (ro, ValueError, "read-only")
    for name, (arr, exc, msg) in bad.items():
        src = image
        if name == "overlap":  # a view of the same buffer as the image
            big = np.zeros((2, 44, 52), np.uint8)
            src, arr = big[:, :11, :13], big
        with pytest.raises(exc, match=msg):
            psr.upscale(src, 4, model=tiny_model, channel_axis=None, out=arr)
    # Any strides: Fortran order, the channel axis before several stack axes (OME TCZYX).
    four = rng.integers(0, 256, (2, 3, 11, 13), np.uint8)
    fortran = np.empty((52, 44, 3, 2), np.uint8).T
    psr.upscale(four, 4, model=tiny_model, channel_axis=None, out=fortran)
    ref = np.empty((2, 3, 44, 52), np.uint8)  # (the memory check is patched: results go to out=)
    psr.upscale(four, 4, model=tiny_model, channel_axis=None, out=ref)
    np.testing.assert_array_equal(fortran, ref)
    tczyx = rng.integers(0, 256, (2, 3, 2, 11, 13), np.uint8)
    got = np.zeros((2, 3, 2, 44, 52), np.uint8)
    psr.upscale(tczyx, 4, model=tiny_model, channel_axis=1, out=got)
    ref = np.empty((2, 2, 44, 52, 3), np.uint8)
    psr.upscale(np.moveaxis(tczyx, 1, -1), 4, model=tiny_model, channel_axis=-1, out=ref)
    np.testing.assert_array_equal(got, np.moveaxis(ref, -1, 1))
    with pytest.raises(TypeError, match="out is for numpy images"):
        psr.upscale(torch.from_numpy(image[0]), 4, model=tiny_model, out=np.empty((44, 52), np.uint8))
