"""Pure-torch reference implementations of the last stage of an upscale.

These are both the fallback when the compiled extension is unavailable and the oracle the
extension is tested against. They favour clarity over speed.
"""

from __future__ import annotations

import math

import torch

from .resize import resample_axis

__all__ = ["upsample_bicubic", "match_histograms", "upsample_match", "plane_range", "interp"]


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 8:
        raise ValueError(f"scale must be an integer in 1..8, got {scale!r}")
    return scale


def upsample_bicubic(x: torch.Tensor, scale: int, *, a: float = -0.75) -> torch.Tensor:
    """Bicubic upsampling of (N, C, H, W) by an integer ``scale``.

    ``a=-0.75`` with clamped borders equals ``F.interpolate(mode="bicubic", align_corners=False)``;
    ``a=-0.5`` with MATLAB's symmetric padding equals MATLAB's ``imresize(x, scale, 'bicubic')``,
    the project's bicubic baseline. Any other ``a`` uses clamped borders.
    """
    _check_scale(scale)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    padding = "symmetric" if a == -0.5 else "clamp"
    h, w = x.shape[-2:]
    y = resample_axis(x, -2, h * scale, float(scale), a=a, antialias=False, padding=padding)
    return resample_axis(y, -1, w * scale, float(scale), a=a, antialias=False, padding=padding)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``np.interp`` for 1-D strictly increasing ``xp``, with numpy's formula and end handling.

    Below ``xp[0]`` it returns ``fp[0]``, from ``xp[-1]`` on ``fp[-1]``, at a knot exactly that knot's
    value, and in between ``slope * (x - xp[j]) + fp[j]``, so float64 results agree with numpy's
    to the last bit (and hence with skimage's histogram matching).
    """
    m = xp.numel()
    if m == 1:
        return fp.expand_as(x).clone()
    j = torch.searchsorted(xp, x, right=True) - 1  # last knot <= x; -1 below the first
    jc = j.clamp(0, m - 2)
    x0, x1, y0, y1 = xp[jc], xp[jc + 1], fp[jc], fp[jc + 1]
    y = (y1 - y0) / (x1 - x0) * (x - x0) + y0
    y = torch.where(x == x0, y0, y)
    y = torch.where(j < 0, fp[0], y)
    return torch.where(j >= m - 1, fp[-1], y)


def _ref_cdf(ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique reference values and their cumulative quantiles (float64), as skimage computes them."""
    values, counts = torch.unique(ref, sorted=True, return_counts=True)
    return torch.cumsum(counts, 0).to(torch.float64) / ref.numel(), values.to(torch.float64)


def _match_1d(
    src: torch.Tensor, ref: torch.Tensor, bins: int | None, bin_range: tuple[float, float] | None = None
) -> torch.Tensor:
    if bins is None:
        # skimage semantics: every distinct source value maps to the reference value at its upper
        # quantile (the fraction of source values <= it), interpolated in the reference's CDF.
        ref_q, ref_values = _ref_cdf(ref)
        values, inverse, counts = torch.unique(src, sorted=True, return_inverse=True, return_counts=True)
        src_q = torch.cumsum(counts, 0).to(torch.float64) / src.numel()
        return interp(src_q, ref_q, ref_values)[inverse].to(src.dtype)
    # Binned: bin b = floor((v - lo) * bins / (hi - lo)), clamped to 0..bins - 1, over bin_range or
    # the source's [min, max]; the reference's CDF (binned too, _binned_ref_cdf) is evaluated at the
    # bins' edge quantiles (fraction of values in lower bins) and interpolated linearly inside each
    # bin (t clamped to [0, 1], so values outside the range take their end bin's outer edge). The
    # compiled kernels use these exact operations (psr_common.h's Binner). + 0.0 makes -0.0 0.0, as
    # the CUDA kernels' keys do.
    ref_q, ref_values = _binned_ref_cdf(ref, bins)
    lo, hi = (float(src.min()), float(src.max())) if bin_range is None else bin_range
    lo, hi = lo + 0.0, hi + 0.0
    if lo == hi:  # a constant source, or a single-point range: every value to the reference's maximum
        return torch.full_like(src, float(ref_values[-1]))
    k, t, f32 = _bin(src, lo, hi, bins)
    cum = torch.zeros(bins + 1, dtype=torch.int64, device=k.device)
    cum[1:] = torch.cumsum(torch.bincount(k, minlength=bins), 0)
    edge_map = interp(cum.to(torch.float64) / src.numel(), ref_q, ref_values)
    if f32:
        return _lerp32(edge_map, k, t)
    return _lerp_edges(edge_map[k], edge_map[k + 1], t).to(src.dtype)


def _bin(v: torch.Tensor, lo: float, hi: float, bins: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Each value's bin k (int64) and position t in it over [lo, hi] (lo < hi), and whether float32
    arithmetic was used, as psr_common.h's Binner: float32 values whose range and factor are finite
    floats in float32, else float64 (values scaled by a power of two, exactly, where hi - lo or
    bins / (hi - lo) would overflow). NaN (check=False) lands in bin 0."""
    if v.dtype == torch.float32:
        f32 = _binner32(lo, hi, bins)
        if f32 is not None:
            lo32, factor32 = f32
            pos32 = (v - lo32) * factor32
            k32 = torch.nan_to_num(pos32.floor(), nan=0.0).clamp(0, bins - 1)
            return k32.long(), (pos32 - k32).clamp(0, 1), True
    mul = _binner_scale(lo, hi, bins)
    lo_s = lo * mul
    pos = (v.to(torch.float64) * mul - lo_s) * (bins / (hi * mul - lo_s))
    k = torch.nan_to_num(pos.floor(), nan=0.0).clamp(0, bins - 1)
    return k.long(), (pos - k).clamp(0, 1), False


def _binned_ref_cdf(ref: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots (quantiles, values; float64) of binned mode's reference CDF.

    The reference is binned like the source (``bins`` bins over its [min, max]); each nonempty bin
    contributes its smallest value at that value's upper quantile and its largest at the bin's
    upper quantile. These are knots of the exact CDF (:func:`_ref_cdf`), which has no other knots
    outside the bins' own spans, so interpolating them differs from the exact map by at most the
    largest bin's spread of values (zero where every bin holds one distinct value).
    """
    r = ref + 0.0
    m = r.numel()
    lo, hi = float(r.min()) + 0.0, float(r.max()) + 0.0
    if lo == hi:
        return torch.ones(1, dtype=torch.float64, device=r.device), torch.full(
            (1,), lo, dtype=torch.float64, device=r.device
        )
    k, _, _ = _bin(r, lo, hi, bins)
    r64 = r.to(torch.float64)
    counts = torch.bincount(k, minlength=bins)
    inf = torch.full((bins,), math.inf, dtype=torch.float64, device=r.device)
    bmin = inf.scatter_reduce(0, k, r64, "amin")
    bmax = (-inf).scatter_reduce(0, k, r64, "amax")
    cmin = torch.bincount(k[r64 == bmin[k]], minlength=bins)  # ties of each bin's smallest value
    cum = torch.cumsum(counts, 0)
    nz = counts > 0
    q_min = (cum - counts + cmin)[nz].to(torch.float64) / m
    q_max = cum[nz].to(torch.float64) / m
    v_min, v_max = bmin[nz], bmax[nz]
    two = v_max != v_min  # else the bin's one value is a single knot
    q = torch.stack([q_min, q_max], 1)
    v = torch.stack([v_min, v_max], 1)
    keep = torch.stack([torch.ones_like(two), two], 1)
    return q[keep], v[keep]


def _binner32(lo: float, hi: float, bins: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """float32 bins (lo32, factor32 as 0-d float32 tensors) where the range and factor are finite floats."""
    lo32 = torch.tensor(lo, dtype=torch.float32)
    factor32 = torch.tensor(bins / (hi - lo), dtype=torch.float32)
    span = torch.tensor(hi, dtype=torch.float32) - lo32
    return (lo32, factor32) if bool(torch.isfinite(span) & torch.isfinite(factor32)) else None


def _lerp32(edge_map: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """float32 planes: on float edges where the reference's range fits float32 (psr_common.h's lerp32)."""
    e32 = edge_map.to(torch.float32)
    if bool(torch.isfinite(e32[-1] - e32[0])):
        a = e32[k]
        return a + t * (e32[k + 1] - a)
    return (edge_map[k] + t.to(torch.float64) * (edge_map[k + 1] - edge_map[k])).to(torch.float32)


def _binner_scale(lo: float, hi: float, bins: int) -> float:
    """A power of two that keeps ``hi - lo`` and ``bins / (hi - lo)`` finite (psr_common.h)."""
    if not math.isfinite(hi - lo):
        return 0.25
    if not math.isfinite(bins / (hi - lo)):
        return 2.0**600
    return 1.0


def _lerp_edges(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``a + t * (b - a)``; where ``b - a`` overflows: an infinite edge, else the same on halves (psr_common.h)."""
    d = b - a
    out = a + t * d
    wide = ~torch.isfinite(d) & ~(a.isnan() | b.isnan() | t.isnan())
    if not bool(wide.any()):
        return out
    halves = 2.0 * (0.5 * a + t * (0.5 * b - 0.5 * a))
    wide_out = torch.where(a.isinf(), a, torch.where(b.isinf(), b, halves))
    return torch.where(wide, wide_out, out)


def match_histograms(
    source: torch.Tensor,
    reference: torch.Tensor,
    *,
    bins: int | None = None,
    bin_range: torch.Tensor | None = None,
) -> torch.Tensor:
    """Match each (sample, channel) of ``source`` (N, C, H, W) to ``reference`` (N, C, h, w).

    With ``bins=None`` this equals ``skimage.exposure.match_histograms`` per channel, ties
    included. With ``bins=k`` the source CDF is sampled at k equal-width bins over ``bin_range``
    (N, C, 2) or each plane's [min, max], and the reference's CDF is binned too; each output then
    lies within its bin's mapped range of the exact result, widened by the reference bins' spread
    (see :func:`psr.ops.match_histograms`). ``reference`` and ``bin_range`` are cast to ``source``'s
    dtype.
    """
    if source.ndim != 4 or reference.ndim != 4:
        raise ValueError(
            f"source and reference must be (N, C, H, W), got {tuple(source.shape)} and {tuple(reference.shape)}"
        )
    if source.shape[:2] != reference.shape[:2]:
        raise ValueError(
            f"source and reference must agree in N and C, got {tuple(source.shape)} and {tuple(reference.shape)}"
        )
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 1):
        raise ValueError(f"bins must be None or a positive integer, got {bins!r}")
    if bin_range is not None:
        if bins is None:
            raise ValueError("bin_range applies to binned mode only: pass bins=k as well")
        if tuple(bin_range.shape) != (*source.shape[:2], 2):
            raise ValueError(f"bin_range must have shape {(*source.shape[:2], 2)}, got {tuple(bin_range.shape)}")
        bin_range = bin_range.to(source.dtype)
    out = torch.empty_like(source, memory_format=torch.contiguous_format)
    for n in range(source.shape[0]):
        for c in range(source.shape[1]):
            s = source[n, c].reshape(-1)
            r = reference[n, c].reshape(-1).to(source.dtype)
            br = None if bin_range is None else (float(bin_range[n, c, 0]), float(bin_range[n, c, 1]))
            out[n, c] = _match_1d(s, r, bins, br).reshape(source.shape[2:])
    return out


def upsample_match(
    x: torch.Tensor,
    scale: int,
    *,
    residual: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    a: float = -0.75,
    bins: int | None = None,
) -> torch.Tensor:
    """``match_histograms(upsample_bicubic(x, scale, a=a) + residual, reference or x)``.

    Binned mode bins over each plane of ``x``'s [min, max] (:func:`plane_range`).
    """
    up = upsample_bicubic(x, scale, a=a)
    if residual is not None:
        if residual.shape != up.shape:
            raise ValueError(f"residual must have shape {tuple(up.shape)}, got {tuple(residual.shape)}")
        up = up + residual
    br = plane_range(x) if bins is not None else None
    return match_histograms(up, x if reference is None else reference, bins=bins, bin_range=br)


def plane_range(x: torch.Tensor) -> torch.Tensor:
    """Each (sample, channel) plane's ``[min, max]`` of ``x`` (N, C, H, W), as (N, C, 2)."""
    flat = x.reshape(*x.shape[:2], -1)
    return torch.stack([flat.amin(-1), flat.amax(-1)], -1)
