// CUDA kernels of infvideo::slot_attention(see slot_attention.h for the math).
//
// One block per (stream, head, block of 16 queries), one warp per query. Heads of up to 256
// columns take slot_attention_tiled_kernel (slots in parallel across lanes, K and V staged in
// shared memory: see there); wider heads take slot_attention_kernel, where a warp holds its query
// and context row in registers, kColumns columns per lane (head dims up to 32·kColumns), and
// scores one slot at a time with a warp-wide reduction. Both: pass 1 finds the row maximum and
// normaliser; pass 2 forms the weights, accumulates the context and, 32 slots at a time, hands
// the weights to shared memory where one warp adds the 16 queries' weights in order into the
// block's mass row: deterministic, no atomics. N is small, so reading K twice costs less than
// rescaling the context as a one-pass online softmax would.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "slot_attention.h"

namespace infvideo {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = kWarp * kQueryBlock;

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// The block's mass row for `count` slots from n0: lane j of warp 0 adds the 16 queries' weights
// of slot n0 + j in query order (deterministic, no atomics).
__device__ __forceinline__ void write_block_mass(const float (&weights)[kQueryBlock][kWarp + 1], float* mass_row,
                                                 int64_t n0, int64_t count, int warp, int lane) {
  if (warp == 0 && lane < count) {
    float sum = 0.0f;
    for (int w = 0; w < kQueryBlock; ++w) {
      sum += weights[w][lane];
    }
    mass_row[n0 + lane] = sum;
  }
}

// A warp's context row: lane holds columns lane, lane + 32, … of its query's head.
template <int kColumns>
__device__ __forceinline__ void store_context(const float (&acc)[kColumns], float* row, int lane, int64_t head_dim) {
#pragma unroll
  for (int i = 0; i < kColumns; ++i) {
    const int64_t col = lane + i * kWarp;
    if (col < head_dim) {
      row[col] = acc[i];
    }
  }
}

template <typename kv_t, int kColumns>
__device__ __forceinline__ float slot_score(const float (&q)[kColumns], const kv_t* __restrict__ key_row,
                                           const float* __restrict__ log_weight, int64_t n, int lane,
                                           int64_t head_dim) {
  float partial = 0.0f;
#pragma unroll
  for (int i = 0; i < kColumns; ++i) {
    const int64_t col = lane + i * kWarp;
    if (col < head_dim) {
      partial += q[i] * static_cast<float>(key_row[col]);
    }
  }
  return warp_sum(partial) + (log_weight != nullptr ? log_weight[n] : 0.0f);
}

template <typename kv_t, int kColumns>
__global__ void __launch_bounds__(kThreads) slot_attention_kernel(
    const float* __restrict__ query, const kv_t* __restrict__ keys, const kv_t* __restrict__ values,
    const float* __restrict__ log_weight, float* __restrict__ context, float* __restrict__ mass, int64_t queries,
    int64_t slots, int64_t model, int64_t head_dim, int64_t query_blocks, int64_t key_stride_s,
    int64_t key_stride_n, int64_t value_stride_s, int64_t value_stride_n, float scale, bool has_null,
    float null_log_weight) {
  const int64_t s = blockIdx.x, h = blockIdx.y, block = blockIdx.z;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t qi = block * kQueryBlock + warp;
  const bool active = qi < queries;  // whole warps: the warp-wide reductions keep every lane
  __shared__ float weights[kQueryBlock][kWarp + 1];

  float q[kColumns];
#pragma unroll
  for (int i = 0; i < kColumns; ++i) {
    const int64_t col = lane + i * kWarp;
    q[i] = active && col < head_dim ? query[(s * queries + qi) * model + h * head_dim + col] * scale : 0.0f;
  }
  const kv_t* key_base = keys + s * key_stride_s + h * head_dim;
  const kv_t* value_base = values + s * value_stride_s + h * head_dim;

  // Pass 1: running maximum and normaliser (the null slot, score 0 with its log-weight, included).
  float top = has_null ? null_log_weight : -INFINITY;
  float total = has_null ? 1.0f : 0.0f;
  if (active) {
    for (int64_t n = 0; n < slots; ++n) {
      const float x = slot_score<kv_t, kColumns>(q, key_base + n * key_stride_n, log_weight, n, lane, head_dim);
      const float new_top = fmaxf(top, x);
      if (new_top == -INFINITY) {
        continue;  // every score so far is -inf: nothing to add yet
      }
      total = total * __expf(top - new_top) + __expf(x - new_top);
      top = new_top;
    }
  }
  const float inv_total = 1.0f / total;

  // Pass 2: weights, context, and the block's mass 32 slots at a time.
  float acc[kColumns] = {};
  float* mass_row = mass + ((s * gridDim.y + h) * query_blocks + block) * slots;
  for (int64_t n0 = 0; n0 < slots; n0 += kWarp) {
    float own = 0.0f;  // this lane's slot n0 + lane
    const int64_t tile = slots - n0 < kWarp ? slots - n0 : kWarp;
    if (active) {
      for (int j = 0; j < tile; ++j) {
        const int64_t n = n0 + j;
        const float x = slot_score<kv_t, kColumns>(q, key_base + n * key_stride_n, log_weight, n, lane, head_dim);
        const float p = __expf(x - top) * inv_total;
        own = lane == j ? p : own;
        const kv_t* value_row = value_base + n * value_stride_n;
#pragma unroll
        for (int i = 0; i < kColumns; ++i) {
          const int64_t col = lane + i * kWarp;
          if (col < head_dim) {
            acc[i] += p * static_cast<float>(value_row[col]);
          }
        }
      }
    }
    weights[warp][lane] = own;
    __syncthreads();
    write_block_mass(weights, mass_row, n0, tile, warp, lane);
    __syncthreads();
  }
  if (active) {
    store_context(acc, context + (s * queries + qi) * model + h * head_dim, lane, head_dim);
  }
}

// Slots in parallel, for heads of up to 256 columns. The kernel above walks the N slots one after
// the other in every warp (two warp-wide reductions per slot), which measured about 20x the Triton
// kernel's time for one stream on an H200. Here a block stages kTile slots of K and
// V in shared memory at a time; in each warp (one query) lane j scores slot j of the tile with a
// dot product against the query, also in shared memory, so a tile's scores take one pass. Pass 1
// keeps a running maximum and normaliser per lane and merges the lanes once at the end; pass 2
// forms the weights, hands each lane's weight to the others with a shuffle while every lane
// accumulates its columns of the context, and sums the block's 16 queries per slot in order into
// the mass (deterministic, no atomics).
template <int kColumns>
constexpr int tile_slots() {
  // Two tiles of kTile rows of (32·kColumns + 1) floats in at most 24 KB; padding the row by one
  // float puts lane j's reads of row j in bank j.
  return 3072 / (32 * kColumns + 1) < kWarp ? 3072 / (32 * kColumns + 1) : kWarp;
}

__device__ __forceinline__ void merge_softmax(float& top, float& total, float other_top, float other_total) {
  const float new_top = fmaxf(top, other_top);
  if (new_top == -INFINITY) {
    return;  // both empty
  }
  total = total * __expf(top - new_top) + other_total * __expf(other_top - new_top);
  top = new_top;
}

template <typename kv_t, int kColumns>
__global__ void __launch_bounds__(kThreads) slot_attention_tiled_kernel(
    const float* __restrict__ query, const kv_t* __restrict__ keys, const kv_t* __restrict__ values,
    const float* __restrict__ log_weight, float* __restrict__ context, float* __restrict__ mass, int64_t queries,
    int64_t slots, int64_t model, int64_t head_dim, int64_t query_blocks, int64_t key_stride_s,
    int64_t key_stride_n, int64_t value_stride_s, int64_t value_stride_n, float scale, bool has_null,
    float null_log_weight) {
  constexpr int kPitch = 32 * kColumns + 1;
  constexpr int kTile = tile_slots<kColumns>();
  __shared__ float q_rows[kQueryBlock][kPitch];
  __shared__ float key_tile[kTile][kPitch];
  __shared__ float value_tile[kTile][kPitch];
  __shared__ float weights[kQueryBlock][kWarp + 1];
  const int64_t s = blockIdx.x, h = blockIdx.y, block = blockIdx.z;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t qi = block * kQueryBlock + warp;
  const bool active = qi < queries;
  // 32-bit tile indices: a 64-bit division costs dozens of instructions per staged element.
  const int dim = static_cast<int>(head_dim);
  for (int i = threadIdx.x; i < kQueryBlock * dim; i += kThreads) {
    const int row = i / dim, col = i % dim;
    const int64_t q_row = block * kQueryBlock + row;
    q_rows[row][col] = q_row < queries ? query[(s * queries + q_row) * model + h * head_dim + col] * scale : 0.0f;
  }
  const kv_t* key_base = keys + s * key_stride_s + h * head_dim;
  const kv_t* value_base = values + s * value_stride_s + h * head_dim;
  const auto stage = [&](float (*tile)[kPitch], const kv_t* base, int64_t stride_n, int64_t n0, int64_t count) {
    for (int i = threadIdx.x; i < static_cast<int>(count) * dim; i += kThreads) {
      const int row = i / dim, col = i % dim;
      tile[row][col] = static_cast<float>(base[(n0 + row) * stride_n + col]);
    }
  };
  const auto score = [&](int64_t n0, int j) {
    // Four independent sums: one running sum would wait on each shared-memory load in turn.
    float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int64_t c = 0;
    for (; c + 4 <= head_dim; c += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        x[u] += q_rows[warp][c + u] * key_tile[j][c + u];
      }
    }
    for (; c < head_dim; ++c) {
      x[0] += q_rows[warp][c] * key_tile[j][c];
    }
    return (x[0] + x[1]) + (x[2] + x[3]) + (log_weight != nullptr ? log_weight[n0 + j] : 0.0f);
  };

  // Pass 1: each lane's running maximum and normaliser over its slots, then merged across lanes.
  float top = -INFINITY, total = 0.0f;
  for (int64_t n0 = 0; n0 < slots; n0 += kTile) {
    const int64_t count = slots - n0 < kTile ? slots - n0 : kTile;
    __syncthreads();
    stage(key_tile, key_base, key_stride_n, n0, count);
    __syncthreads();
    if (active && lane < count) {
      merge_softmax(top, total, score(n0, lane), 1.0f);
    }
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float other_top = __shfl_xor_sync(0xffffffffu, top, offset);
    const float other_total = __shfl_xor_sync(0xffffffffu, total, offset);
    merge_softmax(top, total, other_top, other_total);
  }
  if (has_null) {
    merge_softmax(top, total, null_log_weight, 1.0f);
  }
  const float inv_total = 1.0f / total;

  // Pass 2: weights, context, and the block's mass per slot.
  float acc[kColumns] = {};
  float* mass_row = mass + ((s * gridDim.y + h) * query_blocks + block) * slots;
  for (int64_t n0 = 0; n0 < slots; n0 += kTile) {
    const int64_t count = slots - n0 < kTile ? slots - n0 : kTile;
    __syncthreads();
    stage(key_tile, key_base, key_stride_n, n0, count);
    stage(value_tile, value_base, value_stride_n, n0, count);
    __syncthreads();
    const float own = active && lane < count ? __expf(score(n0, lane) - top) * inv_total : 0.0f;
    weights[warp][lane] = own;
    for (int j = 0; j < count; ++j) {
      const float p = __shfl_sync(0xffffffffu, own, j);
#pragma unroll
      for (int i = 0; i < kColumns; ++i) {
        const int64_t col = lane + i * kWarp;
        if (col < head_dim) {
          acc[i] += p * value_tile[j][col];
        }
      }
    }
    __syncthreads();
    write_block_mass(weights, mass_row, n0, count, warp, lane);
  }
  if (active) {
    store_context(acc, context + (s * queries + qi) * model + h * head_dim, lane, head_dim);
  }
}

template <typename kv_t, int kColumns>
void launch(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& log_weight,
            at::Tensor& context, at::Tensor& mass, const AttentionShape& shape, bool has_null, float null_log_weight) {
  const dim3 grid(static_cast<unsigned>(shape.streams), static_cast<unsigned>(shape.heads),
                  static_cast<unsigned>(shape.query_blocks));
  const auto run = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        query.data_ptr<float>(), keys.data_ptr<kv_t>(), values.data_ptr<kv_t>(),
        log_weight.defined() ? log_weight.data_ptr<float>() : nullptr, context.data_ptr<float>(),
        mass.data_ptr<float>(), shape.queries, shape.slots, shape.model, shape.head_dim, shape.query_blocks,
        keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        1.0f / std::sqrt(static_cast<float>(shape.head_dim)), has_null, null_log_weight);
  };
  if constexpr (kColumns <= 8) {
    run(slot_attention_tiled_kernel<kv_t, kColumns>);
  } else {
    run(slot_attention_kernel<kv_t, kColumns>);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The widest head a warp holds in registers (32 lanes × 32 columns).
constexpr int64_t kMaxHeadDim = 32 * kWarp;

}  // namespace

std::tuple<at::Tensor, at::Tensor> slot_attention_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                       const at::Tensor& values, int64_t num_heads,
                                                       const std::optional<at::Tensor>& slot_log_weight,
                                                       std::optional<double> null_log_weight) {
  const c10::cuda::CUDAGuard device_guard(query.device());
  const AttentionShape shape = check_slot_attention(query, keys, values, num_heads, slot_log_weight, null_log_weight);
  TORCH_CHECK(shape.head_dim <= kMaxHeadDim, "infvideo::slot_attention: the CUDA kernel takes heads of up to ",
              kMaxHeadDim, " columns, got ", shape.head_dim, " (query width / num_heads)");
  const at::Tensor q = query.to(at::kFloat).contiguous();
  const at::Tensor k = keys.stride(2) == 1 ? keys : keys.contiguous();
  at::Tensor v = values.to(keys.scalar_type());
  v = v.stride(2) == 1 ? v : v.contiguous();
  at::Tensor log_weight;
  if (slot_log_weight.has_value() && slot_log_weight->defined()) {
    log_weight = slot_log_weight->to(at::kFloat).contiguous();
  }
  at::Tensor context = at::empty({shape.streams, shape.queries, shape.model}, q.options());
  at::Tensor mass = at::empty({shape.streams, shape.heads * shape.query_blocks, shape.slots}, q.options());
  const bool has_null = null_log_weight.has_value();
  const float null_value = has_null ? static_cast<float>(*null_log_weight) : 0.0f;
  const auto by_head_dim = [&](auto kv_zero) {
    using kv_t = decltype(kv_zero);
    if (shape.head_dim <= 2 * kWarp) {
      launch<kv_t, 2>(q, k, v, log_weight, context, mass, shape, has_null, null_value);
    } else if (shape.head_dim <= 4 * kWarp) {
      launch<kv_t, 4>(q, k, v, log_weight, context, mass, shape, has_null, null_value);
    } else if (shape.head_dim <= 8 * kWarp) {
      launch<kv_t, 8>(q, k, v, log_weight, context, mass, shape, has_null, null_value);
    } else {
      launch<kv_t, 32>(q, k, v, log_weight, context, mass, shape, has_null, null_value);
    }
  };
  switch (k.scalar_type()) {  // check_slot_attention admits these three
    case at::kFloat: by_head_dim(float{}); break;
    case at::kHalf: by_head_dim(c10::Half{}); break;
    default: by_head_dim(c10::BFloat16{}); break;
  }
  return {context.to(query.scalar_type()), mass};
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CUDA, m) {
  m.impl("slot_attention", &infvideo::WithBackendArgument<decltype(infvideo::slot_attention_cuda), infvideo::slot_attention_cuda>::call);
}
