// CPU kernel of infvideo::slot_attention_backward: gradients of the slot attention
// (slot_attention.h) with respect to the query, keys and values.
//
// The probabilities r are recomputed from the scores (one [S, H, Q, N] buffer, as in the
// forward), then with dr_n = dc·V_n (+ the mass gradient of the query's group of 16) and
// δ = Σ_n r_n dr_n (the null slot appears in neither output: its dr is 0), the score gradient is
// ∂a_n = r_n (dr_n − δ), one pass per row in place; the four products run on the BLAS:
// dr = dc·Vᵀ, dq = ∂a·K/√d, dK = ∂aᵀ·q/√d, dV = rᵀ·dc. Everything in float32.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "slot_attention.h"
#include "softmax_row.h"

namespace infvideo {

std::tuple<at::Tensor, at::Tensor, at::Tensor> slot_attention_backward_cpu(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_mass, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, int64_t num_heads,
    const std::optional<at::Tensor>& slot_log_weight, std::optional<double> null_log_weight) {
  constexpr const char* op = "infvideo::slot_attention_backward";
  const AttentionShape shape = check_slot_attention(query, keys, values, num_heads, slot_log_weight, null_log_weight);
  TORCH_CHECK(query.device().is_cpu(), op, ": the CPU kernel got query on ", query.device());
  const auto [streams, queries, model, heads, head_dim, slots, query_blocks] = shape;
  check_tensor(grad_context, op, "grad_context", {3}, "[S, Q, D]");
  TORCH_CHECK(grad_context.sizes() == query.sizes(), op, ": grad_context must have the query's shape ", query.sizes(),
              ", got ", grad_context.sizes());
  const bool has_mass = grad_mass.has_value() && grad_mass->defined();
  if (has_mass) {
    TORCH_CHECK(grad_mass->dim() == 3 && grad_mass->size(0) == streams && grad_mass->size(1) == heads * query_blocks &&
                    grad_mass->size(2) == slots,
                op, ": grad_mass must have the mass's shape [S, H·⌈Q/16⌉, N] = [", streams, ", ",
                heads * query_blocks, ", ", slots, "], got ", grad_mass->sizes());
  }
  const auto split = [&](const at::Tensor& x, int64_t rows) {
    return x.to(at::kFloat).view({streams, rows, heads, head_dim}).permute({0, 2, 1, 3});  // [S, H, rows, d]
  };
  const at::Tensor q = split(query, queries), k = split(keys, slots), v = split(values, slots);
  const at::Tensor go = split(grad_context, queries);
  at::Tensor weights = at::matmul(q, k.transpose(-1, -2)).contiguous();  // scores, turned into r below
  at::Tensor dr = at::matmul(go, v.transpose(-1, -2)).contiguous();      // turned into ∂a below
  at::Tensor log_weight, mass_grad;
  if (slot_log_weight.has_value() && slot_log_weight->defined()) {
    log_weight = slot_log_weight->to(at::kFloat).contiguous();
  }
  if (has_mass) {
    mass_grad = grad_mass->to(at::kFloat).contiguous();
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const bool has_null = null_log_weight.has_value();
  const float null_value = has_null ? static_cast<float>(*null_log_weight) : 0.0f;
  float* weight_data = weights.data_ptr<float>();
  float* dr_data = dr.data_ptr<float>();
  const float* log_weight_data = log_weight.defined() ? log_weight.data_ptr<float>() : nullptr;
  const float* mass_data = has_mass ? mass_grad.data_ptr<float>() : nullptr;
  at::parallel_for(0, streams * heads * queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* r = weight_data + row * slots;
      float* d = dr_data + row * slots;
      softmax_row(r, nullptr, log_weight_data, slots, scale, has_null, null_value);
      if (mass_data != nullptr) {
        const int64_t sh = row / queries, qi = row % queries;  // mass row s·G + h·QB + block
        const float* m = mass_data + (sh * query_blocks + qi / kQueryBlock) * slots;
        for (int64_t n = 0; n < slots; ++n) {
          d[n] += m[n];
        }
      }
      float delta = 0.0f;
      for (int64_t n = 0; n < slots; ++n) {
        delta += r[n] * d[n];
      }
      for (int64_t n = 0; n < slots; ++n) {
        d[n] = r[n] * (d[n] - delta);
      }
    }
  });
  const auto merge = [&](const at::Tensor& x, at::ScalarType type) {
    return x.permute({0, 2, 1, 3}).reshape({streams, x.size(2), model}).to(type);
  };
  at::Tensor dq = merge(at::matmul(dr, k).mul_(scale), query.scalar_type());
  at::Tensor dk = merge(at::matmul(dr.transpose(-1, -2), q).mul_(scale), keys.scalar_type());
  at::Tensor dv = merge(at::matmul(weights.transpose(-1, -2), go), values.scalar_type());
  return {dq, dk, dv};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) {
  m.impl("slot_attention_backward", &infvideo::WithBackendArgument<decltype(infvideo::slot_attention_backward_cpu),
                                                                   infvideo::slot_attention_backward_cpu>::call);
}
