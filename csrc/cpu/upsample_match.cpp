// CPU fused op: match_histograms(upsample_bicubic(x) + residual, reference or x). The upsampled
// image is never stored: each pass of the matching recomputes its rows from the low-resolution
// planes (exact mode keeps only the sort keys, which encode the values).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "kernels.h"

namespace psr::cpu {

static at::Tensor upsample_match_cpu(const at::Tensor& x_in, int64_t scale, const std::optional<at::Tensor>& residual,
                                     const std::optional<at::Tensor>& reference, double a,
                                     std::optional<int64_t> bins) {
  TORCH_CHECK(x_in.dim() == 4, "psr::upsample_match: x must be (N, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "psr::upsample_match: x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(scale >= 1 && scale <= kMaxScale, "psr::upsample_match: scale must be in 1..8, got ", scale);
  TORCH_CHECK(x_in.size(2) > 0 && x_in.size(3) > 0, "psr::upsample_match: H and W must be positive, got ",
              x_in.sizes());
  TORCH_CHECK(!bins.has_value() || (*bins >= 1 && *bins <= (int64_t(1) << 24)),
              "psr::upsample_match: bins must be in 1..2^24");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int s = static_cast<int>(scale);
  at::Tensor res;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({N, C, H * s, W * s}),
                "psr::upsample_match: residual must have shape ", at::IntArrayRef({N, C, H * s, W * s}), ", got ",
                residual->sizes());
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), "psr::upsample_match: residual must have x's dtype");
    res = residual->contiguous();
  }
  at::Tensor ref = x;
  if (reference.has_value()) {
    TORCH_CHECK(reference->dim() == 4 && reference->size(0) == N && reference->size(1) == C,
                "psr::upsample_match: reference must be (N, C, h, w) with x's N and C, got ", reference->sizes());
    TORCH_CHECK(reference->scalar_type() == x.scalar_type(), "psr::upsample_match: reference must have x's dtype");
    TORCH_CHECK(reference->size(2) * reference->size(3) > 0, "psr::upsample_match: reference must have pixels");
    ref = reference->contiguous();
  }
  at::Tensor out = at::empty({N, C, H * s, W * s}, x.options());
  if (out.numel() == 0) return out;
  // Binned mode bins over each low-resolution plane's [min, max] (no pass over the upsampled values).
  const at::Tensor range = bin_range_arg("psr::upsample_match", std::nullopt, x, bins);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "psr_upsample_match_cpu", [&] {
    const Bicubic<scalar_t> b(x.const_data_ptr<scalar_t>(), H, W, s, a);
    const BicubicRows<scalar_t> rows{&b, res.defined() ? res.const_data_ptr<scalar_t>() : nullptr};
    match_planes(rows, N * C, ref.const_data_ptr<scalar_t>(), ref.size(2) * ref.size(3), bins,
                 range.defined() ? range.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(psr, CPU, m) { m.impl("upsample_match", &upsample_match_cpu); }

}  // namespace psr::cpu
