// Shared pieces of the CPU kernels: which rows run at a step (variable lengths, reverse
// direction), and small vectorised row loops.
//
// Dimension letters: T steps, B batch; s is a step (processing order), t = pos(b, s) the
// time position row b reads and writes at step s.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fusedrnn {
namespace cpu {

// Everything a step needs to know about rows, positions and masks.
struct Rows {
  const std::vector<int64_t>& len;
  int64_t T, B;
  bool reverse;
  bool active(int64_t b, int64_t s) const { return s < len[b]; }
  int64_t pos(int64_t b, int64_t s) const { return reverse ? len[b] - 1 - s : s; }
  int64_t count(int64_t s) const {
    int64_t n = 0;
    for (int64_t b = 0; b < B; ++b) n += s < len[b];
    return n;
  }
};

inline int64_t grain_for(int64_t B) { return std::max<int64_t>(8, 4096 / std::max<int64_t>(B, 1)); }

// ---- vectorised row kernels ----------------------------------------------------------
// Each loops over hidden units [j0, j1) of one batch row, contiguous in memory, with no
// branches in the loop body, so the compiler vectorises it; target_clones builds an
// AVX-512, an AVX2 and a baseline version, picked at load time for the CPU at hand.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSEDRNN_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDRNN_CPU_CLONES
#endif

// acc[i] += v[i]
template <typename T>
FUSEDRNN_CPU_CLONES void add_row(const T* __restrict v, T* __restrict acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += v[i];
}

// acc[i] += (v[i] - mean[i])^2
template <typename T>
FUSEDRNN_CPU_CLONES void add_sq_row(const T* __restrict v, const T* __restrict mean,
                                    T* __restrict acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T dv = v[i] - mean[i];
    acc[i] += dv * dv;
  }
}

// Per-column batch statistics of v over the active rows: mean and biased variance of the
// columns [c0, c1) of a [B, width] matrix, by two passes (stable).
template <typename T>
void column_stats(const Rows& rows, int64_t s, const T* v, int64_t width, int64_t c0, int64_t c1,
                  T inv_n, T* mean, T* var) {
  for (int64_t c = c0; c < c1; ++c) mean[c] = var[c] = T(0);
  for (int64_t b = 0; b < rows.B; ++b)
    if (rows.active(b, s)) add_row(v + b * width + c0, mean + c0, c1 - c0);
  for (int64_t c = c0; c < c1; ++c) mean[c] *= inv_n;
  for (int64_t b = 0; b < rows.B; ++b)
    if (rows.active(b, s)) add_sq_row(v + b * width + c0, mean + c0, var + c0, c1 - c0);
  for (int64_t c = c0; c < c1; ++c) var[c] *= inv_n;
}

}  // namespace cpu
}  // namespace fusedrnn
