// Launch plans: a recorded sequence of kernel launches and matrix products, replayed from C++ with
// new pointers on every call (infvideo/launch_plans.py records them). This file parses, checks and
// keeps them; launch_plan_cuda.cu runs them.
//
// A one-stream memory step is three Triton kernels and one cuBLAS product, about 24 µs of GPU
// time; launched from Python each kernel costs 20-40 µs of host time with its wrapper. The
// wrappers compute the same grid, strides and constants on every call at a given signature, so
// Python records them once (with the compiled kernels' CUfunction handles) and C++ launches
// them: per call it checks the inputs against the recording, allocates the step's tensors, fills
// each kernel's parameter buffer and calls cuLaunchKernel on the current stream. Nothing is
// captured: the inputs are read where they are, and every output is a new tensor, as in the eager
// step.
//
// Program encoding (int64 list, written by infvideo/launch_plans.py, `encode`):
//   [kVersion, inputs, slots, constants, constants × slot, ops, outputs]
//   inputs × [ndim, sizes…, strides…, dtype, address mod 16]     (slots 0 … inputs-1)
//   ops × one of
//     [kAlloc, slot, ndim, sizes…, strides…, dtype]
//     [kLaunch, function, grid x, y, z, threads, shared bytes, params, params × [kind, a, b]]
//     [kMatmul, slot, has_bias, (bias) ref, mat1 ref, mat2 ref]     (addmm, or mm without bias)
//   outputs × ref
// where ref = [slot, element offset, ndim, sizes…, strides…], a view of a slot's tensor (offset
// relative to that tensor's first element), and a launch parameter is a pointer into a slot
// (kind 0: a = slot, b = byte offset), an integer or float by value (kinds 1-3), or a null pointer
// (kind 4: Triton's scratch parameters of kernels that use no scratch memory).
#include "launch_plan.h"

#include <torch/library.h>

#include <algorithm>
#include <mutex>

namespace infvideo::launch {
namespace {

// Reads the program front to back; every read is bounds-checked, so a malformed program is an
// error at creation and never a wild read later.
class Reader {
 public:
  explicit Reader(c10::IntArrayRef program) : program_(program) {}
  int64_t next() {
    TORCH_CHECK(at_ < program_.size(), "infvideo::launch_plan_create: the program ends early");
    return program_[at_++];
  }
  std::vector<int64_t> take(int64_t count) {
    TORCH_CHECK(count >= 0 && count <= 16, "infvideo::launch_plan_create: bad rank ", count);
    std::vector<int64_t> out(count);
    for (auto& v : out) v = next();
    return out;
  }
  bool done() const { return at_ == program_.size(); }

 private:
  c10::IntArrayRef program_;
  size_t at_ = 0;
};

at::ScalarType read_dtype(Reader& in) {
  const int64_t code = in.next();
  TORCH_CHECK(code >= 0 && code < static_cast<int64_t>(at::ScalarType::NumOptions),
              "infvideo::launch_plan_create: dtype code ", code);
  return static_cast<at::ScalarType>(code);
}

// `defined[slot]`: an earlier op (or the call's inputs and the constants) has filled the slot.
void check_defined(const std::vector<bool>& defined, int64_t slot) {
  TORCH_CHECK(slot >= 0 && slot < static_cast<int64_t>(defined.size()) && defined[slot],
              "infvideo::launch_plan_create: slot ", slot, " is read before it is written");
}

TensorRef read_ref(Reader& in, const std::vector<bool>& defined) {
  TensorRef ref;
  ref.slot = in.next();
  check_defined(defined, ref.slot);
  ref.offset = in.next();
  const int64_t ndim = in.next();
  ref.sizes = in.take(ndim);
  ref.strides = in.take(ndim);
  return ref;
}

std::unique_ptr<Plan> parse(c10::IntArrayRef program, at::TensorList constants, int64_t device) {
  Reader in(program);
  TORCH_CHECK(in.next() == kVersion, "infvideo::launch_plan_create: program version mismatch");
  auto plan = std::make_unique<Plan>();
  plan->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
  const int64_t inputs = in.next();
  plan->slots = in.next();
  TORCH_CHECK(inputs >= 0 && inputs <= plan->slots && plan->slots <= 4096,
              "infvideo::launch_plan_create: bad slot count");
  const int64_t num_constants = in.next();
  TORCH_CHECK(num_constants == static_cast<int64_t>(constants.size()),
              "infvideo::launch_plan_create: the program names ", num_constants, " constants, got ",
              constants.size());
  std::vector<bool> defined(plan->slots, false);
  std::fill(defined.begin(), defined.begin() + inputs, true);
  const auto define = [&](int64_t slot) {
    TORCH_CHECK(slot >= inputs && slot < plan->slots && !defined[slot],
                "infvideo::launch_plan_create: cannot write slot ", slot);
    defined[slot] = true;
  };
  for (const auto& c : constants) {
    TORCH_CHECK(c.device() == plan->device, "infvideo::launch_plan_create: a constant is on ", c.device(),
                ", the plan runs on ", plan->device);
    const int64_t slot = in.next();
    define(slot);
    plan->constant_slots.push_back(slot);
  }
  const int64_t ops = in.next(), outputs = in.next();
  for (int64_t i = 0; i < inputs; ++i) {
    InputSpec spec;
    const int64_t ndim = in.next();
    spec.sizes = in.take(ndim);
    spec.strides = in.take(ndim);
    spec.dtype = read_dtype(in);
    spec.alignment = in.next();
    plan->inputs.push_back(std::move(spec));
  }
  plan->constants = constants.vec();
  for (int64_t k = 0; k < ops; ++k) {
    Op op;
    op.type = in.next();
    if (op.type == kAlloc) {
      op.slot = in.next();
      define(op.slot);
      const int64_t ndim = in.next();
      op.sizes = in.take(ndim);
      op.strides = in.take(ndim);
      op.dtype = read_dtype(in);
    } else if (op.type == kLaunch) {
      op.function = static_cast<uint64_t>(in.next());
      for (auto& g : op.grid) g = static_cast<unsigned>(in.next());
      op.threads = static_cast<unsigned>(in.next());
      op.shared = static_cast<unsigned>(in.next());
      const int64_t params = in.next();
      TORCH_CHECK(params >= 0 && params <= kMaxParams, "infvideo::launch_plan_create: ", params, " parameters");
      for (int64_t p = 0; p < params; ++p) {
        Param param{in.next(), in.next(), in.next()};
        TORCH_CHECK(param.kind >= kPointer && param.kind <= kNull, "infvideo::launch_plan_create: parameter kind ",
                    param.kind);
        if (param.kind == kPointer) check_defined(defined, param.a);
        op.params.push_back(param);
      }
    } else if (op.type == kMatmul) {
      op.slot = in.next();
      op.has_bias = in.next() != 0;
      for (int i = 0; i < (op.has_bias ? 3 : 2); ++i) op.operands.push_back(read_ref(in, defined));
      define(op.slot);
    } else {
      TORCH_CHECK(false, "infvideo::launch_plan_create: unknown op ", op.type);
    }
    plan->ops.push_back(std::move(op));
  }
  for (int64_t k = 0; k < outputs; ++k) plan->outputs.push_back(read_ref(in, defined));
  TORCH_CHECK(in.done(), "infvideo::launch_plan_create: trailing program entries");
  return plan;
}

std::mutex registry_mutex;
std::vector<std::shared_ptr<const Plan>> registry;

}  // namespace

std::shared_ptr<const Plan> find_plan(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  TORCH_CHECK(id >= 0 && id < static_cast<int64_t>(registry.size()) && registry[id],
              "infvideo::launch_plan_run: no plan ", id);
  return registry[id];
}

namespace {

int64_t launch_plan_create(c10::IntArrayRef program, at::TensorList constants, int64_t device) {
  std::shared_ptr<const Plan> plan = parse(program, constants, device);
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry.push_back(std::move(plan));
  return static_cast<int64_t>(registry.size()) - 1;
}

void launch_plan_release(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  if (id >= 0 && id < static_cast<int64_t>(registry.size())) registry[id].reset();
}

}  // namespace
}  // namespace infvideo::launch

// Creating and releasing plans needs no GPU (so their checks are tested everywhere); running
// them is registered by launch_plan_cuda.cu in CUDA builds.
TORCH_LIBRARY_FRAGMENT(infvideo, m) {
  m.def("launch_plan_create(int[] program, Tensor[] constants, int device) -> int",
        &infvideo::launch::launch_plan_create);
  m.def("launch_plan_release(int plan) -> ()", &infvideo::launch::launch_plan_release);
}
