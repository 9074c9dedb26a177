// CUDA histogram matching, per plane (sample x channel), with the CPU kernel's semantics
// (csrc/cpu/match_histograms.cpp has the derivation).
//
// Exact mode. The reference, all planes of a chunk (at most chunk_items() items) at once: keys
// sorted with CUB (float32: one sort, the plane index in the keys' high word; float64: a sort per
// plane), unique values and their quantiles compacted with one scan. The source: (key, index)
// pairs, CUB radix sort (per plane, or float32 planes a chunk at a time with the plane in the keys'
// high word), then one pass over the sorted keys maps each tie group's upper quantile through its
// plane's reference and writes the group's pixels.
// Binned mode, all planes at once, no sort, in one workspace allocation: the bin range (a given
// one; the fused op's low-resolution planes' min/max; else the source's, atomics on
// order-preserving keys); a histogram of the source with run-aggregated increments (privatised in
// shared memory up to kSmemBins bins), launched first so that the host's later launches overlap it;
// the reference binned over its own range (counts, each bin's smallest and largest value, the ties
// of its smallest: the knots of its binned CDF); one scan per chunk of both; the edge map; and a
// mapping pass (the edge map in shared memory up to kSmemEdges edges). Nothing here synchronises
// with the host; the source's values are recomputed by each pass (for bicubic, from the
// low-resolution planes).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#ifndef PSR_CUDA_EMU
#include <cub/cub.cuh>
#endif

#include <limits>

#include "kernels.cuh"

namespace psr::cuda_ops {
namespace {

constexpr int64_t kSmemBins = 8192;   // histograms up to this many bins live in shared memory
constexpr int64_t kSmemEdges = 4096;  // edge maps up to this many edges too (32 KiB)
constexpr size_t kRefBinSmem = 40 * 1024;  // reference bins (min, max, count) in shared memory up to this
// Exact mode sorts float32 planes of up to this many pixels a chunk of planes at a time (64-bit
// keys: more bytes per item, far fewer launches); larger planes one at a time with 32-bit keys.
// PSR_CUDA_PLANAR_MAX_PIXELS overrides it (tuning only; 1 disables batching in effect). 2^21 from
// benchmarks/tune_cuda.py on an H200: batching won at 2^20 pixels per plane (0.51 against 0.55 ms)
// and lost at 2^22 (1.36 against 1.29 ms at 3x512^2 x4, 1.61 against 1.48 ms at 3x1024^2 x2).
int64_t planar_max_pixels() {
  const int64_t forced = tuning_env("PSR_CUDA_PLANAR_MAX_PIXELS");
  return forced > 0 ? forced : int64_t(1) << 21;
}

template <typename T>
T* as(at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

template <typename T>
at::Tensor buffer(int64_t n, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T))}, like.options().dtype(at::kByte));
}

// Scratch memory for CUB calls, grown on demand (allocations are stream-ordered by torch).
struct CubTemp {
  at::Tensor t;
  const at::Tensor* like;
  void* get(size_t bytes) {
    if (!t.defined() || static_cast<size_t>(t.numel()) < bytes) t = buffer<uint8_t>(static_cast<int64_t>(bytes), *like);
    return t.data_ptr();
  }
  // CUB's two-call protocol: call(nullptr, bytes) sizes the scratch, call(scratch, bytes) runs.
  template <typename Call>
  void run(const Call& call) {
    size_t bytes = 0;
    C10_CUDA_CHECK(call(nullptr, bytes));
    C10_CUDA_CHECK(call(get(bytes), bytes));
  }
};

// Sort bits of 64-bit keys with a plane index (< np) above a 32-bit value key.
int plane_key_end_bit(int64_t np) {
  int end_bit = 32;
  while (end_bit < 64 && (int64_t(1) << (end_bit - 32)) < np) ++end_bit;
  return end_bit;
}

// Launches fn(p0, np) for the planes [0, P) in runs of at most gridDim.y's limit (blockIdx.y is
// the plane after p0).
template <typename Fn>
void for_grid_rows(int64_t P, const Fn& fn) {
  const int64_t gy = max_grid_y();
  for (int64_t p0 = 0; p0 < P; p0 += gy) fn(p0, std::min(gy, P - p0));
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(num_sms()) * 32));
}

#define PSR_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

constexpr int64_t kMaxItems = std::numeric_limits<int>::max();  // CUB's item counts are int here

// Whole planes per chunk of at most chunk_items() items, but at least one plane (of at most
// kMaxItems), so CUB calls stay within int counts and batched scratch memory stays bounded.
int64_t planes_per_chunk(int64_t per_plane, int64_t P) {
  return std::max<int64_t>(1, std::min<int64_t>(P, chunk_items() / std::max<int64_t>(per_plane, 1)));
}

// ---------------------------------------------------------------------------------------------
// reference CDF, all planes of a chunk at once

// Sort keys (KR) of the reference values. 64-bit keys for float32 carry the plane (within the
// chunk) in the high word, so one sort sorts every plane, each plane staying in its own m slots;
// a float32 chunk of one plane has 32-bit keys (KR = uint32_t), float64 always 64-bit ones.
template <typename scalar_t, typename KR>
__global__ void ref_keys_kernel(const scalar_t* ref, int64_t items, int64_t m, bool plane_bits, KR* keys) {
  PSR_GRID_STRIDE(i, items) {
    const KR k = KeyTraits<scalar_t>::key(ref[i]);
    if constexpr (sizeof(KR) == 8) {
      keys[i] = plane_bits ? (static_cast<uint64_t>(i / m) << 32) | k : k;
    } else {
      keys[i] = k;
    }
  }
}

// A sorted reference key's value, as a double.
template <typename scalar_t, typename KR>
__device__ __forceinline__ double ref_value(KR key) {
  return static_cast<double>(KeyTraits<scalar_t>::value(static_cast<typename KeyTraits<scalar_t>::key_t>(key)));
}

// Whether sorted element i ends a run of equal values or its plane of m.
template <typename KR>
__device__ __forceinline__ bool ends_run(const KR* s, int64_t i, int64_t m) {
  return (i + 1) % m == 0 || s[i] != s[i + 1];
}

template <typename KR>
__global__ void tail_flags_kernel(const KR* s, int64_t items, int64_t m, uint32_t* flags) {
  PSR_GRID_STRIDE(i, items) { flags[i] = ends_run(s, i, m) ? 1u : 0u; }
}

// Per plane p: uq[p][j], uv[p][j] the upper quantile and value of unique value j, mu[p] their count.
template <typename scalar_t, typename KR>
__global__ void ref_unique_kernel(const KR* s, const uint32_t* pos, int64_t items, int64_t m, double* uq,
                                  double* uv, int64_t* mu) {
  PSR_GRID_STRIDE(i, items) {
    const int64_t p = i / m, i0 = p * m;
    if (ends_run(s, i, m)) {
      const int64_t j = pos[i] - pos[i0];
      uq[i0 + j] = static_cast<double>(i - i0 + 1) / static_cast<double>(m);
      uv[i0 + j] = ref_value<scalar_t>(s[i]);
      if (i == i0 + m - 1) mu[p] = j + 1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// exact mode: the source is sorted with its pixel indices, one plane at a time (KS = K), or for
// float32 a chunk of planes at once with the plane (within the chunk) in the high word of 64-bit
// keys (KS = uint64_t), so tie groups never cross planes

template <typename scalar_t, typename Src, typename KS>
__global__ void __launch_bounds__(kThreads) key_kernel(Src src, int64_t plane0, int64_t chunk0, KS* keys,
                                                       uint32_t* idx) {
  PSR_SHARED_ARRAY(scalar_t, smem, Src::kSmem);
  const int64_t p = plane0 + blockIdx.y;
  const int64_t at = (p - chunk0) * src.numel();
  KS hi = 0;
  if constexpr (sizeof(KS) > sizeof(typename KeyTraits<scalar_t>::key_t)) hi = static_cast<KS>(p - chunk0) << 32;
  src.for_each_value(p, blockIdx.x, smem, [&](scalar_t v, int64_t i) {
    keys[at + i] = hi | static_cast<KS>(KeyTraits<scalar_t>::key(v));
    idx[at + i] = static_cast<uint32_t>(i);
  });
}

// After the sort, one pass: each thread takes kTieChunk consecutive sorted elements; a tie group
// maps its upper quantile (index past its last element within its plane, over n) through its
// plane's reference, found by looking ahead in the chunk or, for a group that runs past it, by a
// binary search of the sorted keys; the value goes straight to the group's pixels.
constexpr int kTieChunk = 8;

template <typename scalar_t, typename KS>
__global__ void tie_map_kernel(const KS* s, const uint32_t* idx, int64_t items, int64_t n, const double* uq,
                               const double* uv, const int64_t* mu, int64_t m, scalar_t* out) {
  PSR_GRID_STRIDE(t, (items + kTieChunk - 1) / kTieChunk) {
    const int64_t i1 = (t + 1) * kTieChunk < items ? (t + 1) * kTieChunk : items;
    int64_t plane = -1, jr = -1;  // the reference interval of the last group (quantiles only grow in a plane)
    for (int64_t i = t * kTieChunk; i < i1;) {
      const KS key = s[i];
      int64_t j = i + 1;
      while (j < i1 && s[j] == key) ++j;
      int64_t end = j;
      if (j == i1 && j < items && s[j] == key) {  // the group goes on: first index past it
        int64_t lo = j + 1, hi = items;
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (s[mid] == key) lo = mid + 1; else hi = mid;
        }
        end = lo;
      }
      const int64_t p = i / n;  // the group's plane (within the launch)
      if (p != plane) {
        plane = p;
        jr = -1;
      }
      const double q = static_cast<double>(end - p * n) / static_cast<double>(n);
      const scalar_t v = static_cast<scalar_t>(np_interp_forward(q, uq + p * m, uv + p * m, mu[p], jr));
      scalar_t* o = out + p * n;
      for (; i < j; ++i) o[idx[i]] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// binned mode: min/max, histogram, edge map, mapping; blocks loop over the tiles of one plane
// (blockIdx.y, after plane0)

template <typename T>
__device__ __forceinline__ T warp_min(T v) {
  for (int o = 16; o > 0; o /= 2) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w < v ? w : v;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o /= 2) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

__device__ __forceinline__ void atomic_min_key(uint32_t* a, uint32_t v) { atomicMin(a, v); }
__device__ __forceinline__ void atomic_max_key(uint32_t* a, uint32_t v) { atomicMax(a, v); }
__device__ __forceinline__ void atomic_min_key(uint64_t* a, uint64_t v) {
  atomicMin(reinterpret_cast<unsigned long long*>(a), static_cast<unsigned long long>(v));
}
__device__ __forceinline__ void atomic_max_key(uint64_t* a, uint64_t v) {
  atomicMax(reinterpret_cast<unsigned long long*>(a), static_cast<unsigned long long>(v));
}

// Per-plane min and max as keys: mn[p] starts at all ones, mx[p] at zero.
template <typename scalar_t, typename Src>
__global__ void __launch_bounds__(kThreads) minmax_kernel(Src src, int64_t plane0,
                                                          typename KeyTraits<scalar_t>::key_t* mn,
                                                          typename KeyTraits<scalar_t>::key_t* mx) {
  using K = typename KeyTraits<scalar_t>::key_t;
  PSR_SHARED_ARRAY(scalar_t, smem, Src::kSmem);
  const int64_t p = plane0 + blockIdx.y;
  K lo = ~K(0), hi = 0;
  for (int64_t tile = blockIdx.x; tile < src.tiles_per_plane(); tile += gridDim.x) {
    src.for_each_value(p, tile, smem, [&](scalar_t v, int64_t) {
      const K k = KeyTraits<scalar_t>::key(v);
      lo = k < lo ? k : lo;
      hi = k > hi ? k : hi;
    });
  }
  lo = warp_min(lo);
  hi = warp_max(hi);
  if ((threadIdx.x & 31) == 0) {
    atomic_min_key(mn + p, lo);
    atomic_max_key(mx + p, hi);
  }
}

// A given bin range (P, 2) as keys, as minmax_kernel leaves them (-0.0 becomes 0.0).
template <typename scalar_t>
__global__ void range_keys_kernel(const scalar_t* range, int64_t P, typename KeyTraits<scalar_t>::key_t* mn,
                                  typename KeyTraits<scalar_t>::key_t* mx) {
  PSR_GRID_STRIDE(p, P) {
    mn[p] = KeyTraits<scalar_t>::key(range[2 * p]);
    mx[p] = KeyTraits<scalar_t>::key(range[2 * p + 1]);
  }
}

template <typename scalar_t>
__device__ __forceinline__ bool plane_binner(const typename KeyTraits<scalar_t>::key_t* mn,
                                             const typename KeyTraits<scalar_t>::key_t* mx, int64_t p, int64_t bins,
                                             Binner& b) {
  const double lo = static_cast<double>(KeyTraits<scalar_t>::value(mn[p]));
  const double hi = static_cast<double>(KeyTraits<scalar_t>::value(mx[p]));
  b = make_binner(lo, hi, bins, std::is_same_v<scalar_t, float>);  // psr_common.h, as the CPU kernel
  return lo != hi;
}

// Calls g(n, v, b) for this block's values of plane p (its tiles from blockIdx.x, gridDim.x apart)
// in the source's groups (for_each_group<kGrouped>): n a std::integral_constant, v[0 .. n) the values and
// b[0 .. n) their bins (< 2^24), binned with the plane's arithmetic: float or double,
// block-uniform, so one loop for each.
template <typename scalar_t, bool kGrouped, typename Src, typename G>
__device__ __forceinline__ void for_each_binned_group(const Src& src, int64_t p, scalar_t* smem, const Binner& bn,
                                                      G&& g) {
  const auto loop = [&](auto f32) {
    for (int64_t tile = blockIdx.x; tile < src.tiles_per_plane(); tile += gridDim.x) {
      src.template for_each_group<kGrouped>(p, tile, smem, [&](auto n, const scalar_t* v, int64_t, int64_t) {
        constexpr int kN = decltype(n)::value;
        int b[kN];
#pragma unroll
        for (int j = 0; j < kN; ++j) b[j] = static_cast<int>(bn.bin_of<scalar_t, decltype(f32)::value>(v[j]));
        g(n, v, b);
      });
    }
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (bn.f32) {
      loop(std::true_type{});
      return;
    }
  }
  loop(std::false_type{});
}

// The same, one value at a time: f(v, bin).
template <typename scalar_t, typename Src, typename F>
__device__ __forceinline__ void for_each_binned(const Src& src, int64_t p, scalar_t* smem, const Binner& bn, F&& f) {
  for_each_binned_group<scalar_t, false>(src, p, smem, bn, [&](auto n, const scalar_t* v, const int* b) {
#pragma unroll
    for (int j = 0; j < decltype(n)::value; ++j) f(v[j], b[j]);
  });
}

// Counts per bin. Each thread adds up runs of equal bins in a register (neighbouring pixels mostly
// share a bin) and makes one atomic per run, into a block-private histogram in shared memory when
// it fits. A group of values (an input row's S outputs at x2, x3, x4, x8) that all fall in the current
// run costs one test and one add, with no branch per value.
template <typename scalar_t, typename Src>
__global__ void __launch_bounds__(kThreads) hist_kernel(Src src, int64_t plane0,
                                                        const typename KeyTraits<scalar_t>::key_t* mn,
                                                        const typename KeyTraits<scalar_t>::key_t* mx, int64_t bins,
                                                        unsigned long long* hist, bool shared_hist) {
  PSR_SHARED_ARRAY(scalar_t, smem, Src::kSmem);
  PSR_EXTERN_SHARED(unsigned int, sh);
  const int64_t p = plane0 + blockIdx.y;
  Binner bn;
  if (!plane_binner<scalar_t>(mn, mx, p, bins, bn)) return;  // constant plane (block-uniform): no histogram
  unsigned long long* gh = hist + p * bins;
  if (shared_hist) {
    for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) sh[k] = 0;
    __syncthreads();
  }
  int cur = -1;
  unsigned count_cur = 0;
  auto flush = [&] {
    if (count_cur == 0) return;
    if (shared_hist) {
      atomicAdd(sh + cur, count_cur);
    } else {
      atomicAdd(gh + cur, static_cast<unsigned long long>(count_cur));
    }
  };
  for_each_binned_group<scalar_t, true>(src, p, smem, bn, [&](auto n, const scalar_t*, const int* b) {
    constexpr int kN = decltype(n)::value;
    bool same = true;
#pragma unroll
    for (int j = 0; j < kN; ++j) same &= b[j] == cur;
    if (same) {
      count_cur += kN;
      return;
    }
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (b[j] != cur) {
        flush();
        cur = b[j];
        count_cur = 0;
      }
      ++count_cur;
    }
  });
  flush();
  if (shared_hist) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) {
      if (sh[k] != 0) atomicAdd(gh + k, static_cast<unsigned long long>(sh[k]));
    }
  }
}

// Binned mode's reference CDF (csrc/cpu/match_histograms.cpp: binned_reference_cdf): the reference
// binned like the source over its own [min, max] (rmn, rmx keys); per bin its count, smallest and
// largest value (keys), then the count of its smallest value's ties. Each nonempty bin gives the
// exact CDF's knots (upper quantile of its smallest value, smallest value) and (the bin's upper
// quantile, largest value). Runs of equal bins are aggregated in registers, as in hist_kernel.
// Dynamic shared memory of ref_bin_kernel: min and max keys, then counts, per bin.
template <typename scalar_t>
constexpr size_t ref_bin_smem_per_bin() {
  return 2 * sizeof(typename KeyTraits<scalar_t>::key_t) + sizeof(unsigned int);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) ref_bin_kernel(PlainSource<scalar_t> src, int64_t plane0,
                                                           const typename KeyTraits<scalar_t>::key_t* rmn,
                                                           const typename KeyTraits<scalar_t>::key_t* rmx,
                                                           int64_t bins, unsigned long long* count,
                                                           typename KeyTraits<scalar_t>::key_t* bmin,
                                                           typename KeyTraits<scalar_t>::key_t* bmax, bool shared) {
  using K = typename KeyTraits<scalar_t>::key_t;
  PSR_EXTERN_SHARED(unsigned long long, sm_raw);  // 8-byte aligned
  const int64_t p = plane0 + blockIdx.y;
  Binner rb;
  if (!plane_binner<scalar_t>(rmn, rmx, p, bins, rb)) return;  // one distinct value: a single knot (block-uniform)
  K* gmin = bmin + p * bins;
  K* gmax = bmax + p * bins;
  unsigned long long* gcount = count + p * bins;
  K* smin = reinterpret_cast<K*>(sm_raw);
  K* smax = smin + bins;
  unsigned int* scount = reinterpret_cast<unsigned int*>(smax + bins);
  if (shared) {
    for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) {
      smin[k] = ~K(0);
      smax[k] = 0;
      scount[k] = 0;
    }
    __syncthreads();
  }
  int cur = -1;
  unsigned run = 0;
  K run_min = ~K(0), run_max = 0;
  auto flush = [&] {
    if (run == 0) return;
    if (shared) {
      atomicAdd(scount + cur, run);
      atomic_min_key(smin + cur, run_min);
      atomic_max_key(smax + cur, run_max);
    } else {
      atomicAdd(gcount + cur, static_cast<unsigned long long>(run));
      atomic_min_key(gmin + cur, run_min);
      atomic_max_key(gmax + cur, run_max);
    }
  };
  for_each_binned<scalar_t>(src, p, nullptr, rb, [&](scalar_t v, int b) {
    const K key = KeyTraits<scalar_t>::key(v);
    if (b != cur) {
      flush();
      cur = b;
      run = 0;
      run_min = ~K(0);
      run_max = 0;
    }
    ++run;
    run_min = key < run_min ? key : run_min;
    run_max = key > run_max ? key : run_max;
  });
  flush();
  if (shared) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) {
      if (scount[k] != 0) {
        atomicAdd(gcount + k, static_cast<unsigned long long>(scount[k]));
        atomic_min_key(gmin + k, smin[k]);
        atomic_max_key(gmax + k, smax[k]);
      }
    }
  }
}

// The ties of each reference bin's smallest value (after ref_bin_kernel).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) ref_tie_kernel(PlainSource<scalar_t> src, int64_t plane0,
                                                           const typename KeyTraits<scalar_t>::key_t* rmn,
                                                           const typename KeyTraits<scalar_t>::key_t* rmx,
                                                           int64_t bins, const typename KeyTraits<scalar_t>::key_t* bmin,
                                                           unsigned int* cmin) {
  using K = typename KeyTraits<scalar_t>::key_t;
  const int64_t p = plane0 + blockIdx.y;
  Binner rb;
  if (!plane_binner<scalar_t>(rmn, rmx, p, bins, rb)) return;  // one distinct value: a single knot
  const K* gmin = bmin + p * bins;
  unsigned int* gc = cmin + p * bins;
  int cur = -1;
  unsigned run = 0;
  for_each_binned<scalar_t>(src, p, nullptr, rb, [&](scalar_t v, int b) {
    if (KeyTraits<scalar_t>::key(v) != gmin[b]) return;
    if (b != cur) {
      if (run != 0) atomicAdd(gc + cur, run);
      cur = b;
      run = 0;
    }
    ++run;
  });
  if (run != 0) atomicAdd(gc + cur, run);
}

// em[p][k]: binned mode's reference CDF at edge k's quantile (the fraction of the plane's source
// values in bins below k), np.interp over the knots of the nonempty reference bins, found by a
// binary search of the reference bins' cumulative counts (no knot list is built); top[p]: the
// reference's maximum (a constant source plane's value). cum holds inclusive sums of the P source
// histograms, then of the P reference-bin counts, restarted at every chunk of `ppc` of these 2P.
template <typename scalar_t>
struct RefBins {  // the reference's bins (ref_bin_kernel, ref_tie_kernel) and range, (P, bins) each
  using K = typename KeyTraits<scalar_t>::key_t;
  const unsigned int* cmin;  // ties of each bin's smallest value
  const K* bmin;             // each bin's smallest and largest value
  const K* bmax;
  const K* mn;  // (P) the reference's min and max
  const K* mx;
  int64_t m;  // values per plane
};

template <typename scalar_t>
__device__ double binned_edge(const unsigned long long* cum, int64_t P, int64_t bins, int64_t ppc, int64_t n,
                              const RefBins<scalar_t>& r, int64_t p, int64_t k) {
  using KT = KeyTraits<scalar_t>;
  const unsigned int* rcmin = r.cmin;
  const auto *rbmin = r.bmin, *rbmax = r.bmax, *rmn = r.mn, *rmx = r.mx;
  const int64_t m = r.m;
  const unsigned long long base = p % ppc == 0 ? 0ull : cum[p * bins - 1];
  const unsigned long long c = k == 0 ? 0ull : cum[p * bins + k - 1] - base;
  const double q = static_cast<double>(c) / static_cast<double>(n);
  const double lo = static_cast<double>(KT::value(rmn[p])), hi = static_cast<double>(KT::value(rmx[p]));
  if (!(lo < hi)) return hi;  // a single knot
  const int64_t rp = P + p;  // the reference bins' row of the scan
  const unsigned long long rbase = rp % ppc == 0 ? 0ull : cum[rp * bins - 1];
  const unsigned long long* rc = cum + rp * bins;
  const double md = static_cast<double>(m);
  const auto rq = [md](unsigned long long r) { return static_cast<double>(r) / md; };
  // b: the first bin whose upper quantile exceeds q (nonempty: its count rose past q).
  int64_t lo_b = 0, hi_b = bins;
  while (lo_b < hi_b) {
    const int64_t mid = lo_b + (hi_b - lo_b) / 2;
    if (rq(rc[mid] - rbase) > q) hi_b = mid; else lo_b = mid + 1;
  }
  const int64_t b = lo_b;
  if (b == bins) return hi;  // q >= 1, the last knot's quantile: the reference's maximum
  const unsigned long long prev = b > 0 ? rc[b - 1] - rbase : 0ull;
  const double xa = rq(prev + rcmin[p * bins + b]);
  const double ua = static_cast<double>(KT::value(rbmin[p * bins + b]));
  if (xa > q) {
    if (prev == 0) return ua;  // before the first knot
    // The previous knot: the largest value of the last nonempty bin before b, the first bin
    // whose cumulative count reached prev.
    int64_t l = 0, h = b - 1;
    while (l < h) {
      const int64_t mid = l + (h - l) / 2;
      if (rc[mid] - rbase >= prev) h = mid; else l = mid + 1;
    }
    const double xp[2] = {rq(prev), xa};
    const double fp[2] = {static_cast<double>(KT::value(rbmax[p * bins + l])), ua};
    return interp_at(q, xp, fp, 2, 0);
  }
  const double xp[2] = {xa, rq(rc[b] - rbase)};
  const double fp[2] = {ua, static_cast<double>(KT::value(rbmax[p * bins + b]))};
  return interp_at(q, xp, fp, 2, 0);
}

// em32: the same edges rounded to float (the map's fast path for float32 planes).
template <typename scalar_t>
__global__ void edge_kernel(const unsigned long long* cum, int64_t P, int64_t bins, int64_t ppc, int64_t n,
                            RefBins<scalar_t> r, double* em, float* em32, double* top) {
  PSR_GRID_STRIDE(i, P * (bins + 1)) {
    const int64_t p = i / (bins + 1), k = i % (bins + 1);
    const double v = binned_edge<scalar_t>(cum, P, bins, ppc, n, r, p, k);
    em[i] = v;
    em32[i] = static_cast<float>(v);
    if (k == 0) top[p] = static_cast<double>(KeyTraits<scalar_t>::value(r.mx[p]));
  }
}

// The mapping: the plane's edge map goes to shared memory once per block (the two edges a value
// needs sit at data-dependent bins: from global memory that was about a cache line per lane), for
// float32 planes' fast path as (edge, difference to the next) pairs. kMinBlocks: resident blocks
// per SM asked of the compiler (0: no minimum). float32: 4 (at most 64 registers) by default;
// with no minimum, ptxas gives the float32 bicubic map kernel with a residual 80 registers (3
// blocks per SM) for the same 24-30 instructions per output in the row loop (and the one without a
// residual 64 with 16 bytes of stack); capped, the row loop is unchanged and the few spills (with a
// residual) sit outside it. (An explicit minimum of 1 gave 92 registers.) PSR_CUDA_MAP_MIN_BLOCKS=1
// (tuning only) runs the float32 kernels with no minimum, so that a GPU can tell which is faster.
// float64: no minimum (40-64 registers, no spills).
template <typename scalar_t, typename Src, int kMinBlocks = std::is_same_v<scalar_t, float> ? 4 : 0>
__global__ void __launch_bounds__(kThreads, kMinBlocks) map_kernel(Src src, int64_t plane0,
                                                       const typename KeyTraits<scalar_t>::key_t* mn,
                                                       const typename KeyTraits<scalar_t>::key_t* mx, int64_t bins,
                                                       const double* em, const float* em32, const double* top_p,
                                                       scalar_t* out, bool shared_edges) {
  PSR_SHARED_ARRAY(scalar_t, smem, Src::kSmem);
  PSR_EXTERN_SHARED(double, she);  // bins + 1 doubles, or bins EdgePair32
  const int64_t p = plane0 + blockIdx.y;
  Binner bn;
  const bool varies = plane_binner<scalar_t>(mn, mx, p, bins, bn);  // block-uniform
  scalar_t* plane_out = out + p * src.numel();
  if (!varies) {  // a constant plane is one tie group at quantile 1: the reference's maximum
    const scalar_t top = static_cast<scalar_t>(top_p[p]);
    const int64_t step = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < src.numel(); i += step) plane_out[i] = top;
    return;
  }
  const double* e = em + p * (bins + 1);
  const float* e32 = em32 + p * (bins + 1);  // float(e[k]), from edge_kernel
  const auto each = [&](const auto& f) {
    for (int64_t tile = blockIdx.x; tile < src.tiles_per_plane(); tile += gridDim.x) {
      src.for_each_value(p, tile, smem, f);
    }
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    // f32 planes with float edges (lerp32): the fast path, float arithmetic throughout.
    if (bn.f32 && lerp32_ok(e[0], e[bins])) {
      if (shared_edges) {
        auto* pairs = reinterpret_cast<EdgePair32*>(she);
        for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) {
          const float a = e32[k];
          pairs[k] = EdgePair32{a, e32[k + 1] - a};
        }
        __syncthreads();
        each([&](scalar_t v, int64_t i) {
          float t;
          const EdgePair32 ed = pairs[bn.bin_t32(v, t)];
          plane_out[i] = ed.a + t * ed.d;  // map32<true>'s lerp
        });
      } else {
        const auto edge32 = [e32](int k) { return __ldg(e32 + k); };
        each([&](scalar_t v, int64_t i) { plane_out[i] = bn.map32<true>(v, edge32, e); });
      }
      return;
    }
  }
  // float32 planes' fallbacks (double edges; double binning) and float64 planes.
  if (shared_edges) {
    for (int64_t k = threadIdx.x; k <= bins; k += blockDim.x) she[k] = e[k];
    __syncthreads();
    e = she;
  }
  each([&](scalar_t v, int64_t i) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (bn.f32) {
        plane_out[i] = bn.map32<false>(v, [](int) { return 0.0f; }, e);  // double edges only
        return;
      }
    }
    plane_out[i] = static_cast<scalar_t>(bn.map<scalar_t>(static_cast<double>(v), e));
  });
}

// A grid of (blocks per plane, planes) for a binned pass: as many blocks in all as fit on the
// device at once (the kernel's occupancy), each looping over tiles of its plane.
template <typename Kernel>
dim3 plane_grid(Kernel kernel, size_t smem, int64_t tiles_per_plane, int64_t np) {
  const int64_t resident = int64_t(num_sms()) * blocks_per_sm(kernel, smem);
  return dim3(static_cast<unsigned>(std::min<int64_t>(tiles_per_plane, std::max<int64_t>(1, resident / np))),
              static_cast<unsigned>(np));
}

// ---------------------------------------------------------------------------------------------
// driver

// Binned mode's bin range: given (P, 2) values, else each plane's min/max of the low-resolution
// planes lr (P, lr_n) when given (the fused op), else of the source itself.
template <typename scalar_t>
struct BinRange {
  const scalar_t* given = nullptr;
  const scalar_t* lr = nullptr;
  int64_t lr_n = 0;
};

template <typename scalar_t, typename Src>
void match_planes(const Src& src_in, int64_t P, const at::Tensor& ref, std::optional<int64_t> bins,
                  const BinRange<scalar_t>& range, at::Tensor& out) {
  using K = typename KeyTraits<scalar_t>::key_t;
  const cudaStream_t stream = current_stream();
  const int64_t n = src_in.numel();
  const int64_t m = ref.size(2) * ref.size(3);
  TORCH_CHECK(n < kMaxItems && m < kMaxItems, "psr::match_histograms: at most 2^31 - 1 pixels per channel on CUDA, got ",
              n, " and ", m);
  CubTemp temp{at::Tensor(), &out};
  const int sms = num_sms();

  // Exact mode's reference keys, sorted a chunk of planes at a time (float32: the plane index in
  // 64-bit keys' high word, or 32-bit keys when a chunk is one plane; float64: one sort per plane).
  const scalar_t* r = ref.const_data_ptr<scalar_t>();
  const int64_t rppc = planes_per_chunk(m, P);
  const auto sort_ref = [&](auto kr, int64_t p0, int64_t np, auto* k_in, auto* sorted) {
    using KR = decltype(kr);
    const int64_t it = np * m;
    const bool plane_bits = sizeof(scalar_t) == 4 && sizeof(KR) == 8;
    launch(ref_keys_kernel<scalar_t, KR>, blocks_for(it), kThreads, 0, stream, r + p0 * m, it, m, plane_bits, k_in);
    const int64_t sorts = sizeof(scalar_t) == 4 ? 1 : np, len = sorts == 1 ? it : m;
    const int end_bit = plane_bits ? plane_key_end_bit(np) : static_cast<int>(sizeof(KR) * 8);
    for (int64_t k = 0; k < sorts; ++k) {
      temp.run([&](void* t, size_t& bytes) {
        return cub::DeviceRadixSort::SortKeys(t, bytes, k_in + k * len, sorted + k * len, static_cast<int>(len), 0,
                                              end_bit, stream);
      });
    }
  };
  // Runs fn(KR{}) with the reference key type.
  const auto with_ref_keys = [&](const auto& fn) {
    if constexpr (sizeof(scalar_t) == 4) {
      if (rppc == 1) return fn(uint32_t{});
    }
    fn(uint64_t{});
  };

  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  if (!bins.has_value()) {
    // Exact mode: the reference CDF of every plane, uq, uv (P, m) doubles and mu (P) counts, from
    // the sorted keys with one scan per chunk.
    at::Tensor uq = buffer<double>(P * m, out), uv = buffer<double>(P * m, out), mu = buffer<int64_t>(P, out);
    with_ref_keys([&](auto kr) {
      using KR = decltype(kr);
      const int64_t items = rppc * m;
      at::Tensor k_in = buffer<KR>(items, out), k_out = buffer<KR>(items, out), flags = buffer<uint32_t>(items, out),
                 pos = buffer<uint32_t>(items, out);
      for (int64_t p0 = 0; p0 < P; p0 += rppc) {
        const int64_t np = std::min(rppc, P - p0), it = np * m;
        sort_ref(kr, p0, np, as<KR>(k_in), as<KR>(k_out));
        launch(tail_flags_kernel<KR>, blocks_for(it), kThreads, 0, stream, as<KR>(k_out), it, m, as<uint32_t>(flags));
        temp.run([&](void* t, size_t& bytes) {
          return cub::DeviceScan::ExclusiveSum(t, bytes, as<uint32_t>(flags), as<uint32_t>(pos), static_cast<int>(it),
                                               stream);
        });
        launch(ref_unique_kernel<scalar_t, KR>, blocks_for(it), kThreads, 0, stream, as<KR>(k_out), as<uint32_t>(pos),
               it, m, as<double>(uq) + p0 * m, as<double>(uv) + p0 * m, as<int64_t>(mu) + p0);
      }
    });
    if (sizeof(scalar_t) == 4 && P > 1 && n <= planar_max_pixels()) {  // float32 planes, a chunk per sort
      const Src src = src_in.for_planes(P, sms);
      const int64_t tpp = src.tiles_per_plane();
      const int64_t ppc = planes_per_chunk(n, P);
      at::Tensor k_in = buffer<uint64_t>(ppc * n, out), k_out = buffer<uint64_t>(ppc * n, out),
                 i_in = buffer<uint32_t>(ppc * n, out), i_out = buffer<uint32_t>(ppc * n, out);
      for (int64_t c0 = 0; c0 < P; c0 += ppc) {
        const int64_t np = std::min(ppc, P - c0), it = np * n;
        for_grid_rows(np, [&](int64_t g0, int64_t ng) {
          launch(key_kernel<scalar_t, Src, uint64_t>, dim3(static_cast<unsigned>(tpp), static_cast<unsigned>(ng)),
                 kThreads, 0, stream, src, c0 + g0, c0, as<uint64_t>(k_in), as<uint32_t>(i_in));
        });
        const int end_bit = plane_key_end_bit(np);
        temp.run([&](void* t, size_t& bytes) {
          return cub::DeviceRadixSort::SortPairs(t, bytes, as<uint64_t>(k_in), as<uint64_t>(k_out), as<uint32_t>(i_in),
                                                 as<uint32_t>(i_out), static_cast<int>(it), 0, end_bit, stream);
        });
        launch(tie_map_kernel<scalar_t, uint64_t>, blocks_for((it + kTieChunk - 1) / kTieChunk), kThreads, 0, stream,
               as<uint64_t>(k_out), as<uint32_t>(i_out), it, n, as<double>(uq) + c0 * m, as<double>(uv) + c0 * m,
               as<int64_t>(mu) + c0, m, o + c0 * n);
      }
      return;
    }
    const Src src = src_in.for_planes(1, sms);
    const int64_t tpp = src.tiles_per_plane();
    at::Tensor k_in = buffer<K>(n, out), k_out = buffer<K>(n, out), i_in = buffer<uint32_t>(n, out),
               i_out = buffer<uint32_t>(n, out);
    for (int64_t p = 0; p < P; ++p) {
      launch(key_kernel<scalar_t, Src, K>, static_cast<unsigned>(tpp), kThreads, 0, stream, src, p, p, as<K>(k_in),
             as<uint32_t>(i_in));
      temp.run([&](void* t, size_t& bytes) {
        return cub::DeviceRadixSort::SortPairs(t, bytes, as<K>(k_in), as<K>(k_out), as<uint32_t>(i_in),
                                               as<uint32_t>(i_out), static_cast<int>(n), 0, KeyTraits<scalar_t>::bits,
                                               stream);
      });
      launch(tie_map_kernel<scalar_t, K>, blocks_for((n + kTieChunk - 1) / kTieChunk), kThreads, 0, stream,
             as<K>(k_out), as<uint32_t>(i_out), n, n, as<double>(uq) + p * m, as<double>(uv) + p * m,
             as<int64_t>(mu) + p, m, o + p * n);
    }
    return;
  }

  const Src src = src_in.for_planes(P, sms);
  const int64_t tpp = src.tiles_per_plane();
  const int64_t nbins = *bins;
  // Binned mode. One workspace allocation (each allocation and launch before the histogram pass is
  // host time the GPU may wait for): all ones for the min keys (the source's bin range mn, the
  // reference's range rmn, each reference bin's smallest value rbmin), zero for the counts and max
  // keys (histogram and reference-bin counts, max keys, ties of the smallest values), each block set
  // by one memset; then the scans, the edge maps and their float copies, written before read.
  const int64_t PB = P * nbins;
  const auto aligned = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  const int64_t ones_bytes = aligned((2 * P + PB) * static_cast<int64_t>(sizeof(K)));
  const int64_t zeros_bytes = aligned(2 * PB * static_cast<int64_t>(sizeof(unsigned long long)) +
                                      (2 * P + PB) * static_cast<int64_t>(sizeof(K)) +
                                      PB * static_cast<int64_t>(sizeof(unsigned int)));
  const int64_t cum_bytes = aligned(2 * PB * static_cast<int64_t>(sizeof(unsigned long long)));
  const int64_t em_bytes = aligned((P * (nbins + 1) + P) * static_cast<int64_t>(sizeof(double)));
  at::Tensor work = buffer<uint8_t>(ones_bytes + zeros_bytes + cum_bytes + em_bytes +
                                        P * (nbins + 1) * static_cast<int64_t>(sizeof(float)),
                                    out);
  uint8_t* w0 = as<uint8_t>(work);
  K* mn = reinterpret_cast<K*>(w0);
  K* rmn = mn + P;
  K* rbmin = rmn + P;
  auto* hist = reinterpret_cast<unsigned long long*>(w0 + ones_bytes);
  unsigned long long* rcount = hist + PB;
  K* mx = reinterpret_cast<K*>(rcount + PB);
  K* rmx = mx + P;
  K* rbmax = rmx + P;
  auto* rcmin = reinterpret_cast<unsigned int*>(rbmax + PB);
  auto* cum = reinterpret_cast<unsigned long long*>(w0 + ones_bytes + zeros_bytes);  // inclusive sums of hist, rcount
  auto* em = reinterpret_cast<double*>(w0 + ones_bytes + zeros_bytes + cum_bytes);  // the edge maps
  double* top = em + P * (nbins + 1);                                                // then each plane's top
  auto* em32 = reinterpret_cast<float*>(w0 + ones_bytes + zeros_bytes + cum_bytes + em_bytes);
  C10_CUDA_CHECK(cudaMemsetAsync(mn, 0xff, static_cast<size_t>(ones_bytes), stream));
  C10_CUDA_CHECK(cudaMemsetAsync(hist, 0, static_cast<size_t>(zeros_bytes), stream));
  const bool shared_hist = nbins <= kSmemBins;
  const size_t hist_smem = shared_hist ? static_cast<size_t>(nbins) * sizeof(unsigned int) : 0;
  using Plain = PlainSource<scalar_t>;
  const Plain rsrc = Plain::make(r, m);
  const bool ref_is_lr = range.given == nullptr && range.lr == r && range.lr_n == m;
  const K* ref_mn = ref_is_lr ? mn : rmn;
  const K* ref_mx = ref_is_lr ? mx : rmx;
  // The source's bin range, then its histogram first: the longest pass, launched as early as the
  // host can, so that the host's launches of the reference passes and the rest overlap it.
  if (range.given != nullptr) {
    launch(range_keys_kernel<scalar_t>, blocks_for(P), kThreads, 0, stream, range.given, P, mn, mx);
  }
  for_grid_rows(P, [&](int64_t p0, int64_t np) {
    if (range.lr != nullptr && range.given == nullptr) {  // the low-resolution planes: a plain pass
      const Plain lr = Plain::make(range.lr, range.lr_n);
      launch(minmax_kernel<scalar_t, Plain>, plane_grid(minmax_kernel<scalar_t, Plain>, 0, lr.tiles_per_plane(), np),
             kThreads, 0, stream, lr, p0, mn, mx);
    }
    if constexpr (std::is_same_v<Src, Plain>) {
      if (range.lr == nullptr && range.given == nullptr) {  // the source's own range
        launch(minmax_kernel<scalar_t, Src>, plane_grid(minmax_kernel<scalar_t, Src>, 0, tpp, np), kThreads, 0,
               stream, src, p0, mn, mx);
      }
    } else {  // a bicubic source bins over its input's range (no min/max kernel over it is built)
      TORCH_CHECK(range.lr != nullptr, "psr: internal error: a bicubic source needs its input's range");
    }
    launch(hist_kernel<scalar_t, Src>, plane_grid(hist_kernel<scalar_t, Src>, hist_smem, tpp, np), kThreads, hist_smem,
           stream, src, p0, mn, mx, nbins, hist, shared_hist);
  });
  // The reference: its range (that of the low-resolution planes when it is them), then its bins,
  // then the ties of each bin's smallest value.
  const bool shared_ref = nbins * ref_bin_smem_per_bin<scalar_t>() <= kRefBinSmem;
  const size_t ref_smem = shared_ref ? static_cast<size_t>(nbins) * ref_bin_smem_per_bin<scalar_t>() : 0;
  for_grid_rows(P, [&](int64_t p0, int64_t np) {
    if (!ref_is_lr) {
      launch(minmax_kernel<scalar_t, Plain>, plane_grid(minmax_kernel<scalar_t, Plain>, 0, rsrc.tiles_per_plane(), np),
             kThreads, 0, stream, rsrc, p0, rmn, rmx);
    }
    launch(ref_bin_kernel<scalar_t>, plane_grid(ref_bin_kernel<scalar_t>, ref_smem, rsrc.tiles_per_plane(), np),
           kThreads, ref_smem, stream, rsrc, p0, ref_mn, ref_mx, nbins, rcount, rbmin, rbmax, shared_ref);
    launch(ref_tie_kernel<scalar_t>, plane_grid(ref_tie_kernel<scalar_t>, 0, rsrc.tiles_per_plane(), np), kThreads, 0,
           stream, rsrc, p0, ref_mn, ref_mx, nbins, static_cast<const K*>(rbmin), rcmin);
  });
  // One scan for both: the reference counts follow the histograms (2P "planes" of nbins counts),
  // restarted at every chunk of ppc of them.
  const int64_t ppc = planes_per_chunk(nbins, 2 * P);
  for (int64_t p0 = 0; p0 < 2 * P; p0 += ppc) {
    const int64_t it = std::min(ppc, 2 * P - p0) * nbins;
    temp.run([&](void* t, size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(t, bytes, hist + p0 * nbins, cum + p0 * nbins, static_cast<int>(it),
                                           stream);
    });
  }
  const RefBins<scalar_t> rbins{rcmin, rbmin, rbmax, ref_mn, ref_mx, m};
  launch(edge_kernel<scalar_t>, blocks_for(P * (nbins + 1)), kThreads, 0, stream,
         static_cast<const unsigned long long*>(cum), P, nbins, ppc, n, rbins, em, em32, top);
  const bool shared_edges = nbins + 1 <= kSmemEdges;
  const size_t edge_smem = shared_edges ? static_cast<size_t>(nbins + 1) * sizeof(double) : 0;
  const auto map_pass = [&](auto kernel) {
    for_grid_rows(P, [&](int64_t p0, int64_t np) {
      launch(kernel, plane_grid(kernel, edge_smem, tpp, np), kThreads, edge_smem, stream, src, p0, mn, mx, nbins,
             static_cast<const double*>(em), static_cast<const float*>(em32), static_cast<const double*>(top), o,
             shared_edges);
    });
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (tuning_env("PSR_CUDA_MAP_MIN_BLOCKS") == 1) {
      map_pass(map_kernel<scalar_t, Src, 0>);
      return;
    }
  }
  map_pass(map_kernel<scalar_t, Src>);
}

}  // namespace

at::Tensor match_cuda(const at::Tensor& source, const BicubicArgs* bicubic, const at::Tensor& reference,
                      std::optional<int64_t> bins, const at::Tensor& bin_range) {
  const at::Tensor& like = bicubic != nullptr ? bicubic->x : source;
  const DeviceGuard guard(like.device());
  const int64_t N = like.size(0), C = like.size(1);
  const int64_t S = bicubic != nullptr ? bicubic->scale : 1;
  at::Tensor out = at::empty({N, C, like.size(2) * S, like.size(3) * S}, like.options());
  if (out.numel() == 0) return out;
  const at::Tensor ref = reference.contiguous();
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "psr_match_cuda", [&] {
    if (bicubic != nullptr) {
      const Taps<scalar_t> taps = make_taps<scalar_t>(static_cast<int>(S), bicubic->a);
      const scalar_t* x = bicubic->x.const_data_ptr<scalar_t>();
      const BinRange<scalar_t> range{nullptr, x, like.size(2) * like.size(3)};  // the fused op bins over x's range
      if (bicubic->residual.defined()) {
        const auto src = BicubicSource<scalar_t, true>::make(x, bicubic->residual.const_data_ptr<scalar_t>(),
                                                             like.size(2), like.size(3), taps);
        match_planes<scalar_t>(src, N * C, ref, bins, range, out);
      } else {
        const auto src = BicubicSource<scalar_t, false>::make(x, nullptr, like.size(2), like.size(3), taps);
        match_planes<scalar_t>(src, N * C, ref, bins, range, out);
      }
    } else {
      const auto src = PlainSource<scalar_t>::make(source.const_data_ptr<scalar_t>(), source.size(2) * source.size(3));
      const BinRange<scalar_t> range{bin_range.defined() ? bin_range.const_data_ptr<scalar_t>() : nullptr};
      match_planes<scalar_t>(src, N * C, ref, bins, range, out);
    }
  });
  return out;
}

static at::Tensor match_histograms_cuda(const at::Tensor& source, const at::Tensor& reference,
                                        std::optional<int64_t> bins, const std::optional<at::Tensor>& bin_range) {
  const at::Tensor range = check_match_args(source, reference, bins, bin_range);
  return match_cuda(source.contiguous(), nullptr, reference, bins, range);
}

#ifndef PSR_CUDA_EMU
TORCH_LIBRARY_IMPL(psr, CUDA, m) { m.impl("match_histograms", &match_histograms_cuda); }
#endif

}  // namespace psr::cuda_ops
