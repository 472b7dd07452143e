// CPU kernel of infvideo::rect_consolidate_backward: the gradient of the consolidation
// (rect_consolidate.h) with respect to the frames and the old coefficients.
//
// B is linear in both, so the backward walks the forward's CSR maps in reverse: each bin's
// gradient row g_n = scale_n · dL/dB_n is written to its frames (each token of frame j receives
// g_n / T; the op returns one row per frame, which the autograd broadcasts over the tokens) and
// added into the old rows that its past samples read. Threads split streams and blocks of
// columns: a task owns its columns of every output row of one stream, so the additions into the
// past gradient (several samples may read one old bin) need no atomics and run in one order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "rect_consolidate.h"

namespace infvideo {
namespace {

constexpr const char* kOp = "infvideo::rect_consolidate_backward";
constexpr int64_t kColumns = 64;  // columns per task: whole cache lines of every row it touches

// The kernel reads through the maps with plain pointers: values outside their ranges are rejected
// here, once (a few thousand integers), rather than read out of bounds.
void check_csr(const at::Tensor& start, const at::Tensor& idx, int64_t bins, int64_t limit, const char* start_name,
               const char* idx_name) {
  const int64_t* s = start.data_ptr<int64_t>();
  const int64_t* i = idx.data_ptr<int64_t>();
  TORCH_CHECK(start.size(0) == bins + 1, kOp, ": ", start_name, " must have N + 1 = ", bins + 1, " entries, got ",
              start.size(0));
  TORCH_CHECK(s[0] == 0 && s[bins] <= idx.size(0), kOp, ": ", start_name, " must start at 0 and end within ", idx_name);
  for (int64_t n = 0; n < bins; ++n) {
    TORCH_CHECK(s[n] <= s[n + 1], kOp, ": ", start_name, " must be non-decreasing");
  }
  for (int64_t k = 0; k < s[bins]; ++k) {
    TORCH_CHECK(i[k] >= 0 && i[k] < limit, kOp, ": ", idx_name, " holds ", i[k], ", outside [0, ", limit, ")");
  }
}

template <typename frame_t>
void backward_cpu(const at::Tensor& grad, const at::Tensor& scale, const at::Tensor& frame_idx,
                  const at::Tensor& frame_start, const at::Tensor& past_idx, const at::Tensor& past_start,
                  const at::Tensor& sample_bins, int64_t bin_rows_stride, int64_t tokens, at::Tensor& grad_frames,
                  at::Tensor& grad_past) {
  const int64_t streams = grad.size(0), bins = grad.size(1), width = grad.size(2);
  const int64_t length = grad_frames.size(1);
  const float* g = grad.data_ptr<float>();
  const float* sc = scale.data_ptr<float>();
  const int64_t* f_idx = frame_idx.data_ptr<int64_t>();
  const int64_t* f_start = frame_start.data_ptr<int64_t>();
  const bool with_past = grad_past.numel() > 0;
  const int64_t* p_idx = with_past ? past_idx.data_ptr<int64_t>() : nullptr;
  const int64_t* p_start = with_past ? past_start.data_ptr<int64_t>() : nullptr;
  const int64_t* b = with_past ? sample_bins.data_ptr<int64_t>() : nullptr;
  frame_t* gf = grad_frames.data_ptr<frame_t>();
  float* gp = with_past ? grad_past.data_ptr<float>() : nullptr;
  const float inv_tokens = 1.0f / static_cast<float>(tokens);
  const int64_t blocks = ceil_div(width, kColumns);
  at::parallel_for(0, streams * blocks, 1, [&](int64_t begin, int64_t end) {
    float row[kColumns];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / blocks, c0 = (task % blocks) * kColumns;
      const int64_t count = std::min(kColumns, width - c0);
      for (int64_t n = 0; n < bins; ++n) {
        const float* src_row = g + (s * bins + n) * width + c0;
        for (int64_t c = 0; c < count; ++c) {
          row[c] = src_row[c] * sc[n];
        }
        for (int64_t k = f_start[n]; k < f_start[n + 1]; ++k) {
          frame_t* dst = gf + (s * length + f_idx[k]) * width + c0;
          for (int64_t c = 0; c < count; ++c) {
            dst[c] = static_cast<frame_t>(row[c] * inv_tokens);
          }
        }
        if (!with_past) {
          continue;
        }
        for (int64_t k = p_start[n]; k < p_start[n + 1]; ++k) {
          const int64_t old = b[s * bin_rows_stride + p_idx[k]];
          if (old < 0) {
            continue;  // a sample in no bin read zeros
          }
          float* dst = gp + (s * bins + old) * width + c0;
          for (int64_t c = 0; c < count; ++c) {
            dst[c] += row[c];
          }
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rect_consolidate_backward_cpu(
    const at::Tensor& grad, const std::optional<at::Tensor>& sample_bins, const at::Tensor& past_idx,
    const at::Tensor& past_start, const at::Tensor& frame_idx, const at::Tensor& frame_start, const at::Tensor& scale,
    int64_t num_frames, int64_t tokens, at::ScalarType frames_dtype, bool with_past) {
  check_tensor(grad, kOp, "grad", {3}, "[S, N, e]");
  check_floating(grad, kOp, "grad");
  TORCH_CHECK(grad.device().is_cpu(), kOp, ": the CPU kernel got grad on ", grad.device());
  check_tensor(scale, kOp, "scale", {1}, "[N]");
  TORCH_CHECK(scale.size(0) == grad.size(1), kOp, ": scale has ", scale.size(0), " bins but grad has ", grad.size(1));
  TORCH_CHECK(num_frames >= 1 && tokens >= 1, kOp, ": num_frames and tokens must be >= 1, got ", num_frames, " and ",
              tokens);
  TORCH_CHECK(at::isFloatingType(frames_dtype), kOp, ": frames_dtype must be a floating dtype, got ", frames_dtype);
  const int64_t streams = grad.size(0), bins = grad.size(1), width = grad.size(2);
  const at::Tensor g = grad.to(at::kFloat).contiguous();
  const at::Tensor sc = scale.to(at::kFloat).contiguous();
  const at::Tensor f_idx = frame_idx.to(at::kLong).contiguous(), f_start = frame_start.to(at::kLong).contiguous();
  check_csr(f_start, f_idx, bins, num_frames, "frame_start", "frame_idx");
  at::Tensor p_idx, p_start, rows;
  int64_t bin_rows_stride = 0;
  if (with_past) {
    TORCH_CHECK(sample_bins.has_value() && sample_bins->defined(), kOp, ": sample_bins is required with with_past");
    check_index(*sample_bins, kOp, "sample_bins");
    rows = (sample_bins->dim() == 1 ? sample_bins->unsqueeze(0) : *sample_bins).to(at::kLong).contiguous();
    TORCH_CHECK(rows.dim() == 2 && (rows.size(0) == 1 || rows.size(0) == streams), kOp,
                ": sample_bins must be [M] or [S or 1, M] with S = ", streams, ", got ", sample_bins->sizes());
    bin_rows_stride = rows.size(0) == 1 ? 0 : rows.size(1);
    p_idx = past_idx.to(at::kLong).contiguous();
    p_start = past_start.to(at::kLong).contiguous();
    check_csr(p_start, p_idx, bins, rows.size(1), "past_start", "past_idx");
    const int64_t* bv = rows.data_ptr<int64_t>();
    for (int64_t k = 0; k < rows.numel(); ++k) {
      TORCH_CHECK(bv[k] >= -1 && bv[k] < bins, kOp, ": sample_bins holds ", bv[k], "; old bins lie in [-1, ", bins,
                  ")");
    }
  }
  at::Tensor grad_frames = at::zeros({streams, num_frames, width}, grad.options().dtype(frames_dtype));
  at::Tensor grad_past = with_past ? at::zeros({streams, bins, width}, grad.options().dtype(at::kFloat))
                                   : at::empty({0}, grad.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, frames_dtype, "rect_consolidate_backward_cpu", [&] {
    backward_cpu<scalar_t>(g, sc, f_idx, f_start, p_idx, p_start, rows, bin_rows_stride, tokens, grad_frames,
                           grad_past);
  });
  return {grad_frames, grad_past};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) {
  m.impl("rect_consolidate_backward",
         &infvideo::WithBackendArgument<decltype(infvideo::rect_consolidate_backward_cpu),
                                        infvideo::rect_consolidate_backward_cpu>::call);
}
