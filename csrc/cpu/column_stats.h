// BatchNorm over the columns of a (rows, cols) matrix: the pointwise and stem blocks'
// BatchNorm (convmixer_kernels/ops/gemm_epilogue_blocked.py), whose rows are positions or
// patches and whose columns are the channels.
//
// Why not ATen's batch norm on the matrix: its float32 statistics on a (rows, C) input
// measured 20-100x less accurate than its NCHW kernel's (mean relative error 1.6e-6 against
// 5.6e-8 at 8192 x 256), and the backward's sums likewise; the error compounds through an
// optimizer (examples/train_digits.py). Here every column is summed in float over chunks of
// kChunkRows rows, which keeps the float rounding to a few ulps of a chunk's sum, and the
// chunks are added in double. The units of work are a fixed number of row ranges that
// depend on the row count only and are merged in order, so the sums are bitwise
// independent of the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernel_common.h"
#include "mixer_block_cpu.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

constexpr int64_t kChunkRows = 128;
// Enough units for any thread count a 2-64 core machine runs, few enough that the
// partial sums stay small (2 x 64 x cols doubles).
constexpr int64_t kMaxRowUnits = 64;

// Row r of a (rows, cols) matrix of S as T: the row itself where S is T, else converted
// into buf.
template <typename T, typename S>
const T* row_as(const void* base, int64_t stride, int64_t r, int64_t cols, T* buf) {
  const S* row = static_cast<const S*>(base) + r * stride;
  if constexpr (std::is_same<S, T>::value) {
    return row;
  } else {
    load_row(buf, row, cols, 1);
    return buf;
  }
}

template <typename T>
std::vector<T> vector_or_zeros(const void* p, int64_t n) {
  if (p == nullptr) return std::vector<T>(n, T(0));
  const T* v = static_cast<const T*>(p);
  return std::vector<T>(v, v + n);
}

template <typename S>
void column_moments(const ColumnMomentsParams& p) {
  using T = acc_type<S>;
  const int64_t rows = p.rows, cols = p.cols;
  const bool same = p.v == p.u && p.v_row_stride == p.u_row_stride;
  const std::vector<T> cu = vector_or_zeros<T>(p.u_center, cols);
  const std::vector<T> cv = vector_or_zeros<T>(p.v_center, cols);
  const int64_t units = std::max<int64_t>(1, std::min(kMaxRowUnits, (rows + kChunkRows - 1) / kChunkRows));
  std::vector<double> partial(units * 2 * cols, 0.0);
  struct State {
    std::vector<T> u, v, su, suv;
  };
  parallel_units(
      units, [&] { return State{std::vector<T>(cols), std::vector<T>(cols), std::vector<T>(cols), std::vector<T>(cols)}; },
      [&](int64_t unit, State& s) {
        double* du = partial.data() + unit * 2 * cols;
        double* duv = du + cols;
        const int64_t r_end = (unit + 1) * rows / units;
        for (int64_t r0 = unit * rows / units; r0 < r_end; r0 += kChunkRows) {
          std::fill(s.su.begin(), s.su.end(), T(0));
          std::fill(s.suv.begin(), s.suv.end(), T(0));
          T* __restrict su = s.su.data();
          T* __restrict suv = s.suv.data();
          for (int64_t r = r0; r < std::min(r_end, r0 + kChunkRows); ++r) {
            const T* __restrict u = row_as<T, S>(p.u, p.u_row_stride, r, cols, s.u.data());
            const T* __restrict v = same ? u : row_as<T, S>(p.v, p.v_row_stride, r, cols, s.v.data());
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) {
              const T d = u[c] - cu[c];
              su[c] += d;
              suv[c] += d * (v[c] - cv[c]);
            }
          }
          for (int64_t c = 0; c < cols; ++c) {
            du[c] += su[c];
            duv[c] += suv[c];
          }
        }
      });
  for (int64_t c = 0; c < cols; ++c) {
    double a = 0.0, b = 0.0;
    for (int64_t unit = 0; unit < units; ++unit) {
      a += partial[unit * 2 * cols + c];
      b += partial[unit * 2 * cols + cols + c];
    }
    p.sum_u[c] = a;
    p.sum_uv[c] = b;
  }
}

template <typename S>
void column_affine(const ColumnAffineParams& p) {
  using T = acc_type<S>;
  const int64_t rows = p.rows, cols = p.cols;
  const T* cv = static_cast<const T*>(p.v_center);
  const T* kv = static_cast<const T*>(p.v_scale);
  const T* k0 = static_cast<const T*>(p.shift);
  const T* ku = static_cast<const T*>(p.u_scale);
  const int64_t units = (rows + kChunkRows - 1) / kChunkRows;
  struct State {
    std::vector<T> u, v, out;
  };
  parallel_units(
      units, [&] { return State{std::vector<T>(cols), std::vector<T>(cols), std::vector<T>(cols)}; },
      [&](int64_t unit, State& s) {
        for (int64_t r = unit * kChunkRows; r < std::min(rows, (unit + 1) * kChunkRows); ++r) {
          const T* __restrict v = row_as<T, S>(p.v, p.v_row_stride, r, cols, s.v.data());
          S* dst = static_cast<S*>(p.out) + r * cols;
          T* __restrict o = std::is_same<S, T>::value ? reinterpret_cast<T*>(dst) : s.out.data();
          if (p.u != nullptr) {
            const T* __restrict u = row_as<T, S>(p.u, p.u_row_stride, r, cols, s.u.data());
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) o[c] = u[c] * ku[c] + ((v[c] - cv[c]) * kv[c] + k0[c]);
          } else {
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) o[c] = (v[c] - cv[c]) * kv[c] + k0[c];
          }
          if constexpr (!std::is_same<S, T>::value) store_row(dst, 1, o, cols);
        }
      });
}

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
