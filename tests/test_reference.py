"""The pure-torch reference ops (psr._reference) against independent oracles.

These are the fallback and the oracle of the compiled ops, so they are checked here against
numpy, skimage, torch's own bicubic and a float64 loop over Keys' kernel, never against the
extension. Nothing here builds or loads the extension.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.exposure import match_histograms as sk_match_histograms

from psr import _reference

# ------------------------------------------------------------------------------------ oracles


def keys(x: float, a: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return (a + 2) * ax**3 - (a + 3) * ax**2 + 1
    if ax < 2:
        return a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a
    return 0.0


def pad(j: int, n: int, symmetric: bool) -> int:
    if 0 <= j < n:
        return j
    if not symmetric:
        return min(max(j, 0), n - 1)
    m = j % (2 * n)
    return m if m < n else 2 * n - 1 - m


def upsample_loop(x: np.ndarray, s: int, a: float) -> np.ndarray:
    """Bicubic x s of a 2-D float64 array straight from the definition (separable, 1-D loops)."""
    sym = a == -0.5

    def axis(v: np.ndarray) -> np.ndarray:
        n = v.shape[0]
        out = np.zeros((n * s,) + v.shape[1:])
        for i in range(n * s):
            u = (i + 0.5) / s - 0.5
            base = int(np.floor(u))
            taps = [(pad(k, n, sym), keys(u - k, a)) for k in range(base - 1, base + 3)]
            wsum = sum(w for _, w in taps)
            out[i] = sum(w / wsum * v[j] for j, w in taps)
        return out

    return axis(axis(x).T).T


def sk_match(src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """skimage per sample, channels last, back to (N, C, H, W)."""
    out = [
        sk_match_histograms(s.permute(1, 2, 0).numpy(), r.permute(1, 2, 0).numpy(), channel_axis=-1)
        for s, r in zip(src, ref, strict=True)
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def np_bins(v: np.ndarray, lo: float, hi: float, bins: int, float32: bool) -> np.ndarray:
    """Bin index of each value over [lo, hi] (numpy), as the ops bin: float32 values in float32
    arithmetic, ``(v - lo) * float32(bins / (hi - lo))``, where that range and factor are finite
    floats, else float64; clamped to 0..bins - 1 (values outside the range in the end bins)."""
    with np.errstate(over="ignore"):
        factor32, span32 = np.float32(bins / (hi - lo)), np.float32(hi) - np.float32(lo)
    if float32 and np.isfinite(factor32) and np.isfinite(span32):
        pos = (v.astype(np.float32) - np.float32(lo)) * factor32
    else:
        pos = (v - lo) * (bins / (hi - lo))
    return np.clip(np.floor(pos), 0, bins - 1).astype(np.int64)


def ref_bin_spread(ref: np.ndarray, bins: int, float32: bool) -> float:
    """The largest spread (max - min) of reference values sharing one of binned mode's reference
    bins: how far its binned reference CDF may stray from the exact one."""
    lo, hi = ref.min(), ref.max()
    if lo == hi:
        return 0.0
    k = np_bins(ref, lo, hi, bins, float32)
    return max(float(np.ptp(ref[k == b])) for b in np.unique(k))


def binned_interval(
    src: np.ndarray,
    ref: np.ndarray,
    bins: int,
    bin_range: tuple[float, float] | None = None,
    float32: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """For 1-D float64 arrays (numpy): where binned mode may put each value, the exact map at its
    bin's edges [F(c_b), F(c_b+1)] widened by the reference bins' spread s_ref
    (:func:`ref_bin_spread`, the binned reference CDF's error) on both sides.

    Bins span ``bin_range`` (default: the source's min and max); values outside it count in the end
    bins. ``float32``: the values are float32 and binned in float32 arithmetic (:func:`np_bins`).
    """
    lo, hi = (src.min(), src.max()) if bin_range is None else bin_range
    k = np_bins(src, lo, hi, bins, float32)
    cum = np.concatenate([[0], np.cumsum(np.bincount(k, minlength=bins))])
    rv, rc = np.unique(ref, return_counts=True)
    edge = np.interp(cum / src.size, np.cumsum(rc) / ref.size, rv)
    spread = ref_bin_spread(ref, bins, float32)
    return edge[k] - spread, edge[k + 1] + spread


# ------------------------------------------------------------------------------------ tests


def test_importable_without_building() -> None:
    code = (
        "import sys, torch, psr._reference as r\n"
        "r.match_histograms(r.upsample_bicubic(torch.rand(1, 1, 3, 3), 2), torch.rand(1, 1, 2, 2))\n"
        "from psr import _build\n"
        "print(_build._state['loaded'], 'torch.utils.cpp_extension' in sys.modules, hasattr(torch.ops.psr, 'upsample_bicubic'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "False", "False"]


def test_interp_is_numpy_interp(rng: np.random.Generator) -> None:
    xp = np.unique(rng.random(23))
    fp = np.sort(rng.normal(size=xp.size))
    x = np.concatenate([rng.random(500) * 1.4 - 0.2, xp, [xp[0] - 1, xp[-1] + 1]])
    got = _reference.interp(torch.from_numpy(x), torch.from_numpy(xp), torch.from_numpy(fp)).numpy()
    np.testing.assert_array_equal(got, np.interp(x, xp, fp))  # same formula: to the last bit
    one = _reference.interp(torch.from_numpy(x), torch.tensor([0.5], dtype=torch.float64), torch.tensor([3.0]).double())
    assert torch.all(one == 3.0)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_upsample_a075_is_interpolate(rng: np.random.Generator, scale: int) -> None:
    x = torch.from_numpy(rng.random((2, 3, 7, 5)))
    want = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(_reference.upsample_bicubic(x, scale, a=-0.75), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("a", "scale", "shape"), [(-0.5, 4, (5, 7)), (-0.5, 3, (1, 2)), (-0.6, 2, (6, 3))])
def test_upsample_matches_definition(rng: np.random.Generator, a: float, scale: int, shape: tuple) -> None:
    x = rng.normal(size=shape)
    got = _reference.upsample_bicubic(torch.from_numpy(x)[None, None], scale, a=a)[0, 0].numpy()
    np.testing.assert_allclose(got, upsample_loop(x, scale, a), rtol=0, atol=1e-12)


@pytest.mark.parametrize("ref_shape", [(4, 5), (13, 11), (40, 33)])
def test_match_exact_is_skimage(rng: np.random.Generator, ref_shape: tuple) -> None:
    src = torch.from_numpy(rng.random((2, 3, 13, 11)).astype(np.float32))
    ref = torch.from_numpy(rng.normal(size=(2, 3, *ref_shape)).astype(np.float32))
    src[0, 1, :4] = 0.5  # a large tie group
    src[1, 2] = torch.round(src[1, 2] * 4) / 4  # few distinct values
    torch.testing.assert_close(_reference.match_histograms(src, ref), sk_match(src, ref), rtol=0, atol=0)


def test_match_constant_and_float64(rng: np.random.Generator) -> None:
    src = torch.full((1, 2, 5, 6), 0.3, dtype=torch.float64)
    ref = torch.from_numpy(rng.random((1, 2, 4, 4)))
    got = _reference.match_histograms(src, ref)
    torch.testing.assert_close(got, sk_match(src, ref), rtol=0, atol=0)
    assert torch.all(got[0, 1] == ref[0, 1].max())  # a constant source maps to the reference's maximum


@pytest.mark.parametrize("bins", [1, 7, 64])
def test_match_binned_bound(rng: np.random.Generator, bins: int) -> None:
    src = torch.from_numpy(rng.normal(size=(1, 2, 31, 29)))
    ref = torch.from_numpy(rng.random((1, 2, 9, 17)) ** 2)
    got = _reference.match_histograms(src, ref, bins=bins)
    exact = _reference.match_histograms(src, ref)
    for c in range(2):
        lo, hi = binned_interval(src[0, c].numpy().ravel(), ref[0, c].numpy().ravel(), bins)
        g, e = got[0, c].numpy().ravel(), exact[0, c].numpy().ravel()
        assert np.all((lo - 1e-12 <= g) & (g <= hi + 1e-12))
        assert np.all((lo - 1e-12 <= e) & (e <= hi + 1e-12))
    assert (got - exact).abs().max() > 0  # binned really is approximate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [1, 5, 64, 3000])
def test_binned_reference_cdf(rng: np.random.Generator, dtype: torch.dtype, bins: int) -> None:
    """Binned mode's reference CDF: its knots are knots of the exact CDF (np.unique's values at
    their upper quantiles, as skimage builds it), including the first and last, and on a fine grid
    of quantiles it strays from the exact map by at most the reference bins' spread; zero where
    each bin holds one distinct value (quantised data with enough bins)."""
    ref = rng.random(997) ** 2
    ref[:40] = 0.5  # a tie group
    ref[40:50] = 0.0
    for data in (ref, np.round(ref * 20) / 20):
        r = torch.from_numpy(data).to(dtype)
        q, v = _reference._binned_ref_cdf(r, bins)
        rv, rc = np.unique(r.double().numpy(), return_counts=True)
        xq = np.cumsum(rc) / r.numel()
        assert np.all(np.diff(q.numpy()) > 0) and np.all(np.diff(v.numpy()) > 0)
        assert q[0] == xq[0] and v[0] == rv[0] and q[-1] == 1.0 and v[-1] == rv[-1]
        for qq, vv in zip(q.numpy(), v.numpy(), strict=True):  # each knot is an exact knot
            j = np.searchsorted(rv, vv)
            assert rv[j] == vv and xq[j] == qq
        grid = np.linspace(-0.01, 1.01, 5001)
        err = np.abs(np.interp(grid, q.numpy(), v.numpy()) - np.interp(grid, xq, rv)).max()
        spread = ref_bin_spread(r.double().numpy(), bins, dtype == torch.float32)
        assert err <= spread + 1e-15
        if data is not ref and bins >= 64:  # 21 levels, each alone in its bin: exact
            assert spread == 0.0 and err == 0.0


def test_upsample_match_is_composition(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.random((1, 2, 6, 7)))
    res = torch.from_numpy(rng.normal(size=(1, 2, 18, 21)) * 0.1)
    ref = torch.from_numpy(rng.random((1, 2, 5, 5)))
    want = sk_match(F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False) + res, ref)
    got = _reference.upsample_match(x, 3, residual=res, reference=ref)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
