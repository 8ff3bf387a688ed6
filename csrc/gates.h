// fusedrnn gate math: the one home of the LSTM's and the GRU's pointwise arithmetic.
//
// Dimension letters used across csrc/:
//   T  time steps        B  batch            I  input features
//   H  hidden units      P  projection size (proj_size; R = P if P > 0 else H)
//   G  = 4H gate columns, in nn.LSTM order i, f, g, o (the GRU: G = 3H, nn.GRU's r, z, n)
//
// Everything here is plain C++ with no torch headers, compiled by g++ for the CPU
// kernels and by nvcc (as __host__ __device__) for the CUDA kernels, so the CPU tests
// exercise exactly the arithmetic the GPU runs.  `acc_t` is the accumulation type:
// float for fp32/fp16/bf16 data, double for fp64.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FUSEDRNN_HD __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HD inline
#endif

namespace fusedrnn {
namespace gates {

// On the host, float exp and tanh are branch-free polynomials (Cephes' expf / tanhf
// coefficients, about 1e-7 relative error) so that the CPU pointwise loops vectorise;
// NaN propagates (comparisons with NaN are false, so no clamp swallows it).  On the
// device, and for double everywhere, the library functions.
#if !defined(__CUDA_ARCH__)
inline float bits_to_float(unsigned int u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}

inline float host_expf(float x) {
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365447505531f ? -87.3365447505531f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // 2^n by building the exponent field (n lies in [-126, 127] after the clamp).
  const int e = static_cast<int>(n) + 127;
  return y * bits_to_float(static_cast<unsigned int>(e < 1 ? 1 : e) << 23);
}

inline float host_tanhf(float x) {
  const float a = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;                          // |x| < 0.625
  const float big = 1.0f - 2.0f / (host_expf(2.0f * a) + 1.0f);  // |x| >= 0.625
  const float big_signed = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big_signed;
}
#endif

#if defined(__CUDA_ARCH__)
FUSEDRNN_HD float exp_(float x) { return ::expf(x); }
FUSEDRNN_HD float tanh_(float x) { return ::tanhf(x); }
#else
FUSEDRNN_HD float exp_(float x) { return host_expf(x); }
FUSEDRNN_HD float tanh_(float x) { return host_tanhf(x); }
#endif
FUSEDRNN_HD double exp_(double x) { return ::exp(x); }
FUSEDRNN_HD double tanh_(double x) { return ::tanh(x); }
FUSEDRNN_HD float rsqrt_(float x) { return 1.0f / ::sqrtf(x); }
FUSEDRNN_HD double rsqrt_(double x) { return 1.0 / ::sqrt(x); }

template <typename acc_t>
FUSEDRNN_HD acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_(-x));
}

// Gate activations of one (batch row, hidden unit) from the four pre-activations.
// On return i, f, o are sigmoids and g is a tanh.
template <typename acc_t>
FUSEDRNN_HD void activate(acc_t& i, acc_t& f, acc_t& g, acc_t& o) {
  i = sigmoid(i);
  f = sigmoid(f);
  g = tanh_(g);
  o = sigmoid(o);
}

// c_t = f * c_{t-1} + i * g
template <typename acc_t>
FUSEDRNN_HD acc_t cell_update(acc_t i, acc_t f, acc_t g, acc_t c_prev) {
  return f * c_prev + i * g;
}

// h_t = o * tanh(c_hat), where c_hat is c_t, or BN_c(c_t) under recurrent batch norm.
// Returns h and stores tanh(c_hat) in tc (saved for backward by callers that want it).
template <typename acc_t>
FUSEDRNN_HD acc_t hidden(acc_t o, acc_t c_hat, acc_t& tc) {
  tc = tanh_(c_hat);
  return o * tc;
}

// Backward of hidden(): given dL/dh, returns dL/do (pre-activation of o) and dL/dc_hat.
template <typename acc_t>
FUSEDRNN_HD void hidden_backward(acc_t dh, acc_t o, acc_t tc, acc_t& dpre_o,
                                 acc_t& dc_hat) {
  dc_hat = dh * o * (acc_t(1) - tc * tc);
  dpre_o = dh * tc * o * (acc_t(1) - o);
}

// Backward of cell_update() and activate() for i, f, g: given dL/dc_t (everything that
// reaches c_t), returns the pre-activation gradients of i, f, g and dL/dc_{t-1}.
template <typename acc_t>
FUSEDRNN_HD void cell_backward(acc_t dc, acc_t i, acc_t f, acc_t g, acc_t c_prev,
                               acc_t& dpre_i, acc_t& dpre_f, acc_t& dpre_g,
                               acc_t& dc_prev) {
  dpre_i = dc * g * i * (acc_t(1) - i);
  dpre_f = dc * c_prev * f * (acc_t(1) - f);
  dpre_g = dc * i * (acc_t(1) - g * g);
  dc_prev = dc * f;
}

// One unit of the fused cell step (the cell op: LSTMCell without batch norm): activates the
// four pre-activations in place and returns c_t = f * c_{t-1} + i * g and h_t = o * tanh(c_t).
template <typename acc_t>
FUSEDRNN_HD void cell_step(acc_t& i, acc_t& f, acc_t& g, acc_t& o, acc_t c_prev, acc_t& c, acc_t& h) {
  activate(i, f, g, o);
  c = cell_update(i, f, g, c_prev);
  acc_t tc;
  h = hidden(o, c, tc);
}

// Backward of cell_step from the activated gates, c_{t-1}, c_t and dL/dh_t, dL/dc_t: the
// pre-activation gradients d[0..3] (i, f, g, o) and dL/dc_{t-1}.
template <typename acc_t>
FUSEDRNN_HD void cell_step_backward(acc_t i, acc_t f, acc_t g, acc_t o, acc_t c_prev, acc_t c, acc_t dh, acc_t dc,
                                    acc_t* d, acc_t& dc_prev) {
  acc_t dc_h;
  hidden_backward(dh, o, tanh_(c), d[3], dc_h);
  cell_backward(dc + dc_h, i, f, g, c_prev, d[0], d[1], d[2], dc_prev);
}

// ---- the GRU: torch's gates r, z, n, with b_hn inside the reset product ----------------
// One unit of a GRU step from the input parts xr, xz, xn (x W_ih^T + b_ih, or N_x of it) and
// the recurrent parts hr, hz, hn (N_h(h W_hh^T) + b_hh): the activated r, z, n, and
// h~ = (1 - z) n + z h_{t-1} with n = tanh(xn + r hn).
template <typename acc_t>
FUSEDRNN_HD acc_t gru_step(acc_t xr, acc_t xz, acc_t xn, acc_t hr, acc_t hz, acc_t hn, acc_t h_prev, acc_t& r,
                           acc_t& z, acc_t& n) {
  r = sigmoid(xr + hr);
  z = sigmoid(xz + hz);
  n = tanh_(xn + r * hn);
  return (acc_t(1) - z) * n + z * h_prev;
}

// Backward of gru_step from dL/dh~: the pre-activation gradients dr, dz, dn (dn is also
// dL/dxn), dL/dhn = dn * r, and dL/dh_{t-1} through z (dh * z; W_hh's path is the caller's).
template <typename acc_t>
FUSEDRNN_HD void gru_step_backward(acc_t dh, acc_t r, acc_t z, acc_t n, acc_t hn, acc_t h_prev, acc_t& dr,
                                   acc_t& dz, acc_t& dn, acc_t& dhn, acc_t& dh_prev) {
  dn = dh * (acc_t(1) - z) * (acc_t(1) - n * n);
  dz = dh * (h_prev - n) * z * (acc_t(1) - z);
  dr = dn * hn * r * (acc_t(1) - r);
  dhn = dn * r;
  dh_prev = dh * z;
}

// Batch-norm normalisation of one value with given statistics.
template <typename acc_t>
FUSEDRNN_HD acc_t bn_normalize(acc_t v, acc_t mean, acc_t rstd) {
  return (v - mean) * rstd;
}

// Backward of y = gamma * x_hat (+ beta), x_hat = (x - mean) * rstd, with batch
// statistics over n rows: given dy, x_hat and the two batch sums
//   sum_dy = sum_b dy_b * gamma,  sum_dy_xhat = sum_b dy_b * gamma * x_hat_b,
// returns dL/dx of one row.  With running (eval) statistics pass n = 0.
// Branch-free, so that loops over it vectorise.
template <typename acc_t>
FUSEDRNN_HD acc_t bn_backward(acc_t dxhat, acc_t x_hat, acc_t rstd, acc_t sum_dxhat,
                              acc_t sum_dxhat_xhat, acc_t n) {
  const acc_t inv_n = n > acc_t(0) ? acc_t(1) / n : acc_t(0);
  return rstd * (dxhat - (sum_dxhat + x_hat * sum_dxhat_xhat) * inv_n);
}

}  // namespace gates
}  // namespace fusedrnn
