// The schemas of the csrc ops: one TORCH_LIBRARY for the `infvideo` namespace.
//
// Each op repeats the schema of its Triton twin in infvideo/ops/ (registered from Python with
// torch.library.custom_op in the same namespace, as a FRAGMENT) under the name `<op>_csrc`: on a
// CUDA tensor both a Triton and a CUDA kernel exist, and one schema can hold only one kernel per
// device, so the Python wrappers pick the op by backend. The CPU and CUDA kernels are registered
// next to their code with TORCH_LIBRARY_IMPL; fake (meta) kernels are registered from Python.
#include <torch/library.h>

namespace infvideo {

// Whether this build holds the CUDA kernels (`infvideo.info()` and the backend choice ask).
bool csrc_has_cuda() {
#ifdef INFVIDEO_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace infvideo

TORCH_LIBRARY(infvideo, m) {
  m.def(
      "rect_consolidate_csrc(Tensor frames, Tensor? past, Tensor? sample_bins, Tensor past_idx, "
      "Tensor past_start, Tensor frame_idx, Tensor frame_start, Tensor scale, bool frames_in_order=False, "
      "SymInt max_per_bin=1, ScalarType? cast_dtype=None) -> (Tensor, Tensor)");
  m.def(
      "slot_attention_csrc(Tensor query, Tensor keys, Tensor values, SymInt num_heads, "
      "Tensor? slot_log_weight, float? null_log_weight) -> (Tensor, Tensor)");
  // CPU only: the CPU step's attention with the projections folded into the queries.
  m.def(
      "factored_slot_attention_csrc(Tensor query, Tensor coef, Tensor w_key, Tensor w_value, Tensor? b_value, "
      "SymInt num_heads, Tensor? slot_log_weight) -> (Tensor, Tensor)");
  m.def("quantile_bins_csrc(Tensor mass, SymInt num_samples) -> Tensor");
  m.def("csrc_has_cuda() -> bool", &infvideo::csrc_has_cuda);
}
