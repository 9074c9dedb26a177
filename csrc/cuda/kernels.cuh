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

#include <cstdlib>
#include <limits>
#include <optional>
#include <utility>

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
// output q * S + r), one of them zero, as in the CPU kernel.
template <typename scalar_t>
struct Taps {
  int S;
  bool symmetric;
  int offset[kMaxScale];
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
    k.offset[r] = t.offset[r];
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
// thread t owns output column phase t % S of input column t / S of the tile. Horizontal pass
// first: for every input row of the tile (and two rows above and below) each thread computes its
// one horizontal value from the row staged in shared memory, keeping the last five in registers,
// so an output is 3 FMAs and a multiply on registers and the block synchronises once per input
// row (S output rows).
// A thread's values run down its column (vertically adjacent pixels); a warp's are 32 consecutive
// pixels of a row (coalesced). Needs kSourceSmem scalars of shared memory.
constexpr int kStagedRow = kThreads + 4;        // scalars of one staged input row (a tile and its halo)
constexpr int kSourceSmem = 2 * kStagedRow;     // shared scalars a source needs: two staged rows

template <typename scalar_t>
struct BicubicSource {
  const scalar_t* x;
  const scalar_t* residual;  // (P, H * S, W * S) or nullptr
  int64_t H, W;
  Taps<scalar_t> taps;
  int band;  // input rows per tile (>= 1)

  __host__ __device__ int64_t rows() const { return H * taps.S; }
  __host__ __device__ int64_t cols() const { return W * taps.S; }
  __host__ __device__ int64_t numel() const { return rows() * cols(); }
  __host__ __device__ int cols_per_tile() const { return kThreads / taps.S; }
  __host__ __device__ int64_t col_tiles() const { return (W + cols_per_tile() - 1) / cols_per_tile(); }
  __host__ __device__ int64_t tiles_per_plane() const { return ((H + band - 1) / band) * col_tiles(); }
  // This source with tiles sized for kernels that cover P planes at once.
  BicubicSource for_planes(int64_t P, int sms) const;

  // Calls f(value, i) for this thread's value at flat index i of plane p in every output row of
  // tile `tile`. All threads of the block must call it (it synchronises); f must not synchronise.
  template <typename F>
  __device__ void for_each_value(int64_t p, int64_t tile, scalar_t* smem, F&& f) const {
    const int S = taps.S;
    const int cpt = cols_per_tile();
    const int64_t q_first = (tile / col_tiles()) * band;
    const int64_t c0 = (tile % col_tiles()) * cpt;
    const int64_t q_end = q_first + band < H ? q_first + band : H;
    const int tc = static_cast<int>(threadIdx.x) / S, rx = static_cast<int>(threadIdx.x) % S;
    const int64_t col = c0 + tc;
    const bool active = tc < cpt && col < W;
    const scalar_t* plane = x + p * H * W;
    const scalar_t h0 = taps.w5[rx][0], h1 = taps.w5[rx][1], h2 = taps.w5[rx][2], h3 = taps.w5[rx][3],
                   h4 = taps.w5[rx][4];
    // The horizontal value of input row q at this thread's output column. Rows are staged in two
    // alternating buffers: a buffer is written again two rows later, after the next row's barrier,
    // which every thread reaches only when done reading it; so one barrier per row.
    int buf = 0;
    auto horizontal = [&](int64_t q) {
      const scalar_t* row = plane + pad_index(q, H, taps.symmetric) * W;
      scalar_t* staged = smem + buf * kStagedRow;
      buf ^= 1;
      for (int c = threadIdx.x; c < cpt + 4; c += blockDim.x) {  // cpt + 4 exceeds kThreads at S = 1
        const int64_t j = c0 + c - 2;
        if (j - 2 < W) staged[c] = __ldg(row + pad_index(j, W, taps.symmetric));  // past W + 1: never read
      }
      __syncthreads();
      const scalar_t* s = staged + tc;
      return active ? fma_(h4, s[4], fma_(h3, s[3], fma_(h2, s[2], fma_(h1, s[1], h0 * s[0])))) : scalar_t(0);
    };
    __syncthreads();  // the previous tile's last rows may still be read from either buffer
    // win[k]: input row q - 2 + k, k = 0 .. 4.
    scalar_t win0 = 0, win1 = horizontal(q_first - 2), win2 = horizontal(q_first - 1), win3 = horizontal(q_first),
             win4 = horizontal(q_first + 1);
    const int64_t ncols = cols();
    const scalar_t* res = residual != nullptr ? residual + p * numel() : nullptr;
    for (int64_t q = q_first; q < q_end; ++q) {
      win0 = win1;
      win1 = win2;
      win2 = win3;
      win3 = win4;
      win4 = horizontal(q + 2);
      if (!active) continue;
      int64_t i = q * S * ncols + col * S + rx;  // output (q * S + ry, col * S + rx)
      for (int ry = 0; ry < S; ++ry, i += ncols) {
        // Output row q * S + ry reads input rows q + offset - 1 .. q + offset + 2, offset 0 or -1.
        const scalar_t w0 = taps.w[ry][0], w1 = taps.w[ry][1], w2 = taps.w[ry][2], w3 = taps.w[ry][3];
        scalar_t v = taps.offset[ry] < 0 ? fma_(w3, win3, fma_(w2, win2, fma_(w1, win1, w0 * win0)))
                                         : fma_(w3, win4, fma_(w2, win3, fma_(w1, win2, w0 * win1)));
        if (res != nullptr) v = v + __ldg(res + i);
        f(v, i);
      }
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

// Input rows per tile for P planes: the most (up to 16; each tile also computes the horizontal
// pass of 4 halo rows) that still gives every SM a few resident blocks' worth of tiles.
template <typename scalar_t>
BicubicSource<scalar_t> BicubicSource<scalar_t>::for_planes(int64_t P, int sms) const {
  BicubicSource s = *this;
  const int64_t forced = tuning_env("PSR_CUDA_TILE_ROWS");  // tuning only: input rows per tile
  if (forced > 0) {
    s.band = static_cast<int>(forced < 1024 ? forced : 1024);
    return s;
  }
  s.band = 16;
  while (s.band > 1 && P * s.tiles_per_plane() < int64_t(sms) * 16) s.band /= 2;
  return s;
}

// Values of a plain contiguous (P, n) tensor: a tile is kThreads * kPlainRun consecutive values,
// kPlainRun per thread, kThreads apart (each load and store of a warp is coalesced).
template <typename scalar_t>
struct PlainSource {
  const scalar_t* p0;
  int64_t n;

  __host__ __device__ int64_t numel() const { return n; }
  __host__ __device__ int64_t tiles_per_plane() const {
    return (n + int64_t(kThreads) * kPlainRun - 1) / (int64_t(kThreads) * kPlainRun);
  }
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
  static int cached[64] = {};  // per device: the attribute cannot change
  int device = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cached[device] = n;
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

// Histogram matching on CUDA (match_histograms.cu). source: a plain (N, C, H, W) tensor, or
// undefined when bicubic is given: then the source is upsample(x, S, a) + residual.
struct BicubicArgs {
  at::Tensor x;         // (N, C, H, W) contiguous
  int64_t scale;
  double a;
  at::Tensor residual;  // undefined or (N, C, H * S, W * S) contiguous
};

at::Tensor match_cuda(const at::Tensor& source, const BicubicArgs* bicubic, const at::Tensor& reference,
                      std::optional<int64_t> bins);

}  // namespace psr::cuda_ops
