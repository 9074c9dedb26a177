// Argument checks of the three ops, one definition for the CPU and CUDA kernels (host code only),
// so both backends refuse the same inputs with the same messages. Finiteness is psr/ops.py's check
// (here it would cost a host sync on CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>

#include "psr_common.h"

namespace psr {

// x (N, C, H, W) float32/float64 with pixels, scale 1..8: upsample_bicubic's and upsample_match's x.
inline void check_upsample_args(const char* op, const at::Tensor& x, int64_t scale) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(scale >= 1 && scale <= kMaxScale, op, ": scale must be in 1..", kMaxScale, ", got ", scale);
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": H and W must be positive, got ", x.sizes());
}

inline void check_bins(const char* op, std::optional<int64_t> bins) {
  TORCH_CHECK(!bins.has_value() || (*bins >= 1 && *bins <= (int64_t(1) << 24)), op,
              ": bins must be in 1..2^24, got ", *bins);
}

// A reference (N, C, h, w) with pixels, in x's dtype and on its device. `what` names x.
inline void check_reference(const char* op, const at::Tensor& reference, const at::Tensor& x, const char* what) {
  TORCH_CHECK(reference.dim() == 4 && reference.size(0) == x.size(0) && reference.size(1) == x.size(1), op,
              ": reference must be (N, C, h, w) with ", what, "'s N and C, got ", reference.sizes(), " and ",
              x.sizes());
  TORCH_CHECK(reference.scalar_type() == x.scalar_type() && reference.device() == x.device(), op,
              ": reference must have ", what, "'s dtype and device");
  TORCH_CHECK(reference.size(2) * reference.size(3) > 0, op, ": reference must have pixels, got ",
              reference.sizes());
}

// match_histograms' arguments; returns bin_range contiguous (undefined when not given).
inline at::Tensor check_match_args(const at::Tensor& source, const at::Tensor& reference, std::optional<int64_t> bins,
                                   const std::optional<at::Tensor>& bin_range) {
  constexpr const char* op = "psr::match_histograms";
  TORCH_CHECK(source.dim() == 4, op, ": source must be (N, C, H, W), got ", source.sizes());
  TORCH_CHECK(source.scalar_type() == at::kFloat || source.scalar_type() == at::kDouble, op,
              ": source must be float32 or float64, got ", source.scalar_type());
  TORCH_CHECK(source.size(2) * source.size(3) > 0, op, ": source must have pixels, got ", source.sizes());
  check_reference(op, reference, source, "source");
  check_bins(op, bins);
  if (!bin_range.has_value()) return at::Tensor();
  TORCH_CHECK(bins.has_value(), op, ": bin_range applies to binned mode only: pass bins=k as well");
  const std::array<int64_t, 3> dims{source.size(0), source.size(1), 2};
  const at::IntArrayRef shape(dims);
  TORCH_CHECK(bin_range->sizes() == shape, op, ": bin_range must have shape ", shape, ", got ", bin_range->sizes());
  TORCH_CHECK(bin_range->scalar_type() == source.scalar_type() && bin_range->device() == source.device(), op,
              ": bin_range must have the source's dtype and device");
  return bin_range->contiguous();
}

// upsample_match's arguments (x as check_upsample_args); returns the residual contiguous
// (undefined when not given).
inline at::Tensor check_upsample_match_args(const at::Tensor& x, int64_t scale,
                                            const std::optional<at::Tensor>& residual,
                                            const std::optional<at::Tensor>& reference, std::optional<int64_t> bins) {
  constexpr const char* op = "psr::upsample_match";
  check_upsample_args(op, x, scale);
  check_bins(op, bins);
  if (reference.has_value()) check_reference(op, *reference, x, "x");
  if (!residual.has_value()) return at::Tensor();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const std::array<int64_t, 4> dims{N, C, H * scale, W * scale};
  const at::IntArrayRef shape(dims);
  TORCH_CHECK(residual->sizes() == shape, op, ": residual must have shape ", shape, ", got ", residual->sizes());
  TORCH_CHECK(residual->scalar_type() == x.scalar_type() && residual->device() == x.device(), op,
              ": residual must have x's dtype and device");
  return residual->contiguous();
}

}  // namespace psr
