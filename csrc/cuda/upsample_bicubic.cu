// CUDA bicubic upsampling by an integer scale: one block per tile (plane, a band of input rows,
// about 256 output columns; kernels.cuh, BicubicSource), one output per thread and output row.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "kernels.cuh"

namespace psr::cuda_ops {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) upsample_kernel(BicubicSource<scalar_t> src, int64_t plane0,
                                                            scalar_t* out) {
  PSR_SHARED_ARRAY(scalar_t, smem, BicubicSource<scalar_t>::kSmem);
  const int64_t tpp = src.tiles_per_plane();
  const int64_t p = plane0 + blockIdx.x / tpp;
  scalar_t* plane_out = out + p * src.numel();
  src.for_each_value(p, blockIdx.x % tpp, smem, [&](scalar_t v, int64_t i) {
    plane_out[i] = v;  // a warp writes 32 consecutive values
  });
}

}  // namespace

static at::Tensor upsample_bicubic_cuda(const at::Tensor& x_in, int64_t scale, double a) {
  check_upsample_args("psr::upsample_bicubic", x_in, scale);
  const DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({N, C, H * scale, W * scale}, x.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "psr_upsample_bicubic_cuda", [&] {
    const BicubicSource<scalar_t> src =
        BicubicSource<scalar_t>::make(x.const_data_ptr<scalar_t>(), nullptr, H, W,
                                      make_taps<scalar_t>(static_cast<int>(scale), a))
            .for_planes(N * C, num_sms());
    const int64_t tpp = src.tiles_per_plane();
    const int64_t max_planes = std::max<int64_t>(1, (int64_t(1) << 31) / tpp - 1);
    for (int64_t p0 = 0; p0 < N * C; p0 += max_planes) {
      const int64_t np = std::min(max_planes, N * C - p0);
      launch(upsample_kernel<scalar_t>, static_cast<unsigned>(np * tpp), kThreads, 0, stream,
          src, p0, out.mutable_data_ptr<scalar_t>());
    }
  });
  return out;
}

#ifndef PSR_CUDA_EMU
TORCH_LIBRARY_IMPL(psr, CUDA, m) { m.impl("upsample_bicubic", &upsample_bicubic_cuda); }
#endif

}  // namespace psr::cuda_ops
