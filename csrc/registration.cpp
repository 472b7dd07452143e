// The `infvideo` library of the extension. The ops' schemas are defined once, in Python
// (infvideo/ops/<op>.py, torch.library.custom_op, as FRAGMENTs of this namespace), so they exist
// with or without this library; its C++ and CUDA kernels register for the ops' CPU and CUDA
// dispatch keys next to their code (TORCH_LIBRARY_IMPL), and the op's `backend` argument picks
// between them and Triton (infvideo/ops/_library.py). The one schema here is the build's own.
#include <torch/library.h>

namespace infvideo {

// Whether this build holds the CUDA kernels (infvideo.backends asks).
bool csrc_has_cuda() {
#ifdef INFVIDEO_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace infvideo

TORCH_LIBRARY(infvideo, m) { m.def("csrc_has_cuda() -> bool", &infvideo::csrc_has_cuda); }
