// Argument checks shared by the CPU and CUDA kernels: each error names the op and the argument.
//
// The Python wrappers (infvideo/ops) check their inputs before calling; these checks are for
// direct callers (torch.ops.infvideo.*, libtorch) so that a wrong shape, dtype or device
// is an error and never an out-of-bounds read. They look at metadata only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <string>

namespace infvideo {

// The kernel of an op whose schema (infvideo/ops/<op>.py) ends in `str backend`: that argument
// picks the kernel before dispatch reaches this one (infvideo/ops/_library.py), which ignores it.
// Register as m.impl("<op>", &WithBackendArgument<decltype(fn), fn>::call).
template <typename Signature, Signature* kernel>
struct WithBackendArgument;

template <typename Result, typename... Args, Result (*kernel)(Args...)>
struct WithBackendArgument<Result(Args...), kernel> {
  static Result call(Args... args, c10::string_view /*backend*/) { return kernel(args...); }
};

inline std::string ranks_text(std::initializer_list<int64_t> ranks) {
  std::string text;
  for (int64_t rank : ranks) {
    text += (text.empty() ? "" : " or ") + std::to_string(rank);
  }
  return text;
}

// `t` is a defined, non-empty tensor of one of `ranks` dimensions.
inline void check_tensor(const at::Tensor& t, const char* op, const char* name,
                         std::initializer_list<int64_t> ranks, const char* layout) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor ", layout);
  bool rank_ok = false;
  for (int64_t rank : ranks) {
    rank_ok = rank_ok || t.dim() == rank;
  }
  TORCH_CHECK(rank_ok, op, ": ", name, " must have ", ranks_text(ranks), " dimensions ", layout, ", got shape ",
              t.sizes());
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", t.sizes(), ")");
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

// The kernels' loads take these; float64 belongs to the torch reference (as for Triton).
inline void check_kernel_float(const at::Tensor& t, const char* op, const char* name) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, op, ": ", name,
              " must have dtype float32, float16 or bfloat16, got ", type);
}

inline void check_index(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
              " must have dtype int32 or int64, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), ", but ", ref_name, " is on ",
              ref.device());
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace infvideo
