// CPU kernel of fusedrnn::drop_connect: DropConnect's masked weight in one pass.
//
// Dimension letters: N elements of the weight (any shape, contiguous), W = ceil(N / 4) words.
//
// words [W] int64 are the generator's draws (fusedrnn.ops.dropout.drop_connect), read as 4N
// 16-bit lanes, little-endian: lane i decides element i.  Lanes 0-2 of a word are uniform
// over the int16 range and kept below `low`; lane 3 (bits 48-63, 15 random bits) below `top`.
// Element i is weight * m with m = 1 / keep where kept and 0 elsewhere, m in the weight's
// dtype as torch computes mask.to(dtype).div_(keep): the same bits as weight * mask (-0 for a
// dropped negative weight, NaN for a dropped inf).  The backward is this op on the gradient
// (dL/dW = dL/dW~ * mask).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "../common.h"
#include "../ops.h"
#include "rows.h"

namespace fusedrnn {
namespace {

template <typename T>
FUSEDRNN_CPU_CLONES void drop_connect_range(const T* __restrict w, const int16_t* __restrict lanes,
                                            T* __restrict out, int16_t low, int16_t top, T scale, int64_t i0,
                                            int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const int16_t th = (i & 3) == 3 ? top : low;
    out[i] = w[i] * (lanes[i] < th ? scale : T(0));  // w * 0 as the mask product: -0, and NaN from inf
  }
}

}  // namespace

at::Tensor drop_connect_cpu(const at::Tensor& weight_in, const at::Tensor& words_in, int64_t low, int64_t top,
                            double keep) {
  check_float(weight_in, "weight");
  TORCH_CHECK(weight_in.scalar_type() == at::kFloat || weight_in.scalar_type() == at::kDouble,
              "fusedrnn: drop_connect takes a float32 or float64 weight, got ", weight_in.scalar_type());
  TORCH_CHECK(words_in.scalar_type() == at::kLong && words_in.dim() == 1,
              "fusedrnn: drop_connect's words must be a 1-D int64 tensor");
  TORCH_CHECK(words_in.numel() * 4 >= weight_in.numel(), "fusedrnn: drop_connect needs ",
              (weight_in.numel() + 3) / 4, " words for ", weight_in.numel(), " elements, got ", words_in.numel());
  TORCH_CHECK(low >= -32768 && low <= 32767 && top >= 0 && top <= 32767 && keep > 0 && keep <= 1,
              "fusedrnn: drop_connect's thresholds must be int16 values and keep in (0, 1]");
  TORCH_CHECK(words_in.device() == weight_in.device(), "fusedrnn: words must be on the weight's device");
  const at::Tensor w = weight_in.contiguous(), words = words_in.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options());
  const int16_t* lanes = reinterpret_cast<const int16_t*>(words.data_ptr<int64_t>());
  const int64_t n = w.numel();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "drop_connect_cpu", [&] {
    using T = scalar_t;
    const T scale = T(1) / static_cast<T>(keep);
    const T* pw = w.data_ptr<T>();
    T* po = out.data_ptr<T>();
    at::parallel_for(0, (n + 3) / 4, 16384, [&](int64_t q0, int64_t q1) {  // whole words per chunk
      drop_connect_range<T>(pw, lanes, po, static_cast<int16_t>(low), static_cast<int16_t>(top), scale, q0 * 4,
                            std::min(q1 * 4, n));
    });
  });
  return out;
}

}  // namespace fusedrnn
