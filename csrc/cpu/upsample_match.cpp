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
  const at::Tensor res = check_upsample_match_args(x_in, scale, residual, reference, bins);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int s = static_cast<int>(scale);
  const at::Tensor ref = reference.has_value() ? reference->contiguous() : x;
  at::Tensor out = at::empty({N, C, H * s, W * s}, x.options());
  if (out.numel() == 0) return out;
  // Binned mode bins over each low-resolution plane's [min, max] (no pass over the upsampled values).
  const at::Tensor range = plane_range(x, bins);
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
