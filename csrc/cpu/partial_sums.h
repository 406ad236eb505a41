// The reductions' partials (BN statistics, dgamma, dbeta, dbias, dweight), written per
// (n, c) and merged over n in a fixed order, so every result is bitwise independent of the
// thread count.
//
// Included once per capability level, by mixer_block_cpu.cpp only: its contents sit in
// that translation unit's anonymous namespace.
#pragma once

#include <cstdint>
#include <vector>

#include "kernel_common.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

// Chan's merge of N equal-count (count, mean, M2) partials per channel; writes the mean
// and the biased variance. The partials and the merge are in double whatever T is: the
// backward's sum(da) = 0 identity rests on the mean, and an error of a few float ulps
// there shows up many times larger in the cancelling dbias/dweight sums.
template <typename T>
void merge_stats(int64_t N, int64_t C, int64_t count, const std::vector<double>& pmean,
                 const std::vector<double>& pm2, T* mean_out, T* var_out) {
  for (int64_t c = 0; c < C; ++c) {
    double mean = pmean[c];
    double m2 = pm2[c];
    for (int64_t n = 1; n < N; ++n) {
      const double delta = pmean[n * C + c] - mean;
      const double frac = 1.0 / static_cast<double>(n + 1);  // n_b / (n_a + n_b)
      mean += delta * frac;
      m2 += pm2[n * C + c] + delta * delta * static_cast<double>(count) * static_cast<double>(n) * frac;
    }
    mean_out[c] = static_cast<T>(mean);
    var_out[c] = static_cast<T>(m2 / static_cast<double>(N * count));
  }
}

// out[c * len + t] = sum_n part[(n * C + c) * len + t].
template <typename T>
void sum_over_batch(int64_t N, int64_t C, int64_t len, const std::vector<T>& part, T* out) {
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < len; ++t) {
      T s = part[c * len + t];
      for (int64_t n = 1; n < N; ++n) s += part[(n * C + c) * len + t];
      out[c * len + t] = s;
    }
  }
}

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
