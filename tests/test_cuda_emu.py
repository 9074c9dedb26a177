"""psr's CUDA kernels (csrc/cuda/*.cu) run on the CPU by an emulator, against the same references.

CI has no GPU, so the CUDA host code and kernels are also compiled as C++ together with
``tests/cuda_emu/cuda_emu.h`` (blocks run one after another, each block's threads as fibers that
switch at barriers, warp intrinsics exchanged at warp barriers, CUB's sorts and scans done on the
host; see the header). The kernels' arithmetic is the same (explicit fma, no contraction), so the
emulated ops must meet the CUDA tests' bounds: bicubic against F.interpolate and MATLAB's imresize,
exact matching against skimage to the last bit, binned matching equal to the CPU kernel (same bins,
same edge map) and within its documented bound, the fused op equal to the composed emulated ops.
What the emulator cannot show (speed, occupancy, races between blocks) is left to
``benchmarks/gpu_check.sh`` on a GPU. The emulated module is built once per source version (about
30 s) under ``PSR_CUDA_EMU_CACHE`` (default ``~/.cache/psr/cuda-emu``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psr import _build, _reference, ops
from psr.resize import imresize

from .test_ops import bad_kernel_calls, binned_special_inputs
from .test_reference import binned_interval, sk_match

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "tests" / "cuda_emu"
DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 2e-6, torch.float64: 1e-12}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the emulator uses ucontext (Linux)")


def _sources() -> list[Path]:
    src = ROOT / "csrc"
    return [*sorted(EMU.glob("*")), *sorted(src.glob("*.h")), *sorted((src / "cuda").glob("*"))]


def _build_emu() -> Path:
    """Build tests/cuda_emu/emu_ops.cpp in a child process (torch.utils.cpp_extension stays out of
    this one) and return the module's path."""
    h = hashlib.sha256(torch.__version__.encode())
    for p in _sources():
        h.update(p.name.encode() + p.read_bytes())
    digest = h.hexdigest()[:16]
    cache = Path(os.environ.get("PSR_CUDA_EMU_CACHE", Path.home() / ".cache" / "psr" / "cuda-emu")) / digest
    name = f"psr_cuda_emu_{digest}"
    lib = cache / f"{name}.so"
    if lib.is_file():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(
        f"""
        from torch.utils.cpp_extension import load
        load(name={name!r}, sources=[{str(EMU / "emu_ops.cpp")!r}], build_directory={str(cache)!r},
             extra_cflags=["-O2", "-ffp-contract=off", "-fno-strict-aliasing"], verbose=False)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not lib.is_file():
        pytest.fail(
            f"building the emulated CUDA ops failed (rc {done.returncode}):\n{(done.stdout + done.stderr)[-6000:]}"
        )
    return lib


@pytest.fixture(scope="module")
def emu() -> ModuleType:
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    if shutil.which("ninja") is None:
        pytest.skip("no ninja")
    if _build.force_reference():
        pytest.skip("PSR_FORCE_REFERENCE is set (the comparisons need the CPU kernels)")
    _build.build_extension()  # the CPU kernels, for comparisons
    lib = _build_emu()
    spec = importlib.util.spec_from_file_location(lib.stem, lib, loader=None)
    assert spec is not None
    spec.loader = importlib.machinery.ExtensionFileLoader(lib.stem, str(lib))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.set_num_sms(2)
    return module


def rand(rng: np.random.Generator, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(rng.random(shape)).to(dtype)


# ------------------------------------------------------------------------------ the emulator


def test_emulator_shares_memory_and_needs_the_barrier(emu: ModuleType, rng: np.random.Generator) -> None:
    x = rand(rng, (256,), torch.float32)
    torch.testing.assert_close(emu.selftest_reverse(x, True), x.flip(0), rtol=0, atol=0)
    # Without __syncthreads the first threads read slots the last ones have not written yet.
    assert not torch.equal(emu.selftest_reverse(x, False), x.flip(0))


@pytest.mark.parametrize(
    ("selftest", "message"), [("selftest_divergent_sync", "deadlock"), ("selftest_exited_lanes", "left the kernel")]
)
def test_emulator_reports_lanes_missing_a_shuffle(emu: ModuleType, selftest: str, message: str) -> None:
    """A full-mask shuffle that some lanes skip (they go on to a barrier, or leave the kernel)."""
    code = (
        "import importlib.machinery, importlib.util, torch\n"
        f"l = importlib.machinery.ExtensionFileLoader({Path(emu.__file__).stem!r}, {emu.__file__!r})\n"
        "s = importlib.util.spec_from_file_location(l.name, l.path, loader=l)\n"
        f"m = importlib.util.module_from_spec(s); l.exec_module(m); m.{selftest}()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_kernels_refuse_what_the_cpu_kernels_refuse(emu: ModuleType) -> None:
    """The CUDA kernels' argument checks are the CPU kernels' (csrc/checks.h): same calls refused,
    same messages."""
    for name, args, match in bad_kernel_calls():
        with pytest.raises(RuntimeError) as cpu:
            getattr(torch.ops.psr, name)(*args)
        with pytest.raises(RuntimeError) as cuda:
            getattr(emu, name)(*args)
        assert match in str(cuda.value), (name, match, str(cuda.value))
        # the first line: the message without the C++ location that follows it
        assert str(cuda.value).splitlines()[0] == str(cpu.value).splitlines()[0], name


# ------------------------------------------------------------------------ upsample_bicubic


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [2, 3, 5, 8])
def test_upsample_is_interpolate_and_imresize(
    emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype, scale: int
) -> None:
    x = rand(rng, (2, 3, 9, 7), dtype)
    want = F.interpolate(x.double(), scale_factor=scale, mode="bicubic", align_corners=False)
    got = emu.upsample_bicubic(x, scale, -0.75)
    assert got.shape == (2, 3, 9 * scale, 7 * scale) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(
        emu.upsample_bicubic(x, scale, -0.5).double(), imresize(x.double(), scale), rtol=0, atol=ATOL[dtype]
    )


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (3, 2), (4, 300)])
def test_upsample_tiny_and_wide(emu: ModuleType, rng: np.random.Generator, shape: tuple) -> None:
    """Padding that wraps around 1- and 2-pixel axes; rows wider than one 256-column tile."""
    x = rand(rng, (1, 2, *shape), torch.float64)
    torch.testing.assert_close(emu.upsample_bicubic(x, 3, -0.5), imresize(x, 3), rtol=0, atol=1e-12)
    want = F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False)
    torch.testing.assert_close(emu.upsample_bicubic(x, 3, -0.75), want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ match_histograms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ref_shape", [(5, 3), (61, 40)])
def test_match_exact_is_skimage(
    emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype, ref_shape: tuple
) -> None:
    src = rand(rng, (2, 3, 23, 17), dtype)
    ref = torch.from_numpy(rng.normal(size=(2, 3, *ref_shape))).to(dtype)
    torch.testing.assert_close(emu.match_histograms(src, ref, None), sk_match(src, ref), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_match_exact_ties(emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype) -> None:
    src = torch.from_numpy(rng.integers(0, 5, (2, 2, 31, 27)) / 4.0).to(dtype)
    src[0, 0, :10] = -0.0
    src[1, 1] = 0.25  # constant plane: the reference's maximum
    ref = torch.from_numpy(rng.integers(0, 7, (2, 2, 9, 13)) / 6.0).to(dtype)
    ref[1, 0] = 0.5
    got = emu.match_histograms(src, ref, None)
    torch.testing.assert_close(got, sk_match(src, ref), rtol=0, atol=0)
    assert torch.all(got[1, 1] == ref[1, 1].max()) and torch.all(got[1, 0] == 0.5)


def test_match_exact_one_plane_float32(emu: ModuleType, rng: np.random.Generator) -> None:
    """One float32 plane takes the per-plane sort (several are sorted together): ties, -0.0, a tie
    group longer than a thread's 8 sorted elements."""
    src = torch.from_numpy(rng.integers(0, 9, (1, 1, 29, 31)) / 8.0).float()
    src[0, 0, :3] = -0.0
    ref = torch.from_numpy(rng.normal(size=(1, 1, 12, 7))).float()
    torch.testing.assert_close(emu.match_histograms(src, ref, None), sk_match(src, ref), rtol=0, atol=0)
    x = rand(rng, (1, 1, 6, 40), torch.float32)
    up = emu.upsample_bicubic(x, 3, -0.5)
    torch.testing.assert_close(emu.upsample_match(x, 3, None, ref, -0.5, None), sk_match(up, ref), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [1, 5, 256, 9000])
def test_match_binned_is_the_cpu_kernel(
    emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype, bins: int
) -> None:
    """Same source values, same bins and edge map: equal to the CPU kernel to the last bit, and
    within the binned mode's bound of the exact map (computed in numpy)."""
    src = torch.from_numpy(rng.normal(size=(2, 2, 37, 41))).to(dtype)
    src[1, 0, 5:9] = 0.125  # ties inside a bin
    ref = torch.from_numpy(rng.random((2, 2, 19, 23)) ** 3).to(dtype)
    got = emu.match_histograms(src, ref, bins)
    torch.testing.assert_close(got, ops.match_histograms(src, ref, bins=bins), rtol=0, atol=0)
    tol = 4 * torch.finfo(dtype).eps
    for n in range(2):
        for c in range(2):
            s, r = src[n, c].double().numpy().ravel(), ref[n, c].double().numpy().ravel()
            lo, hi = binned_interval(s, r, bins, None, dtype == torch.float32)
            g = got[n, c].double().numpy().ravel()
            assert np.all((lo - tol <= g) & (g <= hi + tol))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("planes", [(1, 1), (2, 3)])
def test_match_binned_reference_ties(
    emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype, planes: tuple
) -> None:
    """The binned reference CDF (per-bin counts, smallest and largest values, ties of the smallest;
    edges by a binary search of the cumulative counts): reference tie groups, -0.0 and +0.0, a
    constant reference plane, a one-pixel reference. Equal to the CPU kernel to the last bit."""
    src = torch.from_numpy(rng.normal(size=(*planes, 23, 19))).to(dtype)
    ref = torch.from_numpy(rng.integers(0, 6, (*planes, 11, 13)) / 5.0 - 0.4).to(dtype)
    ref[0, 0, :2] = -0.0
    if planes[1] > 1:
        ref[1, 1] = 0.75
    for bins in (1, 7, 64, 500):
        want = ops.match_histograms(src, ref, bins=bins)
        torch.testing.assert_close(emu.match_histograms(src, ref, bins), want, rtol=0, atol=0)
    one = ref[..., :1, :1]
    torch.testing.assert_close(
        emu.match_histograms(src, one, 16), ops.match_histograms(src, one, bins=16), rtol=0, atol=0
    )


def test_match_binned_extreme_float64_ranges(emu: ModuleType, rng: np.random.Generator) -> None:
    """float64 planes whose range overflows (beyond DBL_MAX, or bins over a subnormal range) and a
    reference spanning +-1.7e308: no NaN, and equal to the CPU kernel to the last bit."""
    src = torch.from_numpy(rng.random((1, 3, 13, 17)) * 2 - 1)
    src[0, 0] *= 1e308
    src[0, 1] *= 1e-310
    ref = torch.from_numpy(rng.normal(size=(1, 3, 9, 11)))
    ref[0, 2, 0, :2] = torch.tensor([-1.7e308, 1.7e308], dtype=torch.float64)
    for bins in (3, 7, 256):
        got = emu.match_histograms(src, ref, bins)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, ops.match_histograms(src, ref, bins=bins), rtol=0, atol=0)
    x = src[:, :2, :5, :6].contiguous() * 0.5  # bicubic overshoot stays below DBL_MAX
    got = emu.upsample_match(x, 3, None, None, -0.75, 64)
    assert not torch.isnan(got).any()
    # the fused op is the composition, binned over x's range
    want = emu.match_histograms(emu.upsample_bicubic(x, 3, -0.75), x, 64, ops.plane_range(x))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_match_binned_float32_fallbacks(emu: ModuleType, rng: np.random.Generator) -> None:
    """float32 planes: a subnormal range (float64 binning) and a reference spanning +-3e38 (double
    lerp) beside ordinary planes (float32 arithmetic); equal to the CPU kernel to the last bit."""
    src = torch.from_numpy(rng.normal(size=(1, 3, 13, 11))).float()
    src[0, 0] = torch.from_numpy(rng.random((13, 11)) * 1e-41).float()
    ref = torch.from_numpy(rng.random((1, 3, 7, 9))).float()
    ref[0, 1, 0, :2] = torch.tensor([-3e38, 3e38])
    for bins in (3, 64, 5000):  # 5000: edges too many for shared memory
        got = emu.match_histograms(src, ref, bins)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ops.match_histograms(src, ref, bins=bins), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_match_binned_given_range(emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype) -> None:
    """bin_range on the emulated kernels (keys from the given pairs, no min/max pass): narrower and
    wider than the data, -0.0 as an end, a single point; equal to the CPU kernel to the last bit."""
    src = torch.from_numpy(rng.normal(size=(2, 3, 17, 21))).to(dtype)
    ref = torch.from_numpy(rng.random((2, 3, 8, 9))).to(dtype)
    own = ops.plane_range(src)
    r = torch.stack([own * 0.5, own * 3 - 1], 0)  # (2, N, C, 2): narrower, wider
    r[0, 0, 0] = torch.tensor([-0.0, 0.5], dtype=dtype)
    r[1, 1, 2] = 0.25  # a single point
    for bins in (1, 9, 700):
        for rr in r:
            want = ops.match_histograms(src, ref, bins=bins, bin_range=rr)
            torch.testing.assert_close(emu.match_histograms(src, ref, bins, rr), want, rtol=0, atol=0)
    assert torch.all(emu.match_histograms(src, ref, 9, r[1])[1, 2] == ref[1, 2].max())


@pytest.mark.parametrize("bins", [1, 7, 1024])
def test_match_binned_special_values(emu: ModuleType, bins: int) -> None:
    """NaN (bin 0, mapped to NaN), infinities, -0.0 and values past either end of the given range
    (check=False): the emulated kernels (the histogram's grouped run test, the edge-pair map) equal
    the CPU kernel bit for bit, plain and fused. On a GPU, test_ops.py's CUDA twin of this test
    covers the device's own binning (fminf/fmaxf), which the emulator does not compile."""
    src, ref, rng_x, x, res = binned_special_inputs()
    want = ops.match_histograms(src, ref, bins=bins, bin_range=rng_x, check=False)
    torch.testing.assert_close(emu.match_histograms(src, ref, bins, rng_x), want, rtol=0, atol=0, equal_nan=True)
    # the CPU kernel on the same values (the backends' bicubic values may differ in the last bit)
    up = emu.upsample_bicubic(x, 4, -0.75) + res
    want = ops.match_histograms(up, ref, bins=bins, bin_range=ops.plane_range(x), check=False)
    torch.testing.assert_close(emu.upsample_match(x, 4, res, ref, -0.75, bins), want, rtol=0, atol=0, equal_nan=True)


def test_match_binned_constant_planes(emu: ModuleType, rng: np.random.Generator) -> None:
    ref = rand(rng, (1, 2, 7, 8), torch.float32)
    src = torch.full((1, 2, 9, 9), 3.0)
    src[0, 1, 0, 0] = 2.0  # one plane constant, one not
    got = emu.match_histograms(src, ref, 16)
    assert torch.all(got[0, 0] == ref[0, 0].max())
    torch.testing.assert_close(got, ops.match_histograms(src, ref, bins=16), rtol=0, atol=0)


# ------------------------------------------------------------------------ upsample_match


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [None, 64, 9000])
@pytest.mark.parametrize(("scale", "a"), [(4, -0.75), (3, -0.5), (8, -0.75)])
def test_upsample_match_is_composition(
    emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype, bins: int | None, scale: int, a: float
) -> None:
    x = rand(rng, (2, 2, 11, 8), dtype)
    res = torch.from_numpy(rng.normal(size=(2, 2, 11 * scale, 8 * scale)) * 0.05).to(dtype)
    ref = rand(rng, (2, 2, 7, 9), dtype)
    up = emu.upsample_bicubic(x, scale, a)
    for residual, reference in [(None, None), (res, ref)]:
        got = emu.upsample_match(x, scale, residual, reference, a, bins)
        src = up if residual is None else up + residual
        rng_x = ops.plane_range(x) if bins is not None else None  # the fused op bins over x's range
        want = emu.match_histograms(src, x if reference is None else reference, bins, rng_x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if bins is not None:  # and the CPU kernel on the same values, to the last bit
            cpu = ops.match_histograms(src, x if reference is None else reference, bins=bins, bin_range=rng_x)
            torch.testing.assert_close(got, cpu, rtol=0, atol=0)
    if bins is None and dtype == torch.float64:
        want = sk_match(up + res, ref)
        torch.testing.assert_close(emu.upsample_match(x, scale, res, ref, a, None), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sms", [1, 3])
def test_grid_sizes_do_not_change_results(emu: ModuleType, rng: np.random.Generator, sms: int) -> None:
    """Other grids give the same bits: with 1, 2 and 3 SMs the tiles are 16, 8 and 8 input rows high
    (the last one partial) and blocks loop over more or fewer tiles; rows wider than a 256-column
    tile, a tie group spanning tiles."""
    x = rand(rng, (1, 2, 37, 300), torch.float32)
    x[0, 1, :, 150:] = 0.25
    want = {bins: emu.upsample_match(x, 4, None, None, -0.75, bins) for bins in (None, 256, 9000)}
    up = emu.upsample_bicubic(x, 4, -0.75)
    emu.set_num_sms(sms)
    try:
        for bins, w in want.items():
            torch.testing.assert_close(emu.upsample_match(x, 4, None, None, -0.75, bins), w, rtol=0, atol=0)
        torch.testing.assert_close(emu.upsample_bicubic(x, 4, -0.75), up, rtol=0, atol=0)
    finally:
        emu.set_num_sms(2)
    want_up = F.interpolate(x.double(), scale_factor=4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(up.double(), want_up, rtol=0, atol=ATOL[torch.float32])
    torch.testing.assert_close(want[None], sk_match(up, x), rtol=0, atol=0)
    torch.testing.assert_close(
        want[256], ops.match_histograms(up, x, bins=256, bin_range=ops.plane_range(x)), rtol=0, atol=0
    )


@pytest.mark.parametrize(("grid_y", "cub_items"), [(3, 300), (2, 700)])
def test_work_split_at_the_limits(emu: ModuleType, rng: np.random.Generator, grid_y: int, cub_items: int) -> None:
    """With gridDim.y and the items of a batched CUB call limited, the planes go in chunks. (3, 300):
    exact mode sorts 1 plane per chunk, the reference 2, the 64-bin histograms are scanned 4 planes at
    a time, 256-bin ones 1; the binned passes take 3 planes per launch. (2, 700): exact chunks of
    3, 3, 3 and 1 planes, the 3-plane ones keyed in two launches (2 + 1 planes), 5 planes per
    reference chunk. Same bits as in one go."""
    src = torch.from_numpy(rng.normal(size=(2, 5, 15, 13))).float()
    ref = torch.from_numpy(rng.random((2, 5, 9, 13)) ** 2).float()
    x = rand(rng, (2, 5, 5, 4), torch.float32)
    cases = [(lambda b=b: emu.match_histograms(src, ref, b)) for b in (None, 64, 256)]
    cases += [(lambda b=b: emu.upsample_match(x, 3, None, ref, -0.5, b)) for b in (None, 64)]
    want = [c() for c in cases]
    emu.set_limits(grid_y, cub_items)
    try:
        got = [c() for c in cases]
    finally:
        emu.set_limits(65535, 2**24)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    torch.testing.assert_close(want[0], sk_match(src, ref), rtol=0, atol=0)
    torch.testing.assert_close(want[1], ops.match_histograms(src, ref, bins=64), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_one_wide_rows(emu: ModuleType, rng: np.random.Generator, dtype: torch.dtype) -> None:
    """Scale 1 (bicubic is the identity): a tile is 256 input columns and its row staging needs 260
    values, more than a block has threads."""
    x = rand(rng, (1, 2, 5, 300), dtype)
    torch.testing.assert_close(emu.upsample_bicubic(x, 1, -0.75), x, rtol=0, atol=ATOL[dtype])
    ref = rand(rng, (1, 2, 4, 6), dtype)
    for bins in (None, 32):
        want = emu.match_histograms(x, ref, bins)
        torch.testing.assert_close(emu.upsample_match(x, 1, None, ref, -0.75, bins), want, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(emu.match_histograms(x, ref, None), sk_match(x, ref), rtol=0, atol=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_small_shapes(emu: ModuleType, data: st.DataObject) -> None:
    """Random small shapes (1-pixel axes, rows past a tile), scales 1-8, three kernels, ties, float32
    and float64: the emulated CUDA ops against the pure-torch reference, skimage, their own
    composition and the CPU kernel."""
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 7)), data.draw(st.sampled_from([1, 2, 5, 33, 70]))
    scale = data.draw(st.integers(1, 8))
    a = data.draw(st.sampled_from([-0.5, -0.75, -0.6]))
    levels = data.draw(st.sampled_from([0, 3, 50]))  # 0: continuous values, else quantised (ties)
    g = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    dtype = data.draw(st.sampled_from(DTYPES))  # float32 with several planes: planes sorted together
    x = g.random((n, c, h, w))
    if levels:
        x = np.round(x * levels) / levels
    xt = torch.from_numpy(x).to(dtype)
    up = emu.upsample_bicubic(xt, scale, a)
    want = _reference.upsample_bicubic(xt.double(), scale, a=a)
    torch.testing.assert_close(up.double(), want, rtol=0, atol=ATOL[dtype])
    ref = torch.from_numpy(g.random((n, c, data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))))).to(dtype)
    torch.testing.assert_close(emu.match_histograms(up, ref, None), sk_match(up, ref), rtol=0, atol=0)
    bins = data.draw(st.sampled_from([None, 1, 3, 100]))
    rng_x = ops.plane_range(xt) if bins is not None else None  # the fused op bins over x's range
    got = emu.match_histograms(up, ref, bins, rng_x)
    torch.testing.assert_close(emu.upsample_match(xt, scale, None, ref, a, bins), got, rtol=0, atol=0)
    torch.testing.assert_close(got, ops.match_histograms(up, ref, bins=bins, bin_range=rng_x), rtol=0, atol=0)
    if bins is not None:
        torch.testing.assert_close(
            emu.match_histograms(up, ref, bins), ops.match_histograms(up, ref, bins=bins), rtol=0, atol=0
        )


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_scale_specialised_row_loop_keeps_the_bits(
    emu: ModuleType, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, scale: int
) -> None:
    """Scales 2, 3, 4 and 8 run a row loop compiled for them; PSR_CUDA_GENERIC_SCALE=1 forces the generic
    one. Same bits in every kernel that reads the bicubic source (upsampling, exact sort keys,
    binned histogram and map, with and without a residual), and right against F.interpolate."""
    x = rand(rng, (2, 2, 13, 70), torch.float32)
    res = torch.from_numpy(rng.normal(size=(2, 2, 13 * scale, 70 * scale)) * 0.05).float()
    calls = [
        lambda: emu.upsample_bicubic(x, scale, -0.75),
        lambda: emu.upsample_bicubic(x, scale, -0.5),
        lambda: emu.upsample_match(x, scale, None, None, -0.75, None),
        lambda: emu.upsample_match(x, scale, res, None, -0.75, 256),
        lambda: emu.upsample_match(x, scale, None, None, -0.5, 9000),
    ]
    want = [c() for c in calls]
    monkeypatch.setenv("PSR_CUDA_GENERIC_SCALE", "1")
    for c, w in zip(calls, want, strict=True):
        torch.testing.assert_close(c(), w, rtol=0, atol=0)
    ref = F.interpolate(x.double(), scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(want[0].double(), ref, rtol=0, atol=ATOL[torch.float32])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PSR_CUDA_TILE_ROWS", "2"),
        ("PSR_CUDA_TILE_ROWS", "3"),
        ("PSR_CUDA_TILE_ROWS", "40"),
        ("PSR_CUDA_PLANAR_MAX_PIXELS", "1"),
        ("PSR_CUDA_MAP_MIN_BLOCKS", "1"),
    ],
)
def test_tuning_knobs_keep_the_bits(
    emu: ModuleType, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """benchmarks/tune_cuda.py's knobs change the work split, never the result: tiles of 2, 3 (the
    last one partial) or 40 input rows (taller than the image; the default here is 1); float32 planes
    sorted one at a time; the float32 map kernels compiled without the 64-register cap."""
    x = rand(rng, (1, 3, 20, 70), torch.float32)
    x[0, 2, :, 30:] = 0.5
    ref = rand(rng, (1, 3, 6, 9), torch.float32)
    calls = [
        lambda: emu.upsample_bicubic(x, 3, -0.75),
        lambda: emu.upsample_match(x, 3, None, ref, -0.75, None),
        lambda: emu.upsample_match(x, 3, None, None, -0.5, 128),
        lambda: emu.match_histograms(x, ref, None),
    ]
    emu.launch_grids()
    want = [c() for c in calls]
    grids = emu.launch_grids()
    monkeypatch.setenv(name, value)
    for c, w in zip(calls, want, strict=True):
        torch.testing.assert_close(c(), w, rtol=0, atol=0)
    assert emu.launch_grids() != grids  # the knob did change the work split (or the kernel variant)
