// CUDA fused op: match_histograms(upsample_bicubic(x) + residual, reference or x). The upsampled
// image is never stored: every pass of the matching (match_histograms.cu) recomputes its values
// from the low-resolution planes.
#include <torch/library.h>

#include "kernels.cuh"

namespace psr::cuda_ops {

static at::Tensor upsample_match_cuda(const at::Tensor& x_in, int64_t scale, const std::optional<at::Tensor>& residual,
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
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  BicubicArgs args{x_in.contiguous(), scale, a, at::Tensor()};
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({N, C, H * scale, W * scale}),
                "psr::upsample_match: residual must have shape ", at::IntArrayRef({N, C, H * scale, W * scale}),
                ", got ", residual->sizes());
    TORCH_CHECK(residual->scalar_type() == x_in.scalar_type() && residual->device() == x_in.device(),
                "psr::upsample_match: residual must have x's dtype and device");
    args.residual = residual->contiguous();
  }
  at::Tensor ref = args.x;
  if (reference.has_value()) {
    TORCH_CHECK(reference->dim() == 4 && reference->size(0) == N && reference->size(1) == C,
                "psr::upsample_match: reference must be (N, C, h, w) with x's N and C, got ", reference->sizes());
    TORCH_CHECK(reference->scalar_type() == x_in.scalar_type() && reference->device() == x_in.device(),
                "psr::upsample_match: reference must have x's dtype and device");
    TORCH_CHECK(reference->size(2) * reference->size(3) > 0, "psr::upsample_match: reference must have pixels");
    ref = *reference;
  }
  return match_cuda(at::Tensor(), &args, ref, bins);
}

#ifndef PSR_CUDA_EMU
TORCH_LIBRARY_IMPL(psr, CUDA, m) { m.impl("upsample_match", &upsample_match_cuda); }
#endif

}  // namespace psr::cuda_ops
