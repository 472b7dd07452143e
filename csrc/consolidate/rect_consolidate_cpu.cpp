// CPU kernel of infvideo::rect_consolidate(see rect_consolidate.h for the math).
//
// One pass over the tokens: every output row B[s, n] is summed in a small float32 buffer from
// its own frames' tokens and sampled old rows, scaled, and written once (plus its cast copy), so
// no pooled [S, L, e] copy and no [M + L, e] matrix is ever formed. The work is split across
// threads by streams and, when there are fewer streams than threads, by ranges of bins of equal
// cost: bins receive very different row counts (the frames' bins T·L/N token rows each, the
// past's a few rows), so ranges are cut on the running count of rows. Each task reads whole
// rows, so a thread streams through one contiguous stretch of the tokens (splitting columns
// instead, every thread skipping through every row, was slower on a 2-core EPYC).
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

// float32 tokens, the common case, also get an AVX2 clone picked at load time (the build targets
// baseline x86-64): 10-40 % faster than SSE2 on a 2-core EPYC, where this loop is not yet bound
// by memory alone. target_clones needs ifunc support: GCC or Clang on Linux.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
void add_four_float_rows(float* __restrict acc, const float* __restrict r0, const float* __restrict r1,
                         const float* __restrict r2, const float* __restrict r3, int64_t count) {
  for (int64_t c = 0; c < count; ++c) {
    acc[c] += (r0[c] + r1[c]) + (r2[c] + r3[c]);
  }
}

template <>
inline void add_four_rows<float>(float* __restrict acc, const float* __restrict r0, const float* __restrict r1,
                                 const float* __restrict r2, const float* __restrict r3, int64_t count) {
  add_four_float_rows(acc, r0, r1, r2, r3, count);
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
  constexpr const char* op = "infvideo::rect_consolidate";
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

// Bin boundaries [ranges + 1] cutting 0 … N into ranges that read about as many rows each (a
// frame's T token rows, a past sample's one row, and one for writing the bin).
std::vector<int64_t> equal_cost_ranges(const ConsolidateInputs& in, int64_t ranges) {
  const int64_t bins = in.scale.size(0), tokens = in.frames.size(2);
  const int64_t* frame_start = in.frame_start.data_ptr<int64_t>();
  const int64_t* past_start = in.past_start.data_ptr<int64_t>();
  const bool has_past = in.past.defined();
  std::vector<int64_t> cost(bins + 1, 0);
  for (int64_t n = 0; n < bins; ++n) {
    const int64_t rows = (frame_start[n + 1] - frame_start[n]) * tokens +
                         (has_past ? past_start[n + 1] - past_start[n] : 0) + 1;
    cost[n + 1] = cost[n] + rows;
  }
  std::vector<int64_t> start(ranges + 1, bins);
  start[0] = 0;
  for (int64_t r = 1; r < ranges; ++r) {
    const int64_t target = cost[bins] * r / ranges;
    start[r] = std::lower_bound(cost.begin(), cost.end(), target) - cost.begin();
  }
  return start;
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

  // Ranges per stream so that streams × ranges divides evenly among the threads.
  const int64_t threads = at::get_num_threads();
  const int64_t ranges = std::min(threads / std::gcd(streams, threads), bins);
  const std::vector<int64_t> range_start = equal_cost_ranges(in, ranges);

  at::parallel_for(0, streams * ranges, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(width), frame_sum(width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / ranges, range = task % ranges;
      const frame_t* stream_frames = frames + s * stride_s;
      const int64_t* stream_bins = past != nullptr ? sample_bins + s * in.bin_rows_stride : nullptr;
      for (int64_t n = range_start[range]; n < range_start[range + 1]; ++n) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k = frame_start[n]; k < frame_start[n + 1]; ++k) {
          add_frame_mean(acc.data(), frame_sum.data(), stream_frames + frame_idx[k] * stride_l, tokens, stride_t,
                         width);
        }
        if (past != nullptr) {
          for (int64_t k = past_start[n]; k < past_start[n + 1]; ++k) {
            const int64_t src = stream_bins[past_idx[k]];
            if (src >= 0) {  // -1: the sample lies in no old bin and reads zeros
              add_row(acc.data(), past + (s * bins + src) * width, width);
            }
          }
        }
        const int64_t offset = (s * bins + n) * width;
        store_scaled(result + offset, acc.data(), scale[n], width);
        if (with_cast) {
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cast.scalar_type(), "rect_consolidate_cast", [&] {
            store_scaled(cast.data_ptr<scalar_t>() + offset, acc.data(), scale[n], width);
          });
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rect_consolidate_cpu(
    const at::Tensor& frames, const std::optional<at::Tensor>& past, const std::optional<at::Tensor>& sample_bins,
    const at::Tensor& past_idx, const at::Tensor& past_start, const at::Tensor& frame_idx,
    const at::Tensor& frame_start, const at::Tensor& scale, bool /*frames_in_order: each frame's rows are
    visited in order anyway*/, int64_t /*max_per_bin: a Triton block-size hint*/,
    std::optional<at::ScalarType> cast_dtype) {
  ConsolidateInputs in =
      prepare_rect_consolidate(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, cast_dtype);
  TORCH_CHECK(in.frames.device().is_cpu(), "infvideo::rect_consolidate: the CPU kernel got frames on ",
              in.frames.device());
  check_map_values(in);
  auto [out, cast] = consolidate_outputs(in, cast_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.frames.scalar_type(), "rect_consolidate_cpu",
                                  [&] { consolidate_cpu<scalar_t>(in, out, cast); });
  return {out, cast};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) {
  m.impl("rect_consolidate", &infvideo::WithBackendArgument<decltype(infvideo::rect_consolidate_cpu), infvideo::rect_consolidate_cpu>::call);
}
