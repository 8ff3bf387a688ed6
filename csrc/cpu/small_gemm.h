// A repeated float32 GEMM for few rows: y [M, N] = a [M, K] @ B, B [K, N] given once per op
// call, M <= kSmallRows (streaming inference, small batches).
//
// Dimension letters: M rows (batch), K reduction, N output columns; panels of kLanes columns.
//
// At a handful of rows a step's GEMM is a pass over the weight (1 MB at H = 256) and the
// library GEMMs pay fixed costs larger than the pass: MKL's packed GEMM falls back to a
// GEMV (about 25 GFLOP/s here at one row), oneDNN's linear pays its per-call setup.  Here the
// weight is packed once per op call into panels of kLanes columns, panel[k][l] = B[k, n0 + l],
// so that a step is an outer-product loop: for each k, one panel row is loaded and
// multiplied by each row's a[b, k] (broadcast) into kLanes-wide accumulators held in
// registers; no horizontal sums, each weight byte read once per step (from L2: a thread's
// panels stay in its core's cache across steps).  Two panels per pass, up to kRowTile rows
// per pass, so the accumulators fit the 32 vector registers of AVX-512.  The loops use GCC
// vector extensions in functions cloned for AVX-512, AVX2 and baseline (rows.h), so each
// CPU gets its own vector width.  The summation order is fixed: results are deterministic and
// independent of the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common.h"
#include "rows.h"

namespace fusedrnn {
namespace cpu {

constexpr int64_t kSmallRows = 16;  // M up to this runs here
constexpr int64_t kLanes = 16;      // columns per panel (one AVX-512 register of floats)
constexpr int64_t kKBlock = 256;    // K block of the panel kernel's sums
constexpr int kRowTile = 8;         // rows per pass: 2 x 8 accumulators

using Vec16 = float __attribute__((vector_size(kLanes * sizeof(float))));

// Pack B (op(w): w [N, K] when trans, else w [K, N]) into panels [P][K][kLanes], zero-padded
// past N; P = ceil(N / kLanes), rounded up to a multiple of `multiple`.
inline at::Tensor pack_panels(const at::Tensor& w, bool trans, int64_t multiple = 1) {
  const at::Tensor wc = w.contiguous();
  const int64_t N = trans ? wc.size(0) : wc.size(1), K = trans ? wc.size(1) : wc.size(0);
  const int64_t P = ((N + kLanes - 1) / kLanes + multiple - 1) / multiple * multiple;
  at::Tensor out = new_zeroed_output({P, K, kLanes}, wc.options());
  const float* src = wc.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kLanes, nl = std::max<int64_t>(0, std::min(kLanes, N - n0));
      float* panel = dst + p * K * kLanes;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = 0; l < nl; ++l) panel[k * kLanes + l] = trans ? src[(n0 + l) * K + k] : src[k * N + n0 + l];
    }
  });
  return out;
}

// Rows [0, MR) of y[:, n0:n0 + 2 * kLanes) (nl0 / nl1 valid columns in each panel; panel
// p1 absent when nl1 == 0) from a [MR, K] (leading dimension lda).
template <int MR>
FUSEDRNN_CPU_CLONES void small_gemm_tile(const float* __restrict a, int64_t lda, const float* __restrict p0,
                                         const float* __restrict p1, int64_t K, float* __restrict y, int64_t ldy,
                                         int64_t nl0, int64_t nl1) {
  // K in blocks of kKBlock, each summed in registers and then added to the totals: no output's
  // sum is one chain of K adds (the accuracy of a blocked GEMM; gemm.h, kOneDnnMaxK).
  Vec16 tot0[MR], tot1[MR];
  for (int b = 0; b < MR; ++b) tot0[b] = tot1[b] = Vec16{};
  for (int64_t kb = 0; kb < K; kb += kKBlock) {
    const int64_t ke = std::min(K, kb + kKBlock);
    Vec16 acc0[MR], acc1[MR];
    for (int b = 0; b < MR; ++b) acc0[b] = acc1[b] = Vec16{};
    if (nl1 > 0) {
      for (int64_t k = kb; k < ke; ++k) {
        Vec16 w0, w1;
        std::memcpy(&w0, p0 + k * kLanes, sizeof(Vec16));
        std::memcpy(&w1, p1 + k * kLanes, sizeof(Vec16));
        for (int b = 0; b < MR; ++b) {
          const float ab = a[b * lda + k];
          acc0[b] += ab * w0;
          acc1[b] += ab * w1;
        }
      }
    } else {
      for (int64_t k = kb; k < ke; ++k) {
        Vec16 w0;
        std::memcpy(&w0, p0 + k * kLanes, sizeof(Vec16));
        for (int b = 0; b < MR; ++b) acc0[b] += a[b * lda + k] * w0;
      }
    }
    for (int b = 0; b < MR; ++b) {
      tot0[b] += acc0[b];
      tot1[b] += acc1[b];
    }
  }
  for (int b = 0; b < MR; ++b) {
    float out[2 * kLanes];
    std::memcpy(out, &tot0[b], sizeof(Vec16));
    std::memcpy(out + kLanes, &tot1[b], sizeof(Vec16));
    float* yr = y + b * ldy;
    for (int64_t l = 0; l < nl0; ++l) yr[l] = out[l];
    for (int64_t l = 0; l < nl1; ++l) yr[kLanes + l] = out[kLanes + l];
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, const float*, int64_t, float*, int64_t, int64_t,
                        int64_t);

inline TileFn small_gemm_tile_for(int64_t rows) {
  static constexpr TileFn fns[kRowTile] = {small_gemm_tile<1>, small_gemm_tile<2>, small_gemm_tile<3>,
                                           small_gemm_tile<4>, small_gemm_tile<5>, small_gemm_tile<6>,
                                           small_gemm_tile<7>, small_gemm_tile<8>};
  return fns[rows - 1];
}

// y [M, N] = a [M, K] @ B for panels from pack_panels(); a and y contiguous, M <= kSmallRows.
inline void small_gemm(const float* a, const float* panels, float* y, int64_t M, int64_t N, int64_t K) {
  const int64_t P = (N + kLanes - 1) / kLanes, pairs = (P + 1) / 2;
  // Threads split the panel pairs; a pair is 2 x K x kLanes floats, so a grain of 2 pairs
  // keeps tiny weights on one thread.
  at::parallel_for(0, pairs, 2, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t pa = 2 * q, pb = pa + 1;
      const int64_t n0 = pa * kLanes;
      const int64_t nl0 = std::min(kLanes, N - n0);
      const int64_t nl1 = pb < P ? std::min(kLanes, N - pb * kLanes) : 0;
      const float* p0 = panels + pa * K * kLanes;
      const float* p1 = pb < P ? panels + pb * K * kLanes : p0;
      for (int64_t b0 = 0; b0 < M; b0 += kRowTile) {
        const int64_t mr = std::min<int64_t>(kRowTile, M - b0);
        small_gemm_tile_for(mr)(a + b0 * K, K, p0, p1, K, y + b0 * N + n0, N, nl0, nl1);
      }
    }
  });
}

}  // namespace cpu
}  // namespace fusedrnn
