// Helpers shared by the CPU and CUDA kernels: the bicubic phase table, border index maps and
// order-preserving integer keys of floating-point values. Host and device code include this.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef __CUDACC__
#define PSR_HD __host__ __device__ __forceinline__
#else
#define PSR_HD inline
#endif

namespace psr {

constexpr int kMaxScale = 8;
constexpr int kTaps = 4;

// Keys' cubic convolution kernel (psr/resize.py: cubic_kernel).
inline double cubic_kernel(double x, double a) {
  const double ax = std::fabs(x);
  const double ax2 = ax * ax;
  const double ax3 = ax2 * ax;
  if (ax <= 1.0) return (a + 2.0) * ax3 - (a + 3.0) * ax2 + 1.0;
  if (ax < 2.0) return a * ax3 - 5.0 * a * ax2 + 8.0 * a * ax - 4.0 * a;
  return 0.0;
}

// Integer upscaling by s maps output sample i = q * s + r to input coordinate
// u = (i + 0.5) / s - 0.5 = q + t_r with t_r = (r + 0.5) / s - 0.5 in (-0.5, 0.5), so the four tap
// weights depend on the phase r alone. Output i reads input samples b - 1 .. b + 2 with
// b = q + offset[r] (offset is floor(t_r), 0 or -1).
struct PhaseTable {
  int scale;
  int offset[kMaxScale];
  double w[kMaxScale][kTaps];
};

// Weights in double, normalised to sum to one per phase as MATLAB and psr.resize.resize_weights do.
inline PhaseTable make_phase_table(int scale, double a) {
  PhaseTable t{};
  t.scale = scale;
  for (int r = 0; r < scale; ++r) {
    const double u = (r + 0.5) / scale - 0.5;
    const double fl = std::floor(u);
    t.offset[r] = static_cast<int>(fl);
    double sum = 0.0;
    for (int k = 0; k < kTaps; ++k) {
      t.w[r][k] = cubic_kernel(u - (fl - 1.0 + k), a);
      sum += t.w[r][k];
    }
    for (int k = 0; k < kTaps; ++k) t.w[r][k] /= sum;
  }
  return t;
}

// Index of virtual sample j of an axis of length n: MATLAB's half-sample symmetric padding
// ([x0 .. xn-1, xn-1 .. x0] repeated) or torch's clamping.
PSR_HD int64_t pad_index(int64_t j, int64_t n, bool symmetric) {
  if (j >= 0 && j < n) return j;
  if (!symmetric) return j < 0 ? 0 : n - 1;
  const int64_t period = 2 * n;
  int64_t m = j % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}

// Monotone maps float -> uint32 and double -> uint64: a < b iff key(a) < key(b), and equal values
// (including -0.0 and +0.0) get equal keys, so sorting keys sorts values and ties stay ties.
PSR_HD uint32_t float_key(float v) {
  if (v == 0.0f) v = 0.0f;  // -0.0 == +0.0: one tie group, as np.unique has it
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

PSR_HD float key_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
#endif
}

PSR_HD uint64_t double_key(double v) {
  if (v == 0.0) v = 0.0;
  uint64_t u;
#ifdef __CUDA_ARCH__
  u = static_cast<uint64_t>(__double_as_longlong(v));
#else
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

PSR_HD double key_double(uint64_t k) {
  const uint64_t u = (k & 0x8000000000000000ull) ? (k & 0x7fffffffffffffffull) : ~k;
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(u));
#else
  double v;
  std::memcpy(&v, &u, sizeof v);
  return v;
#endif
}

template <typename scalar_t>
struct KeyTraits;

template <>
struct KeyTraits<float> {
  using key_t = uint32_t;
  static constexpr int bits = 32;
  PSR_HD static key_t key(float v) { return float_key(v); }
  PSR_HD static float value(key_t k) { return key_float(k); }
};

template <>
struct KeyTraits<double> {
  using key_t = uint64_t;
  static constexpr int bits = 64;
  PSR_HD static key_t key(double v) { return double_key(v); }
  PSR_HD static double value(key_t k) { return key_double(k); }
};

// np.interp(x, xp, fp) at one point, given j with xp[j] <= x < xp[j + 1] (or the ends), using
// numpy's formula so that results agree with skimage to the last bit of double.
// slopes (optional) holds the m - 1 interval slopes precomputed with the same formula.
PSR_HD double interp_at(double x, const double* xp, const double* fp, int64_t m, int64_t j,
                        const double* slopes = nullptr) {
  if (j < 0) return fp[0];
  if (j >= m - 1) return fp[m - 1];
  if (xp[j] == x) return fp[j];
  const double slope = slopes != nullptr ? slopes[j] : (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
  double r = slope * (x - xp[j]) + fp[j];
  if (r != r) {  // non-finite slope: numpy retries from the right end
    r = slope * (x - xp[j + 1]) + fp[j + 1];
    if (r != r && fp[j] == fp[j + 1]) r = fp[j];
  }
  return r;
}

// Index j of the last xp[j] <= x (xp strictly increasing), -1 if x < xp[0].
PSR_HD int64_t search_right(const double* xp, int64_t m, double x) {
  int64_t lo = 0, hi = m;  // first index with xp > x lies in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (xp[mid] <= x) lo = mid + 1; else hi = mid;
  }
  return lo - 1;
}

// np.interp semantics for the clamped ends.
PSR_HD double np_interp(double x, const double* xp, const double* fp, int64_t m) {
  if (m == 1) return fp[0];
  if (x > xp[m - 1]) return fp[m - 1];
  return interp_at(x, xp, fp, m, search_right(xp, m, x));
}

// np_interp for x visited in nondecreasing order: j carries the interval index from call to call
// (start at -1). A few steps forward, else a binary search of the rest; the same result.
PSR_HD double np_interp_forward(double x, const double* xp, const double* fp, int64_t m, int64_t& j,
                                const double* slopes = nullptr) {
  if (m == 1) return fp[0];
  if (x > xp[m - 1]) return fp[m - 1];
  int steps = 0;
  while (j + 1 < m && xp[j + 1] <= x && steps < 4) {
    ++j;
    ++steps;
  }
  if (steps == 4 && j + 1 < m && xp[j + 1] <= x) j = j + 1 + search_right(xp + j + 1, m - j - 1, x);
  return interp_at(x, xp, fp, m, j, slopes);
}

// Binned matching (CPU, CUDA and psr/_reference.py alike). A plane's bin position is
// (v * mul - lo * mul) * (bins / (hi * mul - lo * mul)) with mul a power of two, so exact: 1 unless
// hi - lo overflows (float64 beyond DBL_MAX) or bins / (hi - lo) does (subnormal ranges), which
// would turn finite values into NaN. With mul = 1 this is bit for bit (v - lo) * factor.
PSR_HD bool finite_double(double x) { return x - x == 0.0; }  // false for inf and NaN

PSR_HD double binner_scale(double lo, double hi, int64_t bins) {
  const double range = hi - lo;
  if (!finite_double(range)) return 0.25;
  if (!finite_double(static_cast<double>(bins) / range)) return 0x1p600;
  return 1.0;
}

// Linear interpolation between a bin's edge values a and b at t in [0, 1]: a + t * (b - a), and,
// where b - a overflows (float64 edges near +-DBL_MAX), the same on halves so it stays finite. An
// infinite edge (the exact map overflows there, as np.interp and skimage do) is kept, not made NaN.
PSR_HD double lerp_edges(double a, double b, double t) {
  const double d = b - a;
  if (finite_double(d)) return a + t * d;
  if (a != a || b != b || t != t) return a + t * d;  // NaN stays NaN
  if (!finite_double(a)) return a;
  if (!finite_double(b)) return b;
  return 2.0 * (0.5 * a + t * (0.5 * b - 0.5 * a));
}

// A plane's bins (make_binner) and the binned map of a value (map), one definition for the CPU and
// CUDA kernels, mirrored in psr/_reference.py (_bin, _binner32, _lerp32).
// - float64 planes, and float32 planes whose range or factor does not fit float32: double
//   arithmetic, (v * mul - lo) * factor, with lerp_edges for edges whose difference overflows.
// - float32 planes otherwise (f32): float arithmetic, each operation rounded on its own (no
//   contraction: -ffp-contract=off, --fmad=false): position (v - lo32) * factor32 with
//   factor32 = float(bins / (hi - lo)) (the quotient in double), and the lerp on float edges
//   em32[k] + t * (em32[k + 1] - em32[k]) when the reference's range fits float32 (lerp32), else
//   in double. Rounding is monotone, so bins stay ordered by value and the bound holds; float
//   arithmetic costs half the issue slots of double's (and no conversions) in the CUDA passes.
struct Binner {
  double mul, lo, factor;  // lo pre-scaled: lo_plane * mul
  int64_t bins;
  float lo32, factor32;  // f32 planes
  float top32;           // the largest float below bins
  bool f32;

  template <typename scalar_t>
  PSR_HD double pos(double v) const {
    if constexpr (std::is_same_v<scalar_t, double>) return (v * mul - lo) * factor;
    return (v - lo) * factor;
  }
  // floor(pos) clamped to [0, bins - 1]; truncation is floor for pos >= 0, and NaN (possible only
  // with check=False) lands in bin 0.
  PSR_HD int64_t bin(double pos) const {
    if (pos >= 0.0 && pos < static_cast<double>(bins)) return static_cast<int64_t>(pos);
    return pos >= static_cast<double>(bins) ? bins - 1 : 0;
  }
  PSR_HD float pos32(float v) const { return (v - lo32) * factor32; }
  // floor(pos) clamped to [0, bins - 1] as bin() has it, without branches: pos clamped to
  // [0, top32] (NaN to 0), then truncated; top32, the largest float below bins (<= 2^24, so
  // float(bins) is exact), truncates to bins - 1. On the GPU: two FMNMX and an F2I.
  PSR_HD int bin32(float pos) const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(fminf(fmaxf(pos, 0.0f), top32));
#else
    const float c = pos >= 0.0f ? pos : 0.0f;
    return static_cast<int>(c < top32 ? c : top32);
#endif
  }
  // The bin of a value (kF32: this plane is f32, a float32 plane).
  template <typename scalar_t, bool kF32>
  PSR_HD int64_t bin_of(scalar_t v) const {
    if constexpr (kF32) return bin32(pos32(static_cast<float>(v)));
    return bin(pos<scalar_t>(static_cast<double>(v)));
  }
  // The value's bin k and its position t in it, interpolated between the edge map's em[k], em[k+1].
  template <typename scalar_t>
  PSR_HD double map(double v, const double* em) const {
    const double p = pos<scalar_t>(v);
    const int64_t k = bin(p);
    double t = p - static_cast<double>(k);
    t = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);
    if constexpr (std::is_same_v<scalar_t, double>) return lerp_edges(em[k], em[k + 1], t);
    return em[k] + t * (em[k + 1] - em[k]);
  }
  // f32 planes: the bin k of v (returned) and v's position t in it, clamped to [0, 1] (NaN stays).
  PSR_HD int bin_t32(float v, float& t) const {
    const float p = pos32(v);
    const int k = bin32(p);
    t = p - static_cast<float>(k);  // in [0, 1) where p is in [0, bins)
    t = t < 0.0f ? 0.0f : t;  // two selects, no branch (and no fminf/fmaxf, which drop NaN)
    t = t > 1.0f ? 1.0f : t;
    return k;
  }
  // f32 planes: on float edges em32(k) (float(em[k])) when kLerp32, else on the double edges em.
  template <bool kLerp32, typename Edge32>
  PSR_HD float map32(float v, const Edge32& em32, const double* em) const {
    float t;
    const int k = bin_t32(v, t);
    if constexpr (kLerp32) {
      const float a = em32(k);
      return a + t * (em32(k + 1) - a);  // EdgePair32 keeps a and em32(k + 1) - a: the same bits
    } else {
      return static_cast<float>(em[k] + static_cast<double>(t) * (em[k + 1] - em[k]));
    }
  }
};

// A bin's float edge and the difference to the next one, as map32's lerp on float edges has them
// (the CUDA map kernel's table: one 8-byte load and no subtraction per value).
struct alignas(8) EdgePair32 {
  float a, d;
};

// float32 planes (float_plane) get the f32 binning where their range and factor are finite floats.
PSR_HD Binner make_binner(double lo, double hi, int64_t bins, bool float_plane = false) {
  const double mul = binner_scale(lo, hi, bins);
  Binner b{mul, lo * mul, static_cast<double>(bins) / (hi * mul - lo * mul), bins, 0.0f, 0.0f, 0.0f, false};
  if (float_plane) {
    b.top32 = nextafterf(static_cast<float>(bins), 0.0f);  // bins >= 1
    b.lo32 = static_cast<float>(lo);
    b.factor32 = static_cast<float>(static_cast<double>(bins) / (hi - lo));
    const float span32 = static_cast<float>(hi) - b.lo32;
    b.f32 = span32 - span32 == 0.0f && b.factor32 - b.factor32 == 0.0f;  // both finite (not inf, not NaN)
  }
  return b;
}

// Whether an f32 plane's lerp runs on float edges: the reference's range (em[0] .. em[bins], its
// minimum and maximum) has a finite float difference.
PSR_HD bool lerp32_ok(double em_first, double em_last) {
  const float d = static_cast<float>(em_last) - static_cast<float>(em_first);
  return d - d == 0.0f;
}

}  // namespace psr
