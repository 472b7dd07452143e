// The C++ entry points of csrc/infvideo.h: the kernel of the tensors' device, called directly
// (the ops' schemas live in Python, so a libtorch program has no dispatcher entry for them).
#include "infvideo.h"

#include "attention/slot_attention.h"
#include "consolidate/rect_consolidate.h"
#include "sampling/quantile_bins.h"

namespace infvideo {
namespace {

bool on_cuda(const at::Tensor& t) {
#ifdef INFVIDEO_WITH_CUDA
  return t.is_cuda();
#else
  TORCH_CHECK(!t.is_cuda(), "infvideo: this build has no CUDA kernels (configure with -DINFVIDEO_WITH_CUDA=ON)");
  return false;
#endif
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rect_consolidate(const at::Tensor& frames, const std::optional<at::Tensor>& past,
                                                    const std::optional<at::Tensor>& sample_bins,
                                                    const at::Tensor& past_idx, const at::Tensor& past_start,
                                                    const at::Tensor& frame_idx, const at::Tensor& frame_start,
                                                    const at::Tensor& scale,
                                                    std::optional<at::ScalarType> cast_dtype) {
#ifdef INFVIDEO_WITH_CUDA
  if (on_cuda(frames)) {
    return rect_consolidate_cuda(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale,
                                 false, 1, cast_dtype);
  }
#endif
  on_cuda(frames);
  return rect_consolidate_cpu(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, false,
                              1, cast_dtype);
}

std::tuple<at::Tensor, at::Tensor> slot_attention(const at::Tensor& query, const at::Tensor& keys,
                                                  const at::Tensor& values, int64_t num_heads,
                                                  const std::optional<at::Tensor>& slot_log_weight,
                                                  std::optional<double> null_log_weight) {
#ifdef INFVIDEO_WITH_CUDA
  if (on_cuda(query)) {
    return slot_attention_cuda(query, keys, values, num_heads, slot_log_weight, null_log_weight);
  }
#endif
  on_cuda(query);
  return slot_attention_cpu(query, keys, values, num_heads, slot_log_weight, null_log_weight);
}

std::tuple<at::Tensor, at::Tensor> rect_consolidate_backward(
    const at::Tensor& grad, const std::optional<at::Tensor>& sample_bins, const at::Tensor& past_idx,
    const at::Tensor& past_start, const at::Tensor& frame_idx, const at::Tensor& frame_start, const at::Tensor& scale,
    int64_t num_frames, int64_t tokens, at::ScalarType frames_dtype, bool with_past) {
  TORCH_CHECK(!grad.is_cuda(), "infvideo::rect_consolidate_backward: no C++ CUDA kernel (the Python op's CUDA "
              "backward is plain torch); got grad on ", grad.device());
  return rect_consolidate_backward_cpu(grad, sample_bins, past_idx, past_start, frame_idx, frame_start, scale,
                                       num_frames, tokens, frames_dtype, with_past);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> slot_attention_backward(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_mass, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, int64_t num_heads,
    const std::optional<at::Tensor>& slot_log_weight, std::optional<double> null_log_weight) {
  TORCH_CHECK(!query.is_cuda(), "infvideo::slot_attention_backward: no C++ CUDA kernel (the Python op's CUDA "
              "backward is plain torch); got query on ", query.device());
  return slot_attention_backward_cpu(grad_context, grad_mass, query, keys, values, num_heads, slot_log_weight,
                                     null_log_weight);
}

at::Tensor quantile_bins(const at::Tensor& mass, int64_t num_samples) {
#ifdef INFVIDEO_WITH_CUDA
  if (on_cuda(mass)) {
    return quantile_bins_cuda(mass, num_samples);
  }
#endif
  on_cuda(mass);
  return quantile_bins_cpu(mass, num_samples);
}

}  // namespace infvideo
