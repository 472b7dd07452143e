// CUDA kernel of infvideo::quantile_bins(see quantile_bins.h).
//
// One block per stream: its threads add the groups of each bin in float64 (groups in order, as
// the reference's sum over a handful of groups), one thread forms the CDF in order (K is a few
// hundred to a few thousand bins: microseconds), then each thread finds the bins of its samples
// by binary search (the reference's searchsorted, right side, clamped to the last bin). The
// CDF lives in a float64 workspace [S, K].
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "quantile_bins.h"

namespace infvideo {
namespace {

constexpr int kThreads = 256;

template <typename mass_t>
__global__ void __launch_bounds__(kThreads) quantile_bins_kernel(const mass_t* __restrict__ mass,
                                                                 double* __restrict__ cdf, int32_t* __restrict__ out,
                                                                 int64_t groups, int64_t bins, int64_t samples) {
  const int64_t s = blockIdx.x;
  const mass_t* stream_mass = mass + s * groups * bins;
  double* row = cdf + s * bins;
  for (int64_t k = threadIdx.x; k < bins; k += kThreads) {
    double weight = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
      weight += static_cast<double>(stream_mass[g * bins + k]);
    }
    row[k] = weight;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int64_t k = 1; k < bins; ++k) {
      row[k] += row[k - 1];
    }
  }
  __syncthreads();
  const double total = row[bins - 1];
  for (int64_t i = threadIdx.x; i < samples; i += kThreads) {
    const double level = (static_cast<double>(i) + 0.5) / static_cast<double>(samples) * total;
    int64_t lo = 0, hi = bins;  // first CDF value above the level
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (row[mid] <= level) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    out[s * samples + i] = static_cast<int32_t>(lo < bins - 1 ? lo : bins - 1);
  }
}

}  // namespace

at::Tensor quantile_bins_cuda(const at::Tensor& mass, int64_t num_samples) {
  const c10::cuda::CUDAGuard device_guard(mass.device());
  const at::Tensor groups = prepare_quantile_bins(mass, num_samples);
  const int64_t streams = groups.size(0), bins = groups.size(2);
  at::Tensor cdf = at::empty({streams, bins}, groups.options().dtype(at::kDouble));
  at::Tensor out = at::empty({streams, num_samples}, groups.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, groups.scalar_type(), "quantile_bins_cuda", [&] {
    quantile_bins_kernel<scalar_t><<<static_cast<unsigned>(streams), kThreads, 0, stream>>>(
        groups.data_ptr<scalar_t>(), cdf.data_ptr<double>(), out.data_ptr<int32_t>(), groups.size(1), bins,
        num_samples);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CUDA, m) {
  m.impl("quantile_bins", &infvideo::WithBackendArgument<decltype(infvideo::quantile_bins_cuda), infvideo::quantile_bins_cuda>::call);
}
