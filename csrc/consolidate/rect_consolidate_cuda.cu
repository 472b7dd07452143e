// CUDA kernel of infvideo::rect_consolidate(see rect_consolidate.h for the math).
//
// One block per (bin n, stream s, 256 columns); each thread owns one column of B[s, n] and walks
// the bin's frames' token rows and its sampled old rows: a warp reads 32 consecutive columns of
// a row at a time (coalesced), every output element is written once (no atomics, the same
// result on every run), and no pooled copy of the frames is formed. Sample bins outside
// [-1, N) are not checked here (that would read the device); the Python wrapper documents it.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "rect_consolidate.h"

namespace infvideo {
namespace {

constexpr int kColumnsPerBlock = 256;

template <typename T>
__device__ __forceinline__ void store_as(void* base, int64_t offset, float value) {
  static_cast<T*>(base)[offset] = static_cast<T>(value);
}

enum class CastKind { kNone, kFloat, kDouble, kHalf, kBFloat16 };

template <typename frame_t>
__global__ void __launch_bounds__(kColumnsPerBlock) rect_consolidate_kernel(
    const frame_t* __restrict__ frames, const float* __restrict__ past, const int64_t* __restrict__ sample_bins,
    const int64_t* __restrict__ past_idx, const int64_t* __restrict__ past_start,
    const int64_t* __restrict__ frame_idx, const int64_t* __restrict__ frame_start, const float* __restrict__ scale,
    float* __restrict__ out, void* cast, CastKind cast_kind, int64_t width, int64_t tokens, int64_t bins,
    int64_t stride_s, int64_t stride_l, int64_t stride_t, int64_t bin_rows_stride, float inv_tokens) {
  const int64_t n = blockIdx.x;
  const int64_t s = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.z) * kColumnsPerBlock + threadIdx.x;
  if (c >= width) {
    return;
  }
  float acc = 0.0f;
  const frame_t* stream_frames = frames + s * stride_s + c;
  for (int64_t k = frame_start[n]; k < frame_start[n + 1]; ++k) {
    const frame_t* column = stream_frames + frame_idx[k] * stride_l;
    float sum = 0.0f;
#pragma unroll 4
    for (int64_t t = 0; t < tokens; ++t) {
      sum += static_cast<float>(column[t * stride_t]);
    }
    acc += sum * inv_tokens;
  }
  if (past != nullptr) {
    const int64_t* stream_bins = sample_bins + s * bin_rows_stride;
    for (int64_t k = past_start[n]; k < past_start[n + 1]; ++k) {
      const int64_t src = stream_bins[past_idx[k]];
      if (src >= 0) {  // -1: the sample lies in no old bin and reads zeros
        acc += past[(s * bins + src) * width + c];
      }
    }
  }
  acc *= scale[n];
  const int64_t offset = (s * bins + n) * width + c;
  out[offset] = acc;
  switch (cast_kind) {
    case CastKind::kFloat: store_as<float>(cast, offset, acc); break;
    case CastKind::kDouble: store_as<double>(cast, offset, acc); break;
    case CastKind::kHalf: store_as<c10::Half>(cast, offset, acc); break;
    case CastKind::kBFloat16: store_as<c10::BFloat16>(cast, offset, acc); break;
    case CastKind::kNone: break;
  }
}

CastKind cast_kind_of(const at::Tensor& cast) {
  if (cast.numel() == 0) {
    return CastKind::kNone;
  }
  switch (cast.scalar_type()) {
    case at::kFloat: return CastKind::kFloat;
    case at::kDouble: return CastKind::kDouble;
    case at::kHalf: return CastKind::kHalf;
    case at::kBFloat16: return CastKind::kBFloat16;
    default: TORCH_CHECK(false, "infvideo::rect_consolidate: cast_dtype ", cast.scalar_type(), " is not supported");
  }
  return CastKind::kNone;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rect_consolidate_cuda(
    const at::Tensor& frames, const std::optional<at::Tensor>& past, const std::optional<at::Tensor>& sample_bins,
    const at::Tensor& past_idx, const at::Tensor& past_start, const at::Tensor& frame_idx,
    const at::Tensor& frame_start, const at::Tensor& scale, bool /*frames_in_order*/, int64_t /*max_per_bin*/,
    std::optional<at::ScalarType> cast_dtype) {
  const c10::cuda::CUDAGuard device_guard(frames.device());
  ConsolidateInputs in =
      prepare_rect_consolidate(frames, past, sample_bins, past_idx, past_start, frame_idx, frame_start, scale, cast_dtype);
  auto [out, cast] = consolidate_outputs(in, cast_dtype);
  const int64_t streams = in.frames.size(0), tokens = in.frames.size(2), width = in.frames.size(3);
  const int64_t bins = in.scale.size(0);
  const dim3 grid(static_cast<unsigned>(bins), static_cast<unsigned>(streams),
                  static_cast<unsigned>(ceil_div(width, kColumnsPerBlock)));
  const CastKind kind = cast_kind_of(cast);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.frames.scalar_type(), "rect_consolidate_cuda", [&] {
    rect_consolidate_kernel<scalar_t><<<grid, kColumnsPerBlock, 0, stream>>>(
        in.frames.data_ptr<scalar_t>(), in.past.defined() ? in.past.data_ptr<float>() : nullptr,
        in.past.defined() ? in.sample_bins.data_ptr<int64_t>() : nullptr, in.past_idx.data_ptr<int64_t>(),
        in.past_start.data_ptr<int64_t>(), in.frame_idx.data_ptr<int64_t>(), in.frame_start.data_ptr<int64_t>(),
        in.scale.data_ptr<float>(), out.data_ptr<float>(), kind == CastKind::kNone ? nullptr : cast.data_ptr(), kind,
        width, tokens, bins, in.frames.stride(0), in.frames.stride(1), in.frames.stride(2), in.bin_rows_stride,
        1.0f / static_cast<float>(tokens));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, cast};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CUDA, m) {
  m.impl("rect_consolidate", &infvideo::WithBackendArgument<decltype(infvideo::rect_consolidate_cuda), infvideo::rect_consolidate_cuda>::call);
}
