// Python bindings and argument checks for the similarity log-sum-exp CUDA kernels
// (similarity_lse_kernel.cu). Built on first use by vvk.kernels.backends.load_cuda_extension.

// ATen plus torch's pybind11 type casters: a fraction of <torch/extension.h>'s compile time.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <vector>

int64_t similarity_lse_max_dim();

at::Tensor similarity_lse_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& positives,
    const std::optional<at::Tensor>& group_q, const std::optional<at::Tensor>& group_k);

std::vector<at::Tensor> similarity_lse_backward_cuda(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale, const at::Tensor& lse,
    const std::optional<at::Tensor>& positives, const std::optional<at::Tensor>& group_q,
    const std::optional<at::Tensor>& group_k);

namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
                  const std::optional<at::Tensor>& positives, const std::optional<at::Tensor>& group_q,
                  const std::optional<at::Tensor>& group_k) {
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && scale.device() == q.device(),
              "similarity_lse (cuda): q, k and scale must be on one CUDA device");
  TORCH_CHECK(q.dim() == 2 && k.dim() == 2 && q.size(1) == k.size(1), "similarity_lse (cuda): q (N, D), k (M, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "similarity_lse (cuda): q and k must share a dtype");
  TORCH_CHECK(q.size(1) <= similarity_lse_max_dim(), "similarity_lse (cuda): D must be <= ", similarity_lse_max_dim());
  TORCH_CHECK(scale.numel() == 1 && scale.is_contiguous(), "similarity_lse (cuda): scale must have one element");
  TORCH_CHECK(group_q.has_value() == group_k.has_value(), "similarity_lse (cuda): give both groups or neither");
  if (group_q.has_value()) {
    TORCH_CHECK(group_q->scalar_type() == at::kLong && group_k->scalar_type() == at::kLong &&
                    group_q->is_contiguous() && group_k->is_contiguous() && group_q->numel() == q.size(0) &&
                    group_k->numel() == k.size(0),
                "similarity_lse (cuda): groups must be contiguous int64 (N,) and (M,)");
  }
  if (positives.has_value()) {
    TORCH_CHECK(positives->scalar_type() == at::kLong && positives->dim() == 2 && positives->size(0) == q.size(0) &&
                    positives->stride(1) == 1,
                "similarity_lse (cuda): positives must be int64 (N, P) with unit column stride");
  }
}

at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
                   const std::optional<at::Tensor>& positives, const std::optional<at::Tensor>& group_q,
                   const std::optional<at::Tensor>& group_k) {
  check_inputs(q, k, scale, positives, group_q, group_k);
  return similarity_lse_forward_cuda(q, k, scale, positives, group_q, group_k);
}

std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& scale, const at::Tensor& lse,
                                 const std::optional<at::Tensor>& positives, const std::optional<at::Tensor>& group_q,
                                 const std::optional<at::Tensor>& group_k) {
  check_inputs(q, k, scale, positives, group_q, group_k);
  TORCH_CHECK(grad.scalar_type() == scale.scalar_type() && lse.scalar_type() == scale.scalar_type() &&
                  grad.is_contiguous() && lse.is_contiguous() && grad.numel() == q.size(0) &&
                  lse.numel() == q.size(0),
              "similarity_lse (cuda): grad and lse must be contiguous (N,) in the accumulation dtype");
  return similarity_lse_backward_cuda(grad, q, k, scale, lse, positives, group_q, group_k);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vvk masked similarity log-sum-exp CUDA kernels";
  m.def("forward", &forward, "lse_i = logsumexp over kept j of scale * <q_i, k_j>");
  m.def("backward", &backward, "(dq, dk) of sum_i grad_i * lse_i");
  m.def("max_dim", &similarity_lse_max_dim, "largest feature dimension the kernels accept");
}
