// Masked log-sum-exp of scaled similarities (contrastive denominator), CUDA, forward + backward.
//
// Maths: vvk/kernels/contrastive/reference.py. lse_i = logsumexp over kept j of
// scale * <q_i, k_j>; a column is dropped when group_q[i] == group_k[j] and j is not one of
// row i's positives. No N x M buffer: the matrix is walked in 32 x 32 tiles with an online
// log-sum-exp, and the backward recomputes p_ij = exp(s_ij - lse_i) tile by tile.
//
// Layout of a tile step: 256 threads = 8 warps; thread (warp w, lane l) owns entries
// (row w + 8 i, column l), i < 4, so a warp holds whole tile rows and row reductions are warp
// shuffles. q and k chunks of 32 features go through shared memory (rows padded to 33 to avoid
// bank conflicts). The backward runs one kernel twice, without atomics (deterministic): dq per
// row block and dk per column block, each holding its output rows in registers (D <= 512).
//
// Caveat: plain FMA arithmetic in acc_t (float, or double for double input), no tensor cores:
// correct for every dtype but far slower than the Triton kernels on bf16/fp16 at large N.

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <optional>
#include <vector>

namespace {

constexpr int kTile = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerThread = kTile / kWarps;  // 4
constexpr int kMaxChunks = 16;                    // D <= 16 * 32 = 512

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -static_cast<acc_t>(INFINITY);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const acc_t other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t, typename acc_t>
struct Problem {
  const scalar_t* q;  // (n, d), strides sqn, sqd
  const scalar_t* k;  // (m, d), strides skn, skd
  const acc_t* scale;  // one element
  const int64_t* positives;  // (n, n_pos), row stride spn; read only with groups
  const int64_t* group_q;  // (n,) or nullptr: no groups, nothing dropped
  const int64_t* group_k;  // (m,)
  int64_t n, m, d, n_pos;
  int64_t sqn, sqd, skn, skd, spn;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ bool kept(const Problem<scalar_t, acc_t>& p, int64_t row, int64_t col) {
  if (p.group_q == nullptr || p.group_q[row] != p.group_k[col]) {
    return true;
  }
  for (int64_t j = 0; j < p.n_pos; ++j) {
    if (p.positives[row * p.spn + j] == col) {
      return true;
    }
  }
  return false;
}

// Loads a 32 x 32 chunk (rows row0.., features d0..) of x into tile, zero outside.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(
    acc_t (&tile)[kTile][kTile + 1], const scalar_t* x, int64_t rows, int64_t dims, int64_t stride_n,
    int64_t stride_d, int64_t row0, int64_t d0) {
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int r = e / kTile, c = e % kTile;
    const int64_t row = row0 + r, dim = d0 + c;
    tile[r][c] = (row < rows && dim < dims) ? static_cast<acc_t>(x[row * stride_n + dim * stride_d]) : acc_t(0);
  }
}

// s[i] = scale * <q[row0 + warp + 8 i], k[col0 + lane]>, or -inf outside the matrix or dropped.
// Every thread of the block must call it (it synchronises).
template <typename scalar_t, typename acc_t>
__device__ void score_tile(
    const Problem<scalar_t, acc_t>& p, int64_t row0, int64_t col0, acc_t (&qs)[kTile][kTile + 1],
    acc_t (&ks)[kTile][kTile + 1], acc_t (&s)[kRowsPerThread]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  acc_t acc[kRowsPerThread] = {};
  for (int64_t d0 = 0; d0 < p.d; d0 += kTile) {
    load_chunk(qs, p.q, p.n, p.d, p.sqn, p.sqd, row0, d0);
    load_chunk(ks, p.k, p.m, p.d, p.skn, p.skd, col0, d0);
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTile; ++c) {
      const acc_t kv = ks[lane][c];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        acc[i] += qs[warp + kWarps * i][c] * kv;
      }
    }
    __syncthreads();
  }
  const acc_t scale = *p.scale;
  const int64_t col = col0 + lane;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t row = row0 + warp + kWarps * i;
    s[i] = (row < p.n && col < p.m && kept(p, row, col)) ? acc[i] * scale : neg_inf<acc_t>();
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) lse_forward_kernel(Problem<scalar_t, acc_t> p, acc_t* lse) {
  __shared__ acc_t qs[kTile][kTile + 1];
  __shared__ acc_t ks[kTile][kTile + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  acc_t run_max[kRowsPerThread], run_sum[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    run_max[i] = neg_inf<acc_t>();
    run_sum[i] = acc_t(0);
  }
  for (int64_t col0 = 0; col0 < p.m; col0 += kTile) {
    acc_t s[kRowsPerThread];
    score_tile(p, row0, col0, qs, ks, s);
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const acc_t tile_max = warp_max(s[i]);
      const acc_t new_max = tile_max > run_max[i] ? tile_max : run_max[i];
      // Rows with every column so far dropped keep max -inf: shift them by 0, not -inf.
      const acc_t shift = new_max == neg_inf<acc_t>() ? acc_t(0) : new_max;
      const acc_t tile_sum = warp_sum(exp_(s[i] - shift));
      run_sum[i] = run_sum[i] * exp_(run_max[i] - shift) + tile_sum;
      run_max[i] = new_max;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t row = row0 + warp + kWarps * i;
      if (row < p.n) {
        lse[row] = run_max[i] + log_(run_sum[i]);
      }
    }
  }
}

// p_ij * g_i for one tile entry; a fully dropped row (lse = -inf) has p = 0.
template <typename acc_t>
__device__ __forceinline__ acc_t weighted_prob(acc_t s, acc_t lse, acc_t g) {
  if (s == neg_inf<acc_t>()) {
    return acc_t(0);
  }
  return exp_(s - (lse == neg_inf<acc_t>() ? acc_t(0) : lse)) * g;
}

// FOR_KEYS = false: dq[i] = scale * sum_j g_i p_ij k_j for the 32 rows i of this block, walking
// the column tiles. FOR_KEYS = true: dk[j] = scale * sum_i g_i p_ij q_i for the 32 columns j of
// this block, walking the row tiles. Thread (warp w, lane l) accumulates output rows w + 8 a
// (a < 4), features c * 32 + l (c < CHUNKS), in registers.
template <typename scalar_t, typename acc_t, int CHUNKS, bool FOR_KEYS>
__global__ void __launch_bounds__(kThreads) lse_backward_kernel(
    Problem<scalar_t, acc_t> p, const acc_t* lse, const acc_t* grad, scalar_t* out) {
  __shared__ acc_t qs[kTile][kTile + 1];
  __shared__ acc_t ks[kTile][kTile + 1];
  __shared__ acc_t gs[kTile][kTile + 1];  // g_i p_ij of the tile, [row i][column j]
  __shared__ acc_t xs[kTile][kTile + 1];  // a 32 x 32 chunk of the other side's features
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t fixed0 = static_cast<int64_t>(blockIdx.x) * kTile;  // first output row
  const int64_t walked = FOR_KEYS ? p.n : p.m;
  acc_t acc[kRowsPerThread][CHUNKS] = {};
  for (int64_t walk0 = 0; walk0 < walked; walk0 += kTile) {
    const int64_t row0 = FOR_KEYS ? walk0 : fixed0;
    const int64_t col0 = FOR_KEYS ? fixed0 : walk0;
    acc_t s[kRowsPerThread];
    score_tile(p, row0, col0, qs, ks, s);
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t row = row0 + warp + kWarps * i;
      const acc_t row_lse = row < p.n ? lse[row] : acc_t(0);
      const acc_t row_grad = row < p.n ? grad[row] : acc_t(0);
      gs[warp + kWarps * i][lane] = weighted_prob(s[i], row_lse, row_grad);
    }
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (c * kTile < p.d) {  // uniform across the block
        if (FOR_KEYS) {
          load_chunk(xs, p.q, p.n, p.d, p.sqn, p.sqd, row0, static_cast<int64_t>(c) * kTile);
        } else {
          load_chunk(xs, p.k, p.m, p.d, p.skn, p.skd, col0, static_cast<int64_t>(c) * kTile);
        }
        __syncthreads();
        for (int j = 0; j < kTile; ++j) {
          const acc_t x = xs[j][lane];
#pragma unroll
          for (int a = 0; a < kRowsPerThread; ++a) {
            // dk: sum over tile rows j of gs[j][out column]; dq: sum over tile columns j of gs[out row][j].
            acc[a][c] += (FOR_KEYS ? gs[j][warp + kWarps * a] : gs[warp + kWarps * a][j]) * x;
          }
        }
        __syncthreads();
      }
    }
  }
  const acc_t scale = *p.scale;
  const int64_t outputs = FOR_KEYS ? p.m : p.n;
#pragma unroll
  for (int a = 0; a < kRowsPerThread; ++a) {
    const int64_t row = fixed0 + warp + kWarps * a;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t dim = static_cast<int64_t>(c) * kTile + lane;
      if (row < outputs && dim < p.d) {
        out[row * p.d + dim] = static_cast<scalar_t>(acc[a][c] * scale);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
Problem<scalar_t, acc_t> make_problem(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& positives,
    const std::optional<at::Tensor>& group_q, const std::optional<at::Tensor>& group_k) {
  Problem<scalar_t, acc_t> p{};
  p.q = q.data_ptr<scalar_t>();
  p.k = k.data_ptr<scalar_t>();
  p.scale = scale.data_ptr<acc_t>();
  p.n = q.size(0);
  p.m = k.size(0);
  p.d = q.size(1);
  p.sqn = q.stride(0);
  p.sqd = q.stride(1);
  p.skn = k.stride(0);
  p.skd = k.stride(1);
  if (group_q.has_value()) {
    p.group_q = group_q->data_ptr<int64_t>();
    p.group_k = group_k->data_ptr<int64_t>();
    if (positives.has_value()) {
      p.positives = positives->data_ptr<int64_t>();
      p.n_pos = positives->size(1);
      p.spn = positives->stride(0);
    }
  }
  return p;
}

// Launches lse_backward_kernel<scalar_t, acc_t, CHUNKS, FOR_KEYS>: CHUNKS = 4 for d <= 128,
// else kMaxChunks (d <= 512). Two sizes only: every instance multiplies the first-use build time.
template <typename scalar_t, typename acc_t, bool FOR_KEYS>
void launch_backward(const Problem<scalar_t, acc_t>& p, const acc_t* lse, const acc_t* grad, scalar_t* out,
                     unsigned int blocks, cudaStream_t stream) {
  if (p.d <= 4 * kTile) {
    lse_backward_kernel<scalar_t, acc_t, 4, FOR_KEYS><<<blocks, kThreads, 0, stream>>>(p, lse, grad, out);
  } else {
    lse_backward_kernel<scalar_t, acc_t, kMaxChunks, FOR_KEYS><<<blocks, kThreads, 0, stream>>>(p, lse, grad, out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kTile - 1) / kTile);
}

}  // namespace

int64_t similarity_lse_max_dim() {
  return static_cast<int64_t>(kMaxChunks) * kTile;
}

at::Tensor similarity_lse_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& positives,
    const std::optional<at::Tensor>& group_q, const std::optional<at::Tensor>& group_k) {
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor lse = at::empty({q.size(0)}, q.options().dtype(scale.scalar_type()));
  if (q.size(0) == 0) {
    return lse;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, q.scalar_type(), "similarity_lse_forward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto p = make_problem<scalar_t, acc_t>(q, k, scale, positives, group_q, group_k);
    lse_forward_kernel<scalar_t, acc_t><<<blocks_for(p.n), kThreads, 0, stream>>>(p, lse.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lse;
}

std::vector<at::Tensor> similarity_lse_backward_cuda(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale, const at::Tensor& lse,
    const std::optional<at::Tensor>& positives, const std::optional<at::Tensor>& group_q,
    const std::optional<at::Tensor>& group_k) {
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::zeros(q.sizes(), q.options());
  at::Tensor dk = at::zeros(k.sizes(), k.options());
  if (q.size(0) == 0 || k.size(0) == 0) {
    return {dq, dk};
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, q.scalar_type(), "similarity_lse_backward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto p = make_problem<scalar_t, acc_t>(q, k, scale, positives, group_q, group_k);
    const acc_t* lse_ptr = lse.data_ptr<acc_t>();
    const acc_t* grad_ptr = grad.data_ptr<acc_t>();
    launch_backward<scalar_t, acc_t, false>(p, lse_ptr, grad_ptr, dq.data_ptr<scalar_t>(), blocks_for(p.n), stream);
    launch_backward<scalar_t, acc_t, true>(p, lse_ptr, grad_ptr, dk.data_ptr<scalar_t>(), blocks_for(p.m), stream);
  });
  return {dq, dk};
}
