// Running launch plans (launch_plan.h): per call, check the inputs against the recording,
// allocate the step's tensors, fill each kernel's parameter buffer and launch it with
// cuLaunchKernel on the current stream, run the recorded products, return the outputs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "launch_plan.h"

namespace infvideo::launch {
namespace {

using LaunchKernel = CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  CUstream, void**, void**);

// cuLaunchKernel from the driver the runtime loaded (no link against libcuda).
LaunchKernel launch_kernel() {
  static const LaunchKernel fn = [] {
    void* symbol = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t status =
        cudaGetDriverEntryPointByVersion("cuLaunchKernel", &symbol, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t status = cudaGetDriverEntryPoint("cuLaunchKernel", &symbol, cudaEnableDefault, &found);
#endif
    TORCH_CHECK(status == cudaSuccess && found == cudaDriverEntryPointSuccess && symbol != nullptr,
                "infvideo: cuLaunchKernel is not available from the CUDA driver");
    return reinterpret_cast<LaunchKernel>(symbol);
  }();
  return fn;
}

bool matches(const at::Tensor& t, const InputSpec& spec, c10::Device device) {
  return t.defined() && t.device() == device && t.scalar_type() == spec.dtype && t.sizes().equals(spec.sizes) &&
         t.strides().equals(spec.strides) &&
         static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.data_ptr()) & 15) == spec.alignment;
}

at::Tensor view(const std::vector<at::Tensor>& slots, const TensorRef& ref) {
  const at::Tensor& base = slots[ref.slot];
  if (ref.offset == 0 && base.sizes().equals(ref.sizes) && base.strides().equals(ref.strides)) return base;
  return base.as_strided(ref.sizes, ref.strides, base.storage_offset() + ref.offset);
}

void launch(const Op& op, const std::vector<at::Tensor>& slots, cudaStream_t stream) {
  std::array<uint64_t, kMaxParams> values{};
  std::array<void*, kMaxParams> pointers{};
  const size_t count = op.params.size();
  for (size_t p = 0; p < count; ++p) {
    const Param& param = op.params[p];
    switch (param.kind) {
      case kPointer:
        values[p] = reinterpret_cast<uintptr_t>(slots[param.a].data_ptr()) + static_cast<uint64_t>(param.b);
        break;
      case kInt32: {
        const auto v = static_cast<int32_t>(param.a);
        std::memcpy(&values[p], &v, sizeof v);
        break;
      }
      case kFloat32: {
        const auto bits = static_cast<uint32_t>(param.a);
        std::memcpy(&values[p], &bits, sizeof bits);
        break;
      }
      case kInt64:
        values[p] = static_cast<uint64_t>(param.a);
        break;
      default:  // kNull
        values[p] = 0;
    }
    pointers[p] = &values[p];
  }
  const auto function = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(op.function));
  const CUresult status = launch_kernel()(function, op.grid[0], op.grid[1], op.grid[2], op.threads, 1, 1, op.shared,
                                          reinterpret_cast<CUstream>(stream), pointers.data(), nullptr);
  TORCH_CHECK(status == CUDA_SUCCESS, "infvideo::launch_plan_run: cuLaunchKernel failed with CUresult ",
              static_cast<int>(status));
}

// The plan's outputs, or an empty list when the inputs are not those it was recorded for (the
// caller then runs the step from Python).
std::vector<at::Tensor> launch_plan_run(int64_t id, at::TensorList inputs) {
  const std::shared_ptr<const Plan> plan = find_plan(id);
  if (inputs.size() != plan->inputs.size()) return {};
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!matches(inputs[i], plan->inputs[i], plan->device)) return {};
  }
  const c10::cuda::CUDAGuard guard(plan->device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(plan->device.index()).stream();
  std::vector<at::Tensor> slots(plan->slots);
  std::copy(inputs.begin(), inputs.end(), slots.begin());
  for (size_t c = 0; c < plan->constants.size(); ++c) slots[plan->constant_slots[c]] = plan->constants[c];
  for (const Op& op : plan->ops) {
    if (op.type == kAlloc) {
      slots[op.slot] = at::empty_strided(op.sizes, op.strides, at::TensorOptions(plan->device).dtype(op.dtype));
    } else if (op.type == kLaunch) {
      launch(op, slots, stream);
    } else if (op.has_bias) {
      slots[op.slot] =
          at::addmm(view(slots, op.operands[0]), view(slots, op.operands[1]), view(slots, op.operands[2]));
    } else {
      slots[op.slot] = at::mm(view(slots, op.operands[0]), view(slots, op.operands[1]));
    }
  }
  std::vector<at::Tensor> outputs;
  outputs.reserve(plan->outputs.size());
  for (const TensorRef& ref : plan->outputs) outputs.push_back(view(slots, ref));
  return outputs;
}

}  // namespace
}  // namespace infvideo::launch

TORCH_LIBRARY_FRAGMENT(infvideo, m) {
  m.def("launch_plan_run(int plan, Tensor[] inputs) -> Tensor[]", &infvideo::launch::launch_plan_run);
}
