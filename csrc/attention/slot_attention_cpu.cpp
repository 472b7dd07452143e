// CPU kernel of infvideo::slot_attention(see slot_attention.h for the math).
//
// The two products (scores Q·Kᵀ and context R·V) run on the BLAS through at::matmul; between
// them one pass per row of scores, in place, turns scores into weights (scale, log-weights,
// null slot, exponential, normalisation) and adds them into the bin masses of the row's query
// block. No score, weight or mass temporary beyond the one [S, H, Q, N] buffer is formed.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "slot_attention.h"
#include "softmax_row.h"

namespace infvideo {

std::tuple<at::Tensor, at::Tensor> slot_attention_cpu(const at::Tensor& query, const at::Tensor& keys,
                                                      const at::Tensor& values, int64_t num_heads,
                                                      const std::optional<at::Tensor>& slot_log_weight,
                                                      std::optional<double> null_log_weight) {
  const AttentionShape shape = check_slot_attention(query, keys, values, num_heads, slot_log_weight, null_log_weight);
  TORCH_CHECK(query.device().is_cpu(), "infvideo::slot_attention: the CPU kernel got query on ", query.device());
  const auto [streams, queries, model, heads, head_dim, slots, query_blocks] = shape;
  // Heads as a batch dimension of views: [S, H, Q, d] and [S, H, d, N] / [S, H, N, d].
  const at::Tensor q = query.to(at::kFloat).view({streams, queries, heads, head_dim}).permute({0, 2, 1, 3});
  const at::Tensor k = keys.to(at::kFloat).view({streams, slots, heads, head_dim}).permute({0, 2, 3, 1});
  const at::Tensor v = values.to(at::kFloat).view({streams, slots, heads, head_dim}).permute({0, 2, 1, 3});
  at::Tensor weights = at::matmul(q, k).contiguous();  // [S, H, Q, N] scores, turned into weights below
  at::Tensor log_weight;
  if (slot_log_weight.has_value() && slot_log_weight->defined()) {
    log_weight = slot_log_weight->to(at::kFloat).contiguous();
  }
  at::Tensor mass = at::zeros({streams, heads * query_blocks, slots}, query.options().dtype(at::kFloat));
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const bool has_null = null_log_weight.has_value();
  const float null_value = has_null ? static_cast<float>(*null_log_weight) : 0.0f;
  float* weight_data = weights.data_ptr<float>();
  float* mass_data = mass.data_ptr<float>();
  const float* log_weight_data = log_weight.defined() ? log_weight.data_ptr<float>() : nullptr;
  // One task per (stream, head, block of queries): the task owns its mass row, so the sum over
  // the block's queries needs no atomics and is the same on every run.
  at::parallel_for(0, streams * heads * query_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sh = task / query_blocks, block = task % query_blocks;
      float* group_mass = mass_data + task * slots;  // mass row s·G + h·QB + block
      const int64_t q_end = std::min(queries, (block + 1) * kQueryBlock);
      for (int64_t qi = block * kQueryBlock; qi < q_end; ++qi) {
        softmax_row(weight_data + (sh * queries + qi) * slots, group_mass, log_weight_data, slots, scale, has_null,
                    null_value);
      }
    }
  });
  at::Tensor context = at::matmul(weights, v).permute({0, 2, 1, 3}).reshape({streams, queries, model});
  return {context.to(query.scalar_type()), mass};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) {
  m.impl("slot_attention", &infvideo::WithBackendArgument<decltype(infvideo::slot_attention_cpu), infvideo::slot_attention_cpu>::call);
}
