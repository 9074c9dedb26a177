"""Public ops for the last stage of an upscale: bicubic upsampling and histogram matching.

Each op runs the compiled extension (``torch.ops.psr``, built from ``csrc/`` on first use, see
:mod:`psr._build`) when it can, and the pure-torch reference (:mod:`psr._reference`) otherwise:
without a compiler, with ``PSR_FORCE_REFERENCE=1``, on devices other than CPU and CUDA, and, for
:func:`upsample_bicubic`, when its input requires grad (the reference is differentiable; the
compiled op is not). Both backends give the same results to floating-point rounding;
:func:`backend` says which one runs. Histogram matching is not differentiable:
:func:`match_histograms` and :func:`upsample_match` refuse inputs that require grad while grad
mode is on (detach them, or call under ``torch.no_grad()``). Meta tensors give meta results of the
right shape.

The wrappers validate their arguments and refuse NaN/Inf (``check=False`` skips that test, which
costs one host synchronisation on CUDA). Half and bfloat16 inputs are computed in float32 and
cast back.

Four environment variables tune how the CUDA kernels do their work, never their results (for
``benchmarks/tune_cuda.py``): ``PSR_CUDA_TILE_ROWS`` (input rows per bicubic tile),
``PSR_CUDA_PLANAR_MAX_PIXELS`` (largest float32 plane that exact mode sorts together with others),
``PSR_CUDA_GENERIC_SCALE=1`` (the bicubic row loop with the scale as a run-time value, not the one
compiled for 2, 3, 4 and 8) and ``PSR_CUDA_MAP_MIN_BLOCKS=1`` (the float32 map kernels without their
64-register cap).
"""

from __future__ import annotations

import math
import numbers

import torch

from . import _build, _reference
from ._checks import int_arg

__all__ = ["backend", "upsample_bicubic", "match_histograms", "upsample_match", "plane_range"]

MAX_BINS = 1 << 24
_fakes_registered = False


def backend(device: str | torch.device = "cpu") -> str:
    """Which implementation the ops use for tensors on ``device``.

    Returns
    -------
    str
        ``"extension"`` when the compiled ops run, ``"reference"`` when the pure-torch fallback
        runs. The first call may build the extension (about a minute, once per machine).
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return "extension" if _build.load_extension() else "reference"
    if dev.type == "cuda":
        return "extension" if _build.has_cuda_kernels() else "reference"
    return "reference"


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_image(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16 run in float32), got {t.dtype}")
    if t.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(t.shape)}")
    if t.shape[2] < 1 or t.shape[3] < 1:
        raise ValueError(f"{name} must have H >= 1 and W >= 1, got shape {tuple(t.shape)}")
    return t


def _check_scale(scale: object) -> int:
    return int_arg(scale, "scale", 1, 8, "an integer in 1..8")


def _check_a(a: object) -> float:
    if isinstance(a, bool) or not isinstance(a, numbers.Real):
        raise TypeError(f"a must be a real number, got {type(a).__name__}")
    if not math.isfinite(a):
        raise ValueError(f"a must be finite, got {a!r}")
    return float(a)


def _check_bins(bins: object) -> int | None:
    if bins is None:
        return None
    return int_arg(bins, "bins", 1, MAX_BINS, f"None or an integer in 1..{MAX_BINS}")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.device.type == "meta":  # no values to test
        return
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; pass finite values (or check=False to skip this test)")


def _same_device(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x/source is on {like.device}")


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _no_grad_needed(op: str, **tensors: torch.Tensor | None) -> None:
    """Histogram matching has no gradient: refuse, rather than silently drop, one that is asked for."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise ValueError(
                f"{op} is not differentiable, but {name} requires grad; detach it or call under torch.no_grad()"
            )


def _use_extension(*tensors: torch.Tensor | None) -> bool:
    ts = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return False  # the reference is differentiable
    return backend(ts[0].device) == "extension"


# ---------------------------------------------------------------------------------------------
# ops


def upsample_bicubic(x: torch.Tensor, scale: int, *, a: float = -0.75, check: bool = True) -> torch.Tensor:
    """Bicubic upsampling of ``x`` (N, C, H, W) by an integer factor.

    Parameters
    ----------
    x : Tensor, (N, C, H, W)
        Floating-point images (any memory layout).
    scale : int
        Integer factor in 1..8.
    a : float
        Keys' kernel parameter. ``-0.75`` (default, clamped borders) equals
        ``F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)``; ``-0.5``
        (with MATLAB's symmetric padding) equals MATLAB's ``imresize(x, scale, 'bicubic')``, the
        project's bicubic baseline. Other values use clamped borders.
    check : bool
        Refuse NaN/Inf in ``x`` (one host synchronisation on CUDA).

    Returns
    -------
    Tensor, (N, C, H * scale, W * scale), contiguous, ``x``'s dtype and device.
    """
    _check_image("x", x)
    s = _check_scale(scale)
    a = _check_a(a)
    if check:
        _check_finite("x", x)
    n, c, h, w = x.shape
    if n * c == 0 or x.device.type == "meta":
        return x.new_empty((n, c, h * s, w * s))
    work = x.to(_work_dtype(x))
    if _use_extension(work):
        y = torch.ops.psr.upsample_bicubic(work, s, a)
    else:
        y = _reference.upsample_bicubic(work, s, a=a)
    return y.to(x.dtype)


def match_histograms(
    source: torch.Tensor,
    reference: torch.Tensor,
    *,
    bins: int | None = None,
    bin_range: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Match the histogram of each (sample, channel) of ``source`` to ``reference``'s.

    Parameters
    ----------
    source : Tensor, (N, C, H, W)
        Floating-point images to transform.
    reference : Tensor, (N, C, h, w)
        Images whose value distribution to copy, any size, same N and C and device; cast to
        ``source``'s dtype.
    bins : int, optional
        ``None`` (default): exact, equal to ``skimage.exposure.match_histograms(src, ref,
        channel_axis=...)`` per channel to the output dtype's rounding. Every distinct source value
        v maps to ``np.interp(q(v), ref_quantiles, ref_values)`` where ``q(v)`` is the fraction of
        source values ``<= v``: a group of equal values takes its upper quantile, so a constant
        source maps to the reference's maximum. The quantiles are exact integer ratios whatever
        the image size.

        ``k`` (1..2^24): binned fast mode, with no sort. Value v falls in bin ``b = floor((v - lo)
        * k / (hi - lo))``, clamped to 0..k - 1, over the plane's ``bin_range`` ``[lo, hi]``
        (values outside it count in the end bins). The reference is binned the same way over its
        own [min, max]; each nonempty reference bin gives two knots of the exact reference CDF, its
        smallest value at that value's upper quantile and its largest at the bin's, and the map
        G interpolates these knots as np.interp does (as exact mode interpolates all of them).
        Between knots of one bin G may stray from the exact map F by at most that bin's spread of
        values, ``s_ref`` at most (0 where every reference bin holds one distinct value: at most k
        evenly spaced levels, such as 8-bit images at k >= 256); elsewhere G = F. G
        is evaluated at the quantiles ``c_b`` (fraction of source values in bins below b) and
        interpolated linearly inside each bin. Since ``c_b < q(v) <= c_{b+1}`` and F is
        nondecreasing, ``|binned(v) - exact(v)| <= F(c_{b+1}) - F(c_b) + s_ref`` (plus the output
        dtype's rounding), whatever the range: the spread of reference values over v's bin's
        quantile range, small where the source's values spread over many bins. float32 planes
        bin and interpolate in float32 arithmetic (float64 where the range, its factor or the
        reference's range is not a finite float). The binned map is continuous and nondecreasing,
        so it keeps the order of values. More bins tighten the bound but need not bring binned
        mode closer to exact mode where the source has few distinct values (8-bit data): exact
        mode maps a tie group to its upper quantile, binned mode interpolates inside the bin, so
        a group's spread F(c_{b+1}) - F(c_b) stays. On CPU the per-thread histograms are capped at
        64 MiB in all (fewer threads count them for very large k). Where a float64 plane's range
        (or k over it) overflows, values are scaled by a power of two first, which is exact.
    bin_range : Tensor, (N, C, 2), optional
        Binned mode only: each plane's ``[lo, hi]`` (``lo <= hi``, finite, checked unless
        ``check=False``; cast to ``source``'s dtype). ``None`` (default): the plane's own
        ``[min, max]``, found by a pass over the source. Values outside it count in the end bins. With ``lo == hi`` every value maps to
        the reference's maximum, as a constant source does. :func:`upsample_match` bins over
        ``plane_range(x)`` of its low-resolution input, which spares it that pass.
    check : bool
        Refuse NaN/Inf in the inputs, and a ``bin_range`` that is not finite or has lo > hi (one
        host synchronisation on CUDA per test; with ``check=False`` the binned CUDA path never
        synchronises).

    Returns
    -------
    Tensor shaped like ``source``, contiguous, ``source``'s dtype and device.
    """
    _check_image("source", source)
    _check_image("reference", reference)
    if source.shape[:2] != reference.shape[:2]:
        raise ValueError(
            f"source and reference must agree in N and C, got {tuple(source.shape)} and {tuple(reference.shape)}"
        )
    _same_device("reference", reference, source)
    b = _check_bins(bins)
    if bin_range is not None:
        _check_bin_range(bin_range, source, b, check)
    if check:
        _check_finite("source", source)
        _check_finite("reference", reference)
    _no_grad_needed("match_histograms", source=source, reference=reference)
    if source.shape[0] * source.shape[1] == 0 or source.device.type == "meta":
        return torch.empty_like(source, memory_format=torch.contiguous_format)
    dt = _work_dtype(source)
    src, ref = source.to(dt), reference.to(source.dtype).to(dt)
    br = bin_range.detach().to(source.dtype).to(dt) if bin_range is not None else None
    if _use_extension(src, ref):
        y = torch.ops.psr.match_histograms(src, ref, b, br)
    else:
        y = _reference.match_histograms(src, ref, bins=b, bin_range=br)
    return y.to(source.dtype)


def _check_bin_range(bin_range: object, source: torch.Tensor, bins: int | None, check: bool) -> None:
    if not isinstance(bin_range, torch.Tensor):
        raise TypeError(f"bin_range must be a torch.Tensor, got {type(bin_range).__name__}")
    if bins is None:
        raise ValueError("bin_range applies to binned mode only: pass bins=k as well")
    if not bin_range.is_floating_point():
        raise TypeError(f"bin_range must be a floating-point tensor, got {bin_range.dtype}")
    want = (*source.shape[:2], 2)
    if tuple(bin_range.shape) != want:
        raise ValueError(f"bin_range must be (N, C, 2) = {want}, one [lo, hi] per plane, got {tuple(bin_range.shape)}")
    _same_device("bin_range", bin_range, source)
    if check and bin_range.device.type != "meta" and bin_range.numel():
        r = bin_range.to(source.dtype)  # the values that will be used
        _check_finite(f"bin_range (cast to {source.dtype})", r)
        if bool((r[..., 0] > r[..., 1]).any()):
            raise ValueError("bin_range must have lo <= hi in every plane, got a pair with lo > hi")


def plane_range(x: torch.Tensor) -> torch.Tensor:
    """Each (sample, channel) plane's ``[min, max]`` of ``x`` (N, C, H, W), as (N, C, 2).

    The bin range :func:`upsample_match` uses in binned mode, so that
    ``upsample_match(x, s, bins=k)`` equals ``match_histograms(upsample_bicubic(x, s), x, bins=k,
    bin_range=plane_range(x))``.
    """
    _check_image("x", x)
    return _reference.plane_range(x)


def upsample_match(
    x: torch.Tensor,
    scale: int,
    *,
    residual: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    a: float = -0.75,
    bins: int | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Fused ``match_histograms(upsample_bicubic(x, scale, a=a) + residual, reference or x)``.

    The compiled op never stores the upsampled image: each pass of the matching recomputes it from
    ``x`` (exact mode keeps only the sort keys). Arguments are as for :func:`upsample_bicubic` and
    :func:`match_histograms`; ``residual`` is (N, C, H * scale, W * scale) and ``reference``
    (N, C, h, w), both on ``x``'s device and cast to its dtype.

    Binned mode (``bins=k``) places the bins over each plane's range of the low-resolution ``x``,
    ``bin_range=plane_range(x)``, not over the upsampled values: that spares a whole pass over
    them (recomputing every bicubic value), and the bound of :func:`match_histograms` holds for
    any range. Bicubic overshoot (and a residual) beyond that range counts in the end bins.

    Returns
    -------
    Tensor, (N, C, H * scale, W * scale), contiguous, ``x``'s dtype and device.
    """
    _check_image("x", x)
    s = _check_scale(scale)
    a = _check_a(a)
    b = _check_bins(bins)
    n, c, h, w = x.shape
    out_shape = (n, c, h * s, w * s)
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
        if not residual.is_floating_point():
            raise TypeError(f"residual must be a floating-point tensor, got {residual.dtype}")
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"residual must have shape {out_shape}, got {tuple(residual.shape)}")
        _same_device("residual", residual, x)
    if reference is not None:
        _check_image("reference", reference)
        if reference.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"reference must agree with x in N and C, got {tuple(reference.shape)} and {tuple(x.shape)}"
            )
        _same_device("reference", reference, x)
    if check:
        _check_finite("x", x)
        if residual is not None:
            _check_finite("residual", residual)
        if reference is not None:
            _check_finite("reference", reference)
    _no_grad_needed("upsample_match", x=x, residual=residual, reference=reference)
    if n * c == 0 or x.device.type == "meta":
        return x.new_empty(out_shape)
    dt = _work_dtype(x)
    xw = x.to(dt)
    res = residual.to(x.dtype).to(dt) if residual is not None else None
    ref = reference.to(x.dtype).to(dt) if reference is not None else None
    if _use_extension(xw, res, ref):
        y = torch.ops.psr.upsample_match(xw, s, res, ref, a, b)
    else:
        y = _reference.upsample_match(xw, s, residual=res, reference=ref, a=a, bins=b)
    return y.to(x.dtype)


def _register_fakes() -> None:
    """Shape functions for ``torch.compile`` and meta tensors (called once the library is loaded)."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    @torch.library.register_fake("psr::upsample_bicubic")
    def _(x: torch.Tensor, scale: int, a: float) -> torch.Tensor:
        return x.new_empty((x.shape[0], x.shape[1], x.shape[2] * scale, x.shape[3] * scale))

    @torch.library.register_fake("psr::match_histograms")
    def _(
        source: torch.Tensor, reference: torch.Tensor, bins: int | None, bin_range: torch.Tensor | None = None
    ) -> torch.Tensor:
        return source.new_empty(source.shape)

    @torch.library.register_fake("psr::upsample_match")
    def _(
        x: torch.Tensor,
        scale: int,
        residual: torch.Tensor | None,
        reference: torch.Tensor | None,
        a: float,
        bins: int | None,
    ) -> torch.Tensor:
        return x.new_empty((x.shape[0], x.shape[1], x.shape[2] * scale, x.shape[3] * scale))
