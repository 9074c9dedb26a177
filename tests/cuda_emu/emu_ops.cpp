// psr's CUDA ops built for the CPU emulator (cuda_emu.h): the csrc/cuda/*.cu files compiled as
// C++, their host code unchanged, their kernels run as fibers on the calling thread. Built by
// tests/test_cuda_emu.py.
#include <torch/extension.h>

#include "cuda_emu.h"

#include "../../csrc/cuda/match_histograms.cu"
#include "../../csrc/cuda/upsample_bicubic.cu"
#include "../../csrc/cuda/upsample_match.cu"

// Self-tests of the emulator: a block reverses 256 values through shared memory, with or without
// the barrier between the writes and the reads (without it the result must come out wrong), and
// kernels where a warp shuffle names lanes that wait at a barrier or have left the kernel (the
// emulator must report them).
namespace emu_selftest {

__global__ void reverse_kernel(const float* x, float* y, bool sync) {
  PSR_EXTERN_SHARED(float, s);
  s[threadIdx.x] = x[threadIdx.x];
  if (sync) __syncthreads();
  y[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

__global__ void exited_lanes_kernel(float* y) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 >= 7) return;  // 25 lanes leave; the shuffle below names them all
  y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
}

__global__ void divergent_sync_kernel(float* y) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 7) v = __shfl_xor_sync(0xffffffffu, v, 1);  // a full mask, but 25 lanes never come
  __syncthreads();
  y[threadIdx.x] = v;
}

at::Tensor reverse(const at::Tensor& x, bool sync) {
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kFloat && x.numel() <= 1024 && x.is_contiguous());
  at::Tensor y = at::empty_like(x);
  psr_emu::launch(reverse_kernel, dim3(1), dim3(static_cast<unsigned>(x.numel())), x.numel() * sizeof(float),
                  nullptr, x.data_ptr<float>(), y.data_ptr<float>(), sync);
  return y;
}

void divergent_sync() {
  at::Tensor y = at::empty({64}, at::kFloat);
  psr_emu::launch(divergent_sync_kernel, dim3(1), dim3(64), 0, nullptr, y.data_ptr<float>());
}

void exited_lanes() {
  at::Tensor y = at::empty({64}, at::kFloat);
  psr_emu::launch(exited_lanes_kernel, dim3(1), dim3(64), 0, nullptr, y.data_ptr<float>());
}

}  // namespace emu_selftest

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.doc() = "psr's CUDA ops run by a CPU emulator (tests only)";
  m.def("upsample_bicubic", &psr::cuda_ops::upsample_bicubic_cuda, "x"_a, "scale"_a, "a"_a);
  m.def("match_histograms", &psr::cuda_ops::match_histograms_cuda, "source"_a, "reference"_a, "bins"_a,
        "bin_range"_a = pybind11::none());
  m.def("upsample_match", &psr::cuda_ops::upsample_match_cuda, "x"_a, "scale"_a, "residual"_a, "reference"_a, "a"_a,
        "bins"_a);
  m.def(
      "set_num_sms", [](int n) { psr_emu::num_sms() = n; }, "n"_a,
      "Streaming multiprocessors the emulated device reports (grid sizes follow it).");
  m.def(
      "set_limits",
      [](int64_t grid_y, int64_t cub_items) {
        psr_emu::grid_y_limit() = grid_y;
        psr_emu::cub_items_limit() = cub_items;
      },
      "grid_y"_a, "cub_items"_a, "Lower gridDim.y and CUB item limits (the ops split their work at them).");
  m.def(
      "launch_grids",
      [] {
        auto grids = psr_emu::launch_log();
        psr_emu::launch_log().clear();
        return grids;
      },
      "The (x, y, z, kernel number) of each launch since the last call.");
  m.def("selftest_reverse", &emu_selftest::reverse, "x"_a, "sync"_a);
  m.def("selftest_divergent_sync", &emu_selftest::divergent_sync);
  m.def("selftest_exited_lanes", &emu_selftest::exited_lanes);
}
