// Continuous attention over N rectangular bins (SPEC section 8), shared by the CPU and CUDA kernels:
//
//   r[s,h,q,n] = exp(a_n + log w_n) / (sum_k exp(a_k + log w_k) + exp(log m_null)),  a_n = q_h · K_{n,h} / sqrt(d)
//   context[s,q,h] = sum_n r[s,h,q,n] V_{n,h}
//   mass[s, h·QB + b, n] = sum over the queries q of block b (16 queries) of r[s,h,q,n]
//
// The log-weights default to 0 (equal bins); the null slot (score 0, the paper preset's
// quadrature mass outside every bin) is absent without null_log_weight. The mass groups are the
// Triton kernel's (H · ceil(Q / 16)), so either backend's sticky statistic has one shape.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "../common/checks.h"

namespace infvideo {

constexpr int64_t kQueryBlock = 16;

struct AttentionShape {
  int64_t streams, queries, model, heads, head_dim, slots, query_blocks;
};

inline AttentionShape check_slot_attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                                           int64_t num_heads, const std::optional<at::Tensor>& slot_log_weight,
                                           std::optional<double> null_log_weight) {
  constexpr const char* op = "infvideo::slot_attention";
  check_tensor(query, op, "query", {3}, "[S, Q, D]");
  check_kernel_float(query, op, "query");
  check_tensor(keys, op, "keys", {3}, "[S, N, D]");
  check_kernel_float(keys, op, "keys");
  check_same_device(keys, query, op, "keys", "query");
  check_tensor(values, op, "values", {3}, "[S, N, D]");
  check_floating(values, op, "values");
  check_same_device(values, query, op, "values", "query");
  TORCH_CHECK(keys.size(0) == query.size(0), op, ": keys has ", keys.size(0), " streams (dim 0) but query has ",
              query.size(0));
  TORCH_CHECK(keys.size(2) == query.size(2), op, ": keys has ", keys.size(2), " columns (dim 2) but query has ",
              query.size(2));
  TORCH_CHECK(values.sizes() == keys.sizes(), op, ": values must have the keys' shape ", keys.sizes(), ", got ",
              values.sizes());
  TORCH_CHECK(num_heads >= 1 && query.size(2) % num_heads == 0, op, ": num_heads (", num_heads,
              ") must be >= 1 and divide the query width ", query.size(2));
  if (slot_log_weight.has_value() && slot_log_weight->defined()) {
    check_tensor(*slot_log_weight, op, "slot_log_weight", {1}, "[N]");
    check_floating(*slot_log_weight, op, "slot_log_weight");
    check_same_device(*slot_log_weight, query, op, "slot_log_weight", "query");
    TORCH_CHECK(slot_log_weight->size(0) == keys.size(1), op, ": slot_log_weight has ", slot_log_weight->size(0),
                " slots (dim 0) but keys has ", keys.size(1));
  }
  TORCH_CHECK(!null_log_weight.has_value() || !std::isnan(*null_log_weight), op,
              ": null_log_weight must be a number (or -inf), got nan");
  const int64_t model = query.size(2);
  return {query.size(0), query.size(1), model, num_heads, model / num_heads, keys.size(1),
          ceil_div(query.size(1), kQueryBlock)};
}

// The kernels (registered for the op's CPU / CUDA keys; called directly by infvideo.cpp).
std::tuple<at::Tensor, at::Tensor> slot_attention_cpu(const at::Tensor& query, const at::Tensor& keys,
                                                    const at::Tensor& values, int64_t num_heads,
                                                    const std::optional<at::Tensor>& slot_log_weight,
                                                    std::optional<double> null_log_weight);
// The backward (slot_attention_backward_cpu.cpp): dq, dK, dV in the dtypes of query, keys and
// values, from grad_context [S, Q, D] and grad_mass [S, H·⌈Q/16⌉, N] (or none), recomputing r.
std::tuple<at::Tensor, at::Tensor, at::Tensor> slot_attention_backward_cpu(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_mass, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, int64_t num_heads,
    const std::optional<at::Tensor>& slot_log_weight, std::optional<double> null_log_weight);
#ifdef INFVIDEO_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> slot_attention_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                    const at::Tensor& values, int64_t num_heads,
                                                    const std::optional<at::Tensor>& slot_log_weight,
                                                    std::optional<double> null_log_weight);
#endif

}  // namespace infvideo
