// CPU kernel of infvideo::slot_attention_csrc (see slot_attention.h for the math).
//
// The two products (scores Q·Kᵀ and context R·V) run on the BLAS through at::matmul; between
// them one pass per row of scores, in place, turns scores into weights (scale, log-weights,
// null slot, exponential, normalisation) and adds them into the bin masses of the row's query
// block. No score, weight or mass temporary beyond the one [S, H, Q, N] buffer is formed.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "slot_attention.h"

namespace infvideo {
namespace {

// exp(x) for x <= 0 (scores after subtracting the row maximum), within about 1 ulp, written so
// that the compiler vectorises the loops calling it: round-to-nearest by the 1.5·2²³ shift, a
// degree-7 polynomial on [-ln2/2, ln2/2], and 2^k from the exponent bits. Below the float
// range it returns exactly 0, as exp(-inf) must for bins of log-weight -inf. (Its selects
// vectorise under -fno-trapping-math, which the builds pass.)
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f;  // ln 2 split in two so that k·ln2 subtracts exactly
  constexpr float kLn2Low = -2.12194440e-4f;
  constexpr float kShift = 12582912.0f;  // 1.5 · 2^23
  const bool underflow = x < -87.0f;
  const float clamped = underflow ? -87.0f : x;
  const float k = (clamped * kLog2e + kShift) - kShift;
  const float r = (clamped - k * kLn2High) - k * kLn2Low;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(two_k));
  return underflow ? 0.0f : p * two_k;
}

constexpr int kLanes = 8;  // independent partial results, so reductions vectorise without reassociation flags

float row_max(const float* __restrict row, int64_t slots, float start) {
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, start);
  int64_t n = 0;
  for (; n + kLanes <= slots; n += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      lanes[lane] = row[n + lane] > lanes[lane] ? row[n + lane] : lanes[lane];
    }
  }
  float top = start;
  for (; n < slots; ++n) {
    top = row[n] > top ? row[n] : top;
  }
  for (float lane : lanes) {
    top = lane > top ? lane : top;
  }
  return top;
}

float row_sum(const float* __restrict row, int64_t slots) {
  float lanes[kLanes] = {};
  int64_t n = 0;
  for (; n + kLanes <= slots; n += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      lanes[lane] += row[n + lane];
    }
  }
  float total = 0.0f;
  for (; n < slots; ++n) {
    total += row[n];
  }
  for (float lane : lanes) {
    total += lane;
  }
  return total;
}

// One row of scores [N] → weights, in place, added into the row's group mass [N]. Each step is
// its own loop so that each vectorises.
void softmax_row(float* __restrict row, float* __restrict group_mass, const float* __restrict log_weight,
                 int64_t slots, float scale, bool has_null, float null_log_weight) {
  if (log_weight != nullptr) {
    for (int64_t n = 0; n < slots; ++n) {
      row[n] = row[n] * scale + log_weight[n];
    }
  } else {
    for (int64_t n = 0; n < slots; ++n) {
      row[n] *= scale;
    }
  }
  const float top = row_max(row, slots, has_null ? null_log_weight : -std::numeric_limits<float>::infinity());
  for (int64_t n = 0; n < slots; ++n) {
    row[n] = exp_nonpositive(row[n] - top);
  }
  const float total = row_sum(row, slots) + (has_null ? exp_nonpositive(null_log_weight - top) : 0.0f);
  const float inv_total = 1.0f / total;
  for (int64_t n = 0; n < slots; ++n) {
    row[n] *= inv_total;
    group_mass[n] += row[n];
  }
}

std::tuple<at::Tensor, at::Tensor> slot_attention_cpu(const at::Tensor& query, const at::Tensor& keys,
                                                      const at::Tensor& values, int64_t num_heads,
                                                      const std::optional<at::Tensor>& slot_log_weight,
                                                      std::optional<double> null_log_weight) {
  const AttentionShape shape = check_slot_attention(query, keys, values, num_heads, slot_log_weight, null_log_weight);
  TORCH_CHECK(query.device().is_cpu(), "infvideo::slot_attention_csrc: the CPU kernel got query on ", query.device());
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

}  // namespace
}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) { m.impl("slot_attention_csrc", &infvideo::slot_attention_cpu); }
