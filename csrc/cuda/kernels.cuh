// CUDA building blocks shared by the three ops. Every kernel that needs source values gets them
// from a "source": the plain source tensor, or bicubic(x) (+ residual) recomputed from the
// low-resolution planes. A source hands each thread a run of up to 8 consecutive values of one
// plane, so the same arithmetic (explicit fma, hence bitwise identical in every kernel) feeds the
// upsampling, min/max, histogram, sort-key and mapping passes.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#ifndef PSR_CUDA_EMU  // tests/cuda_emu/cuda_emu.h stands in for the CUDA runtime and CUB
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <optional>
#include <utility>

#include "../psr_common.h"

#ifndef PSR_CUDA_EMU
#define PSR_EXTERN_SHARED(T, name) extern __shared__ T name[]  // dynamic shared memory
#endif

namespace psr::cuda_ops {

constexpr int kThreads = 256;  // threads per block in every kernel
constexpr int kRun = 8;        // values per thread and call (the largest scale)
constexpr int kPlainRun = 4;   // values per thread for a plain tensor source

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

// Values of bicubic(x) (+ residual) for (P, H, W) planes upscaled by S. One block computes one
// output row for kThreads consecutive input columns; thread t gets the S outputs of column
// q0 + t. Needs (kThreads + 4) scalars of shared memory.
template <typename scalar_t>
struct BicubicSource {
  static constexpr bool kVectorStore = true;  // runs start at multiples of S
  const scalar_t* x;
  const scalar_t* residual;  // (P, H * S, W * S) or nullptr
  int64_t H, W;
  Taps<scalar_t> taps;

  __host__ __device__ int64_t rows() const { return H * taps.S; }
  __host__ __device__ int64_t cols() const { return W * taps.S; }
  __host__ __device__ int64_t numel() const { return rows() * cols(); }
  __host__ __device__ int64_t blocks_per_plane() const { return rows() * ((W + kThreads - 1) / kThreads); }
  __device__ int run() const { return taps.S; }  // values per thread and call (block-uniform)

  // Fills v[0 .. count) with the values of plane p at flat indices first .. first + count - 1
  // for block-local tile `tile`; count is 0 for threads past the row's end. All threads of the
  // block must call it (it synchronises).
  __device__ void values(int64_t p, int64_t tile, scalar_t* smem, scalar_t (&v)[kRun], int64_t& first,
                         int& count) const {
    const int S = taps.S;
    const int64_t tiles_per_row = (W + kThreads - 1) / kThreads;
    const int64_t oy = tile / tiles_per_row;
    const int64_t q0 = (tile % tiles_per_row) * kThreads;
    const int ry = static_cast<int>(oy % S);
    const int64_t by = oy / S + taps.offset[ry] - 1;
    const scalar_t* plane = x + p * H * W;
    const scalar_t* r0 = plane + pad_index(by, H, taps.symmetric) * W;
    const scalar_t* r1 = plane + pad_index(by + 1, H, taps.symmetric) * W;
    const scalar_t* r2 = plane + pad_index(by + 2, H, taps.symmetric) * W;
    const scalar_t* r3 = plane + pad_index(by + 3, H, taps.symmetric) * W;
    const scalar_t w0 = taps.w[ry][0], w1 = taps.w[ry][1], w2 = taps.w[ry][2], w3 = taps.w[ry][3];
    __syncthreads();  // smem may still be read by the previous tile
    for (int c = threadIdx.x; c < kThreads + 4; c += blockDim.x) {
      const int64_t q = q0 + c - 2;
      if (q - 2 < W) {  // columns beyond q0 + kThreads + 1 are never read
        const int64_t col = pad_index(q, W, taps.symmetric);
        smem[c] = fma_(w3, __ldg(r3 + col), fma_(w2, __ldg(r2 + col), fma_(w1, __ldg(r1 + col), w0 * __ldg(r0 + col))));
      }
    }
    __syncthreads();
    const int64_t q = q0 + threadIdx.x;
    first = oy * cols() + q * S;
    count = q < W ? S : 0;
    const scalar_t* s = smem + threadIdx.x;
    const scalar_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3], s4 = s[4];
#pragma unroll
    for (int r = 0; r < kRun; ++r) {
      if (r < S) {
        v[r] = fma_(taps.w5[r][4], s4,
                    fma_(taps.w5[r][3], s3, fma_(taps.w5[r][2], s2, fma_(taps.w5[r][1], s1, taps.w5[r][0] * s0))));
      }
    }
    if (residual != nullptr && count > 0) {
      const scalar_t* res = residual + p * numel() + first;
#pragma unroll
      for (int r = 0; r < kRun; ++r) {
        if (r < S) v[r] = v[r] + __ldg(res + r);
      }
    }
  }
};

// Values of a plain contiguous (P, n) tensor, kPlainRun consecutive values per thread.
template <typename scalar_t>
struct PlainSource {
  static constexpr bool kVectorStore = false;  // planes need not be aligned
  const scalar_t* p0;
  int64_t n;

  __host__ __device__ int64_t numel() const { return n; }
  __host__ __device__ int64_t blocks_per_plane() const {
    return (n + int64_t(kThreads) * kPlainRun - 1) / (int64_t(kThreads) * kPlainRun);
  }
  __device__ int run() const { return kPlainRun; }
  __device__ void values(int64_t p, int64_t tile, scalar_t* /*smem*/, scalar_t (&v)[kRun], int64_t& first,
                         int& count) const {
    first = (tile * kThreads + threadIdx.x) * kPlainRun;
    const int64_t left = n - first;
    count = left <= 0 ? 0 : (left < kPlainRun ? static_cast<int>(left) : kPlainRun);
    const scalar_t* src = p0 + p * n + first;
#pragma unroll
    for (int r = 0; r < kPlainRun; ++r) {
      if (r < count) v[r] = __ldg(src + r);
    }
  }
};

// Stores v[0 .. S) at dst, which is aligned to S values: vector stores where the width allows.
template <typename scalar_t>
__device__ __forceinline__ void store_run(scalar_t* dst, const scalar_t (&v)[kRun], int S) {
  if constexpr (sizeof(scalar_t) == 4) {
    if (S == 4 || S == 8) {
#pragma unroll
      for (int r = 0; r < kRun; r += 4) {
        if (r < S) reinterpret_cast<float4*>(dst)[r / 4] = make_float4(v[r], v[r + 1], v[r + 2], v[r + 3]);
      }
      return;
    }
    if (S == 2) {
      *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
      return;
    }
  } else {
    if (S % 2 == 0) {
#pragma unroll
      for (int r = 0; r < kRun; r += 2) {
        if (r < S) reinterpret_cast<double2*>(dst)[r / 2] = make_double2(v[r], v[r + 1]);
      }
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < kRun; ++r) {
    if (r < S) dst[r] = v[r];
  }
}

#ifndef PSR_CUDA_EMU
// The current stream (c10 rather than ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE
// headers that a bare CUDA toolkit may lack).
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
using DeviceGuard = c10::cuda::CUDAGuard;

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
using ::psr_emu::launch;
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
