"""The compiled ops (torch.ops.psr via psr.ops) against independent references, on CPU and CUDA.

References: F.interpolate (a=-0.75), psr.resize.imresize (MATLAB, a=-0.5), skimage's
match_histograms, float64 computations, and numpy for the binned mode's error bound. The
extension is built once per machine (about a minute on first use; cached under the torch
extensions dir). Also: the build machinery (fallback, forced reference, concurrent builds), the
fake kernels (torch.library.opcheck) and a compile-only check of the CUDA sources with nvcc.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psr import _build, _reference, ops
from psr.resize import imresize

from .test_reference import binned_interval, ref_bin_spread, sk_match


def _img() -> torch.Tensor:
    return torch.rand(1, 1, 4, 4)


def assert_within_binned_bound(
    got: torch.Tensor,
    exact: torch.Tensor,
    src: torch.Tensor,
    ref: torch.Tensor,
    bins: int,
    bin_range: torch.Tensor | None = None,
) -> None:
    """Binned output within [F(c_b) - s_ref, F(c_b+1) + s_ref] for each value's bin b (s_ref: the
    reference bins' spread), and within F(c_b+1) - F(c_b) + s_ref of exact mode, the documented
    bound (numpy, independently of the ops)."""
    eps = torch.finfo(got.dtype).eps
    g64, e64 = got.cpu().double(), exact.cpu().double()
    f32 = src.dtype == torch.float32
    for n in range(src.shape[0]):
        for c in range(src.shape[1]):
            br = None if bin_range is None else tuple(float(v) for v in bin_range[n, c])
            s, r = src[n, c].cpu().double().numpy().ravel(), ref[n, c].cpu().double().numpy().ravel()
            lo, hi = binned_interval(s, r, bins, br, f32)
            s_ref = ref_bin_spread(r, bins, f32)
            g, e = g64[n, c].numpy().ravel(), e64[n, c].numpy().ravel()
            tol = 4 * eps * np.maximum(1.0, np.maximum(np.abs(g), np.abs(e)))  # the output's rounding
            assert np.all((lo - tol <= g) & (g <= hi + tol)), (n, c)
            # F(c_b+1) - F(c_b) + s_ref, from the widened edges (near +-3e38, where adding s_ref to an
            # edge is lost to rounding, the width then comes out 0 and the bound s_ref)
            bound = ((hi - s_ref) - (lo + s_ref)) + s_ref
            assert np.all(np.abs(g - e) <= bound + tol), (n, c)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 2e-6, torch.float64: 1e-12}  # for values of order 1
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def extension() -> None:
    """Build/load the extension once; without a C++ compiler these tests cannot run."""
    if _build.force_reference():
        pytest.skip("PSR_FORCE_REFERENCE is set")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    _build.build_extension()


def rand(rng: np.random.Generator, shape: tuple, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.from_numpy(rng.random(shape)).to(dtype=dtype, device=device)


def test_backend_is_extension() -> None:
    assert ops.backend() == "extension"
    assert ops.backend("cpu") == "extension"
    assert ops.backend("meta") == "reference"
    if torch.cuda.is_available():
        assert ops.backend("cuda") == "extension"


# ------------------------------------------------------------------------ upsample_bicubic


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [2, 3, 4, 5, 8])
def test_upsample_is_interpolate(rng: np.random.Generator, device: str, dtype: torch.dtype, scale: int) -> None:
    x = rand(rng, (2, 3, 9, 7), dtype, device)
    want = F.interpolate(x.cpu().double(), scale_factor=scale, mode="bicubic", align_corners=False)
    got = ops.upsample_bicubic(x, scale)
    assert got.shape == (2, 3, 9 * scale, 7 * scale) and got.dtype == dtype and got.device == x.device
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [2, 3, 4, 6, 8])
def test_upsample_a05_is_matlab_imresize(rng: np.random.Generator, device: str, dtype: torch.dtype, scale: int) -> None:
    x = rand(rng, (1, 2, 11, 6), dtype, device)
    want = imresize(x.cpu().double(), scale)
    torch.testing.assert_close(ops.upsample_bicubic(x, scale, a=-0.5).cpu().double(), want, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (3, 2)])
@pytest.mark.parametrize("scale", [2, 7, 8])
def test_upsample_tiny_images(rng: np.random.Generator, device: str, shape: tuple, scale: int) -> None:
    """Symmetric padding wraps several times around 1- and 2-pixel axes."""
    x = rand(rng, (2, 1, *shape), torch.float64, device)
    torch.testing.assert_close(
        ops.upsample_bicubic(x, scale, a=-0.5).cpu(), imresize(x.cpu(), scale), rtol=0, atol=1e-12
    )
    want = F.interpolate(x.cpu(), scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(ops.upsample_bicubic(x, scale).cpu(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_upsample_other_a_is_reference(rng: np.random.Generator, device: str) -> None:
    x = rand(rng, (1, 3, 8, 13), torch.float64, device)
    want = _reference.upsample_bicubic(x.cpu(), 3, a=-0.6)
    torch.testing.assert_close(ops.upsample_bicubic(x, 3, a=-0.6).cpu(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_upsample_layouts(rng: np.random.Generator, device: str) -> None:
    base = rand(rng, (2, 3, 10, 14), torch.float32, device)
    want = ops.upsample_bicubic(base.contiguous(), 4)
    cl = base.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.upsample_bicubic(cl, 4), want, rtol=0, atol=0)
    t = base.transpose(2, 3).contiguous().transpose(2, 3)  # same values, transposed strides
    torch.testing.assert_close(ops.upsample_bicubic(t, 4), want, rtol=0, atol=0)
    big = rand(rng, (2, 3, 21, 29), torch.float32, device)
    sl = big[:, :, 1::2, ::2]  # non-contiguous view
    torch.testing.assert_close(ops.upsample_bicubic(sl, 4), ops.upsample_bicubic(sl.contiguous(), 4), rtol=0, atol=0)


def test_upsample_half_precision_and_empty(rng: np.random.Generator) -> None:
    x = rand(rng, (1, 3, 5, 6), torch.float32, "cpu")
    for dt in (torch.float16, torch.bfloat16):
        y = ops.upsample_bicubic(x.to(dt), 2)
        assert y.dtype == dt
        torch.testing.assert_close(y.float(), ops.upsample_bicubic(x.to(dt).float(), 2).to(dt).float())
    assert ops.upsample_bicubic(torch.empty(0, 3, 4, 5), 2).shape == (0, 3, 8, 10)


def test_upsample_requires_grad_uses_differentiable_reference(rng: np.random.Generator) -> None:
    x = rand(rng, (1, 2, 5, 4), torch.float64, "cpu").requires_grad_(True)
    ops.upsample_bicubic(x, 3).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.interpolate(x2, scale_factor=3, mode="bicubic", align_corners=False).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-12)


def test_matching_refuses_to_drop_a_gradient(rng: np.random.Generator) -> None:
    """Histogram matching is not differentiable: an input that requires grad is refused, not detached."""
    x = rand(rng, (1, 2, 5, 4), torch.float64, "cpu")
    g = x.clone().requires_grad_(True)
    calls = {
        "source": lambda: ops.match_histograms(g, x),
        "reference": lambda: ops.match_histograms(x, g),
        "x": lambda: ops.upsample_match(g, 2),
        "residual": lambda: ops.upsample_match(x, 2, residual=torch.zeros(1, 2, 10, 8, requires_grad=True)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"not differentiable, but {name} requires grad"):
            call()
        with torch.no_grad():  # the same call without grad mode runs the compiled op
            call()
    torch.testing.assert_close(ops.match_histograms(g.detach(), x), ops.match_histograms(x, x), rtol=0, atol=0)


def test_meta_tensors_give_meta_results() -> None:
    x, r = torch.empty(2, 3, 5, 7, device="meta"), torch.empty(2, 3, 4, 4, device="meta")
    assert ops.upsample_bicubic(x, 3).shape == (2, 3, 15, 21)
    for check in (True, False):
        y = ops.match_histograms(x, r, bins=8, check=check)
        assert y.shape == x.shape and y.device.type == "meta"
        y = ops.upsample_match(x, 2, residual=torch.empty(2, 3, 10, 14, device="meta"), check=check)
        assert y.shape == (2, 3, 10, 14) and y.device.type == "meta"


# ------------------------------------------------------------------------ match_histograms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ref_shape", [(5, 3), (17, 19), (61, 40)])
def test_match_exact_is_skimage(rng: np.random.Generator, device: str, dtype: torch.dtype, ref_shape: tuple) -> None:
    src = rand(rng, (2, 3, 23, 17), dtype, device)
    ref = torch.from_numpy(rng.normal(size=(2, 3, *ref_shape))).to(dtype=dtype, device=device)
    got = ops.match_histograms(src, ref)
    assert got.shape == src.shape and got.dtype == dtype and got.device == src.device
    # Same quantiles, same np.interp formula in float64: equal to the last bit.
    torch.testing.assert_close(got.cpu(), sk_match(src.cpu(), ref.cpu()), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_match_exact_ties(rng: np.random.Generator, device: str, dtype: torch.dtype) -> None:
    src = torch.from_numpy(rng.integers(0, 5, (2, 2, 31, 27)) / 4.0).to(dtype=dtype, device=device)  # many ties
    src[0, 0, :10] = -0.0  # -0.0 and +0.0 are one value, as np.unique has it
    src[1, 1] = 0.25  # constant plane: maps to the reference's maximum
    ref = torch.from_numpy(rng.integers(0, 7, (2, 2, 9, 13)) / 6.0).to(dtype=dtype, device=device)
    ref[1, 0] = 0.5  # constant reference
    got = ops.match_histograms(src, ref)
    torch.testing.assert_close(got.cpu(), sk_match(src.cpu(), ref.cpu()), rtol=0, atol=0)
    assert torch.all(got[1, 1] == ref[1, 1].max())
    assert torch.all(got[1, 0] == 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_match_layouts_and_dtypes(rng: np.random.Generator, device: str) -> None:
    src = rand(rng, (2, 3, 12, 9), torch.float32, device)
    ref = rand(rng, (2, 3, 6, 5), torch.float64, device)  # cast to the source's dtype
    want = ops.match_histograms(src, ref.float())
    torch.testing.assert_close(ops.match_histograms(src, ref), want, rtol=0, atol=0)
    cl = src.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.match_histograms(cl, ref.float()), want, rtol=0, atol=0)
    # The reference's layout does not matter either (only its values do).
    torch.testing.assert_close(ops.match_histograms(src, ref.float().transpose(2, 3)), want, rtol=0, atol=0)
    nc = rand(rng, (2, 3, 24, 9), torch.float32, device)[:, :, ::2]
    torch.testing.assert_close(
        ops.match_histograms(nc, ref.float()), ops.match_histograms(nc.contiguous(), ref.float())
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [1, 5, 256, 9000])
def test_match_binned_bound(rng: np.random.Generator, device: str, dtype: torch.dtype, bins: int) -> None:
    """|binned - exact| <= F(c_b+1) - F(c_b) + s_ref, computed independently in numpy (see
    ops.match_histograms)."""
    src = torch.from_numpy(rng.normal(size=(2, 2, 37, 41))).to(dtype=dtype, device=device)
    ref = torch.from_numpy(rng.random((2, 2, 19, 23)) ** 3).to(dtype=dtype, device=device)
    got = ops.match_histograms(src, ref, bins=bins)
    exact = ops.match_histograms(src, ref)
    assert_within_binned_bound(got, exact, src, ref, bins)
    got, exact = got.cpu().double(), exact.cpu().double()
    tol = 4 * torch.finfo(dtype).eps
    if bins == 256:  # smooth data: the bound is tight on average
        assert float((got - exact).abs().mean()) < 0.01
    # And the reference implements the same binning: equal to rounding.
    torch.testing.assert_close(
        got, _reference.match_histograms(src.cpu(), ref.cpu(), bins=bins).double(), rtol=0, atol=tol
    )


@pytest.mark.parametrize("device", DEVICES)
def test_match_binned_float32_fallbacks(rng: np.random.Generator, device: str) -> None:
    """float32 planes bin in float32 unless the range or its factor is not a finite float (a
    subnormal range: bins / (hi - lo) > FLT_MAX), and lerp on float edges unless the reference's
    range overflows float32 (+-3e38): then double arithmetic, as in the reference, to the last bit,
    with no NaN or Inf and within the bound."""
    tiny = torch.from_numpy(rng.random((1, 2, 13, 11)) * 1e-41).float()  # subnormal float32 values
    assert tiny.max() > 0 and tiny.max() < torch.finfo(torch.float32).tiny
    ref = torch.from_numpy(rng.random((1, 2, 7, 9))).float()
    wide_ref = ref.clone()
    wide_ref[0, 1, 0, :2] = torch.tensor([-3e38, 3e38])
    src = torch.from_numpy(rng.normal(size=(1, 2, 13, 11))).float()
    for s, r in [(tiny, ref), (src, wide_ref), (tiny, wide_ref)]:
        for bins in (3, 64):
            got = ops.match_histograms(s.to(device), r.to(device), bins=bins).cpu()
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, _reference.match_histograms(s, r, bins=bins), rtol=0, atol=0)
            assert_within_binned_bound(got, ops.match_histograms(s, r), s, r, bins)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [1, 6, 300])
def test_match_binned_given_range(rng: np.random.Generator, device: str, dtype: torch.dtype, bins: int) -> None:
    """bin_range: ranges narrower than the data (values past them in the end bins), wider, per plane
    different, and a single point; the bound holds for each, the backends agree with the reference
    to the last bit, and the plane's own range gives the default."""
    src = torch.from_numpy(rng.normal(size=(2, 3, 23, 19))).to(dtype=dtype, device=device)
    ref = torch.from_numpy(rng.random((2, 3, 9, 14)) ** 2).to(dtype=dtype, device=device)
    own = ops.plane_range(src)
    torch.testing.assert_close(own[..., 0], src.flatten(2).min(-1).values, rtol=0, atol=0)
    torch.testing.assert_close(own[..., 1], src.flatten(2).max(-1).values, rtol=0, atol=0)
    torch.testing.assert_close(
        ops.match_histograms(src, ref, bins=bins, bin_range=own),
        ops.match_histograms(src, ref, bins=bins),
        rtol=0,
        atol=0,
    )
    exact = ops.match_histograms(src, ref)
    spread = torch.from_numpy(rng.uniform(-0.5, 1.5, size=(2, 3, 2))).to(dtype=dtype, device=device).sort(-1).values
    mid = own.mean(-1, keepdim=True)
    point = mid.expand(-1, -1, 2).contiguous()
    for r in (own * 0.5, own * 2 + 1, mid + spread, point):
        got = ops.match_histograms(src, ref, bins=bins, bin_range=r)
        want = _reference.match_histograms(src.cpu(), ref.cpu(), bins=bins, bin_range=r.cpu())
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
        if r is not point:
            assert_within_binned_bound(got, exact, src, ref, bins, r)
    # A single-point range: every value maps to the reference's maximum, as a constant source does.
    got = ops.match_histograms(src, ref, bins=bins, bin_range=point)
    torch.testing.assert_close(got, ref.flatten(2).max(-1).values[..., None, None].expand_as(got), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_match_binned_constant_and_monotone(rng: np.random.Generator, device: str) -> None:
    ref = rand(rng, (1, 2, 7, 8), torch.float32, device)
    src = torch.full((1, 2, 9, 9), 3.0, device=device)
    got = ops.match_histograms(src, ref, bins=16)
    assert torch.all(got[0, 0] == ref[0, 0].max()) and torch.all(got[0, 1] == ref[0, 1].max())
    src = rand(rng, (1, 1, 30, 30), torch.float32, device)
    out = ops.match_histograms(src, ref[:, :1], bins=32).flatten()
    order = torch.argsort(src.flatten())
    assert torch.all(out[order].diff() >= 0)  # keeps the order of values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spread", ["beyond_dbl_max", "subnormal"])
def test_match_binned_extreme_float64_ranges(rng: np.random.Generator, device: str, spread: str) -> None:
    """Finite float64 planes whose hi - lo (or bins / (hi - lo)) overflows still bin correctly.

    Oracle: the bins computed in numpy's extended precision (x86 long double: no overflow at these
    ranges), the exact map at their edges widened by the reference bins' spread; values within 1e-6
    of a bin edge may fall either side.
    """
    if np.finfo(np.longdouble).maxexp <= 1024:
        pytest.skip("numpy's long double is double here: no independent oracle")
    unit = 1e308 if spread == "beyond_dbl_max" else 1e-310
    src64 = (rng.random((1, 1, 13, 17)) * 2 - 1) * unit
    src = torch.from_numpy(src64).to(device)
    ref = torch.from_numpy(rng.normal(size=(1, 1, 9, 11))).to(device)
    bins = 7
    got = ops.match_histograms(src, ref, bins=bins).cpu().numpy().ravel()
    assert np.all(np.isfinite(got))
    s = src64.ravel().astype(np.longdouble)
    pos = (s - s.min()) * bins / (s.max() - s.min())
    k = np.clip(np.floor(pos), 0, bins - 1).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(np.bincount(k, minlength=bins))])
    rv, rc = np.unique(ref.cpu().numpy(), return_counts=True)
    edge = np.interp(cum / s.size, np.cumsum(rc) / ref.numel(), rv)
    near_edge = np.abs(pos - np.round(pos)) < 1e-6
    s_ref = ref_bin_spread(ref.cpu().numpy().ravel(), bins, False)  # the binned reference CDF's error
    inside = (edge[k] - s_ref - 1e-12 <= got) & (got <= edge[k + 1] + s_ref + 1e-12)
    assert np.all(inside | near_edge) and inside.mean() > 0.9
    order = np.argsort(src64.ravel(), kind="stable")
    assert np.all(np.diff(got[order]) >= 0)
    np.testing.assert_array_equal(got, _reference.match_histograms(src.cpu(), ref.cpu(), bins=bins).numpy().ravel())


@pytest.mark.parametrize("device", DEVICES)
def test_match_binned_reference_near_dbl_max(rng: np.random.Generator, device: str) -> None:
    """A reference spanning +-1.7e308: where the exact map overflows (np.interp gives inf, as skimage
    does, so it is not even monotone), binned mode keeps the infinite edge, never NaN; the backends agree."""
    ref = torch.tensor([-1.7e308, -1.0, 0.0, 2.0, 1.7e308], dtype=torch.float64, device=device).reshape(1, 1, 1, 5)
    src = torch.from_numpy(rng.random((1, 1, 11, 7))).to(device)
    for bins in (None, 3, 64):
        got = ops.match_histograms(src, ref, bins=bins).cpu()
        assert not torch.isnan(got).any(), bins
        torch.testing.assert_close(got, _reference.match_histograms(src.cpu(), ref.cpu(), bins=bins), rtol=0, atol=0)


# ------------------------------------------------------------------------ upsample_match


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [None, 64])
@pytest.mark.parametrize(("scale", "a"), [(4, -0.75), (3, -0.5), (2, -0.5)])
def test_upsample_match_is_composition(
    rng: np.random.Generator, device: str, dtype: torch.dtype, bins: int | None, scale: int, a: float
) -> None:
    x = rand(rng, (2, 3, 11, 8), dtype, device)
    res = torch.from_numpy(rng.normal(size=(2, 3, 11 * scale, 8 * scale)) * 0.05).to(dtype=dtype, device=device)
    ref = rand(rng, (2, 3, 7, 9), dtype, device)
    for residual, reference in [(None, None), (res, None), (None, ref), (res, ref)]:
        got = ops.upsample_match(x, scale, residual=residual, reference=reference, a=a, bins=bins)
        up = ops.upsample_bicubic(x, scale, a=a)
        src = up if residual is None else up + residual
        # The fused kernel recomputes the same bicubic values and bins over x's range: equal to
        # the composed ops.
        rng_x = ops.plane_range(x) if bins is not None else None
        want = ops.match_histograms(src, x if reference is None else reference, bins=bins, bin_range=rng_x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if bins is not None:  # and within the bound of exact mode, whatever the range
            exact = ops.match_histograms(src, x if reference is None else reference)
            assert_within_binned_bound(got, exact, src, x if reference is None else reference, bins, rng_x)
    if bins is None:  # and to skimage on a float64 bicubic
        up64 = _reference.upsample_bicubic(x.cpu().double(), scale, a=a) + res.cpu().double()
        want = sk_match(up64, ref.cpu().double())
        got = ops.upsample_match(x, scale, residual=res, reference=ref, a=a).cpu().double()
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
        else:
            # float32 rounding of the bicubic values can swap (or merge into a tie) the ranks of
            # near-equal pixels, which moves their outputs by one quantile step: the sorted outputs
            # and the pixels agree almost everywhere.
            sorted_diff = got.flatten(2).sort().values - want.flatten(2).sort().values
            assert float((sorted_diff.abs() > 1e-5).double().mean()) < 0.01
            assert float(((got - want).abs() > 1e-5).double().mean()) < 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_upsample_match_constant_and_layouts(rng: np.random.Generator, device: str) -> None:
    x = torch.full((1, 3, 5, 6), 0.7, device=device)
    for bins in (None, 8):
        got = ops.upsample_match(x, 4, bins=bins)
        assert got.shape == (1, 3, 20, 24)
        # bicubic of a constant is constant up to rounding; matching to x itself gives 0.7
        torch.testing.assert_close(got, torch.full_like(got, 0.7), rtol=0, atol=1e-6)
    x = rand(rng, (2, 3, 9, 10), torch.float32, device)
    want = ops.upsample_match(x, 2)
    torch.testing.assert_close(
        ops.upsample_match(x.contiguous(memory_format=torch.channels_last), 2), want, rtol=0, atol=0
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_no_host_sync_with_check_false(rng: np.random.Generator) -> None:
    """With check=False nothing synchronises with the host (torch raises on a synchronising call)."""
    x = rand(rng, (1, 3, 33, 40), torch.float32, "cuda")
    ref = rand(rng, (1, 3, 9, 9), torch.float32, "cuda")
    ops.upsample_match(x, 4, bins=64, check=False)  # warm-up: lazy init may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for bins in (64, 9000, None):
            ops.upsample_match(x, 4, reference=ref, bins=bins, check=False)
            ops.match_histograms(x, ref, bins=bins, check=False)
        ops.upsample_bicubic(x, 3, check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
def test_wide_planes_many_tiles(rng: np.random.Generator, device: str) -> None:
    """Rows wider than one CUDA tile (256 input columns) and more tiles per plane than blocks in the
    grid, so blocks loop over tiles: bicubic against F.interpolate, the fused op against the composed
    ops (same device) in every mode, and exact mode against skimage."""
    x = rand(rng, (1, 3, 200, 600), torch.float32, device)
    x[0, 1, :, 300:] = 0.25  # a tie group spanning tiles and blocks
    up = ops.upsample_bicubic(x, 4)
    want = F.interpolate(x.double(), scale_factor=4, mode="bicubic", align_corners=False).float()
    torch.testing.assert_close(up, want, rtol=0, atol=ATOL[torch.float32])
    for bins in (None, 256, 9000):
        got = ops.upsample_match(x, 4, bins=bins)
        rng_x = ops.plane_range(x) if bins is not None else None
        torch.testing.assert_close(got, ops.match_histograms(up, x, bins=bins, bin_range=rng_x), rtol=0, atol=0)
    torch.testing.assert_close(ops.upsample_match(x, 4).cpu(), sk_match(up.cpu(), x.cpu()), rtol=0, atol=0)


def binned_special_inputs() -> tuple[torch.Tensor, ...]:
    """float32 (source, reference, bin_range, x, residual) for binned matching of NaN, infinities,
    -0.0, the range's ends and values past them (check=False), plain and fused through the residual."""
    g = np.random.default_rng(5)
    src = torch.from_numpy(g.random((1, 2, 37, 29)) * 4 - 2).float()
    special = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, -1.0, 1.5, -0.5, 1e30, -1e30, 3.4e38, -3.4e38]
    src.view(-1)[: len(special)] = torch.tensor(special)
    src.view(-1)[-len(special) :] = torch.tensor(special)
    ref = torch.from_numpy(g.random((1, 2, 11, 13))).float()
    bin_range = torch.tensor([[[-1.0, 1.0], [-0.5, 1.5]]])
    x = torch.from_numpy(g.random((1, 2, 9, 7))).float()
    return src, ref, bin_range, x, src[:, :, :36, :28] * 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("bins", [1, 7, 1024, 2**24])
def test_cuda_binned_special_values_are_the_cpu_kernels(bins: int) -> None:
    """The GPU bins with fminf/fmaxf against the largest float below bins, where the CPU kernel and
    the emulator run compares and selects: the same bins for NaN (bin 0), infinities, -0.0 and values
    past either end of the range (check=False), bit for bit, at the smallest and largest bin counts
    too; plain, and fused through a residual (against the CPU kernel on the GPU's upsampled values,
    whose last bits may differ from the CPU's)."""
    src, ref, bin_range, x, res = binned_special_inputs()
    got = ops.match_histograms(src.cuda(), ref.cuda(), bins=bins, bin_range=bin_range.cuda(), check=False).cpu()
    want = ops.match_histograms(src, ref, bins=bins, bin_range=bin_range, check=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    got = ops.upsample_match(x.cuda(), 4, residual=res.cuda(), reference=ref.cuda(), bins=bins, check=False).cpu()
    up = ops.upsample_bicubic(x.cuda(), 4).cpu() + res
    want = ops.match_histograms(up, ref, bins=bins, bin_range=ops.plane_range(x), check=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_more_planes_than_grid_rows(rng: np.random.Generator) -> None:
    """Over 65535 planes: the CUDA grid covers them in chunks (gridDim.y <= 65535). Checked against
    the CPU kernels, which are checked against skimage and the reference above."""
    src = rand(rng, (70000, 1, 3, 3), torch.float32, "cuda")
    ref = rand(rng, (70000, 1, 2, 2), torch.float32, "cuda")
    got = ops.match_histograms(src, ref, bins=4).cpu()
    torch.testing.assert_close(got, ops.match_histograms(src.cpu(), ref.cpu(), bins=4), rtol=0, atol=4e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("bins", [None, 64])
def test_cuda_ops_run_on_the_current_stream(rng: np.random.Generator, bins: int | None) -> None:
    """On a side stream, the input is overwritten after a long sleep and then the ops run: work
    launched on any other stream would read the old input."""
    old = rand(rng, (1, 3, 40, 50), torch.float32, "cuda")
    new = rand(rng, (1, 3, 40, 50), torch.float32, "cuda")
    want = (
        ops.upsample_bicubic(new, 3),
        ops.match_histograms(new, old, bins=bins),
        ops.upsample_match(new, 3, bins=bins),
    )
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    x = old.clone()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU cycles
        x.copy_(new)
        got = (
            ops.upsample_bicubic(x, 3, check=False),
            ops.match_histograms(x, old, bins=bins, check=False),
            ops.upsample_match(x, 3, bins=bins, check=False),
        )
    torch.cuda.synchronize()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("op", ["upsample_bicubic", "match_histograms", "upsample_match"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_refused(op: str, bad: float) -> None:
    x = torch.rand(1, 2, 5, 5)
    x[0, 1, 2, 3] = bad
    ok = torch.rand(1, 2, 5, 5)
    calls = {
        "upsample_bicubic": [lambda: ops.upsample_bicubic(x, 2)],
        "match_histograms": [lambda: ops.match_histograms(x, ok), lambda: ops.match_histograms(ok, x)],
        "upsample_match": [
            lambda: ops.upsample_match(x, 2),
            lambda: ops.upsample_match(ok, 2, reference=x),
            lambda: ops.upsample_match(ok, 2, residual=F.interpolate(x, scale_factor=2)),
        ],
    }[op]
    for call in calls:
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()


def test_check_false_skips_the_test() -> None:
    x = torch.rand(1, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    assert ops.upsample_bicubic(x, 2, check=False).shape == (1, 1, 8, 8)
    for bins in (None, 4):  # garbage in, garbage out, but no crash
        assert ops.match_histograms(x, torch.rand(1, 1, 3, 3), bins=bins, check=False).shape == x.shape
        assert ops.upsample_match(x, 2, bins=bins, check=False).shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: ops.upsample_bicubic(np.zeros((1, 1, 4, 4)), 2), TypeError, "x must be a torch.Tensor"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4, dtype=torch.int32), 2), TypeError, "floating"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 4, 4), 2), ValueError, r"\(N, C, H, W\)"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 0, 4), 2), ValueError, "H >= 1"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4), 9), ValueError, "scale"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4), 0), ValueError, "scale"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4), 2.0), ValueError, "scale"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4), True), ValueError, "scale"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4), 2, a="x"), TypeError, "a must be"),
        (lambda: ops.upsample_bicubic(torch.zeros(1, 1, 4, 4), 2, a=float("nan")), ValueError, "a must be"),
        (lambda: ops.match_histograms(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4)), ValueError, "N and C"),
        (lambda: ops.match_histograms(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 0)), ValueError, "reference"),
        (lambda: ops.match_histograms(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), bins=0), ValueError, "bins"),
        (lambda: ops.match_histograms(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), bins=2.5), ValueError, "bins"),
        (
            lambda: ops.match_histograms(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), bins=2**25),
            ValueError,
            "bins",
        ),
        (lambda: ops.match_histograms(_img(), _img(), bin_range=torch.tensor([[[0.0, 1.0]]])), ValueError, "bins=k"),
        (lambda: ops.match_histograms(_img(), _img(), bins=4, bin_range=[0.0, 1.0]), TypeError, "bin_range"),
        (
            lambda: ops.match_histograms(_img(), _img(), bins=4, bin_range=torch.zeros(1, 1, 3)),
            ValueError,
            r"\(N, C, 2\)",
        ),
        (
            lambda: ops.match_histograms(_img(), _img(), bins=4, bin_range=torch.zeros(1, 1, 2, dtype=torch.int64)),
            TypeError,
            "floating",
        ),
        (
            lambda: ops.match_histograms(_img(), _img(), bins=4, bin_range=torch.tensor([[[1.0, 0.0]]])),
            ValueError,
            "lo <= hi",
        ),
        (
            lambda: ops.match_histograms(_img(), _img(), bins=4, bin_range=torch.tensor([[[0.0, float("nan")]]])),
            ValueError,
            "NaN",
        ),
        (
            lambda: ops.match_histograms(_img(), _img(), bins=4, bin_range=torch.tensor([[[0.0, 1e300]]]).double()),
            ValueError,
            "Inf",
        ),
        (
            lambda: ops.match_histograms(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, device="meta")),
            ValueError,
            "meta",
        ),
        (
            lambda: ops.upsample_match(torch.zeros(1, 1, 4, 4), 2, residual=torch.zeros(1, 1, 8, 9)),
            ValueError,
            "residual",
        ),
        (
            lambda: ops.upsample_match(torch.zeros(1, 1, 4, 4), 2, reference=torch.zeros(2, 1, 4, 4)),
            ValueError,
            "N and C",
        ),
        (
            lambda: ops.upsample_match(torch.zeros(1, 1, 4, 4), 2, residual=torch.zeros(1, 1, 8, 8, dtype=torch.int64)),
            TypeError,
            "residual must be a floating-point tensor, got torch.int64",
        ),
    ],
)
def test_bad_arguments(call: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


def bad_kernel_calls() -> list[tuple[str, tuple, str]]:
    """Calls of the raw ops (op name, arguments, a part of the message) that every backend's kernel refuses with the
    same message (csrc/checks.h): the Python wrappers catch these first, the kernels must too."""
    x = torch.rand(1, 2, 3, 5)
    f16 = torch.zeros(1, 2, 3, 5, dtype=torch.float16)
    empty = torch.zeros(1, 2, 0, 5)
    return [
        ("upsample_bicubic", (x, 9, -0.75), "psr::upsample_bicubic: scale must be in 1..8, got 9"),
        ("upsample_bicubic", (x, 0, -0.75), "scale must be in 1..8, got 0"),
        ("upsample_bicubic", (x[0], 2, -0.75), "x must be (N, C, H, W), got [2, 3, 5]"),
        ("upsample_bicubic", (f16, 2, -0.75), "x must be float32 or float64, got Half"),
        ("upsample_bicubic", (empty, 2, -0.75), "H and W must be positive"),
        ("match_histograms", (f16, x, None, None), "psr::match_histograms: source must be float32 or float64"),
        ("match_histograms", (x[0], x, None, None), "source must be"),
        ("match_histograms", (empty, x, None, None), "source must have pixels"),
        ("match_histograms", (x, x[:, :1], None, None), "reference must be (N, C, h, w) with source's N and C"),
        ("match_histograms", (x, x.double(), None, None), "reference must have source's dtype"),
        ("match_histograms", (x, empty, None, None), "reference must have pixels"),
        ("match_histograms", (x, x, 0, None), "bins must be in 1..2^24, got 0"),
        ("match_histograms", (x, x, 2**24 + 1, None), "bins must be in 1..2^24, got 16777217"),
        ("match_histograms", (x, x, None, torch.zeros(1, 2, 2)), "binned mode only"),
        ("match_histograms", (x, x, 4, torch.zeros(2, 1, 2)), "bin_range must have shape [1, 2, 2], got [2, 1, 2]"),
        (
            "match_histograms",
            (x, x, 4, torch.zeros(1, 2, 2, dtype=torch.float64)),
            "bin_range must have the source's dtype",
        ),
        ("upsample_match", (x, 9, None, None, -0.75, None), "psr::upsample_match: scale must be in 1..8"),
        ("upsample_match", (f16, 2, None, None, -0.75, None), "x must be float32 or float64"),
        ("upsample_match", (x, 2, None, None, -0.75, 0), "bins must be in 1..2^24"),
        (
            "upsample_match",
            (x, 2, torch.zeros(1, 2, 6, 9), None, -0.75, None),
            "residual must have shape [1, 2, 6, 10]",
        ),
        (
            "upsample_match",
            (x, 2, torch.zeros(1, 2, 6, 10).double(), None, -0.75, None),
            "residual must have x's dtype",
        ),
        ("upsample_match", (x, 2, None, x[:, :1], -0.75, None), "reference must be (N, C, h, w) with x's N and C"),
        ("upsample_match", (x, 2, None, empty, -0.75, None), "reference must have pixels"),
    ]


@pytest.mark.parametrize("case", range(len(bad_kernel_calls())))
def test_kernels_check_their_inputs_too(case: int) -> None:
    name, args, match = bad_kernel_calls()[case]
    with pytest.raises(RuntimeError, match=re.escape(match)):
        getattr(torch.ops.psr, name)(*args)


# ------------------------------------------------------------------------ opcheck, fuzzing


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(rng: np.random.Generator, device: str) -> None:
    x = rand(rng, (2, 3, 5, 7), torch.float32, device)
    ref = rand(rng, (2, 3, 4, 3), torch.float32, device)
    res = rand(rng, (2, 3, 10, 14), torch.float32, device)
    cases = [
        (torch.ops.psr.upsample_bicubic.default, (x, 2, -0.75)),
        (torch.ops.psr.upsample_bicubic.default, (x.double(), 3, -0.5)),
        (torch.ops.psr.match_histograms.default, (x, ref, None, None)),
        (torch.ops.psr.match_histograms.default, (x, ref, 16, None)),
        (torch.ops.psr.match_histograms.default, (x, ref, 16, ops.plane_range(x) * 0.5)),
        (torch.ops.psr.upsample_match.default, (x, 2, res, ref, -0.75, None)),
        (torch.ops.psr.upsample_match.default, (x, 2, None, None, -0.5, 8)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_small_shapes(data: st.DataObject) -> None:
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    scale = data.draw(st.integers(1, 8))
    a = data.draw(st.sampled_from([-0.5, -0.75, -0.6]))
    levels = data.draw(st.sampled_from([0, 3, 50]))  # 0: continuous values, else quantised (ties)
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    x = g.random((n, c, h, w))
    if levels:
        x = np.round(x * levels) / levels
    xt = torch.from_numpy(x)
    up = ops.upsample_bicubic(xt, scale, a=a)
    torch.testing.assert_close(up, _reference.upsample_bicubic(xt, scale, a=a), rtol=0, atol=1e-12)
    ref = torch.from_numpy(g.random((n, c, data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))))
    torch.testing.assert_close(ops.match_histograms(up, ref), sk_match(up, ref), rtol=0, atol=0)
    bins = data.draw(st.sampled_from([None, 1, 3, 100]))
    rng_x = ops.plane_range(xt) if bins is not None else None
    torch.testing.assert_close(
        ops.upsample_match(xt, scale, reference=ref, a=a, bins=bins),
        ops.match_histograms(up, ref, bins=bins, bin_range=rng_x),
    )
    torch.testing.assert_close(
        ops.match_histograms(up, ref, bins=bins), _reference.match_histograms(up, ref, bins=bins), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_plane_parallel_paths(rng: np.random.Generator, dtype: torch.dtype, threads: int) -> None:
    """Planes big enough for the radix sort (> 2^18 values), 1 and 3 planes: one thread per plane
    (histograms of all passes in one read) and planes split across threads (blocked passes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for c in (1, 3):
            x = torch.from_numpy(rng.random((1, c, 130, 140))).to(dtype)
            x[0, 0, :20] = 0.5  # a tie group spanning sort blocks
            x[0, -1, 40:60] = -x[0, -1, 40:60]  # negative values: keys differ in the sign bit too
            got = ops.upsample_match(x, 4)
            up = ops.upsample_bicubic(x, 4)
            torch.testing.assert_close(got, sk_match(up, x), rtol=0, atol=0)
            torch.testing.assert_close(ops.match_histograms(up, x), got, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ build machinery


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None, reason="needs Linux and ldd")
def test_extension_links_the_shared_cxx_runtime() -> None:
    """The extension uses the C++ runtime torch loaded, never a static copy of its own: a toolchain
    that linked libstdc++ statically gave a second runtime, and a kernel's error message with a
    number in it segfaulted (torch 2.11 on the lent GPU machine)."""
    lib = _build.build_extension()
    assert _build._process_libstdcxx() in _build._ld_flags()
    deps = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "libstdc++" in deps, deps
    if shutil.which("nm"):
        defined = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
        assert "_ZNSo9_M_insertIlEERSoT_" not in defined  # std::ostream::_M_insert<long>: libstdc++'s own
    with pytest.raises(RuntimeError, match="got 9"):  # formats an int64 into the message
        torch.ops.psr.upsample_bicubic(torch.zeros(1, 1, 3, 3), 9, -0.75)


def _run(code: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=timeout, cwd=ROOT
    )


_PROBE = (
    "import warnings, torch\n"
    "warnings.simplefilter('always')\n"
    "from psr import ops\n"
    "x = torch.rand(1, 1, 5, 5)\n"
    "ops.upsample_bicubic(x, 2); ops.match_histograms(x, x); ops.upsample_match(x, 2, bins=4)\n"
    "print('BACKEND', ops.backend())\n"
)


def test_force_reference_env() -> None:
    out = _run(_PROBE, {"PSR_FORCE_REFERENCE": "1"})
    assert out.returncode == 0, out.stderr
    assert "BACKEND reference" in out.stdout
    assert "ExtensionFallbackWarning" not in out.stderr  # asked for: nothing to warn about


def test_no_compiler_falls_back_once(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path / "empty"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": "c++"}
    out = _run(_PROBE, env)
    assert out.returncode == 0, out.stderr
    assert "BACKEND reference" in out.stdout
    assert out.stderr.count("ExtensionFallbackWarning") == 1 and "no C++ compiler" in out.stderr


def test_failed_build_is_remembered(tmp_path: Path) -> None:
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": str(tmp_path / "no-such-compiler")}
    first = _run(_PROBE, env)
    assert first.returncode == 0, first.stderr
    assert "BACKEND reference" in first.stdout and first.stderr.count("ExtensionFallbackWarning") == 1
    assert list((tmp_path / "ext").glob("*/failed.txt"))
    t0 = time.monotonic()
    second = _run(_PROBE, env)
    assert "BACKEND reference" in second.stdout and "earlier build failed" in second.stderr
    assert time.monotonic() - t0 < 60  # no second compile attempt


def test_concurrent_loads_wait_for_the_builder(tmp_path: Path) -> None:
    """Two processes needing a build while a third holds the build lock both wait, then load it.

    The up-to-date build directory is copied without its completion stamp (ninja then only
    checks timestamps), with a stale lock file of torch's left behind by a 'crashed' builder.
    """
    src = Path(str(_build._state["path"])).parent
    root = tmp_path / "ext"
    dst = root / src.name
    shutil.copytree(src, dst, symlinks=True)
    (dst / "ok").unlink()
    (dst / "lock").write_text("")
    env = {"TORCH_EXTENSIONS_DIR": str(root)}
    code = _PROBE + "from psr import _build; print('PATH', _build._state['path'])\n"
    with _build._file_lock(root / f"{src.name}.lock"):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
                cwd=ROOT,
            )
            for _ in range(2)
        ]
        time.sleep(4)
        assert all(p.poll() is None for p in procs)  # blocked on the lock
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr
        assert "BACKEND extension" in stdout and f"PATH {dst / 'psr_ops.so'}" in stdout
    assert (dst / "ok").is_file()  # and the stale lock file (torch < 2.12 waits on its mere existence) held no one up


def test_forced_rebuild_recompiles_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``psr build-ext --force`` removes the objects too, so ninja recompiles rather than relinks."""
    src = Path(str(_build._state["path"])).parent
    dst = tmp_path / src.name
    shutil.copytree(src, dst, symlinks=True)
    assert list(dst.glob("*.o"))
    monkeypatch.setattr(_build, "_layout", lambda with_cuda: (dst, dst / "psr_ops.so", ["-O3"]))
    monkeypatch.setitem(_build._state, "loaded", None)
    seen: dict[str, list[str]] = {}

    def fake_build(build_dir: Path, lib: Path, flags: list, with_cuda: bool, verbose: bool) -> None:
        seen["left"] = sorted(p.name for p in build_dir.iterdir() if p.suffix in (".o", ".so") or p.name == "ok")
        raise RuntimeError("stop before compiling")

    monkeypatch.setattr(_build, "_build", fake_build)
    with pytest.raises(RuntimeError, match="stop before compiling"):
        _build._load(build=True, force=True, verbose=False, with_cuda=False)
    assert seen["left"] == []


def test_env_flags_parse_one_way(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, want in [
        ("1", True),
        ("ON", True),
        (" yes ", True),
        ("True", True),
        ("0", False),
        ("off", False),
        ("No", False),
        ("", False),
        ("FALSE", False),
    ]:
        monkeypatch.setenv("PSR_FORCE_REFERENCE", raw)
        assert _build.force_reference() is want, raw
    monkeypatch.setenv("PSR_FORCE_REFERENCE", "maybe")
    with pytest.raises(ValueError, match="PSR_FORCE_REFERENCE must be one of"):
        _build.force_reference()
    monkeypatch.setenv("PSR_BUILD_CUDA", "False")
    assert not _build._want_cuda()


def test_build_dir_tracks_sources(tmp_path: Path) -> None:
    """The build directory's name changes with any source byte (so edits rebuild)."""
    copy = tmp_path / "csrc"
    shutil.copytree(_build.source_dir(), copy)
    flags = ["-O3"]
    before = _build._fingerprint(copy, False, flags)
    with open(copy / "cpu" / "upsample_bicubic.cpp", "a") as f:
        f.write("\n// edit\n")
    assert _build._fingerprint(copy, False, flags) != before
    assert _build._fingerprint(copy, False, ["-O2"]) != _build._fingerprint(copy, False, flags)


def test_info_and_sources_shipped() -> None:
    info = _build.extension_info()
    assert info["loaded"] and info["built"] and Path(str(info["path"])).is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for f in sorted(_build.source_dir().rglob("*")):
        if f.suffix in (".cpp", ".h", ".cu", ".cuh"):
            rel = f.relative_to(_build.source_dir())
            pattern = f"_csrc/{rel.parent.as_posix() + '/' if rel.parent != Path('.') else ''}*{f.suffix}"
            assert pattern in pyproject, f"{rel} would not ship in the wheel (add {pattern!r} to package-data)"
    assert (ROOT / "psr" / "_csrc" / "psr.cpp").is_file()


# ------------------------------------------------------------------------ CUDA sources compile


def _nvcc() -> str | None:
    home = _build.cuda_home()
    return str(Path(home) / "bin" / "nvcc") if home else None


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc (CUDA toolkit) not found")
def test_cuda_sources_compile(tmp_path: Path) -> None:
    """Compile every csrc/cuda/*.cu for sm_90 (SASS + PTX) with torch's headers, so CUDA code
    cannot rot where no GPU runs the tests. Results are cached by a hash of the sources, flags
    and toolchain (like ccache): an unchanged tree is not recompiled."""
    nvcc = _nvcc()
    assert nvcc is not None
    src = _build.source_dir()
    flags = _build.cuda_nvcc_flags(("90",))
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    cache = Path(os.environ.get("PSR_CUDA_CHECK_CACHE", Path.home() / ".cache" / "psr" / "cuda-compile-check"))
    jobs = []
    for cu in sorted((src / "cuda").glob("*.cu")):
        h = hashlib.sha256(version.encode() + " ".join(flags).encode() + torch.__version__.encode())
        for p in [cu, *sorted(src.glob("*.h")), *sorted((src / "cuda").glob("*.cuh"))]:  # what .cu files include
            h.update(p.read_bytes())
        stamp = cache / f"{cu.stem}-{h.hexdigest()[:20]}.ok"
        if stamp.is_file():
            continue
        cmd = [nvcc, "-c", str(cu), "-o", str(tmp_path / f"{cu.stem}.o"), *flags]
        jobs.append((cu, stamp, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    failures = []
    for cu, stamp, proc in jobs:
        out, _ = proc.communicate(timeout=1200)
        if proc.returncode != 0:
            failures.append(f"{cu.name}:\n{out}")
            continue
        assert (tmp_path / f"{cu.stem}.o").stat().st_size > 0
        cuobjdump = Path(nvcc).parent / "cuobjdump"
        if cuobjdump.is_file():  # both the sm_90 cubin and the compute_90 PTX are embedded
            listing = subprocess.run(
                [str(cuobjdump), "--list-elf", "--list-ptx", str(tmp_path / f"{cu.stem}.o")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert "sm_90" in listing and "ptx" in listing.lower(), listing
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(out)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("csrc_link", ["symlink", "plain file"])
def test_wheel_ships_sources(tmp_path: Path, csrc_link: str) -> None:
    """The wheel carries the C++/CUDA sources, the weights and their terms, also where psr/_csrc was
    checked out as a plain file (git core.symlinks=false) rather than a link to csrc/."""
    pytest.importorskip("setuptools")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CITATION.cff"):
        shutil.copy2(ROOT / name, tree / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "_csrc")
    for d in ("psr", "psr_napari", "csrc"):
        shutil.copytree(ROOT / d, tree / d, ignore=skip)
    if csrc_link == "symlink":
        (tree / "psr" / "_csrc").symlink_to("../csrc")
    else:
        (tree / "psr" / "_csrc").write_text("../csrc")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    import zipfile

    (whl,) = tmp_path.glob("psr-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    sources = {
        str(f.relative_to(ROOT / "csrc"))
        for f in (ROOT / "csrc").rglob("*")
        if f.suffix in (".cpp", ".h", ".cu", ".cuh")
    }
    assert {"psr.cpp", "psr_common.h", "cpu/kernels.h", "cuda/match_histograms.cu"} <= sources
    assert {f"psr/_csrc/{f}" for f in sources} <= names
    assert {
        "psr/weights/README.md",
        "psr/py.typed",
        "psr/weights/x4-pixel.safetensors",
        "psr_napari/napari.yaml",
    } <= names
    assert not any(n.startswith(("tests/", "runs/", "csrc/")) for n in names)
    # PEP 639 licence metadata (the TOML-table form stops building with setuptools from 2027-02).
    (meta,) = (n for n in names if n.endswith(".dist-info/METADATA"))
    fields = zipfile.ZipFile(whl).read(meta).decode().splitlines()
    assert "License-Expression: BSD-3-Clause" in fields
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_no_warning_when_loaded() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.load_extension()


def test_prune_builds_keeps_recent_and_locked(tmp_path: Path) -> None:
    """Old builds of other source versions go; the current, recent and in-progress ones stay."""
    import fcntl
    import time

    from psr import _build

    now = time.time()

    def make(name: str, days_ago: float, stamped: bool = True) -> Path:
        d = tmp_path / f"psr_ops_{name}"
        d.mkdir()
        (d / "psr_ops.so").write_bytes(b"x")
        marker = d / "ok" if stamped else d
        if stamped:
            marker.write_text("psr_ops.so\n")
        os.utime(marker, (now - days_ago * 86400, now - days_ago * 86400))
        (tmp_path / f"{d.name}.lock").touch()
        return d

    current = make("cur", 30)  # the current build is never pruned, however old
    recent = [make(f"r{i}", i + 1) for i in range(4)]  # 1..4 days: the 3 newest are kept
    stale = make("stale", 20)  # unused for 20 days
    failed = make("failed", 30, stamped=False)  # a failed build (no ok stamp), old
    busy = make("busy", 40)  # old, but another process holds its lock (compiling)
    unrelated = tmp_path / "other_ext_1234"
    unrelated.mkdir()
    with open(tmp_path / f"{busy.name}.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        # flock locks belong to the open file description: a second open in this process conflicts.
        removed = _build.prune_builds(current)
    assert sorted(removed) == sorted([recent[3], stale, failed])
    for d in (current, *recent[:3], busy, unrelated):
        assert d.is_dir(), d
    for d in removed:
        assert not d.exists() and not (tmp_path / f"{d.name}.lock").exists()
    assert _build.prune_builds(current) == [busy]  # once its lock is free
