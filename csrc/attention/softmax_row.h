// The softmax pass of the CPU slot attention kernels (slot_attention_cpu.cpp,
// factored_attention_cpu.cpp): one row of scores turned into weights in place, in loops the
// compiler vectorises.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace infvideo {

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

inline float row_max(const float* __restrict row, int64_t slots, float start) {
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

inline float row_sum(const float* __restrict row, int64_t slots) {
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

// One row of scores [N] → weights, in place, added into the row's group mass [N] (nullptr: none,
// the backward's recomputation). Each step is its own loop so that each vectorises.
inline void softmax_row(float* __restrict row, float* __restrict group_mass, const float* __restrict log_weight,
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
  if (group_mass == nullptr) {
    for (int64_t n = 0; n < slots; ++n) {
      row[n] *= inv_total;
    }
    return;
  }
  for (int64_t n = 0; n < slots; ++n) {
    row[n] *= inv_total;
    group_mass[n] += row[n];
  }
}

}  // namespace infvideo
