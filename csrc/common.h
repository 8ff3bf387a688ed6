// Torch-side helpers shared by the CPU and CUDA bindings (never included by .cu files).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <limits>

namespace fusedrnn {

// FUSEDRNN_POISON_OUTPUTS=1 (set by the test suite) fills every freshly allocated op
// output with NaN before a kernel runs, so an element a kernel forgets to write shows.
inline bool poison_outputs() {
  static const bool on = [] {
    const char* v = std::getenv("FUSEDRNN_POISON_OUTPUTS");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

// An output of a CPU op of at least 1 MiB, from the cache of freed blocks (cpu/block_cache.cpp).
at::Tensor cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// A new op output (or large scratch): on the CPU from the block cache; NaN-filled when
// poison_outputs() says so, so that an element the op never writes shows.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = options.device().is_cpu() ? cpu_output(sizes, options) : at::empty(sizes, options);
  if (poison_outputs() && at::isFloatingType(t.scalar_type())) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return t;
}

// new_output filled with zeros (nothing left unwritten to poison).
inline at::Tensor new_zeroed_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return (options.device().is_cpu() ? cpu_output(sizes, options) : at::empty(sizes, options)).zero_();
}

// Accumulation dtype of a data dtype: fp32 for fp32/fp16/bf16, fp64 for fp64.
inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              "fusedrnn: ", name, " must be float32, float64, float16 or bfloat16, got ",
              t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, "fusedrnn: ", name, " must have ", dim,
              " dimensions, got ", t.dim(), " (shape ", t.sizes(), ")");
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* an,
                       const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fusedrnn: ", bn, " must have the dtype of ",
              an, " (", a.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "fusedrnn: ", bn, " must be on the device of ", an,
              " (", a.device(), "), got ", b.device());
}

}  // namespace fusedrnn
