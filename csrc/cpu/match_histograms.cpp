// CPU histogram matching, per plane (sample x channel).
//
// Exact mode reproduces skimage.exposure.match_histograms: every distinct source value v maps to
// np.interp(q(v), ref_quantiles, ref_values) with q(v) = #{source <= v} / n, so a tie group takes
// its upper quantile. The source values are turned into order-preserving integer keys packed with
// their pixel index and radix-sorted; one walk over the sorted run then assigns each tie group its
// value. Counts are integers throughout, so quantiles are exact however many pixels there are.
//
// Binned mode counts the source in `bins` equal-width bins over a range (the plane's [min, max],
// or one given per plane: the fused op gives the low-resolution plane's, which spares it a pass
// over the upsampled values) and maps each value by linear interpolation between its bin's edges
// mapped through the binned reference CDF (binned_reference_cdf); values outside the range fall in
// the end bins. See psr/ops.py for the bound.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "kernels.h"

namespace psr::cpu {
namespace {

// A sort element of exact mode: a value's key and its pixel index in the plane.
template <typename scalar_t>
struct Pair;

template <>
struct Pair<float> {  // packed into one word: key in the high half
  using type = uint64_t;
  static type make(uint32_t key, uint32_t idx) { return (static_cast<uint64_t>(key) << 32) | idx; }
  static uint64_t key(type e) { return e >> 32; }
  static uint32_t index(type e) { return static_cast<uint32_t>(e); }
};

template <>
struct Pair<double> {
  struct type {
    uint64_t k;
    uint64_t i;
  };
  static type make(uint64_t key, uint32_t idx) { return {key, idx}; }
  static uint64_t key(const type& e) { return e.k; }
  static uint32_t index(const type& e) { return static_cast<uint32_t>(e.i); }
};

// Work blocks for one plane: per_thread blocks for each thread, of at least per_block values, or one
// block with one thread or inside a parallel region (then the caller parallelises over planes and
// each plane runs single-threaded).
int64_t num_blocks(int64_t n, int64_t per_block = 65536, int64_t per_thread = 1) {
  const int64_t T = at::get_num_threads();
  if (at::in_parallel_region() || T == 1) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(T * per_thread, n / per_block));
}

// Blocks per thread in the radix passes and the walk. More blocks than threads, claimed as threads
// come free: on a shared host one thread often runs late, and with one block per thread the other
// then waits at every pass's end (libgomp's barrier took about 15% of the op in a profile).
constexpr int64_t kBlocksPerThread = 4;

// body(blk) for blk in [0, nb): on the calling thread when nb == 1, else on the pool with each
// thread claiming the next unclaimed block when it finishes one.
template <typename Body>
void for_blocks(int64_t nb, const Body& body) {
  if (nb == 1) {
    body(0);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(nb, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t blk = next.fetch_add(1); blk < nb; blk = next.fetch_add(1)) body(blk);
  });
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// An uninitialised array of n trivially copyable elements (huge pages when large).
template <typename E>
std::unique_ptr<E[], FreeDeleter> uninitialized(int64_t n) {
  return std::unique_ptr<E[], FreeDeleter>(static_cast<E*>(huge_alloc(sizeof(E) * static_cast<size_t>(n))));
}

constexpr int kRadixBits = 11;  // 2048 buckets: measured faster here than 8 or 16 bits per pass

// How many elements ahead the scatter loops prefetch their write targets. The stores of a radix
// pass go to 2048 places at once and those of the output scatter anywhere in the plane; the core
// waits for each line on its own, prefetched it fetches many at once (measured here, huge pages: a
// 2048-way pass 8.4 -> 1.8 ms, the output scatter 3.8 -> 2.1 ms per 2^20 values; see
// benchmarks/scatter_prefetch.cpp and benchmarks/RESULTS.md).
constexpr int64_t kPrefetchAhead = 16;

inline void prefetch_for_write(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 1);
#else
  (void)p;
#endif
}

// One radix scatter: b[o[digit(a[i])]++] = a[i] for i in [begin, end), in order (stable).
template <typename E, typename Digit>
inline void scatter_pass(const E* a, E* b, int64_t begin, int64_t end, int64_t* o, Digit digit) {
  int64_t i = begin;
  for (; i + kPrefetchAhead < end; ++i) {
    prefetch_for_write(&b[o[digit(a[i + kPrefetchAhead])]]);
    const E e = a[i];
    b[o[digit(e)]++] = e;
  }
  for (; i < end; ++i) {
    const E e = a[i];
    b[o[digit(e)]++] = e;
  }
}

// Stable LSD radix sort of a[0..n) by key_of (an unsigned integer), using b as scratch. Only the
// bit range in which keys differ is sorted (image values share sign and most exponent bits), in
// passes of at most 11 bits. Returns the buffer that holds the result.
//
// `diff`, when the caller knows it (it made the keys), is the OR of all keys XOR the AND of all
// keys: the bits in which keys differ. Passing it saves a read of the array.
template <typename E, typename KeyOf>
E* radix_sort(E* a, E* b, int64_t n, KeyOf key_of, std::optional<uint64_t> known_diff = std::nullopt) {
  if (n < 2) return a;
  if (n <= 4096) {
    std::stable_sort(a, a + n, [&](const E& l, const E& r) { return key_of(l) < key_of(r); });
    return a;
  }
  const int64_t nb = num_blocks(n, 65536, kBlocksPerThread);
  const int64_t chunk = (n + nb - 1) / nb;
  uint64_t diff = 0;
  if (known_diff.has_value()) {
    diff = *known_diff;
  } else {
    const uint64_t first = key_of(a[0]);
    std::vector<uint64_t> diffs(static_cast<size_t>(nb), 0);
    for_blocks(nb, [&](int64_t blk) {
      uint64_t d = 0;
      const int64_t end = std::min(n, (blk + 1) * chunk);
      for (int64_t i = blk * chunk; i < end; ++i) d |= static_cast<uint64_t>(key_of(a[i])) ^ first;
      diffs[blk] = d;
    });
    for (uint64_t d : diffs) diff |= d;
  }
  if (diff == 0) return a;
  const int lo = __builtin_ctzll(diff);
  const int span = 64 - __builtin_clzll(diff) - lo;
  const int passes = (span + kRadixBits - 1) / kRadixBits;
  const int width = (span + passes - 1) / passes;
  const int64_t nbuckets = int64_t(1) << width;
  const uint64_t mask = static_cast<uint64_t>(nbuckets - 1);
  // The bucket of an element in the pass that sorts bits [shift, shift + width).
  const auto digit_of = [&](const E& e, int shift) { return (static_cast<uint64_t>(key_of(e)) >> shift) & mask; };
  if (nb == 1) {
    // One thread: the digit histograms of every pass come from one read of the array (a pass
    // permutes the elements but not the multiset of its digits).
    std::vector<int64_t> cnt(static_cast<size_t>(passes * nbuckets), 0);
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t k = static_cast<uint64_t>(key_of(a[i]));
      for (int p = 0; p < passes; ++p) ++cnt[p * nbuckets + ((k >> (lo + p * width)) & mask)];
    }
    for (int p = 0; p < passes; ++p) {
      const int shift = lo + p * width;
      int64_t* o = &cnt[p * nbuckets];
      int64_t run = 0;
      for (int64_t d = 0; d < nbuckets; ++d) {
        const int64_t c = o[d];
        o[d] = run;
        run += c;
      }
      scatter_pass(a, b, 0, n, o, [&](const E& e) { return digit_of(e, shift); });
      std::swap(a, b);
    }
    return a;
  }
  std::vector<int64_t> offs(static_cast<size_t>(nb * nbuckets));
  for (int p = 0; p < passes; ++p) {
    const int shift = lo + p * width;
    const auto digit = [&](const E& e) { return digit_of(e, shift); };
    for_blocks(nb, [&](int64_t blk) {
      int64_t* c = &offs[blk * nbuckets];
      std::fill(c, c + nbuckets, 0);
      const int64_t end = std::min(n, (blk + 1) * chunk);
      for (int64_t i = blk * chunk; i < end; ++i) ++c[digit(a[i])];
    });
    int64_t run = 0;
    for (int64_t d = 0; d < nbuckets; ++d) {
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int64_t c = offs[blk * nbuckets + d];
        offs[blk * nbuckets + d] = run;
        run += c;
      }
    }
    for_blocks(nb, [&](int64_t blk) {
      scatter_pass(a, b, blk * chunk, std::min(n, (blk + 1) * chunk), &offs[blk * nbuckets], digit);
    });
    std::swap(a, b);
  }
  return a;
}

// The reference's CDF as np.interp needs it: unique values and their cumulative quantiles.
struct RefCdf {
  std::vector<double> xp, fp;
  std::vector<double> slope;  // per interval, as np.interp precomputes them
};

template <typename scalar_t>
RefCdf reference_cdf(const scalar_t* ref, int64_t m) {
  using KT = KeyTraits<scalar_t>;
  using K = typename KT::key_t;
  auto a = uninitialized<K>(m);
  auto b = uninitialized<K>(m);
  at::parallel_for(0, m, 65536, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) a[i] = KT::key(ref[i]);
  });
  const K* s = radix_sort(a.get(), b.get(), m, [](K k) { return k; });
  RefCdf c;
  c.xp.reserve(static_cast<size_t>(m));
  c.fp.reserve(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    if (i == m - 1 || s[i] != s[i + 1]) {
      c.xp.push_back(static_cast<double>(i + 1) / static_cast<double>(m));
      c.fp.push_back(static_cast<double>(KT::value(s[i])));
    }
  }
  for (size_t j = 0; j + 1 < c.xp.size(); ++j) c.slope.push_back((c.fp[j + 1] - c.fp[j]) / (c.xp[j + 1] - c.xp[j]));
  return c;
}

// Binned mode's reference CDF (psr/_reference.py: _binned_ref_cdf): the reference binned like the
// source, `bins` bins over its [min, max]; each nonempty bin gives two knots of the exact CDF, its
// smallest value at that value's upper quantile and its largest at the bin's. No sort: three passes
// (range, bins, ties of each bin's smallest value).
template <typename scalar_t>
RefCdf binned_reference_cdf(const scalar_t* ref, int64_t m, int64_t bins) {
  RefCdf c;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < m; ++i) {
    const double v = static_cast<double>(ref[i]) + 0.0;  // -0.0 counts as 0.0, as CUDA's keys
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!(lo < hi)) {  // one distinct value (or NaN with check=False): a single knot
    c.xp.push_back(1.0);
    c.fp.push_back(lo == hi ? lo : hi);
    return c;
  }
  // 16 bytes a bin (k up to 2^24: 256 MiB), 4 a reference value.
  TORCH_CHECK(m <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
              "psr::match_histograms: at most 2^32 - 1 reference pixels per channel in binned mode, got ", m);
  const Binner bn = make_binner(lo, hi, bins, std::is_same_v<scalar_t, float>);
  std::vector<uint32_t> count(static_cast<size_t>(bins), 0), cmin(static_cast<size_t>(bins), 0);
  std::vector<scalar_t> bmin(static_cast<size_t>(bins), std::numeric_limits<scalar_t>::infinity());
  std::vector<scalar_t> bmax(static_cast<size_t>(bins), -std::numeric_limits<scalar_t>::infinity());
  std::vector<int32_t> bin(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    const scalar_t v = ref[i] + scalar_t(0);
    const int64_t b = bn.f32 ? bn.bin_of<scalar_t, true>(v) : bn.bin_of<scalar_t, false>(v);
    bin[i] = static_cast<int32_t>(b);
    ++count[b];
    bmin[b] = std::min(bmin[b], v);
    bmax[b] = std::max(bmax[b], v);
  }
  for (int64_t i = 0; i < m; ++i) {
    const int32_t b = bin[i];
    if (ref[i] + scalar_t(0) == bmin[b]) ++cmin[b];
  }
  const double md = static_cast<double>(m);
  int64_t cum = 0;
  for (int64_t b = 0; b < bins; ++b) {
    if (count[b] == 0) continue;
    c.xp.push_back(static_cast<double>(cum + cmin[b]) / md);
    c.fp.push_back(static_cast<double>(bmin[b]));
    cum += count[b];
    if (bmax[b] != bmin[b]) {
      c.xp.push_back(static_cast<double>(cum) / md);
      c.fp.push_back(static_cast<double>(bmax[b]));
    }
  }
  return c;  // no slope table: the k + 1 edges are looked up once each (np_interp)
}

template <typename scalar_t, typename Rows>
void match_exact_plane(const Rows& rows, int64_t plane, const RefCdf& rc, scalar_t* out,
                       typename Pair<scalar_t>::type* a, typename Pair<scalar_t>::type* b) {
  using KT = KeyTraits<scalar_t>;
  using PT = Pair<scalar_t>;
  using E = typename PT::type;
  const int64_t R = rows.rows(), C = rows.cols(), n = R * C;
  TORCH_CHECK(n <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
              "psr::match_histograms: at most 2^32 - 1 pixels per channel in exact mode, got ", n,
              "; use bins=k");
  // The keys are made here, so the bits in which they differ come free (saves the sort a read).
  uint64_t all_or = 0, all_and = ~uint64_t(0);
  std::mutex acc;
  at::parallel_for(0, R, std::max<int64_t>(1, 16384 / C), [&](int64_t y0, int64_t y1) {
    std::vector<scalar_t> scratch(static_cast<size_t>(rows.scratch()));
    uint64_t k_or = 0, k_and = ~uint64_t(0);
    for (int64_t y = y0; y < y1; ++y) {
      const scalar_t* v = rows.get(plane, y, scratch.data());
      E* dst = a + y * C;
      for (int64_t j = 0; j < C; ++j) {
        const auto k = KT::key(v[j]);
        k_or |= k;
        k_and &= k;
        dst[j] = PT::make(k, static_cast<uint32_t>(y * C + j));
      }
    }
    const std::lock_guard<std::mutex> lock(acc);
    all_or |= k_or;
    all_and &= k_and;
  });
  const E* s = radix_sort(a, b, n, [](const E& e) { return PT::key(e); }, all_or ^ all_and);

  // Locals, not rc's members: the stores to out could alias those, and the loop would reload them.
  const double* xp = rc.xp.data();
  const double* fp = rc.fp.data();
  const double* slope = rc.slope.data();
  const int64_t m = static_cast<int64_t>(rc.xp.size());
  scalar_t* __restrict__ o = out;
  // Each block handles the tie groups that start inside it (and runs past its end to finish the
  // last one); groups are found by comparing neighbouring keys.
  const int64_t nb = num_blocks(n, 65536, kBlocksPerThread);
  const int64_t chunk = (n + nb - 1) / nb;
  for_blocks(nb, [&](int64_t blk) {
    int64_t i = blk * chunk;
    const int64_t end = std::min(n, i + chunk);
    while (i > 0 && i < end && PT::key(s[i]) == PT::key(s[i - 1])) ++i;
    int64_t j = -1;  // interval of xp holding the current quantile (q only grows)
    while (i < end) {
      const uint64_t k = PT::key(s[i]);
      int64_t e = i + 1;
      while (e < n && PT::key(s[e]) == k) ++e;
      const double q = static_cast<double>(e) / static_cast<double>(n);
      const scalar_t v = static_cast<scalar_t>(np_interp_forward(q, xp, fp, m, j, slope));
      for (int64_t t = i; t < e; ++t) {
        if (t + kPrefetchAhead < n) prefetch_for_write(&o[PT::index(s[t + kPrefetchAhead])]);
        o[PT::index(s[t])] = v;
      }
      i = e;
    }
  });
}

template <typename scalar_t, typename Rows>
void match_binned_plane(const Rows& rows, int64_t plane, const RefCdf& rc, int64_t bins, const scalar_t* range,
                        scalar_t* out) {
  const int64_t R = rows.rows(), C = rows.cols(), n = R * C;
  const int64_t nb = std::min(num_blocks(n, 16384), R);
  const int64_t chunk = (R + nb - 1) / nb;
  auto for_rows = [&](auto&& body) {  // body(block, row pointer, row index), blocks in parallel
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> scratch(static_cast<size_t>(rows.scratch()));
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t end = std::min(R, (blk + 1) * chunk);
        for (int64_t y = blk * chunk; y < end; ++y) body(blk, rows.get(plane, y, scratch.data()), y);
      }
    });
  };

  double lo, hi;
  if (range != nullptr) {  // given: no pass over the values (+ 0.0: -0.0 counts as 0.0, as CUDA's keys)
    lo = static_cast<double>(range[0]) + 0.0;
    hi = static_cast<double>(range[1]) + 0.0;
  } else {
    std::vector<double> mins(static_cast<size_t>(nb), std::numeric_limits<double>::infinity());
    std::vector<double> maxs(static_cast<size_t>(nb), -std::numeric_limits<double>::infinity());
    for_rows([&](int64_t blk, const scalar_t* v, int64_t) {
      scalar_t l = v[0], h = v[0];
      for (int64_t j = 1; j < C; ++j) {
        l = std::min(l, v[j]);
        h = std::max(h, v[j]);
      }
      mins[blk] = std::min(mins[blk], static_cast<double>(l));
      maxs[blk] = std::max(maxs[blk], static_cast<double>(h));
    });
    lo = *std::min_element(mins.begin(), mins.end()) + 0.0;
    hi = *std::max_element(maxs.begin(), maxs.end()) + 0.0;
  }
  // A constant source is one tie group at quantile 1: the reference's maximum. So is every value
  // when a given range is a single point.
  if (lo == hi) {
    std::fill(out, out + n, static_cast<scalar_t>(rc.fp.back()));
    return;
  }
  const Binner bn = make_binner(lo, hi, bins, std::is_same_v<scalar_t, float>);

  // One histogram per group of blocks, at most kHistBudget counts in all, so that memory does not
  // grow with threads x bins (2^24 bins: a single histogram, counted by one thread at a time).
  constexpr int64_t kHistBudget = int64_t(1) << 23;  // 64 MiB of int64 counts
  const int64_t nh = std::max<int64_t>(1, std::min(nb, kHistBudget / bins));
  std::vector<int64_t> hist(static_cast<size_t>(nh * bins), 0);
  std::vector<std::mutex> hist_lock(static_cast<size_t>(nh));
  for_rows([&](int64_t blk, const scalar_t* v, int64_t) {
    const int64_t g = blk % nh;
    std::unique_lock<std::mutex> hold(hist_lock[g], std::defer_lock);
    if (nh < nb) hold.lock();
    int64_t* h = &hist[g * bins];
    if (bn.f32) {
      for (int64_t j = 0; j < C; ++j) ++h[bn.bin_of<scalar_t, true>(v[j])];
    } else {
      for (int64_t j = 0; j < C; ++j) ++h[bn.bin_of<scalar_t, false>(v[j])];
    }
  });
  // Edge k's quantile is the fraction of values in bins below k; map it through the binned
  // reference CDF, then interpolate linearly inside each bin.
  std::vector<double> em(static_cast<size_t>(bins + 1));
  int64_t cum = 0;
  for (int64_t k = 0; k <= bins; ++k) {
    em[k] = np_interp(static_cast<double>(cum) / static_cast<double>(n), rc.xp.data(), rc.fp.data(),
                      static_cast<int64_t>(rc.xp.size()));
    if (k < bins) {
      for (int64_t g = 0; g < nh; ++g) cum += hist[g * bins + k];
    }
  }
  if (bn.f32) {  // float32 arithmetic (psr_common.h)
    const bool lerp32 = lerp32_ok(em[0], em[bins]);
    std::vector<float> em32(em.begin(), em.end());
    const float* e32 = em32.data();
    const auto edge = [e32](int k) { return e32[k]; };
    for_rows([&](int64_t, const scalar_t* v, int64_t y) {
      scalar_t* o = out + y * C;
      if (lerp32) {
        for (int64_t j = 0; j < C; ++j) o[j] = bn.map32<true>(static_cast<float>(v[j]), edge, em.data());
      } else {
        for (int64_t j = 0; j < C; ++j) o[j] = bn.map32<false>(static_cast<float>(v[j]), edge, em.data());
      }
    });
    return;
  }
  for_rows([&](int64_t, const scalar_t* v, int64_t y) {
    scalar_t* o = out + y * C;
    for (int64_t j = 0; j < C; ++j) {
      o[j] = static_cast<scalar_t>(bn.map<scalar_t>(static_cast<double>(v[j]), em.data()));
    }
  });
}

}  // namespace

// Planes with at least this many values are split across the threads (see match_planes).
constexpr int64_t kSplitPlaneAt = int64_t(1) << 18;

template <typename scalar_t, typename Rows>
void match_planes(const Rows& rows, int64_t P, const scalar_t* ref, int64_t ref_n, std::optional<int64_t> bins,
                  const scalar_t* bin_range, scalar_t* out) {
  const int64_t n = rows.rows() * rows.cols();
  using E = typename Pair<scalar_t>::type;
  // Binned mode's per-plane scratch grows with k (16 bytes a bin for the reference, 8 for the
  // histogram): past 64 MiB of it, planes go one at a time, so that memory does not also grow
  // with the thread count.
  const bool huge_bins = bins.has_value() && *bins * 16 > (int64_t(64) << 20);
  // Planes p0 .. p1 in turn, reusing one pair of sort buffers (fresh pages cost a fault each).
  auto do_planes = [&](int64_t p0, int64_t p1) {
    if (p0 >= p1) return;
    std::unique_ptr<E[], FreeDeleter> a, b;
    if (!bins.has_value()) {
      a = uninitialized<E>(n);
      b = uninitialized<E>(n);
    }
    // Small references (an LR image): their CDFs T planes at a time, one plane per thread, as
    // each is too small to split well. Large ones are sorted one at a time with all threads, and
    // inside a parallel region (whole planes per thread) there is nothing to batch.
    const bool batch_refs = !at::in_parallel_region() && ref_n < kSplitPlaneAt && !huge_bins;
    const int64_t batch = batch_refs ? std::max<int64_t>(1, at::get_num_threads()) : 1;
    std::vector<RefCdf> rcs(static_cast<size_t>(std::min(batch, p1 - p0)));
    for (int64_t q0 = p0; q0 < p1; q0 += batch) {
      const int64_t q1 = std::min(p1, q0 + batch);
      at::parallel_for(q0, q1, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t p = r0; p < r1; ++p) {
          rcs[p - q0] = bins.has_value() ? binned_reference_cdf(ref + p * ref_n, ref_n, *bins)
                                         : reference_cdf(ref + p * ref_n, ref_n);
        }
      });
      for (int64_t p = q0; p < q1; ++p) {
        if (bins.has_value()) {
          match_binned_plane(rows, p, rcs[p - q0], *bins, bin_range != nullptr ? bin_range + 2 * p : nullptr,
                             out + p * n);
        } else {
          match_exact_plane(rows, p, rcs[p - q0], out + p * n, a.get(), b.get());
        }
      }
    }
  };
  // Small planes: whole planes per thread where there are enough of them (one parallel region in
  // all, whereas splitting a plane synchronises the threads about ten times, once per radix pass).
  // Large planes: one at a time, split across the threads. The sort is memory-bound, and T planes
  // sorted at once need T times the cache: measured on the 2-core CI machine, 3 x 1024^2 planes
  // took 60-71 ms two-at-a-time against about 47 ms one-at-a-time split (benchmarks/RESULTS.md).
  // The P % T planes left over (all of them when P < T) are split one at a time too. Small jobs
  // stay on the calling thread: waking the pool costs more than they do.
  const int64_t T = at::get_num_threads();
  const bool parallel = T > 1 && P * n >= 32768 && !at::in_parallel_region();
  const int64_t whole = parallel && n < kSplitPlaneAt && !huge_bins ? P - P % T : 0;
  if (whole > 0) {
    at::parallel_for(0, whole, 1, do_planes);
  }
  do_planes(whole, P);
}

template void match_planes<float, PlainRows<float>>(const PlainRows<float>&, int64_t, const float*, int64_t,
                                                    std::optional<int64_t>, const float*, float*);
template void match_planes<double, PlainRows<double>>(const PlainRows<double>&, int64_t, const double*, int64_t,
                                                      std::optional<int64_t>, const double*, double*);
template void match_planes<float, BicubicRows<float>>(const BicubicRows<float>&, int64_t, const float*, int64_t,
                                                      std::optional<int64_t>, const float*, float*);
template void match_planes<double, BicubicRows<double>>(const BicubicRows<double>&, int64_t, const double*,
                                                        int64_t, std::optional<int64_t>, const double*, double*);

static at::Tensor match_histograms_cpu(const at::Tensor& source, const at::Tensor& reference,
                                       std::optional<int64_t> bins, const std::optional<at::Tensor>& bin_range) {
  const at::Tensor range = check_match_args(source, reference, bins, bin_range);
  const at::Tensor src = source.contiguous();
  const at::Tensor ref = reference.contiguous();
  at::Tensor out = at::empty(src.sizes(), src.options());
  const int64_t P = src.size(0) * src.size(1);
  if (P == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "psr_match_histograms_cpu", [&] {
    const PlainRows<scalar_t> rows{src.const_data_ptr<scalar_t>(), src.size(2), src.size(3)};
    match_planes(rows, P, ref.const_data_ptr<scalar_t>(), ref.size(2) * ref.size(3), bins,
                 range.defined() ? range.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(psr, CPU, m) { m.impl("match_histograms", &match_histograms_cpu); }

}  // namespace psr::cpu
