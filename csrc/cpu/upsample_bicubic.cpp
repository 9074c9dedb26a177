// CPU bicubic upsampling by an integer scale: separable, one output row at a time (a vertical
// 4-tap pass over input rows into a padded row buffer, then a horizontal pass per phase).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "kernels.h"

namespace psr::cpu {

template <typename scalar_t>
Bicubic<scalar_t>::Bicubic(const scalar_t* x_, int64_t H_, int64_t W_, int scale, double a)
    : x(x_), H(H_), W(W_), S(scale), symmetric(a == -0.5) {
  const PhaseTable t = make_phase_table(scale, a);
  for (int r = 0; r < S; ++r) {
    offset[r] = t.offset[r];
    for (int k = 0; k < kTaps; ++k) w[r][k] = static_cast<scalar_t>(t.w[r][k]);
  }
  row_index.resize(static_cast<size_t>(H * S * kTaps));
  for (int64_t oy = 0; oy < H * S; ++oy) {
    const int64_t base = oy / S + offset[oy % S];
    for (int k = 0; k < kTaps; ++k) row_index[oy * kTaps + k] = pad_index(base - 1 + k, H, symmetric);
  }
  const int64_t virt[4] = {-2, -1, W, W + 1};
  for (int k = 0; k < 4; ++k) col_pad[k] = pad_index(virt[k], W, symmetric);
}

namespace {

// Horizontal pass for a compile-time scale: output q * S + r reads the padded row buffer at
// t[q .. q + 4] (input columns q - 2 .. q + 2) with five weights, one of them zero, so every
// phase runs the same straight-line code and the loop over q vectorises.
template <int S, typename scalar_t>
void horizontal(const scalar_t* t, int64_t W, const int* offset, const scalar_t (*w)[kTaps], scalar_t* out) {
  scalar_t w5[S][5];
  for (int r = 0; r < S; ++r) {
    for (int k = 0; k < 5; ++k) w5[r][k] = scalar_t(0);
    for (int k = 0; k < kTaps; ++k) w5[r][k + 1 + offset[r]] = w[r][k];
  }
  for (int64_t q = 0; q < W; ++q) {
    const scalar_t* v = t + q;
    scalar_t* o = out + q * S;
    for (int r = 0; r < S; ++r) {
      o[r] = w5[r][0] * v[0] + w5[r][1] * v[1] + w5[r][2] * v[2] + w5[r][3] * v[3] + w5[r][4] * v[4];
    }
  }
}

}  // namespace

template <typename scalar_t>
void Bicubic<scalar_t>::row(int64_t p, int64_t oy, scalar_t* out, scalar_t* tmp) const {
  const int ry = static_cast<int>(oy % S);
  const int64_t* ri = &row_index[oy * kTaps];
  const scalar_t* plane = x + p * H * W;
  const scalar_t* r0 = plane + ri[0] * W;
  const scalar_t* r1 = plane + ri[1] * W;
  const scalar_t* r2 = plane + ri[2] * W;
  const scalar_t* r3 = plane + ri[3] * W;
  const scalar_t w0 = w[ry][0], w1 = w[ry][1], w2 = w[ry][2], w3 = w[ry][3];
  scalar_t* c = tmp + 2;
  for (int64_t j = 0; j < W; ++j) c[j] = w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j];
  tmp[0] = c[col_pad[0]];
  tmp[1] = c[col_pad[1]];
  tmp[W + 2] = c[col_pad[2]];
  tmp[W + 3] = c[col_pad[3]];
  switch (S) {
    case 1: horizontal<1>(tmp, W, offset, w, out); break;
    case 2: horizontal<2>(tmp, W, offset, w, out); break;
    case 3: horizontal<3>(tmp, W, offset, w, out); break;
    case 4: horizontal<4>(tmp, W, offset, w, out); break;
    case 5: horizontal<5>(tmp, W, offset, w, out); break;
    case 6: horizontal<6>(tmp, W, offset, w, out); break;
    case 7: horizontal<7>(tmp, W, offset, w, out); break;
    default: horizontal<8>(tmp, W, offset, w, out); break;
  }
}

template struct Bicubic<float>;
template struct Bicubic<double>;

at::Tensor upsample_bicubic_cpu(const at::Tensor& x_in, int64_t scale, double a) {
  check_upsample_args("psr::upsample_bicubic", x_in, scale);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int s = static_cast<int>(scale);
  at::Tensor out = at::empty({N, C, H * s, W * s}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "psr_upsample_bicubic_cpu", [&] {
    const Bicubic<scalar_t> b(x.const_data_ptr<scalar_t>(), H, W, s, a);
    const int64_t rows = N * C * b.out_rows();
    const int64_t cols = b.out_cols();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / cols), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tmp(static_cast<size_t>(b.scratch()));
      for (int64_t i = begin; i < end; ++i) b.row(i / b.out_rows(), i % b.out_rows(), o + i * cols, tmp.data());
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(psr, CPU, m) { m.impl("upsample_bicubic", &upsample_bicubic_cpu); }

}  // namespace psr::cpu
