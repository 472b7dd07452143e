// Fused rectangular consolidation (SPEC section 6): pool frame tokens, read the sampled old rows,
// shrunk segmented sum, in one pass over the tokens.
//
//   B[s, n] = scale[n] * ( sum_{k in past_start[n] .. past_start[n+1])  past[s, sample_bins[s, past_idx[k]]]
//                        + sum_{k in frame_start[n] .. frame_start[n+1]) mean_t frames[s, frame_idx[k], t] )
//
// A sample bin of -1 reads zeros. Shared by the CPU and CUDA kernels: the schema's arguments,
// checked and brought to the layouts the kernels read.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "../common/checks.h"

namespace infvideo {

struct ConsolidateInputs {
  at::Tensor frames;       // [S, L, T, e], any strides except a unit stride on e
  at::Tensor past;         // [S, N, e] float32 contiguous; undefined for a first chunk
  at::Tensor sample_bins;  // [S or 1, M] int64 contiguous; undefined for a first chunk
  at::Tensor past_idx;     // [M'] int64: past samples in bin order
  at::Tensor past_start;   // [N + 1] int64: each bin's range in past_idx
  at::Tensor frame_idx;    // [L'] int64: frames in bin order
  at::Tensor frame_start;  // [N + 1] int64: each bin's range in frame_idx
  at::Tensor scale;        // [N] float32: 1 / (c_n + ridge)
  int64_t bin_rows_stride = 0;  // 0 when one row of sample_bins serves every stream
};

inline ConsolidateInputs prepare_rect_consolidate(const at::Tensor& frames, const std::optional<at::Tensor>& past,
                                                  const std::optional<at::Tensor>& sample_bins,
                                                  const at::Tensor& past_idx, const at::Tensor& past_start,
                                                  const at::Tensor& frame_idx, const at::Tensor& frame_start,
                                                  const at::Tensor& scale, std::optional<at::ScalarType> cast_dtype) {
  constexpr const char* op = "infvideo::rect_consolidate";
  check_tensor(frames, op, "frames", {3, 4, 5}, "[S, L, e], [S, L, T, e] or [S, L, h, w, e]");
  check_floating(frames, op, "frames");
  check_tensor(scale, op, "scale", {1}, "[N]");
  check_floating(scale, op, "scale");
  check_same_device(scale, frames, op, "scale", "frames");
  const int64_t streams = frames.size(0), width = frames.size(-1), bins = scale.size(0);
  ConsolidateInputs in;
  if (frames.dim() == 3) {
    in.frames = frames.unsqueeze(2);
  } else if (frames.dim() == 5) {
    in.frames = frames.flatten(2, 3);
  } else {
    in.frames = frames;
  }
  if (in.frames.stride(3) != 1) {
    in.frames = in.frames.contiguous();
  }
  const std::pair<const at::Tensor*, const char*> maps[] = {
      {&past_idx, "past_idx"}, {&past_start, "past_start"}, {&frame_idx, "frame_idx"}, {&frame_start, "frame_start"}};
  for (const auto& [map, name] : maps) {
    TORCH_CHECK(map->defined() && map->dim() == 1, op, ": ", name, " must be a 1-d index tensor");
    check_index(*map, op, name);
    check_same_device(*map, frames, op, name, "frames");
  }
  TORCH_CHECK(past_start.size(0) == bins + 1, op, ": past_start must have N + 1 = ", bins + 1,
              " entries (scale has N = ", bins, "), got ", past_start.size(0));
  TORCH_CHECK(frame_start.size(0) == bins + 1, op, ": frame_start must have N + 1 = ", bins + 1,
              " entries (scale has N = ", bins, "), got ", frame_start.size(0));
  in.past_idx = past_idx.to(at::kLong).contiguous();
  in.past_start = past_start.to(at::kLong).contiguous();
  in.frame_idx = frame_idx.to(at::kLong).contiguous();
  in.frame_start = frame_start.to(at::kLong).contiguous();
  in.scale = scale.to(at::kFloat).contiguous();
  const bool has_past = past.has_value() && past->defined();
  const bool has_bins = sample_bins.has_value() && sample_bins->defined();
  TORCH_CHECK(has_past == has_bins, op, ": past and sample_bins must be given together (a first chunk has neither)");
  if (has_past) {
    check_tensor(*past, op, "past", {3}, "[S, N, e]");
    check_floating(*past, op, "past");
    check_same_device(*past, frames, op, "past", "frames");
    TORCH_CHECK(past->size(0) == streams && past->size(1) == bins && past->size(2) == width, op,
                ": past must have shape [S, N, e] = [", streams, ", ", bins, ", ", width,
                "] (frames' S and e, scale's N), got ", past->sizes());
    check_tensor(*sample_bins, op, "sample_bins", {1, 2}, "[M] or [S or 1, M]");
    check_index(*sample_bins, op, "sample_bins");
    check_same_device(*sample_bins, frames, op, "sample_bins", "frames");
    const at::Tensor rows = sample_bins->dim() == 1 ? sample_bins->unsqueeze(0) : *sample_bins;
    TORCH_CHECK(rows.size(0) == 1 || rows.size(0) == streams, op, ": sample_bins must have 1 or S = ", streams,
                " rows, got ", rows.size(0));
    in.past = past->to(at::kFloat).contiguous();
    in.sample_bins = rows.to(at::kLong).contiguous();
    in.bin_rows_stride = rows.size(0) == 1 ? 0 : in.sample_bins.stride(0);
  }
  TORCH_CHECK(!cast_dtype.has_value() || at::isFloatingType(*cast_dtype), op,
              ": cast_dtype must be None or a floating dtype, got ", *cast_dtype);
  return in;
}

// The outputs: B [S, N, e] float32, and B in cast_dtype (an empty float32 tensor without one).
inline std::tuple<at::Tensor, at::Tensor> consolidate_outputs(const ConsolidateInputs& in,
                                                              std::optional<at::ScalarType> cast_dtype) {
  const auto shape = {in.frames.size(0), in.scale.size(0), in.frames.size(3)};
  auto options = in.frames.options().dtype(at::kFloat);
  at::Tensor out = at::empty(shape, options);
  at::Tensor cast = cast_dtype.has_value() ? at::empty(shape, options.dtype(*cast_dtype)) : at::empty({0}, options);
  return {out, cast};
}

// The kernels (registered for the op's CPU / CUDA keys; called directly by infvideo.cpp).
std::tuple<at::Tensor, at::Tensor> rect_consolidate_cpu(
    const at::Tensor& frames, const std::optional<at::Tensor>& past, const std::optional<at::Tensor>& sample_bins,
    const at::Tensor& past_idx, const at::Tensor& past_start, const at::Tensor& frame_idx,
    const at::Tensor& frame_start, const at::Tensor& scale, bool frames_in_order, int64_t max_per_bin,
    std::optional<at::ScalarType> cast_dtype);
// The backward (rect_consolidate_backward_cpu.cpp): gradients of the frames, one row per frame
// [S, L, e] in frames_dtype (each token's share, g_n / T), and of the old coefficients [S, N, e]
// float32 (empty without with_past), from grad = dL/dB [S, N, e] and the forward's maps.
std::tuple<at::Tensor, at::Tensor> rect_consolidate_backward_cpu(
    const at::Tensor& grad, const std::optional<at::Tensor>& sample_bins, const at::Tensor& past_idx,
    const at::Tensor& past_start, const at::Tensor& frame_idx, const at::Tensor& frame_start, const at::Tensor& scale,
    int64_t num_frames, int64_t tokens, at::ScalarType frames_dtype, bool with_past);
#ifdef INFVIDEO_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> rect_consolidate_cuda(
    const at::Tensor& frames, const std::optional<at::Tensor>& past, const std::optional<at::Tensor>& sample_bins,
    const at::Tensor& past_idx, const at::Tensor& past_start, const at::Tensor& frame_idx,
    const at::Tensor& frame_start, const at::Tensor& scale, bool frames_in_order, int64_t max_per_bin,
    std::optional<at::ScalarType> cast_dtype);
#endif

}  // namespace infvideo
