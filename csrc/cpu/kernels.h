// CPU building blocks shared by the three ops: a bicubic row generator and histogram matching of
// planes whose rows come from any generator (a tensor, or bicubic upsampling recomputed per pass).
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <optional>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../checks.h"
#include "../psr_common.h"

namespace psr::cpu {

// Memory for the large sort buffers: aligned to 2 MiB and marked for transparent huge pages. The
// radix scatter writes all over them; with 4 KiB pages, TLB misses and first-touch page faults
// cost about a third of the sort (measured). Release with std::free.
inline void* huge_alloc(size_t bytes) {
  constexpr size_t kHuge = size_t(1) << 21;
  void* p = nullptr;
  if (bytes >= 2 * kHuge) {
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    if (posix_memalign(&p, kHuge, rounded) != 0) p = nullptr;
#ifdef MADV_HUGEPAGE
    if (p != nullptr) madvise(p, rounded, MADV_HUGEPAGE);
#endif
  } else {
    p = std::malloc(bytes > 0 ? bytes : 1);
  }
  TORCH_CHECK(p != nullptr, "psr: out of memory allocating ", bytes, " bytes");
  return p;
}

// Bicubic upsampling of contiguous (P, H, W) planes by an integer scale, one output row at a time.
template <typename scalar_t>
struct Bicubic {
  Bicubic(const scalar_t* x, int64_t H, int64_t W, int scale, double a);

  int64_t out_rows() const { return H * S; }
  int64_t out_cols() const { return W * S; }
  // Scratch length row() needs beside its output.
  int64_t scratch() const { return W + 4; }
  // Output row oy of plane p into out[0 .. W * S); tmp holds scratch() values.
  void row(int64_t p, int64_t oy, scalar_t* out, scalar_t* tmp) const;

  const scalar_t* x;
  int64_t H, W;
  int S;
  bool symmetric;
  int offset[kMaxScale];
  scalar_t w[kMaxScale][kTaps];
  std::vector<int64_t> row_index;  // (H * S, 4): input rows read by each output row
  int64_t col_pad[4];              // input columns standing for columns -2, -1, W, W + 1
};

// Rows of a plain contiguous (P, R, C) tensor.
template <typename scalar_t>
struct PlainRows {
  const scalar_t* p;
  int64_t R, C;
  int64_t rows() const { return R; }
  int64_t cols() const { return C; }
  int64_t scratch() const { return 0; }
  const scalar_t* get(int64_t plane, int64_t y, scalar_t* /*scratch*/) const { return p + (plane * R + y) * C; }
};

// Rows of bicubic(x) (+ residual), recomputed from the low-resolution planes on every call.
template <typename scalar_t>
struct BicubicRows {
  const Bicubic<scalar_t>* b;
  const scalar_t* residual;  // (P, H * S, W * S) contiguous, or nullptr
  int64_t rows() const { return b->out_rows(); }
  int64_t cols() const { return b->out_cols(); }
  int64_t scratch() const { return b->out_cols() + b->scratch(); }
  const scalar_t* get(int64_t plane, int64_t y, scalar_t* scratch) const {
    const int64_t n = b->out_cols();
    b->row(plane, y, scratch, scratch + n);
    if (residual != nullptr) {
      const scalar_t* r = residual + (plane * b->out_rows() + y) * n;
      for (int64_t j = 0; j < n; ++j) scratch[j] = scratch[j] + r[j];
    }
    return scratch;
  }
};

// Histogram-match P planes of rows.rows() x rows.cols() values to reference planes (P, ref_n)
// and write the result to out (P, rows, cols). bins: exact (skimage) when empty, else binned, over
// bin_range (P, 2): each plane's (lo, hi), or nullptr for the plane's own min and max.
template <typename scalar_t, typename Rows>
void match_planes(const Rows& rows, int64_t P, const scalar_t* ref, int64_t ref_n, std::optional<int64_t> bins,
                  const scalar_t* bin_range, scalar_t* out);

// The fused op's (P, 2) bin range: each plane's [min, max] of x (N, C, H, W); undefined when not
// binned.
inline at::Tensor plane_range(const at::Tensor& x, std::optional<int64_t> bins) {
  const int64_t N = x.size(0), C = x.size(1);
  if (!bins.has_value() || N * C == 0) return at::Tensor();
  auto [lo, hi] = at::aminmax(x.reshape({N * C, -1}), 1);
  return at::stack({lo, hi}, 1).contiguous();
}

}  // namespace psr::cpu
