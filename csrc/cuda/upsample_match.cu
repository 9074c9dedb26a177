// CUDA fused op: match_histograms(upsample_bicubic(x) + residual, reference or x). The upsampled
// image is never stored: every pass of the matching (match_histograms.cu) recomputes its values
// from the low-resolution planes.
#include <torch/library.h>

#include "kernels.cuh"

namespace psr::cuda_ops {

static at::Tensor upsample_match_cuda(const at::Tensor& x_in, int64_t scale, const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& reference, double a,
                                      std::optional<int64_t> bins) {
  const at::Tensor res = check_upsample_match_args(x_in, scale, residual, reference, bins);
  const BicubicArgs args{x_in.contiguous(), scale, a, res};
  const at::Tensor ref = reference.has_value() ? *reference : args.x;
  return match_cuda(at::Tensor(), &args, ref, bins);
}

#ifndef PSR_CUDA_EMU
TORCH_LIBRARY_IMPL(psr, CUDA, m) { m.impl("upsample_match", &upsample_match_cuda); }
#endif

}  // namespace psr::cuda_ops
