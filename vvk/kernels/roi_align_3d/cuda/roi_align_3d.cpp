// Python bindings and argument checks for the RoIAlign-3D CUDA kernels (roi_align_3d_kernel.cu).
// Built on first use by vvk.kernels.backends.load_cuda_extension; called from op.py.

// ATen plus torch's pybind11 type casters: a fraction of <torch/extension.h>'s compile time.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

at::Tensor roi_align_3d_forward_cuda(
    const at::Tensor& input, const at::Tensor& batch_index, const at::Tensor& table,
    int64_t PT, int64_t PH, int64_t PW);

at::Tensor roi_align_3d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& batch_index, const at::Tensor& table,
    int64_t B, int64_t C, int64_t T, int64_t H, int64_t W);

namespace {

void check_rois(const at::Tensor& ref, const at::Tensor& batch_index, const at::Tensor& table) {
  TORCH_CHECK(ref.is_cuda(), "roi_align_3d (cuda): tensors must be on a CUDA device");
  TORCH_CHECK(batch_index.device() == ref.device() && table.device() == ref.device(),
              "roi_align_3d (cuda): batch_index and table must be on the input's device");
  TORCH_CHECK(batch_index.dim() == 1 && batch_index.scalar_type() == at::kLong,
              "roi_align_3d (cuda): batch_index must be a 1-D int64 tensor");
  TORCH_CHECK(table.dim() == 3 && table.size(0) == batch_index.size(0) && table.size(1) == 3 &&
                  table.size(2) == 3,
              "roi_align_3d (cuda): table must have shape (K, 3, 3)");
}

at::Tensor forward(const at::Tensor& input, const at::Tensor& batch_index, const at::Tensor& table,
                   int64_t PT, int64_t PH, int64_t PW) {
  check_rois(input, batch_index, table);
  TORCH_CHECK(input.dim() == 5, "roi_align_3d (cuda): input must be (B, C, T, H, W)");
  return roi_align_3d_forward_cuda(input, batch_index, table, PT, PH, PW);
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& batch_index, const at::Tensor& table,
                    int64_t B, int64_t C, int64_t T, int64_t H, int64_t W) {
  check_rois(grad, batch_index, table);
  TORCH_CHECK(grad.dim() == 5 && grad.size(1) == C, "roi_align_3d (cuda): grad must be (K, C, pt, ph, pw)");
  return roi_align_3d_backward_cuda(grad, batch_index, table, B, C, T, H, W);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vvk RoIAlign-3D CUDA kernels";
  m.def("forward", &forward, "RoIAlign-3D forward over a roi table");
  m.def("backward", &backward, "RoIAlign-3D backward (input gradient) over a roi table");
}
