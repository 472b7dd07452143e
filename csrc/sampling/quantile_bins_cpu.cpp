// CPU kernel of infvideo::quantile_bins(see quantile_bins.h).
//
// The bins must be bit-identical to the reference's (infvideo/reference/sticky.py), which adds
// the groups and forms the CDF in float64 with torch's sum and cumsum: the same two ATen calls
// are made here, so every CDF value is the same double. The levels (i + ½) / M · total grow
// with i, so one merge of levels against the CDF finds every bin (the reference's
// searchsorted, right side, clamped to the last bin).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "quantile_bins.h"

namespace infvideo {

at::Tensor quantile_bins_cpu(const at::Tensor& mass, int64_t num_samples) {
  const at::Tensor groups = prepare_quantile_bins(mass, num_samples);
  TORCH_CHECK(groups.device().is_cpu(), "infvideo::quantile_bins: the CPU kernel got mass on ",
              groups.device());
  const at::Tensor cdf = groups.to(at::kDouble).sum(1).cumsum(-1).contiguous();
  const int64_t streams = cdf.size(0), bins = cdf.size(1);
  at::Tensor out = at::empty({streams, num_samples}, groups.options().dtype(at::kInt));
  const double* cdf_data = cdf.data_ptr<double>();
  int32_t* out_data = out.data_ptr<int32_t>();
  at::parallel_for(0, streams, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const double* row = cdf_data + s * bins;
      const double total = row[bins - 1];
      int64_t below = 0;  // CDF values <= the current level
      for (int64_t i = 0; i < num_samples; ++i) {
        const double level = (static_cast<double>(i) + 0.5) / static_cast<double>(num_samples) * total;
        while (below < bins && row[below] <= level) {
          ++below;
        }
        out_data[s * num_samples + i] = static_cast<int32_t>(std::min(below, bins - 1));
      }
    }
  });
  return out;
}

}  // namespace infvideo

TORCH_LIBRARY_IMPL(infvideo, CPU, m) {
  m.impl("quantile_bins", &infvideo::WithBackendArgument<decltype(infvideo::quantile_bins_cpu), infvideo::quantile_bins_cpu>::call);
}
