// CPU kernels of fusedrnn::linear / linear_backward: the input projection of a layer,
// y [M, G] = x [M, I] @ W^T + b, as the native backend runs it (one GEMM over all steps).
//
// Dimension letters: M rows (T x B), I input, G = 4H output columns.
//
// float32 runs on oneDNN (gemm.h): the forward on the weight reordered once per call (for
// K > 512, which oneDNN may not take, on the register tile of fused_step.h over the weight's
// panels), the gradients dX = dY W and dW = dY^T X as GEMMs on the views, with no transposed
// copy.  Where no gradient reaches the weight, its packed form is reused across calls
// (PackedWeights).  float64, or a torch without mkldnn, on at::mm.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <pthread.h>

#include <cstring>
#include <list>
#include <mutex>
#include <new>

#include "../common.h"
#include "../ops.h"
#include "fused_step.h"
#include "gemm.h"

namespace fusedrnn {
namespace {

// The packed forms of weights that no gradient reaches (grad mode off, or a frozen weight),
// kept across calls: oneDNN's reorder costs 250-500 us a call (10 % of an inference at B = 8,
// T = 100, H = 256).  An entry holds a copy of the weight it was packed from and is reused only
// for a weight equal to that copy byte for byte: writes through .data or numpy bump no version
// counter, so the comparison (about 40 us a MB) is the check.  An entry goes when the storage
// of its weight dies, or when the entries exceed kEntries or kBytes (copies and packed forms),
// the least recently used first.  `layout` tells packed forms of the same weight apart.
// Thread-safe and fork-safe.
class PackedWeights {
 public:
  static PackedWeights& get() {
    static PackedWeights* cache = new PackedWeights();  // leaked: tensors may outlive static destruction
    return *cache;
  }

  PackedWeights() {  // a fork waits for the lock; the child starts with a fresh one (as the block cache)
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); },
                   [] { new (&get().mutex_) std::mutex(); });
  }

  template <typename Pack>
  at::Tensor packed(const at::Tensor& w, bool kept, int64_t layout, const Pack& pack) {
    // training (the weight changes every step), or a weight that is a fresh copy (!kept)
    if ((at::GradMode::is_enabled() && w.requires_grad()) || !kept) return pack();
    const size_t bytes = w.nbytes();
    std::lock_guard<std::mutex> guard(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->storage.expired()) {
        bytes_ -= it->bytes;
        it = entries_.erase(it);
        continue;
      }
      if (it->layout == layout && it->copy.sizes() == w.sizes() && it->copy.scalar_type() == w.scalar_type() &&
          std::memcmp(it->copy.data_ptr(), w.data_ptr(), bytes) == 0) {
        entries_.splice(entries_.begin(), entries_, it);
        return it->packed;
      }
      ++it;
    }
    at::Tensor out = pack();
    const size_t entry_bytes = bytes + out.nbytes();
    if (entry_bytes > kBytes) return out;
    entries_.push_front(Entry{c10::weak_intrusive_ptr<c10::StorageImpl>(w.storage().getWeakStorageImpl()), layout,
                              w.clone(), out, entry_bytes});
    bytes_ += entry_bytes;
    while (entries_.size() > kEntries || bytes_ > kBytes) {
      bytes_ -= entries_.back().bytes;
      entries_.pop_back();
    }
    return out;
  }

 private:
  static constexpr size_t kEntries = 16;
  static constexpr size_t kBytes = size_t(256) << 20;
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t layout;
    at::Tensor copy, packed;
    size_t bytes;
  };
  std::mutex mutex_;
  std::list<Entry> entries_;
  size_t bytes_ = 0;
};

}  // namespace

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const OptT& bias) {
  check_same(x, weight, "x", "weight");
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1), "fusedrnn::linear: x [..., I] and ",
              "weight [G, I] expected, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)), "fusedrnn::linear: bias must be [G]");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = weight.size(0);
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
  const OptT b = bias ? OptT(bias->contiguous()) : OptT();
  const int64_t macs = x2.size(0) * x2.size(1) * weight.size(0);
  const at::Tensor w = weight.contiguous();
  const bool own = weight.is_contiguous();  // else w is a fresh copy each call: nothing to keep
  if (x.scalar_type() == at::kFloat && cpu::onednn_one_off(macs, x2.size(1), /*reorder=*/true)) {
    const auto& dnnl = cpu::OneDnnLinear::get();
    const int64_t M = x2.size(0);  // oneDNN's layout depends on the rows
    return dnnl.run(x2, PackedWeights::get().packed(w, own, M, [&] { return dnnl.pack(w, M); }), b).view(out_shape);
  }
  if (x.scalar_type() == at::kFloat && cpu::tile_linear_pays(macs, x2.size(1))) {  // K > kOneDnnMaxK
    const int64_t M = x2.size(0), N = weight.size(0), K = x2.size(1);
    at::Tensor y = new_output({M, N}, x2.options());
    const at::Tensor panels =
        PackedWeights::get().packed(w, own, -1, [&] { return cpu::pack_panels(w, /*trans=*/true, /*multiple=*/4); });
    cpu::tile_linear(x2.data_ptr<float>(), panels.data_ptr<float>(), b ? b->data_ptr<float>() : nullptr,
                     y.data_ptr<float>(), M, N, K);
    return y.view(out_shape);
  }
  return (b ? at::addmm(*b, x2, weight.t()) : at::mm(x2, weight.t())).view(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   const at::Tensor& weight, bool bias, bool need_x) {
  const int64_t I = weight.size(1), G = weight.size(0);
  const at::Tensor gy = grad_y.reshape({-1, G}).contiguous();
  const at::Tensor x2 = x.reshape({-1, I}).contiguous();
  at::Tensor grad_x = need_x ? cpu::matmul(gy, weight.contiguous()).view(x.sizes())  // dY @ W
                             : at::empty({0}, gy.options());
  at::Tensor grad_w = cpu::matmul(gy.t(), x2);                                 // dY^T @ X
  at::Tensor grad_b = bias ? gy.sum(0) : at::empty({0}, gy.options());
  return {grad_x, grad_w, grad_b};
}

}  // namespace fusedrnn
