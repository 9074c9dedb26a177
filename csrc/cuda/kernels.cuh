// CUDA building blocks shared by the three ops. Every kernel that needs source values gets them
// from a "source": the plain source tensor, or bicubic(x) (+ residual) recomputed from the
// low-resolution planes. A source hands each thread values of one plane, tile by tile, so the
// same arithmetic (explicit fma, hence bitwise identical in every kernel) feeds the upsampling,
// min/max, histogram, sort-key and mapping passes.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#ifndef PSR_CUDA_EMU  // tests/cuda_emu/cuda_emu.h stands in for the CUDA runtime and CUB
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <atomic>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../psr_common.h"

#ifndef PSR_CUDA_EMU
#define PSR_EXTERN_SHARED(T, name) extern __shared__ T name[]  // dynamic shared memory
#define PSR_SHARED_ARRAY(T, name, n) __shared__ T name[n]      // static shared memory
#endif

namespace psr::cuda_ops {

constexpr int kThreads = 256;  // threads per block in every kernel
constexpr int kPlainRun = 4;   // values per thread and tile for a plain tensor source

PSR_HD float fma_(float a, float b, float c) { return fmaf(a, b, c); }
PSR_HD double fma_(double a, double b, double c) { return fma(a, b, c); }

// Bicubic weights for kernel arguments: five taps per phase (input columns q - 2 .. q + 2 for
// output q * S + r), one of them zero, as in the CPU kernel. The vertical offset of phase r,
// floor((r + 0.5) / S - 0.5), is -1 for r < S / 2 and 0 from there on (make_taps checks it), so
// kernels split their output-row loop at S / 2 rather than choosing the input rows per row.
template <typename scalar_t>
struct Taps {
  int S;
  bool symmetric;
  scalar_t w[kMaxScale][kTaps];  // vertical: 4 taps from row q + offset - 1
  scalar_t w5[kMaxScale][5];     // horizontal
};

template <typename scalar_t>
inline Taps<scalar_t> make_taps(int S, double a) {
  const PhaseTable t = make_phase_table(S, a);
  Taps<scalar_t> k{};
  k.S = S;
  k.symmetric = a == -0.5;
  for (int r = 0; r < S; ++r) {
    TORCH_CHECK(t.offset[r] == (r < S / 2 ? -1 : 0), "psr: bicubic phase offsets must be -1 below S / 2, then 0");
    for (int j = 0; j < 5; ++j) k.w5[r][j] = scalar_t(0);
    for (int j = 0; j < kTaps; ++j) {
      k.w[r][j] = static_cast<scalar_t>(t.w[r][j]);
      k.w5[r][j + 1 + t.offset[r]] = static_cast<scalar_t>(t.w[r][j]);
    }
  }
  return k;
}

// Values of bicubic(x) (+ residual) for (P, H, W) planes upscaled by S, a tile at a time: a tile
// is `band` input rows by kThreads / S input columns, i.e. about kThreads output columns, and
// thread t owns output column phase t % S of input column t / S of the tile. The block first
// stages the tile's input patch (its rows and columns plus two on each side) in shared memory,
// all loads in flight at once, behind one barrier; then each thread runs down its column with no
// further barrier: per input row one horizontal value from the patch (5 FMAs), the last five kept
// in registers, so an output is 3 FMAs and a multiply on registers. (Staging a row at a time, as
// before, cost a barrier and an exposed load latency per input row; on an H200 this change made
// the min/max and histogram passes 20-25% faster at x4, benchmarks/RESULTS.md.)
// A thread's values run down its column (vertically adjacent pixels); a warp's are 32 consecutive
// pixels of a row (coalesced). Needs Src::kSmem scalars of shared memory.
constexpr int kSourceSmemBytes = 12 * 1024;  // a bicubic source's staged patch (the band adapts to it)
constexpr int kMaxBand = 16;                 // input rows per tile by default, at most

// kResidual: whether a residual (P, H * S, W * S) is added (a compile-time flag, so that kernels
// without one issue no test or load for it per value).
template <typename scalar_t, bool kResidual = false>
struct BicubicSource {
  static constexpr int kSmem = kSourceSmemBytes / static_cast<int>(sizeof(scalar_t));
  const scalar_t* x;
  const scalar_t* residual;  // (P, H * S, W * S) when kResidual, else unused (nullptr)
  int64_t H, W;
  Taps<scalar_t> taps;
  int band;  // input rows per tile (>= 1)
  // Tile geometry, set on the host by set_band (no divisions per tile on the device).
  int cpt;            // input columns per tile: kThreads / S
  uint32_t ctiles;    // tiles across a plane
  int64_t tpp;        // tiles per plane (< 2^31)
  bool specialised;   // the row loop compiled for S (scales 2, 3, 4, 8), unless PSR_CUDA_GENERIC_SCALE

  static BicubicSource make(const scalar_t* x, const scalar_t* residual, int64_t H, int64_t W,
                            const Taps<scalar_t>& taps) {
    // for_each_value stages rows with 32-bit offsets, halo rows included
    TORCH_CHECK((H + 2) * W < (int64_t(1) << 31), "psr: on CUDA, (H + 2) * W must be below 2^31 for x's planes, got ",
                H, " x ", W);
    BicubicSource s{x, residual, H, W, taps, 1, 0, 0, 0, true};
    s.set_band(1);
    return s;
  }
  // The most input rows per tile whose patch, (rows + 4) x (cpt + 4), fits kSmem (>= 1 for every
  // S and dtype: 5 x 260 doubles at S = 1).
  int max_band() const {
    const int m = kSmem / (kThreads / taps.S + 4) - 4;
    return m > 1 ? m : 1;
  }
  void set_band(int b) {
    const int m = max_band();
    band = b < 1 ? 1 : (b > m ? m : b);
    cpt = kThreads / taps.S;
    const int64_t ct = (W + cpt - 1) / cpt;
    tpp = ((H + band - 1) / band) * ct;
    ctiles = static_cast<uint32_t>(ct);  // <= tpp < 2^31 (for_planes checks)
  }

  __host__ __device__ int64_t rows() const { return H * taps.S; }
  __host__ __device__ int64_t cols() const { return W * taps.S; }
  __host__ __device__ int64_t numel() const { return rows() * cols(); }
  __host__ __device__ int cols_per_tile() const { return cpt; }
  __host__ __device__ int64_t col_tiles() const { return ctiles; }
  __host__ __device__ int64_t tiles_per_plane() const { return tpp; }
  // This source with tiles sized for kernels that cover P planes at once.
  BicubicSource for_planes(int64_t P, int sms) const;

  // Calls f(value, i) for this thread's value at flat index i of plane p in every output row of
  // tile `tile`. All threads of the block must call it (it synchronises); f must not synchronise.
  template <typename F>
  __device__ void for_each_value(int64_t p, int64_t tile, scalar_t* smem, F&& f) const {
    for_each_group<false>(p, tile, smem, [&](auto, const scalar_t* v, int64_t i, int64_t) { f(v[0], i); });
  }
  // The same values in groups: g(n, v, i, stride) with n a std::integral_constant, v[0 .. n) the
  // values at flat indices i + j * stride (registers). kGrouped, with S known at compile time
  // (scales 2, 3, 4, 8): a group is the S outputs of one input row, so that callers (hist_kernel) can
  // test a group at once and branch once per group, not per value. Else one value per call, each
  // passed on as soon as it is computed (fewer live registers: what the map kernel wants).
  template <bool kGrouped, typename G>
  __device__ void for_each_group(int64_t p, int64_t tile, scalar_t* smem, G&& g) const {
    const int S = taps.S;
    const uint32_t t32 = static_cast<uint32_t>(tile);  // tile < tpp < 2^31
    const uint32_t tile_row = t32 / ctiles;
    const int64_t q_first = static_cast<int64_t>(tile_row) * band;
    const int64_t c0 = static_cast<int64_t>(t32 - tile_row * ctiles) * cpt;
    const int nq = static_cast<int>(q_first + band < H ? band : H - q_first);  // input rows of this tile
    const int width = cpt + 4;  // patch columns c0 - 2 .. c0 + cpt + 1
    const int tc = static_cast<int>(threadIdx.x) / S, rx = static_cast<int>(threadIdx.x) % S;
    const int64_t col = c0 + tc;
    const bool active = tc < cpt && col < W;
    const scalar_t* plane = x + p * H * W;
    __syncthreads();  // the previous tile's patch may still be read
    // Patch row r is input row q_first - 2 + r (padded). Columns past W + 1 are never read: an
    // active thread reads columns col - 2 .. col + 2 <= W + 1.
    const int nr = nq + 4;
    if (width <= static_cast<int>(blockDim.x)) {
      // Each thread keeps one patch column (its padded input column found once per tile) and
      // steps down the rows, rpp rows apart: per staged value a row index, a load and a store.
      // (A flat loop over the patch paid an integer division and two 64-bit border maps per value:
      // at x2, where a tile's patch is 10 values per thread for 32 outputs, about as many
      // instructions per output as the histogram's row loop itself.)
      const int rpp = static_cast<int>(blockDim.x) / width;  // rows per pass
      const int r0 = static_cast<int>(threadIdx.x) / width, c = static_cast<int>(threadIdx.x) - r0 * width;
      const int64_t j = c0 + c - 2;
      if (r0 < rpp && j - 2 < W) {
        const scalar_t* src = plane + pad_index(j, W, taps.symmetric);
        // 32-bit row offsets (make checks (H + 2) * W < 2^31): input row qi, its offset off.
        // (unsigned: the step past the last row may wrap, harmlessly; every offset used is below 2^31)
        const unsigned h = static_cast<unsigned>(H), w = static_cast<unsigned>(W), step = rpp * w;
        const int estep = rpp * width;
        int qi = static_cast<int>(q_first) - 2 + r0;
        unsigned off = static_cast<unsigned>(qi) * w;
        if (q_first >= 2 && q_first + nq + 2 <= H) {  // no halo row outside the image (most tiles)
          for (int r = r0, e = r0 * width + c; r < nr; r += rpp, e += estep, off += step) {
            smem[e] = __ldg(src + static_cast<int>(off));
          }
        } else {
          for (int r = r0, e = r0 * width + c; r < nr; r += rpp, e += estep, qi += rpp, off += step) {
            // Only the two halo rows at each end of the image can need the border map.
            const unsigned o =
                static_cast<unsigned>(qi) < h ? off : static_cast<unsigned>(pad_index(qi, H, taps.symmetric)) * w;
            smem[e] = __ldg(src + static_cast<int>(o));
          }
        }
      }
    } else {  // scale 1: 260 patch columns for 256 threads
      for (int e = threadIdx.x; e < nr * width; e += blockDim.x) {
        const int r = e / width, c = e - r * width;
        const int64_t j = c0 + c - 2;
        if (j - 2 < W) {
          smem[e] = __ldg(plane + pad_index(q_first - 2 + r, H, taps.symmetric) * W + pad_index(j, W, taps.symmetric));
        }
      }
    }
    __syncthreads();
    const scalar_t h0 = taps.w5[rx][0], h1 = taps.w5[rx][1], h2 = taps.w5[rx][2], h3 = taps.w5[rx][3],
                   h4 = taps.w5[rx][4];
    // The horizontal value of patch row r at this thread's output column.
    auto horizontal = [&](int r) {
      const scalar_t* s = smem + r * width + tc;
      return active ? fma_(h4, s[4], fma_(h3, s[3], fma_(h2, s[2], fma_(h1, s[1], h0 * s[0])))) : scalar_t(0);
    };
    if (!active) return;  // no barrier follows in this call
    // win[k]: input row q - 2 + k, k = 0 .. 4.
    scalar_t win0 = 0, win1 = horizontal(0), win2 = horizontal(1), win3 = horizontal(2), win4 = horizontal(3);
    const int64_t ncols = cols();
    const scalar_t* res = kResidual ? residual + p * numel() : nullptr;
    const int64_t i0 = q_first * S * ncols + col * S + rx;  // output (q * S, col * S + rx)
    // Scales 2, 3, 4 and 8 (the shipped models' and the GPU goal's) get the row loop with S known at
    // compile time: the vertical weights become constant-bank operands of the FMAs and the phase
    // loop unrolls (with S a run-time value, each output also pays the loop's own arithmetic: the
    // map pass at x8 went from about 44 to 24 instructions per output). Same bits either way.
    // (In the tenth session 3 and 8 raised the registers and spilled in the map kernel; since the
    // map kernels are capped at 64 registers and the histogram tests groups, they do not.)
    // benchmarks/tune_cuda.py times both; PSR_CUDA_GENERIC_SCALE=1 forces the generic loop.
    const auto rows = [&](auto ks) {
      constexpr int kS = decltype(ks)::value;  // 0: S at run time
      const int s = kS > 0 ? kS : S;
      const int neg = s / 2;  // phases with offset -1 (make_taps checks)
      int64_t row0 = i0;
      for (int k = 0; k < nq; ++k, row0 += s * ncols) {
        win0 = win1;
        win1 = win2;
        win2 = win3;
        win3 = win4;
        win4 = horizontal(k + 4);
        // Output (q * S + ry, col * S + rx), q = q_first + k, at flat index row0 + ry * ncols,
        // reads input rows q + offset - 1 .. q + offset + 2: offset -1 for the first neg rows, then 0.
        const auto one = [&](int ry, bool low) {
          const scalar_t w0 = taps.w[ry][0], w1 = taps.w[ry][1], w2 = taps.w[ry][2], w3 = taps.w[ry][3];
          scalar_t v = low ? fma_(w3, win3, fma_(w2, win2, fma_(w1, win1, w0 * win0)))
                           : fma_(w3, win4, fma_(w2, win3, fma_(w1, win2, w0 * win1)));
          if constexpr (kResidual) v = v + __ldg(res + row0 + ry * ncols);
          return v;
        };
        if constexpr (kS > 0 && kGrouped) {
          scalar_t v[kS];
#pragma unroll
          for (int ry = 0; ry < kS; ++ry) v[ry] = one(ry, ry < kS / 2);
          g(std::integral_constant<int, kS>{}, v, row0, ncols);
        } else {
          const auto single = [&](int ry, bool low) {
            const scalar_t v[1] = {one(ry, low)};
            g(std::integral_constant<int, 1>{}, v, row0 + ry * ncols, ncols);
          };
          if constexpr (kS > 0) {
#pragma unroll
            for (int ry = 0; ry < kS; ++ry) single(ry, ry < kS / 2);
          } else {
            int ry = 0;
            for (; ry < neg; ++ry) single(ry, true);
            for (; ry < s; ++ry) single(ry, false);
          }
        }
      }
    };
    switch (specialised ? S : 0) {
      case 2: rows(std::integral_constant<int, 2>{}); break;
      case 3: rows(std::integral_constant<int, 3>{}); break;
      case 4: rows(std::integral_constant<int, 4>{}); break;
      case 8: rows(std::integral_constant<int, 8>{}); break;
      default: rows(std::integral_constant<int, 0>{});
    }
  }
};

// A positive integer from the environment, else 0: tuning knobs for benchmarks/tune_cuda.py.
inline int64_t tuning_env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return (*end == '\0' && n > 0) ? static_cast<int64_t>(n) : 0;
}

// Input rows per tile for P planes: the most (up to kMaxBand and what the patch fits; each tile
// also stages 4 halo rows) that still gives every SM a few resident blocks' worth of tiles.
template <typename scalar_t, bool kResidual>
BicubicSource<scalar_t, kResidual> BicubicSource<scalar_t, kResidual>::for_planes(int64_t P, int sms) const {
  BicubicSource s = *this;
  s.specialised = tuning_env("PSR_CUDA_GENERIC_SCALE") == 0;  // tuning only: 1 forces the generic loop
  const int64_t forced = tuning_env("PSR_CUDA_TILE_ROWS");  // tuning only: input rows per tile
  if (forced > 0) {
    s.set_band(static_cast<int>(forced < 1024 ? forced : 1024));  // set_band caps it at max_band()
  } else {
    s.set_band(kMaxBand);
    while (s.band > 1 && P * s.tiles_per_plane() < int64_t(sms) * 16) s.set_band(s.band / 2);
  }
  // for_each_value splits tile indices in 32 bits
  TORCH_CHECK(s.tpp < (int64_t(1) << 31), "psr: at most 2^31 - 1 tiles per plane on CUDA, got ", s.tpp);
  return s;
}

// Values of a plain contiguous (P, n) tensor: a tile is kThreads * kPlainRun consecutive values,
// kPlainRun per thread, kThreads apart (each load and store of a warp is coalesced).
template <typename scalar_t>
struct PlainSource {
  static constexpr int kSmem = 1;  // no staging
  const scalar_t* p0;
  int64_t n;
  int64_t tpp;  // tiles per plane (set on the host by make)

  static PlainSource make(const scalar_t* p0, int64_t n) {
    return PlainSource{p0, n, (n + int64_t(kThreads) * kPlainRun - 1) / (int64_t(kThreads) * kPlainRun)};
  }
  __host__ __device__ int64_t numel() const { return n; }
  __host__ __device__ int64_t tiles_per_plane() const { return tpp; }
  PlainSource for_planes(int64_t /*P*/, int /*sms*/) const { return *this; }
  template <typename F>
  __device__ void for_each_value(int64_t p, int64_t tile, scalar_t* /*smem*/, F&& f) const {
    const scalar_t* src = p0 + p * n;
#pragma unroll
    for (int r = 0; r < kPlainRun; ++r) {
      const int64_t i = (tile * kPlainRun + r) * kThreads + threadIdx.x;
      if (i < n) f(__ldg(src + i), i);
    }
  }
  // BicubicSource::for_each_group: kGrouped, a full tile's kPlainRun values of this thread as one
  // group.
  template <bool kGrouped, typename G>
  __device__ void for_each_group(int64_t p, int64_t tile, scalar_t* smem, G&& g) const {
    const int64_t i0 = tile * kPlainRun * kThreads + threadIdx.x;
    if (kGrouped && (tile + 1) * kPlainRun * kThreads <= n) {
      const scalar_t* src = p0 + p * n + i0;
      scalar_t v[kPlainRun];
#pragma unroll
      for (int r = 0; r < kPlainRun; ++r) v[r] = __ldg(src + r * kThreads);
      g(std::integral_constant<int, kPlainRun>{}, v, i0, int64_t(kThreads));
      return;
    }
    for_each_value(p, tile, smem, [&](scalar_t x, int64_t i) {
      const scalar_t v[1] = {x};
      g(std::integral_constant<int, 1>{}, v, i, int64_t(kThreads));
    });
  }
};

#ifndef PSR_CUDA_EMU
// The current stream (c10 rather than ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE
// headers that a bare CUDA toolkit may lack).
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline int64_t max_grid_y() { return 65535; }                               // gridDim.y limit
// Items per CUB call when planes are batched: CUB's counts are int here, and a chunk's sort scratch
// (about 36 bytes an item in exact mode) must stay small next to the images (2^24: ~600 MB).
inline int64_t chunk_items() { return int64_t(1) << 24; }

// Streaming multiprocessors of the current device (grid sizes follow it).
inline int num_sms() {
  static std::atomic<int> cached[64] = {};  // per device: the attribute cannot change (any host thread)
  int device = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < 64) {
    n = cached[device].load(std::memory_order_relaxed);
    if (n > 0) return n;
  }
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cached[device].store(n, std::memory_order_relaxed);
  return n;
}

// Every kernel launch goes through here (not <<<>>> at the call sites), so that the CPU emulator
// can run the same host code.
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#else
inline cudaStream_t current_stream() { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
using ::psr_emu::chunk_items;  // the three settable, so that tests reach the chunked paths and other
using ::psr_emu::launch;       // grid sizes with small inputs
using ::psr_emu::max_grid_y;
inline int num_sms() { return ::psr_emu::num_sms(); }
#endif

// Resident blocks of kThreads threads per SM for `kernel` with `smem` bytes of dynamic shared
// memory (at least 1), cached per device, kernel and smem size (any host thread). The size is
// rounded up to 1 KiB first (a conservative count), so the cache stays small however many bin
// counts callers use.
template <typename... KArgs>
inline int blocks_per_sm(void (*kernel)(KArgs...), size_t smem) {
  smem = (smem + 1023) / 1024 * 1024;
  struct Entry {
    int device;
    const void* kernel;
    size_t smem;
    int blocks;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const void* k = reinterpret_cast<const void*>(kernel);
  {
    const std::lock_guard<std::mutex> lock(mu);
    for (const Entry& e : cache) {
      if (e.device == device && e.kernel == k && e.smem == smem) return e.blocks;
    }
  }
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem));
  n = std::max(n, 1);
  const std::lock_guard<std::mutex> lock(mu);
  cache.push_back(Entry{device, k, smem, n});
  return n;
}

// Histogram matching on CUDA (match_histograms.cu). source: a plain (N, C, H, W) tensor, or
// undefined when bicubic is given: then the source is upsample(x, S, a) + residual, binned over
// each plane of x's [min, max]. bin_range: undefined or (N, C, 2), for a plain source only.
struct BicubicArgs {
  at::Tensor x;         // (N, C, H, W) contiguous
  int64_t scale;
  double a;
  at::Tensor residual;  // undefined or (N, C, H * S, W * S) contiguous
};

at::Tensor match_cuda(const at::Tensor& source, const BicubicArgs* bicubic, const at::Tensor& reference,
                      std::optional<int64_t> bins, const at::Tensor& bin_range = at::Tensor());

}  // namespace psr::cuda_ops
