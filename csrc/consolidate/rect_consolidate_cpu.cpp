// CPU kernel of infvideo::rect_consolidate_csrc (see rect_consolidate.h for the math).
//
// One pass over the tokens: every output row B[s, n] is summed in a small float32 buffer from
// its own frames' tokens and sampled old rows, scaled, and written once (plus its cast copy), so
// no pooled [S, L, e] copy and no [M + L, e] matrix is ever formed. The work is split across
// threads by streams and blocks of columns, never by bins: bins receive very different row
// counts (the frames' bins hold T·L/N token rows each, the past's a few rows), while every block
// of columns costs the same. Each thread takes one wide block per stream, so its reads of a token
// row stay contiguous.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "rect_consolidate.h"

namespace infvideo {
namespace {

// acc += row, in a loop the compiler vectorises (unit stride, no aliasing).
template <typename T>
inline void add_row(float* __restrict acc, const T* __restrict row, int64_t count) {
  for (int64_t c = 0; c < count; ++c) {
    acc[c] += static_cast<float>(row[c]);
  }
}

// acc += four rows: fewer passes over acc per byte of tokens read.
template <typename T>
inline void add_four_rows(float* __restrict acc, const T* __restrict r0, const T* __restrict r1,
                          const T* __restrict r2, const T* __restrict r3, int64_t count) {
  for (int64_t c = 0; c < count; ++c) {
    acc[c] += (static_cast<float>(r0[c]) + static_cast<float>(r1[c])) +
              (static_cast<float>(r2[c]) + static_cast<float>(r3[c]));
  }
}

// Sum of one frame's token rows (row stride `stride`), added to acc as their mean.
template <typename T>
void add_frame_mean(float* __restrict acc, float* __restrict frame_sum, const T* first_row, int64_t tokens,
                    int64_t stride, int64_t count) {
  std::fill(frame_sum, frame_sum + count, 0.0f);
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) {
    const T* row = first_row + t * stride;
    add_four_rows(frame_sum, row, row + stride, row + 2 * stride, row + 3 * stride, count);
  }
  for (; t < tokens; ++t) {
    add_row(frame_sum, first_row + t * stride, count);
  }
  const float inv_tokens = 1.0f / static_cast<float>(tokens);
  for (int64_t c = 0; c < count; ++c) {
    acc[c] += frame_sum[c] * inv_tokens;
  }
}

template <typename T>
void store_scaled(T* __restrict dst, const float* __restrict acc, float scale, int64_t count) {
  for (int64_t c = 0; c < count; ++c) {
    dst[c] = static_cast<T>(acc[c] * scale);
  }
}

// The kernel reads through these maps with plain pointers: out-of-range values are rejected
// here, once (a few thousand integers), rather than read out of bounds.
void check_map_values(const ConsolidateInputs& in) {
  constexpr const char* op = "infvideo::rect_consolidate_csrc";
  const int64_t bins = in.scale.size(0), length = in.frames.size(1);
  const auto check_csr = [&](const at::Tensor& start, const at::Tensor& idx, int64_t limit, const char* start_name,
                             const char* idx_name, const char* what) {
    const int64_t* s = start.data_ptr<int64_t>();
    const int64_t* i = idx.data_ptr<int64_t>();
    TORCH_CHECK(s[0] == 0 && s[bins] <= idx.size(0), op, ": ", start_name, " must start at 0 and end within ",
                idx_name, " (", idx.size(0), " entries)");
    for (int64_t n = 0; n < bins; ++n) {
      TORCH_CHECK(s[n] <= s[n + 1], op, ": ", start_name, " must be non-decreasing");
    }
    for (int64_t k = 0; k < s[bins]; ++k) {
      TORCH_CHECK(i[k] >= 0 && i[k] < limit, op, ": ", idx_name, " holds ", i[k], ", outside the ", limit, " ", what);
    }
  };
  check_csr(in.frame_start, in.frame_idx, length, "frame_start", "frame_idx", "frames (frames' dim 1)");
  if (in.past.defined()) {
    const int64_t samples = in.sample_bins.size(1);
    check_csr(in.past_start, in.past_idx, samples, "past_start", "past_idx", "samples (sample_bins' last dim)");
    const int64_t* b = in.sample_bins.data_ptr<int64_t>();
    for (int64_t k = 0; k < in.sample_bins.numel(); ++k) {
      TORCH_CHECK(b[k] >= -1 && b[k] < bins, op, ": sample_bins holds ", b[k], "; old bins lie in [-1, ", bins, ")");
    }
  }
}

template <typename frame_t>
void consolidate_cpu(const ConsolidateInputs& in, at::Tensor& out, at::Tensor& cast) {
  const int64_t streams = in.frames.size(0), tokens = in.frames.size(2), width = in.frames.size(3);
  const int64_t bins = in.scale.size(0);
  const int64_t stride_s = in.frames.stride(0), stride_l = in.frames.stride(1), stride_t = in.frames.stride(2);
  const frame_t* frames = in.frames.data_ptr<frame_t>();
  const float* past = in.past.defined() ? in.past.data_ptr<float>() : nullptr;
  const int64_t* sample_bins = in.past.defined() ? in.sample_bins.data_ptr<int64_t>() : nullptr;
  const int64_t* past_idx = in.past_idx.data_ptr<int64_t>();
  const int64_t* past_start = in.past_start.data_ptr<int64_t>();
  const int64_t* frame_idx = in.frame_idx.data_ptr<int64_t>();
  const int64_t* frame_start = in.frame_start.data_ptr<int64_t>();
  const float* scale = in.scale.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const bool with_cast = cast.numel() > 0;

  // Blocks per stream so that streams × blocks divides evenly among the threads; block widths
  // are whole 64-byte lines of float32 columns.
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = std::min(threads / std::gcd(streams, threads), ceil_div(width, 16));
  const int64_t block_width = ceil_div(ceil_div(width, blocks), 16) * 16;

  at::parallel_for(0, streams * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(block_width), frame_sum(block_width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / blocks;
      const int64_t c0 = (task % blocks) * block_width;
      const int64_t count = std::min(block_width, width - c0);
      if (count <= 0) {
        continue;
      }
      const frame_t* stream_frames = frames + s * stride_s + c0;
      for (int64_t n = 0; n < bins; ++n) {
        std::fill(acc.begin(), acc.begin() + count, 0.0f);
        for (int64_t k = frame_start[n]; k < frame_start[n + 1]; ++k) {
          add_frame_mean(acc.data(), frame_sum.data(), stream_frames + frame_idx[k] * stride_l, tokens, stride_t,
                         count);
        }
        if (past != nullptr) {
          const int64_t* stream_bins = sample_bins + s * in.bin_rows_stride;
          for (int64_t k = past_start[n]; k < past_start[n + 1]; ++k) {
            const int64_t src = stream_bins[past_idx[k]];
            if (src >= 0) {  // -1: the sample lies in no old bin and reads zeros
              add_row(acc.data(), past + (s * bins + src) * width + c0, count);
            }
          }
        }
        const int64_t offset = (s * bins + n) * width + c0;
        store_scaled(result + offset, acc.data(), scale[n], count);
        if (with_cast) {
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cast.scalar_type(), "rect_consolidate_cast", [&] {
            store_scaled(cast.data_ptr<scalar_t>() + offset, acc.data(), scale[n], count);
          });
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rect_consolidate_cpu(
    const at::Tensor& frames, const std::optional<at::Tensor>& past, const std::optional<at::Tensor>& sample_bins,
    const at::Tensor& past_idx, const at::Tensor& past_start, const at::Tensor& frame_idx,
    const at::Tensor& frame_start, const at::Tensor& scale, bool /*frames_in_order: each frame's rows are
    visited in order anyway*/, int64_t /*max_per_bin: a Triton block-size hint*/,
    std::optional<at::ScalarType> cast_dtype) {
  ConsolidateInputs in =
      prepare_rect_consolidate(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, cast_dtype);
  TORCH_CHECK(in.frames.device().is_cpu(), "infvideo::rect_consolidate_csrc: the CPU kernel got frames on ",
              in.frames.device());
  check_map_values(in);
  auto [out, cast] = consolidate_outputs(in, cast_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.frames.scalar_type(), "rect_consolidate_cpu",
                                  [&] { consolidate_cpu<scalar_t>(in, out, cast); });
  return {out, cast};
}

}  // namespace
}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) { m.impl("rect_consolidate_csrc", &infvideo::rect_consolidate_cpu); }
