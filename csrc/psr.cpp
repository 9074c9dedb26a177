// Operator schemas of the psr extension (namespace torch.ops.psr). Kernels are registered per
// backend in cpu/*.cpp and cuda/*.cu; fake (meta) kernels for torch.compile live in psr/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(psr, m) {
  // Bicubic upsampling of (N, C, H, W) float32/float64 by an integer scale. a == -0.5: MATLAB's
  // imresize (symmetric padding); any other a: clamped borders (a == -0.75 is F.interpolate's).
  m.def("upsample_bicubic(Tensor x, int scale, float a) -> Tensor");
  // Histogram matching per (sample, channel): exact (skimage) when bins is None, else binned over
  // bin_range (N, C, 2), by default each plane's [min, max].
  m.def("match_histograms(Tensor source, Tensor reference, int? bins, Tensor? bin_range=None) -> Tensor");
  // match_histograms(upsample_bicubic(x, scale, a) + residual, reference if given else x, bins,
  // bin_range=each plane of x's [min, max]).
  m.def(
      "upsample_match(Tensor x, int scale, Tensor? residual, Tensor? reference, float a, int? bins) -> Tensor");
}
