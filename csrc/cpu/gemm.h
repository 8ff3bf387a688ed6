// The GEMMs of the CPU kernels, float32 on oneDNN where it is faster than MKL.
//
// Dimension letters: M rows, K reduction, N output columns.
//
// On the AVX-512 CPU measured (benchmarks/NOTES.md, "GEMM paths"), torch's oneDNN (mkldnn)
// runs these shapes at 1.2-1.7x the rate of MKL, which at::mm uses for float32.  torch
// exposes oneDNN's GEMMs two ways, both used here:
//  - matmul(a, b, out): at::native::mkldnn_matmul (exported by libtorch_cpu), a GEMM into a
//    given output that takes transposed views as they are: the whole-sequence GEMMs (input
//    projection gradient, weight gradients dW = dY^T X without a transposed copy).
//  - RepeatedGemm: the weight of the recurrence, multiplied once per step and laid out for
//    it once per op call: up to kSmallRows rows, panels for our own outer-product kernel
//    (small_gemm.h); more rows, oneDNN's blocked layout (torch's mkldnn::_reorder_linear_weight
//    / _linear_pointwise ops; for K > 512, K in equal chunks of at most 512, each packed
//    once, their products summed: the accuracy rule below, at oneDNN's rate), or MKL's
//    packed-GEMM API (cblas_sgemm_pack / _compute) where oneDNN's fixed cost shows (K x N below
//    2^16, or a chunked product below kChunkedMinMacs).
// Results are deterministic at a fixed thread count.  float64, and a torch without mkldnn or
// MKL (the symbols are weak), use at::mm.  FUSEDRNN_CPU_GEMM=mkl (MKL only) or mm (at::mm
// only), read per op call, forces a path; the tests use it to cover each.
#pragma once

#include <algorithm>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "small_gemm.h"

extern "C" {
__attribute__((weak)) size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
__attribute__((weak)) void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n,
                                            int k, float alpha, const float* src, int ld,
                                            float* dest);
__attribute__((weak)) void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n,
                                               int k, const float* a, int lda, const float* b,
                                               int ldb, float beta, float* c, int ldc);
}

namespace at {
namespace native {
// result = beta * result + alpha * mat1 @ mat2 (ATen/native/mkldnn/Matmul.h, not installed).
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result,
                                         float beta, float alpha);
}  // namespace native
}  // namespace at

namespace fusedrnn {
namespace cpu {

enum class GemmPath { kOneDnn, kMkl, kMm };

// FUSEDRNN_CPU_GEMM: "" (the best), "mkl" (MKL only: no oneDNN, no small-row kernel) or "mm".
inline GemmPath requested_path() {
  const char* env = std::getenv("FUSEDRNN_CPU_GEMM");
  const std::string v = env ? env : "";
  return v == "mm" ? GemmPath::kMm : v == "mkl" ? GemmPath::kMkl : GemmPath::kOneDnn;
}

inline bool mkl_packed_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

// Sizes below which a path's fixed cost outweighs its rate (measured, NOTES.md "GEMM paths"):
// oneDNN's weight reorder costs about 250 us whatever the size, so the recurrence reorders
// only when it has enough steps and each step enough work; a single step packs nothing.
constexpr int64_t kReorderMinSteps = 8;
constexpr int64_t kSmallMinSteps = 4;  // packing the panels costs about one pass
constexpr int64_t kReorderMinWeight = int64_t{1} << 16;  // K x N
constexpr int64_t kReorderMinRows = 4;
constexpr int64_t kLinearReorderMinMacs = int64_t{1} << 26;  // M x N x K of a one-off GEMM
constexpr int64_t kMatmulMinMacs = int64_t{1} << 21;
// oneDNN's float32 GEMMs accumulate each output along K in one chain:
// against float64 their largest error is 1.9x / 2.0x / 2.2-3.2x MKL's at K = 512 / 1024 /
// 3600 (measured, NOTES.md), where the correctness rule allows 2x torch's own (MKL's) plus
// one rounding of the result.  So the per-step GEMMs and the input projection take oneDNN up
// to K = 512 (MKL beyond; the panel kernel sums K in blocks of 256), and the one-off GEMMs of
// the backward (dX, dW: K = 4H or T*B) run on oneDNN in K chunks of 256 summed into the output.
constexpr int64_t kOneDnnMaxK = 512;
constexpr int64_t kOneDnnChunkK = 256;
// A per-step GEMM with K > 512 runs on oneDNN in K chunks (their sum one extra pass over the
// [M, N] result per chunk) from this many multiply-adds: measured 1.13-1.28x MKL's packed
// GEMM at M = 128, N x K = 650 x 1950 .. 2600 x 650 (2 to 6 chunks), 1.04x at 64 x 512 x 1536,
// 0.68x at 32 x 256 x 768 (NOTES.md, "The GRU on the CPU").
constexpr int64_t kChunkedMinMacs = int64_t{1} << 26;

// mkldnn_matmul takes float32 only on CPUs with avx512bw/vl/dq (or avx_ne_convert) and throws
// elsewhere: the first refusal turns it off for the process.
inline std::atomic<bool>& onednn_matmul_ok() {
  static std::atomic<bool> ok{at::native::mkldnn_matmul != nullptr};
  return ok;
}

// out [M, N] = a [M, K] @ b [K, N] (+ out when accumulate); a and b may be transposed views.
inline void matmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate = false) {
  if (a.scalar_type() == at::kFloat && a.numel() > 0 && b.numel() > 0 &&
      a.size(0) * a.size(1) * b.size(1) >= kMatmulMinMacs && requested_path() == GemmPath::kOneDnn &&
      onednn_matmul_ok()) {
    try {
      const int64_t K = a.size(1);
      for (int64_t k0 = 0; k0 < K; k0 += kOneDnnChunkK) {
        const int64_t kc = std::min(kOneDnnChunkK, K - k0);
        const float beta = (k0 > 0 || accumulate) ? 1.0f : 0.0f;
        at::native::mkldnn_matmul(a.narrow(1, k0, kc), b.narrow(0, k0, kc), out, beta, 1.0f);
      }
      return;
    } catch (const c10::Error&) {
      onednn_matmul_ok() = false;
    }
  }
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

inline at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  matmul(a, b, out);
  return out;
}

// torch's oneDNN linear ops, looked up once (absent from a torch built without mkldnn).
struct OneDnnLinear {
  std::optional<c10::OperatorHandle> reorder, linear;
  static const OneDnnLinear& get() {
    static const OneDnnLinear ops = [] {
      OneDnnLinear o;
      auto& d = c10::Dispatcher::singleton();
      o.reorder = d.findSchema({"mkldnn::_reorder_linear_weight", ""});
      o.linear = d.findSchema({"mkldnn::_linear_pointwise", ""});
      return o;
    }();
    return ops;
  }
  bool available() const { return reorder.has_value() && linear.has_value(); }

  // w [N, K] in oneDNN's layout for M-row inputs.
  at::Tensor pack(const at::Tensor& w, int64_t M) const {
    std::vector<c10::IValue> st{w, M};
    reorder->callBoxed(st);
    return st[0].toTensor();
  }
  // a [M, K] @ w^T (+ bias [N]) for a weight from pack(); a new [M, N] tensor.
  at::Tensor run(const at::Tensor& a, const at::Tensor& packed, const std::optional<at::Tensor>& bias = {}) const {
    std::vector<c10::IValue> st{a, packed, bias ? c10::IValue(*bias) : c10::IValue(), std::string("none"),
                                c10::List<std::optional<at::Scalar>>(), c10::IValue()};
    linear->callBoxed(st);
    return st[0].toTensor();
  }
};

// Whether a one-off GEMM of M x N x K multiply-adds is worth oneDNN (reorder: also the weight).
inline bool onednn_one_off(int64_t macs, int64_t K, bool reorder) {
  return requested_path() == GemmPath::kOneDnn && K <= kOneDnnMaxK &&
         (reorder ? macs >= kLinearReorderMinMacs && OneDnnLinear::get().available()
                  : macs >= kMatmulMinMacs && onednn_matmul_ok());
}

// Whether a one-off float32 GEMM with K > kOneDnnMaxK runs on the register tile instead of
// MKL (fused_step.h tile_linear): enough work to pay for packing the weight.
inline bool tile_linear_pays(int64_t macs, int64_t K) {
  return requested_path() == GemmPath::kOneDnn && K > kOneDnnMaxK && macs >= kLinearReorderMinMacs;
}

class RepeatedGemm {
 public:
  // w: [N, K] if trans (op(w) = w^T) else [K, N]; `steps` calls, each with M rows.
  RepeatedGemm(const at::Tensor& w, bool trans, int64_t M, int64_t steps) : w_(w), trans_(trans), M_(M) {
    N_ = trans ? w.size(0) : w.size(1);
    K_ = trans ? w.size(1) : w.size(0);
    const bool f32 = w.scalar_type() == at::kFloat && M > 0 && N_ > 0 && K_ > 0 && steps > 1;
    const GemmPath want = f32 ? requested_path() : GemmPath::kMm;
    if (want == GemmPath::kOneDnn && M <= kSmallRows && steps >= kSmallMinSteps) {
      small_ = pack_panels(w, trans);  // sums K in blocks (small_gemm.h): any K
    } else if (want == GemmPath::kOneDnn && steps >= kReorderMinSteps && M >= kReorderMinRows &&
               N_ * K_ >= kReorderMinWeight && (K_ <= kOneDnnMaxK || M * N_ * K_ >= kChunkedMinMacs) &&
               OneDnnLinear::get().available()) {
      const at::Tensor w_nk = trans ? w : w.t();  // [N, K]
      const int64_t nc = (K_ + kOneDnnMaxK - 1) / kOneDnnMaxK, kc = (K_ + nc - 1) / nc;
      for (int64_t k0 = 0; k0 < K_; k0 += kc) {
        const int64_t n = std::min(kc, K_ - k0);
        chunk_k_.push_back({k0, n});
        onednn_.push_back(OneDnnLinear::get().pack(w_nk.narrow(1, k0, n).contiguous(), M));
      }
    } else if (want != GemmPath::kMm && mkl_packed_available()) {
      const at::Tensor wc = w.contiguous();
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, M, N_, K_);
      mkl_ = at::empty({static_cast<int64_t>((bytes + 3) / 4)}, w.options());
      cblas_sgemm_pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, M, N_, K_, 1.0f, wc.data_ptr<float>(),
                       static_cast<int>(wc.size(1)), mkl_.data_ptr<float>());
      w_ = wc;  // keep alive
    }
  }

  // Which path the steps take: "onednn", "mkl" or "mm".
  const char* path() const {
    return small_.defined() ? "small" : !onednn_.empty() ? "onednn" : mkl_.defined() ? "mkl" : "mm";
  }

  // [M, N] = a [M, K] @ op(w), a contiguous; returns the result's data: out's, or (oneDNN,
  // which allocates its output) a tensor held until the next call.
  template <typename T>
  T* run(const at::Tensor& a, at::Tensor& out) {
    if (small_.defined()) {
      small_gemm(a.data_ptr<float>(), small_.data_ptr<float>(), out.data_ptr<float>(), M_, N_, K_);
      return out.data_ptr<T>();
    }
    if (!onednn_.empty()) {
      const bool whole = onednn_.size() == 1;
      result_ = OneDnnLinear::get().run(whole ? a : a.narrow(1, chunk_k_[0].first, chunk_k_[0].second), onednn_[0]);
      for (size_t c = 1; c < onednn_.size(); ++c)
        result_.add_(OneDnnLinear::get().run(a.narrow(1, chunk_k_[c].first, chunk_k_[c].second), onednn_[c]));
      return result_.data_ptr<T>();
    }
    if (mkl_.defined()) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, M_, N_, K_, a.data_ptr<float>(), static_cast<int>(K_),
                          mkl_.data_ptr<float>(), static_cast<int>(N_), 0.0f, out.data_ptr<float>(),
                          static_cast<int>(N_));
    } else {
      at::mm_out(out, a, trans_ ? w_.t() : w_);
    }
    return out.data_ptr<T>();
  }

 private:
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
  at::Tensor w_, mkl_, small_, result_;
  std::vector<at::Tensor> onednn_;                     // the packed weight, or its K chunks
  std::vector<std::pair<int64_t, int64_t>> chunk_k_;  // each chunk's first k and width
  bool trans_;
  int64_t M_, N_ = 0, K_ = 0;
};

}  // namespace cpu
}  // namespace fusedrnn
