// A GEMM repeated at every step with the same weight: y [M, N] = a [M, K] @ op(w).
//
// The recurrence multiplies by W_hh (and W_hr) once per step.  When torch's CPU build
// carries MKL's packed-GEMM API (cblas_sgemm_pack / cblas_sgemm_compute, exported by
// libtorch_cpu on x86-64), the weight is packed once per op call and every step reuses the
// packed copy, instead of re-packing 4H x R floats per step.  Otherwise, and for float64,
// at::mm_out.  The symbols are weak, so a torch without MKL loads and falls back.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <cstddef>

extern "C" {
__attribute__((weak)) size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
__attribute__((weak)) void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n,
                                            int k, float alpha, const float* src, int ld,
                                            float* dest);
__attribute__((weak)) void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n,
                                               int k, const float* a, int lda, const float* b,
                                               int ldb, float beta, float* c, int ldc);
}

namespace fusedrnn {
namespace cpu {

class RepeatedGemm {
 public:
  // w: [N, K] if trans (op(w) = w^T) else [K, N]; every call has M rows.
  RepeatedGemm(const at::Tensor& w, bool trans, int64_t M) : w_(w), trans_(trans), M_(M) {
    N_ = trans ? w.size(0) : w.size(1);
    K_ = trans ? w.size(1) : w.size(0);
    if (w.scalar_type() == at::kFloat && packed_available() && M > 0 && N_ > 0 && K_ > 0) {
      const at::Tensor wc = w.contiguous();
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, M, N_, K_);
      packed_ = at::empty({static_cast<int64_t>((bytes + 3) / 4)}, w.options());
      cblas_sgemm_pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, M, N_, K_, 1.0f,
                       wc.data_ptr<float>(), static_cast<int>(wc.size(1)),
                       packed_.data_ptr<float>());
      w_ = wc;  // keep alive
    }
  }

  static bool packed_available() {
    return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
           cblas_sgemm_compute != nullptr;
  }

  bool packed() const { return packed_.defined(); }

  // out [M, N] = a [M, K] @ op(w); a and out contiguous.
  void run(const at::Tensor& a, at::Tensor& out) const {
    if (packed_.defined()) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, M_, N_, K_, a.data_ptr<float>(),
                          static_cast<int>(K_), packed_.data_ptr<float>(), static_cast<int>(N_),
                          0.0f, out.data_ptr<float>(), static_cast<int>(N_));
    } else {
      at::mm_out(out, a, trans_ ? w_.t() : w_);
    }
  }

 private:
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151,
                       kBMatrix = 162;
  at::Tensor w_, packed_;
  bool trans_;
  int64_t M_, N_ = 0, K_ = 0;
};

}  // namespace cpu
}  // namespace fusedrnn
