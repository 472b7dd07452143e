// C++ tests of the infvideo ops through csrc/infvideo.h (CPU kernels), against plain ATen
// computations of the same math; run with ctest. Exits non-zero on the first failure.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "../infvideo.h"

namespace {

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    std::exit(1);
  }
  std::printf("ok: %s\n", what.c_str());
}

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor a = got.to(at::kDouble), b = want.to(at::kDouble);
  return ((a - b).norm() / b.norm()).item<double>();
}

void expect_error(const std::function<void()>& call, const std::string& needle, const std::string& what) {
  try {
    call();
  } catch (const c10::Error& err) {
    expect(std::string(err.what()).find(needle) != std::string::npos, what + " (message names: " + needle + ")");
    return;
  }
  expect(false, what + " (no error raised)");
}

// Two streams, 6 frames of 3 tokens, 4 bins: frames 0-5 in bins 2,2,3,3,3,- (the last lies in no bin),
// 5 past samples in bins 0,0,1,1,2 reading old bins from sample_bins.
void test_rect_consolidate() {
  const auto index = at::TensorOptions().dtype(at::kInt);
  const at::Tensor frames = at::randn({2, 6, 3, 8});
  const at::Tensor past = at::randn({2, 4, 8});
  const at::Tensor sample_bins = at::tensor({0, 1, 1, -1, 3, 2, 2, 0, 3, 1}, index).view({2, 5});
  const at::Tensor past_idx = at::tensor({0, 1, 2, 3, 4}, index);
  const at::Tensor past_start = at::tensor({0, 2, 4, 5, 5}, index);
  const at::Tensor frame_idx = at::tensor({0, 1, 2, 3, 4}, index);
  const at::Tensor frame_start = at::tensor({0, 0, 0, 2, 5}, index);
  const at::Tensor scale = at::rand({4}) + 0.5;
  auto [coef, cast] = infvideo::rect_consolidate(frames, past, sample_bins, past_idx, past_start, frame_idx,
                                                 frame_start, scale, at::kBFloat16);

  const at::Tensor pooled = frames.mean(2);  // [2, 6, 8]
  const at::Tensor frame_bins = at::tensor({2, 2, 3, 3, 3}, at::kLong);
  const at::Tensor past_bins = at::tensor({0, 0, 1, 1, 2}, at::kLong);
  at::Tensor want = at::zeros({2, 4, 8});
  want.index_add_(1, frame_bins, pooled.narrow(1, 0, 5));
  const at::Tensor src = sample_bins.to(at::kLong);
  for (int64_t s = 0; s < 2; ++s) {
    const at::Tensor rows = past[s].index_select(0, src[s].clamp_min(0)) * (src[s] >= 0).unsqueeze(1);
    want[s].index_add_(0, past_bins, rows);
  }
  want *= scale.view({1, 4, 1});
  expect(relative_error(coef, want) < 1e-6, "rect_consolidate matches pooling + index_add");
  expect(cast.scalar_type() == at::kBFloat16 && at::equal(cast, coef.to(at::kBFloat16)),
         "rect_consolidate writes the cast copy");

  expect_error([&] { infvideo::rect_consolidate(frames, past.narrow(1, 0, 3), sample_bins, past_idx, past_start,
                                                frame_idx, frame_start, scale); },
               "past must have shape", "rect_consolidate rejects a past of the wrong shape");
  expect_error([&] { infvideo::rect_consolidate(frames, past, sample_bins + 4, past_idx, past_start, frame_idx,
                                                frame_start, scale); },
               "sample_bins holds", "rect_consolidate rejects sample bins outside [-1, N)");
}

void test_quantile_bins() {
  const at::Tensor mass = at::rand({3, 4, 50}, at::kDouble).pow(3);
  const at::Tensor bins = infvideo::quantile_bins(mass, 64);
  const at::Tensor cdf = mass.sum(1).cumsum(-1);
  const at::Tensor levels = (at::arange(64, at::kDouble) + 0.5) / 64 * cdf.narrow(1, 49, 1);
  const at::Tensor want = at::searchsorted(cdf, levels.contiguous(), false, true).clamp_max(49);
  expect(bins.scalar_type() == at::kInt && at::equal(bins.to(at::kLong), want), "quantile_bins matches searchsorted");
  expect_error([&] { infvideo::quantile_bins(mass, 0); }, "num_samples", "quantile_bins rejects num_samples = 0");
}

void test_slot_attention() {
  const int64_t heads = 3, head_dim = 5, slots = 11, queries = 19;
  const at::Tensor query = at::randn({2, queries, heads * head_dim});
  const at::Tensor keys = at::randn({2, slots, heads * head_dim});
  const at::Tensor values = at::randn({2, slots, heads * head_dim});
  const at::Tensor log_weight = at::randn({slots});
  const double null_log_weight = -1.5;
  auto [context, mass] = infvideo::slot_attention(query, keys, values, heads, log_weight, null_log_weight);

  const auto split = [&](const at::Tensor& x) { return x.view({2, -1, heads, head_dim}).transpose(1, 2); };
  at::Tensor logits = at::matmul(split(query), split(keys).transpose(-1, -2)) / std::sqrt(double(head_dim)) + log_weight;
  logits = at::cat({logits, at::full({2, heads, queries, 1}, null_log_weight)}, -1);
  const at::Tensor r = at::softmax(logits, -1).narrow(-1, 0, slots);
  const at::Tensor want = at::matmul(r, split(values)).transpose(1, 2).reshape({2, queries, heads * head_dim});
  expect(relative_error(context, want) < 1e-5, "slot_attention matches softmax with a null slot");
  expect(mass.sizes() == at::IntArrayRef({2, heads * 2, slots}), "slot_attention masses are grouped per 16 queries");
  expect(relative_error(mass.view({2, heads, 2, slots}).sum(2), r.sum(2)) < 1e-5, "slot_attention masses add up");
  expect_error([&] { infvideo::slot_attention(query, keys, values, 4); }, "num_heads",
               "slot_attention rejects heads that do not divide the width");
}

// The backward against the same math in double: the probabilities recomputed, ∂a = r (dr − δ).
void test_slot_attention_backward() {
  const int64_t heads = 2, head_dim = 4, slots = 9, queries = 19, model = heads * head_dim;
  const at::Tensor query = at::randn({2, queries, model}), keys = at::randn({2, slots, model});
  const at::Tensor values = at::randn({2, slots, model}), log_weight = at::randn({slots});
  const at::Tensor grad_context = at::randn({2, queries, model}), grad_mass = at::randn({2, heads * 2, slots});
  const double null_log_weight = -0.7;
  auto [dq, dk, dv] = infvideo::slot_attention_backward(grad_context, grad_mass, query, keys, values, heads,
                                                        log_weight, null_log_weight);

  const auto split = [&](const at::Tensor& x) { return x.to(at::kDouble).view({2, -1, heads, head_dim}).transpose(1, 2); };
  const auto merge = [&](const at::Tensor& x) { return x.transpose(1, 2).reshape({2, -1, model}); };
  const double scale = 1.0 / std::sqrt(double(head_dim));
  const at::Tensor q = split(query), k = split(keys), v = split(values), go = split(grad_context);
  at::Tensor logits = at::matmul(q, k.transpose(-1, -2)) * scale + log_weight.to(at::kDouble);
  logits = at::cat({logits, at::full({2, heads, queries, 1}, null_log_weight, logits.options())}, -1);
  const at::Tensor r = at::softmax(logits, -1).narrow(-1, 0, slots);
  const at::Tensor group = grad_mass.to(at::kDouble).view({2, heads, 2, slots}).repeat_interleave(16, 2);
  const at::Tensor dr = at::matmul(go, v.transpose(-1, -2)) + group.narrow(2, 0, queries);
  const at::Tensor da = r * (dr - (r * dr).sum(-1, true));
  expect(relative_error(dq, merge(at::matmul(da, k) * scale)) < 1e-5, "slot_attention_backward: dq");
  expect(relative_error(dk, merge(at::matmul(da.transpose(-1, -2), q) * scale)) < 1e-5, "slot_attention_backward: dK");
  expect(relative_error(dv, merge(at::matmul(r.transpose(-1, -2), go))) < 1e-5, "slot_attention_backward: dV");
  expect_error([&] { infvideo::slot_attention_backward(grad_context.narrow(1, 0, 3), grad_mass, query, keys, values,
                                                       heads); },
               "grad_context", "slot_attention_backward rejects a cotangent of the wrong shape");
}

// 4 bins, 5 frames (frame 4 in no bin), 6 past samples; a sample reading bin -1 adds nothing.
void test_rect_consolidate_backward() {
  const at::Tensor grad = at::randn({2, 4, 7});
  const at::Tensor scale = at::rand({4}) + 0.5;
  const at::Tensor frame_idx = at::arange(4, at::kInt), frame_start = at::tensor({0, 1, 2, 3, 4}, at::kInt);
  const at::Tensor past_idx = at::arange(6, at::kInt), past_start = at::tensor({0, 2, 4, 5, 6}, at::kInt);
  const at::Tensor bins = at::tensor({0, 0, 3, -1, 1, 0}, at::kLong).view({1, 6});
  auto [grad_frames, grad_past] = infvideo::rect_consolidate_backward(grad, bins, past_idx, past_start, frame_idx,
                                                                      frame_start, scale, 5, 3, at::kFloat, true);
  const at::Tensor g = grad * scale.view({1, 4, 1});
  at::Tensor want_frames = at::zeros({2, 5, 7});
  want_frames.narrow(1, 0, 4).copy_(g / 3);
  expect(relative_error(grad_frames, want_frames) < 1e-6, "rect_consolidate_backward: frames (a token's share)");
  at::Tensor want_past = at::zeros({2, 4, 7});
  const int64_t sample_bin[6] = {0, 0, 1, 1, 2, 3}, old_bin[6] = {0, 0, 3, -1, 1, 0};
  for (int64_t i = 0; i < 6; ++i) {
    if (old_bin[i] >= 0) {
      want_past.select(1, old_bin[i]).add_(g.select(1, sample_bin[i]));
    }
  }
  expect(relative_error(grad_past, want_past) < 1e-6, "rect_consolidate_backward: past (sums over shared old bins)");
  expect_error([&] { infvideo::rect_consolidate_backward(grad, at::tensor({4}, at::kLong).view({1, 1}), past_idx,
                                                         past_start, frame_idx, frame_start, scale, 5, 3, at::kFloat,
                                                         true); },
               "past_idx", "rect_consolidate_backward rejects maps beyond the samples");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_rect_consolidate();
  test_quantile_bins();
  test_slot_attention();
  test_slot_attention_backward();
  test_rect_consolidate_backward();
  std::printf("all infvideo C++ tests passed\n");
  return 0;
}
