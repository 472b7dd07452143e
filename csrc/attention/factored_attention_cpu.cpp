// CPU kernel of infvideo::factored_slot_attention: the slot attention of the CPU memory step
// with the key and value projections folded into the queries (SPEC section 8's algebra; see
// infvideo/ops/factored_attention.py for when it applies). Per stream s, head h, query q:
//
//   u[h·Q + q] = W_k,hᵀ q_h                           (the query through the key weights, [e])
//   r[h·Q + q] = softmax_n(u · B_n / √d + log w_n)    (the key bias shifts every score alike)
//   context[q, h] = W_v,h (Σ_n r_n B_n) + b_v,h       ([d], written in place into [S, Q, D])
//   mass[s, g, n] = Σ over the rows of group g (16 consecutive rows h·Q + q) of r[·, n]
//
// Why one op rather than four BLAS calls around slot_attention: each of those products,
// split over both cores by the BLAS, ran at about 70 GFLOP/s a core against 86 on one core alone
// (2-core EPYC), and each paid its own fork and barrier. Here the work is split once, by stream
// and range of heads, and every thread runs all four products of its share on the sequential
// BLAS (at:: calls inside a parallel region run on one thread); one [rows, e] buffer holds u and
// then Σ_n r_n B_n.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <vector>

#include "../common/checks.h"
#include "head_products.h"
#include "slot_attention.h"
#include "softmax_row.h"

namespace infvideo {
namespace {

constexpr const char* kOp = "infvideo::factored_slot_attention";

struct FactoredShape {
  int64_t streams, queries, model, heads, head_dim, slots, width, groups;
};

FactoredShape check_factored(const at::Tensor& query, const at::Tensor& coef, const at::Tensor& w_key,
                             const at::Tensor& w_value, const std::optional<at::Tensor>& b_value, int64_t num_heads,
                             const std::optional<at::Tensor>& slot_log_weight) {
  check_tensor(query, kOp, "query", {3}, "[S, Q, D]");
  check_kernel_float(query, kOp, "query");
  TORCH_CHECK(query.device().is_cpu(), kOp, ": the CPU kernel got query on ", query.device());
  check_tensor(coef, kOp, "coef", {3}, "[S, N, e]");
  check_floating(coef, kOp, "coef");
  check_same_device(coef, query, kOp, "coef", "query");
  TORCH_CHECK(coef.size(0) == query.size(0), kOp, ": coef has ", coef.size(0), " streams (dim 0) but query has ",
              query.size(0));
  const int64_t model = query.size(2), width = coef.size(2);
  for (const auto& [weight, name] : {std::pair{&w_key, "w_key"}, std::pair{&w_value, "w_value"}}) {
    check_tensor(*weight, kOp, name, {2}, "[D, e]");
    check_floating(*weight, kOp, name);
    check_same_device(*weight, query, kOp, name, "query");
    TORCH_CHECK(weight->size(0) == model && weight->size(1) == width, kOp, ": ", name, " must have shape [D, e] = [",
                model, ", ", width, "] (query's D, coef's e), got ", weight->sizes());
  }
  if (b_value.has_value() && b_value->defined()) {
    check_tensor(*b_value, kOp, "b_value", {1}, "[D]");
    check_floating(*b_value, kOp, "b_value");
    check_same_device(*b_value, query, kOp, "b_value", "query");
    TORCH_CHECK(b_value->size(0) == model, kOp, ": b_value has ", b_value->size(0), " entries but query has D = ",
                model);
  }
  TORCH_CHECK(num_heads >= 1 && model % num_heads == 0, kOp, ": num_heads (", num_heads,
              ") must be >= 1 and divide the query width ", model);
  if (slot_log_weight.has_value() && slot_log_weight->defined()) {
    check_tensor(*slot_log_weight, kOp, "slot_log_weight", {1}, "[N]");
    check_floating(*slot_log_weight, kOp, "slot_log_weight");
    check_same_device(*slot_log_weight, query, kOp, "slot_log_weight", "query");
    TORCH_CHECK(slot_log_weight->size(0) == coef.size(1), kOp, ": slot_log_weight has ", slot_log_weight->size(0),
                " slots (dim 0) but coef has ", coef.size(1));
  }
  const int64_t queries = query.size(1);
  return {query.size(0), queries, model, num_heads, model / num_heads, coef.size(1), width,
          ceil_div(num_heads * queries, kQueryBlock)};
}

// Head boundaries [ranges + 1] of about equal size that fall on mass-group boundaries (a multiple
// of 16 rows), so that no two tasks add into one mass row.
std::vector<int64_t> head_ranges(int64_t heads, int64_t queries, int64_t ranges) {
  const int64_t step = kQueryBlock / std::gcd(queries, kQueryBlock);  // heads per whole number of groups
  const int64_t units = ceil_div(heads, step);
  ranges = std::max<int64_t>(1, std::min(ranges, units));
  std::vector<int64_t> start(ranges + 1);
  for (int64_t r = 0; r <= ranges; ++r) {
    start[r] = std::min(heads, units * r / ranges * step);
  }
  return start;
}

struct FactoredInputs {
  at::Tensor query, coef, w_key, w_value, b_value, log_weight;  // float32, rows of unit stride
};

// Scores → weights for rows [row0, row0 + rows) of one stream, each added into its group's mass row.
// The float32 build targets baseline x86-64; the AVX2 clone, picked at load time, runs this pass
// about 3x faster (same results: the loops are elementwise or keep 8 fixed lanes).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
void softmax_rows(float* weights, float* mass, const float* log_weight, int64_t row0, int64_t rows, int64_t slots,
                  float scale) {
  for (int64_t row = 0; row < rows; ++row) {
    softmax_row(weights + row * slots, mass + (row0 + row) / kQueryBlock * slots, log_weight, slots, scale, false,
                0.0f);
  }
}

// u = the query through the key weights, heads [h0, h0 + count) of stream s.
void fold_heads(const FactoredInputs& in, const FactoredShape& shape, int64_t s, int64_t h0, int64_t count,
                at::Tensor& u) {
  const auto [streams, queries, model, heads, head_dim, slots, width, groups] = shape;
  if (head_products_supported()) {
    const float* query = in.query.data_ptr<float>() + s * queries * model;
    for (int64_t h = h0; h < h0 + count; ++h) {
      fold(query + h * head_dim, model, in.w_key.data_ptr<float>() + h * head_dim * width, width,
           u.data_ptr<float>() + (h - h0) * queries * width, width, queries, width, head_dim);
    }
    return;
  }
  // Heads as a batch of views: the query's [Q, d] columns of each head, the weights' [d, e] rows.
  const at::Tensor q_heads = in.query[s].view({queries, heads, head_dim}).narrow(1, h0, count).transpose(0, 1);
  at::Tensor u_heads = u.view({count, queries, width});
  at::bmm_out(u_heads, q_heads, in.w_key.view({heads, head_dim, width}).narrow(0, h0, count));
}

// context[s, :, heads [h0, h0 + count)] = mixed through the value weights, plus their bias.
void project_heads(const FactoredInputs& in, const FactoredShape& shape, int64_t s, int64_t h0, int64_t count,
                   const at::Tensor& mixed, at::Tensor& context) {
  const auto [streams, queries, model, heads, head_dim, slots, width, groups] = shape;
  const float* bias = in.b_value.defined() ? in.b_value.data_ptr<float>() : nullptr;
  if (head_products_supported()) {
    float* out = context.data_ptr<float>() + s * queries * model;
    for (int64_t h = h0; h < h0 + count; ++h) {
      project(mixed.data_ptr<float>() + (h - h0) * queries * width, width,
              in.w_value.data_ptr<float>() + h * head_dim * width, width, bias != nullptr ? bias + h * head_dim : nullptr,
              out + h * head_dim, model, queries, head_dim, width);
    }
    return;
  }
  const at::Tensor mixed_heads = mixed.view({count, queries, width});
  const at::Tensor w_value = in.w_value.view({heads, head_dim, width}).narrow(0, h0, count).transpose(1, 2);
  at::Tensor out = context[s].view({queries, heads, head_dim}).narrow(1, h0, count).transpose(0, 1);
  if (bias != nullptr) {
    at::baddbmm_out(out, in.b_value.view({heads, 1, head_dim}).narrow(0, h0, count), mixed_heads, w_value);
  } else {
    at::bmm_out(out, mixed_heads, w_value);
  }
}

// The four products and the softmax for heads [h0, h1) of stream s.
void attend_heads(const FactoredInputs& in, const FactoredShape& shape, int64_t s, int64_t h0, int64_t h1,
                  at::Tensor& folded, at::Tensor& weights, at::Tensor& mass, at::Tensor& context) {
  const int64_t queries = shape.queries, slots = shape.slots;
  const int64_t row0 = h0 * queries, rows = (h1 - h0) * queries;
  const at::Tensor coef = in.coef[s];
  at::Tensor u = folded[s].narrow(0, row0, rows);
  at::Tensor r = weights[s].narrow(0, row0, rows);
  fold_heads(in, shape, s, h0, h1 - h0, u);
  at::mm_out(r, u, coef.t());
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const float* log_weight = in.log_weight.defined() ? in.log_weight.data_ptr<float>() : nullptr;
  softmax_rows(r.data_ptr<float>(), mass[s].data_ptr<float>(), log_weight, row0, rows, slots, scale);
  at::mm_out(u, r, coef);  // u now holds Σ_n r_n B_n
  project_heads(in, shape, s, h0, h1 - h0, u, context);
}

std::tuple<at::Tensor, at::Tensor> factored_slot_attention_cpu(const at::Tensor& query, const at::Tensor& coef,
                                                               const at::Tensor& w_key, const at::Tensor& w_value,
                                                               const std::optional<at::Tensor>& b_value,
                                                               int64_t num_heads,
                                                               const std::optional<at::Tensor>& slot_log_weight) {
  const FactoredShape shape = check_factored(query, coef, w_key, w_value, b_value, num_heads, slot_log_weight);
  const auto float_rows = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  FactoredInputs in{float_rows(query), float_rows(coef), float_rows(w_key), float_rows(w_value), {}, {}};
  if (b_value.has_value() && b_value->defined()) {
    in.b_value = float_rows(*b_value);
  }
  if (slot_log_weight.has_value() && slot_log_weight->defined()) {
    in.log_weight = float_rows(*slot_log_weight);
  }
  const auto options = in.query.options();
  at::Tensor folded = at::empty({shape.streams, shape.heads * shape.queries, shape.width}, options);
  at::Tensor weights = at::empty({shape.streams, shape.heads * shape.queries, shape.slots}, options);
  at::Tensor mass = at::zeros({shape.streams, shape.groups, shape.slots}, options);
  at::Tensor context = at::empty({shape.streams, shape.queries, shape.model}, options);
  // Ranges per stream so that streams × ranges divides evenly among the threads.
  const int64_t threads = at::get_num_threads();
  const std::vector<int64_t> range_start =
      head_ranges(shape.heads, shape.queries, threads / std::gcd(shape.streams, threads));
  const int64_t ranges = static_cast<int64_t>(range_start.size()) - 1;
  at::parallel_for(0, shape.streams * ranges, 1, [&](int64_t begin, int64_t end) {
    // The worker threads do not inherit the caller's dispatch state: the products here write into
    // buffers of this op and need no autograd, whatever the inputs' requires_grad.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / ranges, range = task % ranges;
      attend_heads(in, shape, s, range_start[range], range_start[range + 1], folded, weights, mass, context);
    }
  });
  return {context.to(query.scalar_type()), mass};
}

}  // namespace
}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) {
  m.impl("factored_slot_attention",
         &infvideo::WithBackendArgument<decltype(infvideo::factored_slot_attention_cpu),
                                        infvideo::factored_slot_attention_cpu>::call);
}
