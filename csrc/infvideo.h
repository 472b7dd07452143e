// C++ entry points of the infvideo ops for libtorch users (link the `infvideo` library that
// CMakeLists.txt builds). Each runs the C++ kernel of the tensors' device (CPU, or CUDA in a
// CUDA build); shapes and math are those of the ops in infvideo/ops/ (SPEC sections 6-8).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace infvideo {

// New coefficients B [S, N, e] (float32), and B in cast_dtype (empty without one):
// B_n = scale_n · (Σ_{k in past_start[n]..} past[s, sample_bins[s or 0, past_idx[k]]] + Σ_{k in frame_start[n]..}
// mean_t frames[s, frame_idx[k], t]). frames [S, L, e], [S, L, T, e] or [S, L, h, w, e]; past [S, N, e] with
// sample_bins [S or 1, M] (-1 reads zeros), or neither for a first chunk; CSR maps int32/int64; scale [N].
std::tuple<at::Tensor, at::Tensor> rect_consolidate(const at::Tensor& frames, const std::optional<at::Tensor>& past,
                                                    const std::optional<at::Tensor>& sample_bins,
                                                    const at::Tensor& past_idx, const at::Tensor& past_start,
                                                    const at::Tensor& frame_idx, const at::Tensor& frame_start,
                                                    const at::Tensor& scale,
                                                    std::optional<at::ScalarType> cast_dtype = std::nullopt);

// Context [S, Q, D] (query's dtype) and bin masses [S, H·⌈Q/16⌉, N] (float32) of the Gibbs density over N
// rectangular bins: r = softmax_n(q·K_n/√d + log w_n; null slot), c = Σ_n r_n V_n. query [S, Q, D],
// keys / values [S, N, D], slot_log_weight [N] or none (equal bins), null_log_weight or none (no null slot).
std::tuple<at::Tensor, at::Tensor> slot_attention(const at::Tensor& query, const at::Tensor& keys,
                                                  const at::Tensor& values, int64_t num_heads,
                                                  const std::optional<at::Tensor>& slot_log_weight = std::nullopt,
                                                  std::optional<double> null_log_weight = std::nullopt);

// Gradients of rect_consolidate from grad = dL/dB [S, N, e]: of each frame's tokens, one row per frame
// [S, num_frames, e] in frames_dtype (every token of frame j in bin n receives scale_n · grad_n / tokens), and of
// past [S, N, e] (float32; empty without with_past): each past sample adds scale_n · grad_n into the old row it
// read. CPU kernels only (a CUDA tensor raises: the Python op's CUDA backward is plain torch).
std::tuple<at::Tensor, at::Tensor> rect_consolidate_backward(
    const at::Tensor& grad, const std::optional<at::Tensor>& sample_bins, const at::Tensor& past_idx,
    const at::Tensor& past_start, const at::Tensor& frame_idx, const at::Tensor& frame_start, const at::Tensor& scale,
    int64_t num_frames, int64_t tokens, at::ScalarType frames_dtype, bool with_past);

// Gradients of slot_attention for query, keys and values (their dtypes) from grad_context [S, Q, D] and
// grad_mass [S, H·⌈Q/16⌉, N] or none; r is recomputed. CPU kernels only, as above.
std::tuple<at::Tensor, at::Tensor, at::Tensor> slot_attention_backward(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_mass, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, int64_t num_heads,
    const std::optional<at::Tensor>& slot_log_weight = std::nullopt,
    std::optional<double> null_log_weight = std::nullopt);

// Bins [S, M] (int32, sorted) of u_i = F⁻¹((i − ½)/M), F the CDF of mass [S, K] or [S, G, K] summed over groups.
at::Tensor quantile_bins(const at::Tensor& mass, int64_t num_samples);

}  // namespace infvideo
