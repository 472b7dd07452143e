// The C++ entry points of csrc/infvideo.h: typed calls through the dispatcher.
#include "infvideo.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace infvideo {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rect_consolidate(const at::Tensor& frames, const std::optional<at::Tensor>& past,
                                                    const std::optional<at::Tensor>& sample_bins,
                                                    const at::Tensor& past_idx, const at::Tensor& past_start,
                                                    const at::Tensor& frame_idx, const at::Tensor& frame_start,
                                                    const at::Tensor& scale,
                                                    std::optional<at::ScalarType> cast_dtype) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, c10::SymInt,
      std::optional<at::ScalarType>)>("infvideo::rect_consolidate_csrc");
  return handle.call(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, false,
                     c10::SymInt(1), cast_dtype);
}

std::tuple<at::Tensor, at::Tensor> slot_attention(const at::Tensor& query, const at::Tensor& keys,
                                                  const at::Tensor& values, int64_t num_heads,
                                                  const std::optional<at::Tensor>& slot_log_weight,
                                                  std::optional<double> null_log_weight) {
  static const auto handle =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt,
                                            const std::optional<at::Tensor>&, std::optional<double>)>(
          "infvideo::slot_attention_csrc");
  return handle.call(query, keys, values, c10::SymInt(num_heads), slot_log_weight, null_log_weight);
}

at::Tensor quantile_bins(const at::Tensor& mass, int64_t num_samples) {
  static const auto handle = op<at::Tensor(const at::Tensor&, c10::SymInt)>("infvideo::quantile_bins_csrc");
  return handle.call(mass, c10::SymInt(num_samples));
}

}  // namespace infvideo
