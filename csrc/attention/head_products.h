// The per-head products of the factored CPU attention (factored_attention_cpu.cpp), for x86 CPUs
// with AVX2 and FMA:
//
//   fold:    out[q, c] = Σ_j a[q, j] · w[j, c]             (q_h [Q, d] through W_k,h [d, e]: depth d)
//   project: out[q, c] = Σ_j a[q, j] · w[c, j] + bias[c]   (Σ r B [Q, e] through W_v,h [d, e]ᵀ: d outputs)
//
// Why not the BLAS: both have one small dimension (depth or width d = 64), and the BLAS, which
// repacks the weights on every call, reached 40 GFLOP/s a core on them against 70 on the step's
// large products (2-core EPYC, both cores busy). These loops read each weight row where it lies,
// keep their partial sums in registers, and run near the large products' rate. Each sum runs in
// one fixed order, so results do not depend on the thread split.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define INFVIDEO_HEAD_PRODUCTS 1
#endif

namespace infvideo {

#ifdef INFVIDEO_HEAD_PRODUCTS

inline bool head_products_supported() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}

// Rows × 16 columns of the fold, the sums in 2·Rows registers.
template <int Rows>
__attribute__((target("avx2,fma"))) inline void fold_tile(const float* a, int64_t lda, const float* w, int64_t ldw,
                                                          float* out, int64_t ldo, int64_t depth) {
  __m256 acc[Rows][2];
  for (int r = 0; r < Rows; ++r) {
    acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < depth; ++j) {
    const __m256 w0 = _mm256_loadu_ps(w + j * ldw), w1 = _mm256_loadu_ps(w + j * ldw + 8);
    for (int r = 0; r < Rows; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + j);
      acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    _mm256_storeu_ps(out + r * ldo, acc[r][0]);
    _mm256_storeu_ps(out + r * ldo + 8, acc[r][1]);
  }
}

// out [rows, cols] = a [rows, depth] · w [depth, cols], row-major with leading dimensions.
__attribute__((target("avx2,fma"))) inline void fold(const float* a, int64_t lda, const float* w, int64_t ldw,
                                                     float* out, int64_t ldo, int64_t rows, int64_t cols,
                                                     int64_t depth) {
  constexpr int kRows = 4;
  int64_t c = 0;
  // Column panels outermost: a panel of w (depth × 16 floats) stays in L1 for every row tile.
  for (; c + 16 <= cols; c += 16) {
    int64_t q = 0;
    for (; q + kRows <= rows; q += kRows) {
      fold_tile<kRows>(a + q * lda, lda, w + c, ldw, out + q * ldo + c, ldo, depth);
    }
    for (; q < rows; ++q) {
      fold_tile<1>(a + q * lda, lda, w + c, ldw, out + q * ldo + c, ldo, depth);
    }
  }
  for (; c < cols; ++c) {
    for (int64_t q = 0; q < rows; ++q) {
      float sum = 0.0f;
      for (int64_t j = 0; j < depth; ++j) {
        sum += a[q * lda + j] * w[j * ldw + c];
      }
      out[q * ldo + c] = sum;
    }
  }
}

__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// Rows × Outs dot products of length depth, 8 lanes each, then summed across lanes.
template <int Rows, int Outs>
__attribute__((target("avx2,fma"))) inline void project_tile(const float* a, int64_t lda, const float* w,
                                                             int64_t ldw, const float* bias, float* out, int64_t ldo,
                                                             int64_t depth) {
  __m256 acc[Rows][Outs];
  for (int r = 0; r < Rows; ++r) {
    for (int o = 0; o < Outs; ++o) {
      acc[r][o] = _mm256_setzero_ps();
    }
  }
  int64_t j = 0;
  for (; j + 8 <= depth; j += 8) {
    __m256 wv[Outs];
    for (int o = 0; o < Outs; ++o) {
      wv[o] = _mm256_loadu_ps(w + o * ldw + j);
    }
    for (int r = 0; r < Rows; ++r) {
      const __m256 x = _mm256_loadu_ps(a + r * lda + j);
      for (int o = 0; o < Outs; ++o) {
        acc[r][o] = _mm256_fmadd_ps(x, wv[o], acc[r][o]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int o = 0; o < Outs; ++o) {
      float sum = horizontal_sum(acc[r][o]);
      for (int64_t k = j; k < depth; ++k) {
        sum += a[r * lda + k] * w[o * ldw + k];
      }
      out[r * ldo + o] = sum + (bias != nullptr ? bias[o] : 0.0f);
    }
  }
}

// out [rows, outs] = a [rows, depth] · w [outs, depth]ᵀ (+ bias [outs]), row-major with leading dimensions.
__attribute__((target("avx2,fma"))) inline void project(const float* a, int64_t lda, const float* w, int64_t ldw,
                                                        const float* bias, float* out, int64_t ldo, int64_t rows,
                                                        int64_t outs, int64_t depth) {
  constexpr int kRows = 2, kOuts = 4;  // 8 sums and 6 loads in flight: 14 of the 16 registers
  for (int64_t o = 0; o < outs; o += kOuts) {
    const float* w_rows = w + o * ldw;
    const float* b = bias != nullptr ? bias + o : nullptr;
    const bool whole = o + kOuts <= outs;
    int64_t q = 0;
    for (; q + kRows <= rows && whole; q += kRows) {
      project_tile<kRows, kOuts>(a + q * lda, lda, w_rows, ldw, b, out + q * ldo + o, ldo, depth);
    }
    for (; q < rows; ++q) {
      for (int64_t k = o; k < std::min(outs, o + kOuts); ++k) {
        project_tile<1, 1>(a + q * lda, lda, w + k * ldw, ldw, bias != nullptr ? bias + k : nullptr,
                           out + q * ldo + k, ldo, depth);
      }
    }
  }
}

#else

inline bool head_products_supported() { return false; }

#endif

}  // namespace infvideo
