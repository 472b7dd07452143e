// CUDA kernel of infvideo::quadrature_table_attention: the forward of quadrature_attention (the
// Gibbs density over a Gaussian basis, SPEC §8) from a table of basis values, in one launch.
//
// One block of four warps per (stream, head, block of 16 queries): the density's group. Every
// product runs on the tensor cores through WMMA (m16n16k8 TF32 fragments, float32 accumulation);
// a product that needs float32 accuracy takes three TF32 passes, hi·hi + hi·lo + lo·hi, with the
// operands split into TF32 high and low parts in registers.
//
// 1. a = q·K_hᵀ/√d for the block's 16 queries, all N basis functions, into shared memory. Half
//    precision inputs are exact in TF32, so one pass; float32 inputs take three.
// 2. One sweep over tiles of 64 points (flash style): the tile's band of the basis (64-column
//    chunks from `band_start`, the functions that are non-negligible on the tile) is copied from
//    the table [2 parts, points, width] into shared memory with cp.async while the previous tile
//    is computed; the scores
//    s = a_band·ψᵀ + log ω (three passes: s is exponentiated), an online softmax whose running
//    maximum moves only when a tile exceeds it by more than kRescaleSlack (then r is rescaled),
//    and r_band += e^{s−m}·ψ_band (three passes, or one for bfloat16 inputs, whose output rounding
//    is coarser than TF32's). r [16, N] lives in shared memory; no partial reaches global memory.
// 3. r /= Σ e^{s−m}; the density Σ_q p_q(t_j) of the group from the scores the sweep stored
//    ([rows, T] float32, read back from L2 by the block that wrote them); the context r·V_h.
//
// The Triton kernels (kernels/quadrature_table.py) split the points over programs and combine
// float32 partials in a second launch; here the sweep keeps r on chip.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include <cmath>
#include <tuple>
#include <type_traits>

#include "../common/checks.h"

namespace infvideo {
namespace {

namespace wm = nvcuda::wmma;

constexpr int kRows = 16;                   // queries per block: the density's group
constexpr int kTile = 64;                   // points per tile, basis functions per chunk, head columns per pass
constexpr int kWarps = 4;                   // each warp owns 16 of a tile's 64 columns
constexpr int kThreads = 32 * kWarps;
constexpr int kLd = kTile + 4;              // row stride of the 64-wide tiles in shared memory (bank offset)
constexpr int kLanesPerRow = kThreads / kRows;
constexpr int kPointsPerLane = kTile / kLanesPerRow;
// e^{s−m} may reach e^8 before the running maximum moves: far from float32's range, and most
// tiles then leave r unscaled.
constexpr float kRescaleSlack = 8.0f;

using FragA = wm::fragment<wm::matrix_a, 16, 16, 8, wm::precision::tf32, wm::row_major>;
template <typename Layout>
using FragB = wm::fragment<wm::matrix_b, 16, 16, 8, wm::precision::tf32, Layout>;
using Accumulator = wm::fragment<wm::accumulator, 16, 16, 8, float>;

struct Shape {
  int64_t streams, queries, heads, head_dim, basis, points, query_blocks, tiles, width, chunks;
  int64_t query_stride_s, query_stride_q, key_stride_s, key_stride_n, value_stride_s, value_stride_n;
  int64_t context_stride_s, context_stride_q;
  float scale;
  bool write_density;
};

template <typename Fragment>
__device__ __forceinline__ void split_tf32(Fragment& hi, Fragment& lo) {
#pragma unroll
  for (int i = 0; i < hi.num_elements; ++i) {
    const float value = hi.x[i];
    const float high = wm::__float_to_tf32(value);
    hi.x[i] = high;
    lo.x[i] = wm::__float_to_tf32(value - high);
  }
}

template <typename Fragment>
__device__ __forceinline__ void round_tf32(Fragment& fragment) {
#pragma unroll
  for (int i = 0; i < fragment.num_elements; ++i) {
    fragment.x[i] = wm::__float_to_tf32(fragment.x[i]);
  }
}

// One operand of a product in shared memory: its TF32 high part (or float32 values) at `hi`, and
// with kPresplit its low part at `lo`, both with leading dimension `ld`.
struct Operand {
  const float* hi;
  const float* lo;
  unsigned ld;
};

// A fragment at `offset` of `op`: (high, low) parts, loaded, or split in registers; with one pass
// only the high part, rounded to TF32 unless pre-split (then already TF32).
template <bool kSplit, bool kPresplit, typename Fragment>
__device__ __forceinline__ void load_parts(Fragment& hi, Fragment& lo, const Operand& op, int offset) {
  wm::load_matrix_sync(hi, op.hi + offset, op.ld);
  if constexpr (kPresplit) {
    if constexpr (kSplit) {
      wm::load_matrix_sync(lo, op.lo + offset, op.ld);
    }
  } else if constexpr (kSplit) {
    split_tf32(hi, lo);
  } else {
    round_tf32(hi);
  }
}

// acc += A[16, 64]·B[64, 16], A row-major; B(k, n) at [n·ld + k] (col_major) or [k·ld + n]
// (row_major). kSplit: three TF32 passes (float32 accuracy), else one. The k-steps alternate
// between two sets of accumulators and the small cross terms (lo·hi, hi·lo) have their own, so
// that consecutive products do not wait on each other's results; the cross terms are added last.
template <bool kSplit, bool kPresplitA, bool kPresplitB, typename Layout>
__device__ __forceinline__ void mma_k64(Accumulator& acc, const Operand& a, const Operand& b) {
  constexpr bool kColMajor = std::is_same<Layout, wm::col_major>::value;
  Accumulator main[2], cross[2];
  main[0] = acc;
  wm::fill_fragment(main[1], 0.0f);
  if constexpr (kSplit) {
    wm::fill_fragment(cross[0], 0.0f);
    wm::fill_fragment(cross[1], 0.0f);
  }
#pragma unroll
  for (int k = 0; k < kTile; k += 8) {
    const int j = (k / 8) & 1;
    FragA a_hi, a_lo;
    FragB<Layout> b_hi, b_lo;
    load_parts<kSplit, kPresplitA>(a_hi, a_lo, a, k);
    load_parts<kSplit, kPresplitB>(b_hi, b_lo, b, kColMajor ? k : k * static_cast<int>(b.ld));
    if constexpr (kSplit) {
      wm::mma_sync(cross[j], a_lo, b_hi, cross[j]);
      wm::mma_sync(cross[j], a_hi, b_lo, cross[j]);
    }
    wm::mma_sync(main[j], a_hi, b_hi, main[j]);
  }
#pragma unroll
  for (int i = 0; i < acc.num_elements; ++i) {
    acc.x[i] = main[0].x[i] + main[1].x[i];
    if constexpr (kSplit) {
      acc.x[i] += cross[0].x[i] + cross[1].x[i];
    }
  }
}

// TF32 high and low parts of x (round to nearest, as the table's).
__device__ __forceinline__ void split_value(float x, float& hi, float& lo) {
  hi = wm::__float_to_tf32(x);
  lo = wm::__float_to_tf32(x - hi);
}

// kRowsIn × 64 columns of a head slice (row stride `stride`, `valid_rows` × `valid_cols` real) into
// shared memory as float32, zeros elsewhere: every load issued before the first store, so that a
// thread waits for memory once.
template <int kRowsIn, typename scalar_t>
__device__ __forceinline__ void stage(float* dst, const scalar_t* src, int64_t stride, int64_t valid_rows,
                                      int64_t valid_cols, int tid) {
  constexpr int kPerThread = kRowsIn * kTile / kThreads;
  float value[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = tid + k * kThreads;
    const int r = i / kTile;
    const int c = i % kTile;
    value[k] = (r < valid_rows && c < valid_cols) ? static_cast<float>(src[r * stride + c]) : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = tid + k * kThreads;
    dst[(i / kTile) * kLd + i % kTile] = value[k];
  }
}

// Both parts of the table's 64 points of `tile` × 64 basis functions from `column` into
// dst[part][64][kLd], asynchronously (one commit group). The table is [2, points, width], its
// parts `part_stride` apart. Thread t copies 16 bytes of rows t/16, t/16 + 8, …: its offsets
// step by whole rows.
__device__ __forceinline__ void copy_band(float* dst, const float* __restrict__ table, int width,
                                          int64_t part_stride, int64_t tile, int column, int tid) {
  constexpr int kVectorsPerRow = kTile / 4;
  constexpr int kRowsPerStep = kThreads / kVectorsPerRow;
  const int r = tid / kVectorsPerRow;
  const int c = (tid % kVectorsPerRow) * 4;
  const float* src = table + tile * kTile * width + r * width + column + c;
  float* to = dst + r * kLd + c;
#pragma unroll
  for (int part = 0; part < 2; ++part) {
#pragma unroll
    for (int k = 0; k < kTile / kRowsPerStep; ++k) {
      __pipeline_memcpy_async(to + part * kTile * kLd + k * kRowsPerStep * kLd,
                              src + part * part_stride + k * kRowsPerStep * width, 16);
    }
  }
  __pipeline_commit();
}

// Max and sum over the kLanesPerRow consecutive lanes that share a row.
__device__ __forceinline__ float row_max(float value) {
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

__device__ __forceinline__ float row_sum(float value) {
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 2) quadrature_table_attention_kernel(
    const scalar_t* __restrict__ query, const scalar_t* __restrict__ keys, const scalar_t* __restrict__ values,
    const float* __restrict__ table, const int* __restrict__ band_start, const float* __restrict__ log_weight,
    scalar_t* __restrict__ context, float* __restrict__ density, float* __restrict__ scores, const Shape p) {
  constexpr bool kFloatInputs = std::is_same<scalar_t, float>::value;
  constexpr bool kSplitWeights = !std::is_same<scalar_t, c10::BFloat16>::value;
  constexpr int kBand = 2 * kTile * kLd;  // one ψ tile, both parts
  extern __shared__ __align__(128) float shared[];
  const int row_stride = static_cast<int>(p.width) + 4;
  const unsigned ld_rows = static_cast<unsigned>(row_stride);
  const int width = static_cast<int>(p.width);
  float* a_s = shared;                        // [16][row_stride]: the scores a of the basis
  float* r_s = a_s + kRows * row_stride;      // [16][row_stride]: r
  float* band_s = r_s + kRows * row_stride;   // [2 buffers][2 parts][64][kLd]: ψ tiles; K and V slices
  float* w_s = band_s + 2 * kBand;            // [2 parts][16][kLd]: a tile's scores, then its weights; q slices
  float* max_s = w_s + 2 * kRows * kLd;       // [16]
  float* inv_sum_s = max_s + kRows;           // [16]
  const int64_t part_stride = p.tiles * kTile * p.width;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int64_t block = blockIdx.x;
  const int64_t q0 = (block % p.query_blocks) * kRows;
  const int64_t head = (block / p.query_blocks) % p.heads;
  const int64_t stream = block / (p.query_blocks * p.heads);
  const int64_t real_rows = p.queries - q0 < kRows ? p.queries - q0 : kRows;
  const int64_t head_col = head * p.head_dim;
  const scalar_t* q_head = query + stream * p.query_stride_s + q0 * p.query_stride_q + head_col;
  const scalar_t* k_head = keys + stream * p.key_stride_s + head_col;
  const scalar_t* v_head = values + stream * p.value_stride_s + head_col;
  const int64_t basis_chunks = (p.basis + kTile - 1) / kTile;
  const int64_t head_chunks = (p.head_dim + kTile - 1) / kTile;

  for (int i = tid; i < 2 * kRows * row_stride; i += kThreads) {
    shared[i] = 0.0f;
  }

  // 1. a = scale · q K_hᵀ, 64 basis functions at a time, the head's columns in slices of 64.
  for (int64_t nc = 0; nc < basis_chunks; ++nc) {
    Accumulator acc;
    wm::fill_fragment(acc, 0.0f);
    for (int64_t dc = 0; dc < head_chunks; ++dc) {
      __syncthreads();
      stage<kRows>(w_s, q_head + dc * kTile, p.query_stride_q, real_rows, p.head_dim - dc * kTile, tid);
      stage<kTile>(band_s, k_head + nc * kTile * p.key_stride_n + dc * kTile, p.key_stride_n, p.basis - nc * kTile,
                   p.head_dim - dc * kTile, tid);
      __syncthreads();
      mma_k64<kFloatInputs, false, false, wm::col_major>(acc, {w_s, nullptr, kLd},
                                                         {band_s + warp * 16 * kLd, nullptr, kLd});
    }
#pragma unroll
    for (int i = 0; i < acc.num_elements; ++i) {
      acc.x[i] *= p.scale;
    }
    wm::store_matrix_sync(a_s + nc * kTile + warp * 16, acc, row_stride, wm::mem_row_major);
  }
  __syncthreads();

  // 2. The sweep over tiles of points.
  const int row = tid / kLanesPerRow;
  const int lane = tid % kLanesPerRow;
  float* scores_row = scores + (block * kRows + row) * (p.tiles * kTile);
  float running_max = -INFINITY;
  float running_sum = 0.0f;
  const bool one_chunk = p.chunks == 1;
  int lo = band_start[0];
  if (one_chunk) {
    copy_band(band_s, table, width, part_stride, 0, lo, tid);
  }
  int next_lo = p.tiles > 1 ? band_start[1] : 0;
  for (int64_t tile = 0; tile < p.tiles; ++tile) {
    float* band = band_s + (one_chunk ? (tile & 1) * kBand : 0);
    float log_w[kPointsPerLane];
#pragma unroll
    for (int i = 0; i < kPointsPerLane; ++i) {
      const int64_t g = tile * kTile + lane + i * kLanesPerRow;
      log_w[i] = g < p.points ? log_weight[g] : -INFINITY;
    }
    const int following_lo = tile + 2 < p.tiles ? band_start[tile + 2] : 0;  // used a tile later
    if (one_chunk) {
      if (tile + 1 < p.tiles) {
        copy_band(band_s + ((tile + 1) & 1) * kBand, table, width, part_stride, tile + 1, next_lo, tid);
        __pipeline_wait_prior(1);
      } else {
        __pipeline_wait_prior(0);
      }
      __syncthreads();
    }
    Accumulator acc;
    wm::fill_fragment(acc, 0.0f);
    for (int c = 0; c < static_cast<int>(p.chunks); ++c) {
      if (!one_chunk) {
        __syncthreads();
        copy_band(band, table, width, part_stride, tile, lo + c * kTile, tid);
        __pipeline_wait_prior(0);
        __syncthreads();
      }
      const float* psi = band + warp * 16 * kLd;
      mma_k64<true, false, true, wm::col_major>(acc, {a_s + lo + c * kTile, nullptr, ld_rows},
                                                {psi, psi + kTile * kLd, kLd});
    }
    wm::store_matrix_sync(w_s + warp * 16, acc, kLd, wm::mem_row_major);
    __syncthreads();

    float s[kPointsPerLane];
    float tile_max = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPointsPerLane; ++i) {
      const int point = lane + i * kLanesPerRow;
      const int64_t g = tile * kTile + point;
      s[i] = g < p.points ? w_s[row * kLd + point] + log_w[i] : -INFINITY;
      tile_max = fmaxf(tile_max, s[i]);
      if (p.write_density && g < p.points) {
        scores_row[g] = s[i];
      }
    }
    tile_max = row_max(tile_max);
    const bool rescale = tile_max > running_max + kRescaleSlack;
    const float new_max = rescale ? tile_max : running_max;
    const float alpha = rescale ? expf(running_max - new_max) : 1.0f;
    float tile_sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPointsPerLane; ++i) {
      const float e = expf(s[i] - new_max);
      const int at = row * kLd + lane + i * kLanesPerRow;
      if constexpr (kSplitWeights) {
        split_value(e, w_s[at], w_s[kRows * kLd + at]);
      } else {
        w_s[at] = wm::__float_to_tf32(e);
      }
      tile_sum += e;
    }
    running_sum = running_sum * alpha + row_sum(tile_sum);
    running_max = new_max;
    if (__syncthreads_or(rescale)) {
      for (int c = lane; c < width; c += kLanesPerRow) {
        r_s[row * row_stride + c] *= alpha;
      }
      __syncthreads();
    }

    for (int c = 0; c < static_cast<int>(p.chunks); ++c) {
      if (!one_chunk) {
        __syncthreads();
        copy_band(band, table, width, part_stride, tile, lo + c * kTile, tid);
        __pipeline_wait_prior(0);
        __syncthreads();
      }
      float* r_cols = r_s + lo + c * kTile + warp * 16;
      Accumulator r_acc;
      wm::load_matrix_sync(r_acc, r_cols, ld_rows, wm::mem_row_major);
      mma_k64<kSplitWeights, true, true, wm::row_major>(r_acc, {w_s, w_s + kRows * kLd, kLd},
                                                        {band + warp * 16, band + kTile * kLd + warp * 16, kLd});
      wm::store_matrix_sync(r_cols, r_acc, ld_rows, wm::mem_row_major);
    }
    __syncthreads();
    lo = next_lo;
    next_lo = following_lo;
  }

  // 3. Normalise r, write the density and the context.
  const float inv_sum = 1.0f / running_sum;
  if (lane == 0) {
    max_s[row] = running_max;
    inv_sum_s[row] = inv_sum;
  }
  for (int c = lane; c < width; c += kLanesPerRow) {
    r_s[row * row_stride + c] *= inv_sum;
  }
  __syncthreads();
  if (p.write_density) {
    const float* block_scores = scores + block * kRows * (p.tiles * kTile);
    for (int64_t g = tid; g < p.points; g += kThreads) {
      const float log_w = log_weight[g];
      float score[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {  // every load first
        score[r] = r < real_rows ? block_scores[r * (p.tiles * kTile) + g] : -INFINITY;
      }
      float sum = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        sum += r < real_rows ? expf(score[r] - log_w - max_s[r]) * inv_sum_s[r] : 0.0f;
      }
      density[block * p.points + g] = sum;
    }
  }
  scalar_t* ctx = context + stream * p.context_stride_s + q0 * p.context_stride_q + head_col;
  for (int64_t dc = 0; dc < head_chunks; ++dc) {
    Accumulator acc;
    wm::fill_fragment(acc, 0.0f);
    for (int64_t nc = 0; nc < basis_chunks; ++nc) {
      __syncthreads();
      stage<kTile>(band_s, v_head + nc * kTile * p.value_stride_n + dc * kTile, p.value_stride_n,
                   p.basis - nc * kTile, p.head_dim - dc * kTile, tid);
      __syncthreads();
      mma_k64<kSplitWeights, false, false, wm::row_major>(acc, {r_s + nc * kTile, nullptr, ld_rows},
                                                          {band_s + warp * 16, nullptr, kLd});
    }
    wm::store_matrix_sync(w_s + warp * 16, acc, kLd, wm::mem_row_major);
    __syncthreads();
    const int64_t cols = p.head_dim - dc * kTile < kTile ? p.head_dim - dc * kTile : kTile;
    for (int i = tid; i < kRows * kTile; i += kThreads) {
      const int r = i / kTile;
      const int c = i % kTile;
      if (r < real_rows && c < cols) {
        ctx[r * p.context_stride_q + dc * kTile + c] = static_cast<scalar_t>(w_s[r * kLd + c]);
      }
    }
  }
}

int64_t shared_bytes(int64_t width) {
  return (2 * kRows * (width + 4) + 4 * kTile * kLd + 2 * kRows * kLd + 2 * kRows) * static_cast<int64_t>(sizeof(float));
}

template <typename scalar_t>
void launch(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& table,
            const at::Tensor& band_start, const at::Tensor& log_weight, at::Tensor& context, at::Tensor& density,
            at::Tensor& scores, const Shape& shape) {
  const int64_t bytes = shared_bytes(shape.width);
  auto kernel = quadrature_table_attention_kernel<scalar_t>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  const int64_t blocks = shape.streams * shape.heads * shape.query_blocks;
  kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      query.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), table.data_ptr<float>(),
      band_start.data_ptr<int>(), log_weight.data_ptr<float>(), context.data_ptr<scalar_t>(), density.data_ptr<float>(),
      scores.data_ptr<float>(), shape);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quadrature_table_attention_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                                   const at::Tensor& values, int64_t num_heads,
                                                                   const at::Tensor& table, const at::Tensor& band_start,
                                                                   int64_t band_chunks, const at::Tensor& log_weight,
                                                                   bool write_density) {
  constexpr const char* op = "infvideo::quadrature_table_attention";
  check_tensor(query, op, "query", {3}, "[S, Q, D]");
  check_tensor(keys, op, "keys", {3}, "[S, N, D]");
  check_tensor(values, op, "values", {3}, "[S, N, D]");
  check_tensor(table, op, "table", {3}, "[2 (TF32 high and low parts), whole tiles of points, width]");
  check_tensor(band_start, op, "band_start", {1}, "[tiles]");
  check_tensor(log_weight, op, "log_weight", {1}, "[T]");
  check_kernel_float(query, op, "query");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"keys", keys}, {"values", values}}) {
    TORCH_CHECK(t.scalar_type() == query.scalar_type(), op, ": ", name, " must have the query's dtype ",
                query.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.size(0) == query.size(0) && t.size(2) == query.size(2), op, ": ", name,
                " must be [S, N, D] with the query's S and D, got ", t.sizes(), " against query ", query.sizes());
    TORCH_CHECK(t.stride(2) == 1, op, ": ", name, " must have unit stride in its last dimension");
  }
  TORCH_CHECK(values.size(1) == keys.size(1), op, ": values must have as many rows N as keys, got ", values.size(1),
              " against ", keys.size(1));
  TORCH_CHECK(query.stride(2) == 1, op, ": query must have unit stride in its last dimension");
  TORCH_CHECK(num_heads > 0 && query.size(2) % num_heads == 0, op, ": num_heads must divide the query's width ",
              query.size(2), ", got ", num_heads);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"keys", keys}, {"values", values},
                                {"table", table}, {"band_start", band_start}, {"log_weight", log_weight}}) {
    TORCH_CHECK(t.device() == query.device(), op, ": ", name, " must be on the query's device ", query.device(),
                ", got ", t.device());
  }
  TORCH_CHECK(query.is_cuda(), op, ": the tensors must be CUDA tensors, got ", query.device());
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.is_contiguous(), op,
              ": table must be a contiguous float32 tensor, got ", table.scalar_type());
  TORCH_CHECK(log_weight.scalar_type() == at::kFloat && log_weight.is_contiguous(), op,
              ": log_weight must be a contiguous float32 tensor, got ", log_weight.scalar_type());
  TORCH_CHECK(band_start.scalar_type() == at::kInt && band_start.is_contiguous(), op,
              ": band_start must be a contiguous int32 tensor, got ", band_start.scalar_type());
  const int64_t points = log_weight.size(0);
  const int64_t tiles = (points + kTile - 1) / kTile;
  const int64_t basis = keys.size(1);
  const int64_t width = table.size(2);
  TORCH_CHECK(table.size(0) == 2 && table.size(1) == tiles * kTile && band_start.size(0) == tiles, op,
              ": table must be [2, ", tiles * kTile, ", width] and band_start have ", tiles, " entries for ", points,
              " points, got ", table.sizes(), " and ", band_start.sizes());
  TORCH_CHECK(width % 8 == 0 && width >= (basis + kTile - 1) / kTile * kTile, op,
              ": table's width must be a multiple of 8 and cover N = ", basis, " rounded up to 64, got ", width);
  TORCH_CHECK(band_chunks >= 1 && band_chunks * kTile <= width, op, ": band_chunks must be in [1, width/64], got ",
              band_chunks);

  c10::cuda::CUDAGuard guard(query.device());
  int device_limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&device_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, query.get_device()));
  TORCH_CHECK(shared_bytes(width) <= device_limit, op, ": a table of width ", width, " needs ", shared_bytes(width),
              " bytes of shared memory per block, more than this GPU's ", device_limit);

  Shape shape{};
  shape.streams = query.size(0);
  shape.queries = query.size(1);
  shape.heads = num_heads;
  shape.head_dim = query.size(2) / num_heads;
  shape.basis = basis;
  shape.points = points;
  shape.query_blocks = (shape.queries + kRows - 1) / kRows;
  shape.tiles = tiles;
  shape.width = width;
  shape.chunks = band_chunks;
  shape.query_stride_s = query.stride(0);
  shape.query_stride_q = query.stride(1);
  shape.key_stride_s = keys.stride(0);
  shape.key_stride_n = keys.stride(1);
  shape.value_stride_s = values.stride(0);
  shape.value_stride_n = values.stride(1);
  shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  shape.write_density = write_density;

  at::Tensor context = at::empty(query.sizes(), query.options());
  shape.context_stride_s = context.stride(0);
  shape.context_stride_q = context.stride(1);
  const int64_t groups = num_heads * shape.query_blocks;
  const auto f32 = query.options().dtype(at::kFloat);
  at::Tensor density = write_density ? at::empty({shape.streams, groups, points}, f32)
                                     : at::zeros({shape.streams, groups, 1}, f32);
  at::Tensor scores = write_density ? at::empty({shape.streams * groups * kRows, tiles * kTile}, f32)
                                    : at::empty({1}, f32);
  switch (query.scalar_type()) {  // check_kernel_float admits these three
    case at::kFloat: launch<float>(query, keys, values, table, band_start, log_weight, context, density, scores, shape); break;
    case at::kHalf: launch<c10::Half>(query, keys, values, table, band_start, log_weight, context, density, scores, shape); break;
    default: launch<c10::BFloat16>(query, keys, values, table, band_start, log_weight, context, density, scores, shape); break;
  }
  return {context, density};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CUDA, m) {
  m.impl("quadrature_table_attention", &infvideo::quadrature_table_attention_cuda);
}
