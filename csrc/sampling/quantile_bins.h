// Sticky quantile sampling (SPEC section 7): the bin of u_i = F⁻¹((i - ½) / M), i = 1 … M, F the
// CDF of the masses summed over groups. Shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "../common/checks.h"

namespace infvideo {

// mass [S, K] or [S, G, K] (any float dtype and strides) as a contiguous [S, G, K] tensor.
inline at::Tensor prepare_quantile_bins(const at::Tensor& mass, int64_t num_samples) {
  constexpr const char* op = "infvideo::quantile_bins";
  check_tensor(mass, op, "mass", {2, 3}, "[S, K] or [S, G, K]");
  check_floating(mass, op, "mass");
  TORCH_CHECK(num_samples >= 1, op, ": num_samples must be >= 1, got ", num_samples);
  return (mass.dim() == 2 ? mass.unsqueeze(1) : mass).contiguous();
}

// The kernels (registered for the op's CPU / CUDA keys; called directly by infvideo.cpp).
at::Tensor quantile_bins_cpu(const at::Tensor& mass, int64_t num_samples);
#ifdef INFVIDEO_WITH_CUDA
at::Tensor quantile_bins_cuda(const at::Tensor& mass, int64_t num_samples);
#endif

}  // namespace infvideo
