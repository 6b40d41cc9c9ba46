// RoIAlign-3D CUDA kernels over a precomputed roi table.
//
// Maths: vvk/kernels/roi_align_3d/reference.py. The table is (K, 3, 3):
// [axis t, y, x][start, bin, grid], in acc_t (float, or double for double input); the
// batch index is (K,) int64. One thread per output element (k, c, pt, ph, pw), like
// torchvision's roi_align_kernel.cu, with a third (time) axis and a strided input, so
// non-contiguous and channels-last inputs need no copy.
//
// Backward: one thread per grad-output element, atomicAdd of grad * weight / count into the
// 8 trilinear neighbours of a contiguous acc_t buffer. Atomic float adds are order-dependent,
// so the backward is not bitwise deterministic; op.py routes deterministic mode to the reference.

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace {

constexpr int kThreads = 256;

template <typename acc_t>
struct Taps {
  int low;
  int high;
  acc_t w_low;
  acc_t w_high;
};

// torchvision's border rules for one axis: a point outside [-1, size] has zero weight; inside,
// it is clamped to [0, size - 1] and interpolated between floor and floor + 1 (clamped).
template <typename acc_t>
__device__ __forceinline__ Taps<acc_t> axis_taps(acc_t coord, int size) {
  Taps<acc_t> taps{0, 0, acc_t(0), acc_t(0)};
  // Written as !(in range) so that a NaN coordinate also takes this branch.
  if (!(coord >= acc_t(-1) && coord <= acc_t(size))) {
    return taps;
  }
  acc_t c = coord < acc_t(0) ? acc_t(0) : coord;
  c = c > acc_t(size - 1) ? acc_t(size - 1) : c;
  taps.low = static_cast<int>(c);
  taps.high = taps.low + 1 < size ? taps.low + 1 : size - 1;
  const acc_t frac = c - static_cast<acc_t>(taps.low);
  taps.w_low = acc_t(1) - frac;
  taps.w_high = frac;
  return taps;
}

// Sample i of bin p along an axis, in torchvision's operation order.
template <typename acc_t>
__device__ __forceinline__ acc_t sample_coord(const acc_t* axis, int p, int i) {
  return axis[0] + static_cast<acc_t>(p) * axis[1] +
      (static_cast<acc_t>(i) + acc_t(0.5)) * axis[1] / axis[2];
}

struct OutputIndex {
  int64_t k;
  int64_t c;
  int pt;
  int ph;
  int pw;
};

__device__ __forceinline__ OutputIndex split_index(int64_t idx, int64_t C, int PT, int PH, int PW) {
  OutputIndex o;
  o.pw = static_cast<int>(idx % PW);
  o.ph = static_cast<int>((idx / PW) % PH);
  o.pt = static_cast<int>((idx / (PW * PH)) % PT);
  o.c = (idx / (static_cast<int64_t>(PW) * PH * PT)) % C;
  o.k = idx / (static_cast<int64_t>(PW) * PH * PT * C);
  return o;
}

// Calls visit(t, y, x, weight) for the 8 trilinear neighbours of every sample point of output
// bin o (zero weights skipped) and returns the bin's point count max(grid_t * grid_y * grid_x, 1).
template <typename acc_t, typename Visit>
__device__ __forceinline__ acc_t visit_bin(const acc_t* row, const OutputIndex& o, int T, int H, int W, Visit visit) {
  const int gt = static_cast<int>(row[2]);
  const int gy = static_cast<int>(row[5]);
  const int gx = static_cast<int>(row[8]);
  for (int it = 0; it < gt; ++it) {
    const Taps<acc_t> t = axis_taps(sample_coord(row, o.pt, it), T);
    for (int iy = 0; iy < gy; ++iy) {
      const Taps<acc_t> y = axis_taps(sample_coord(row + 3, o.ph, iy), H);
      for (int ix = 0; ix < gx; ++ix) {
        const Taps<acc_t> x = axis_taps(sample_coord(row + 6, o.pw, ix), W);
        const int ts[2] = {t.low, t.high};
        const int ys[2] = {y.low, y.high};
        const int xs[2] = {x.low, x.high};
        const acc_t wts[2] = {t.w_low, t.w_high};
        const acc_t wys[2] = {y.w_low, y.w_high};
        const acc_t wxs[2] = {x.w_low, x.w_high};
#pragma unroll
        for (int corner = 0; corner < 8; ++corner) {
          const int a = corner >> 2, b = (corner >> 1) & 1, d = corner & 1;
          const acc_t w = wts[a] * wys[b] * wxs[d];
          if (w != acc_t(0)) {
            visit(ts[a], ys[b], xs[d], w);
          }
        }
      }
    }
  }
  return static_cast<acc_t>(max(gt * gy * gx, 1));
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_3d_forward_kernel(
    const scalar_t* __restrict__ input,
    const int64_t* __restrict__ batch_index,
    const acc_t* __restrict__ table,
    scalar_t* __restrict__ output,
    int64_t total,
    int64_t C, int T, int H, int W,
    int64_t sb, int64_t sc, int64_t st, int64_t sh, int64_t sw,
    int PT, int PH, int PW) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const OutputIndex o = split_index(idx, C, PT, PH, PW);
    const scalar_t* base = input + batch_index[o.k] * sb + o.c * sc;
    acc_t sum = 0;
    const acc_t count = visit_bin(table + o.k * 9, o, T, H, W, [&](int t, int y, int x, acc_t w) {
      sum += w * static_cast<acc_t>(base[t * st + y * sh + x * sw]);
    });
    output[idx] = static_cast<scalar_t>(sum / count);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_3d_backward_kernel(
    const scalar_t* __restrict__ grad_output,  // (K, C, PT, PH, PW), contiguous
    const int64_t* __restrict__ batch_index,
    const acc_t* __restrict__ table,
    acc_t* __restrict__ grad_input,  // (B, C, T, H, W), contiguous
    int64_t total,
    int64_t C, int T, int H, int W,
    int PT, int PH, int PW) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const OutputIndex o = split_index(idx, C, PT, PH, PW);
    const acc_t* row = table + o.k * 9;
    const acc_t count = static_cast<acc_t>(max(static_cast<int>(row[2]) * static_cast<int>(row[5]) *
                                                   static_cast<int>(row[8]), 1));
    const acc_t g = static_cast<acc_t>(grad_output[idx]) / count;
    if (g == acc_t(0)) {
      continue;
    }
    acc_t* base = grad_input + (batch_index[o.k] * C + o.c) * static_cast<int64_t>(T) * H * W;
    visit_bin(row, o, T, H, W, [&](int t, int y, int x, acc_t w) {
      atomicAdd(base + (static_cast<int64_t>(t) * H + y) * W + x, g * w);
    });
  }
}

int64_t blocks_for(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  // Grid-stride loops cover the rest; 65535 * 32 blocks keeps every SM busy.
  return std::min<int64_t>(std::max<int64_t>(wanted, 1), 65535LL * 32);
}

}  // namespace

at::Tensor roi_align_3d_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& batch_index,
    const at::Tensor& table,
    int64_t PT, int64_t PH, int64_t PW) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = batch_index.size(0);
  const int64_t C = input.size(1);
  at::Tensor output = at::empty({K, C, PT, PH, PW}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor index = batch_index.contiguous();
  const at::Tensor tab = table.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "roi_align_3d_forward", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        TORCH_CHECK(tab.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "roi table dtype mismatch");
        roi_align_3d_forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
            input.data_ptr<scalar_t>(),
            index.data_ptr<int64_t>(),
            tab.data_ptr<acc_t>(),
            output.data_ptr<scalar_t>(),
            total,
            C, static_cast<int>(input.size(2)), static_cast<int>(input.size(3)), static_cast<int>(input.size(4)),
            input.stride(0), input.stride(1), input.stride(2), input.stride(3), input.stride(4),
            static_cast<int>(PT), static_cast<int>(PH), static_cast<int>(PW));
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

at::Tensor roi_align_3d_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& batch_index,
    const at::Tensor& table,
    int64_t B, int64_t C, int64_t T, int64_t H, int64_t W) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor index = batch_index.contiguous();
  const at::Tensor tab = table.contiguous();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, g.scalar_type(), "roi_align_3d_backward", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        TORCH_CHECK(tab.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "roi table dtype mismatch");
        at::Tensor acc = at::zeros({B, C, T, H, W}, g.options().dtype(tab.scalar_type()));
        const int64_t total = g.numel();
        if (total > 0) {
          cudaStream_t stream = at::cuda::getCurrentCUDAStream();
          roi_align_3d_backward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
              g.data_ptr<scalar_t>(),
              index.data_ptr<int64_t>(),
              tab.data_ptr<acc_t>(),
              acc.data_ptr<acc_t>(),
              total,
              C, static_cast<int>(T), static_cast<int>(H), static_cast<int>(W),
              static_cast<int>(g.size(2)), static_cast<int>(g.size(3)), static_cast<int>(g.size(4)));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        result = acc.to(g.scalar_type());
      });
  return result;
}
