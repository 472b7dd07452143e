// Launch plans: the program format, the parsed plan, and the registry of created plans.
//
// A plan is created (parsed and checked) on any build; running one needs CUDA
// (launch_plan_cuda.cu). The format is described in launch_plan.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace infvideo::launch {

inline constexpr int64_t kVersion = 1;
inline constexpr int64_t kAlloc = 0, kLaunch = 1, kMatmul = 2;
inline constexpr int64_t kPointer = 0, kInt32 = 1, kInt64 = 2, kFloat32 = 3, kNull = 4;
inline constexpr int64_t kMaxParams = 64;

struct TensorRef {
  int64_t slot, offset;
  std::vector<int64_t> sizes, strides;
};

struct InputSpec {
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  int64_t alignment;
};

struct Param {
  int64_t kind, a, b;
};

struct Op {
  int64_t type, slot = -1;
  // kAlloc
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype = at::kFloat;
  // kLaunch
  uint64_t function = 0;  // a CUfunction
  std::array<unsigned, 3> grid{};
  unsigned threads = 0, shared = 0;
  std::vector<Param> params;
  // kMatmul
  bool has_bias = false;
  std::vector<TensorRef> operands;
};

struct Plan {
  c10::Device device{c10::kCUDA};
  std::vector<InputSpec> inputs;
  std::vector<at::Tensor> constants;
  std::vector<int64_t> constant_slots;
  int64_t slots = 0;
  std::vector<Op> ops;
  std::vector<TensorRef> outputs;
};

// The plan registered under `id` (created by infvideo::launch_plan_create); an error if there is none.
std::shared_ptr<const Plan> find_plan(int64_t id);

}  // namespace infvideo::launch
