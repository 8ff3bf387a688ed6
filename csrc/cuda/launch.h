// The plain launcher interface between the torch-side host code (cuda/*_host.cpp) and the
// CUDA kernels (*.cu).  No torch headers here or in the .cu files: they compile with
// nvcc alone, quickly, and the host code adapts tensors to raw pointers.
//
// Dimension letters: B batch, H hidden, G = 4H gates (i, f, g, o).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fusedrnn {
namespace cuda {

// Element type of the data tensors.  Accumulation and cell state are fp32 for
// kF32 / kF16 / kBF16 and fp64 for kF64.
enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

// hy, cy: [B, H] in dtype; act: [B, G] in the accumulation type.  All contiguous.
cudaError_t lstm_cell_forward(DType dtype, const void* gates, const void* cx, void* hy,
                              void* cy, void* act, int64_t B, int64_t H,
                              cudaStream_t stream);

// grad_gates: [B, G] and grad_cx: [B, H] in dtype.  All contiguous.
cudaError_t lstm_cell_backward(DType dtype, const void* grad_hy, const void* grad_cy,
                               const void* act, const void* cx, const void* cy,
                               void* grad_gates, void* grad_cx, int64_t B, int64_t H,
                               cudaStream_t stream);

// ---- the layer recurrence (fusedrnn::lstm_layer_forward / _backward) ------------------
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H,
// S running-statistics slots.  "data" pointers are in dtype, "acc" pointers in the
// accumulation type (float, or double for kF64).  All tensors contiguous, row-major.
// Step s of row b reads / writes time position pos(b, s) (reversed per row when reverse);
// workspace tensors are indexed by s.  See fusedrnn/backends/base.py for the semantics.

struct LayerParams {
  DType dtype;
  int64_t T, B, H, R, S;
  bool proj, reverse, bn, bn_train, mask_per_step, save;
  bool ln;  // layer norm (per-step design only): gamma_h, gamma_c, beta_c are LN_h's gain, LN_c's gain and bias
  const int64_t* lengths;  // [B] on the device, or null
  const int* counts;       // [T] rows running at each step, on the device
  const void* xp;          // data [T, B, G]
  const void* mask;        // data [B, R] or [T, B, R], or null
  const void* w_hh;        // data [G, R]
  const void* gamma_h;     // data [G]     (BN or LN: norm_h_weight)
  const void* gamma_c;     // data [H]     (BN or LN: norm_c_weight)
  const void* beta_c;      // data [H]     (BN or LN: norm_c_bias)
  const void* run_mean_h;  // data [S, G]  (BN eval)
  const void* run_var_h;
  const void* run_mean_c;  // data [S, H]  (BN eval)
  const void* run_var_c;
  int64_t step_offset;
  double eps;
  // zoneout weights of the previous state (null: no zoneout): zone_c data [T, B, H],
  // zone_h data [T, B, R], or with zone_scalar one rate each (eval: the expectation)
  const void* zone_c;
  const void* zone_h;
  bool zone_scalar;
  // outputs
  void* y;         // data [T, B, R]
  void* h_stats;   // acc [T, 2, G]  (BN train); LN: [T, 2, B]
  void* c_stats;   // acc [T, 2, H]  (BN train); LN: [T, 2, B]
  void* ws_hm;     // data [TW, B, R]   masked h entering W_hh
  void* ws_act;    // acc  [TW, B, G]   activated gates
  void* ws_c;      // acc  [TC, B, H]   cell states, c0 in slot 0
  void* ws_hh_hat; // acc  [TW, B, G]   (BN or LN)
  void* ws_hc;     // data [TW, B, H]   h before W_hr (proj)
  void* h_state;   // acc  [B, R]       current h (per-step design)
};

// Per-step design, forward: run before the loop (hm_0 = h0 * m_0, h_state = h0) ...
cudaError_t layer_step_init(const LayerParams& p, const void* h0, cudaStream_t stream);
// ... then per step, after hh = hm_s @ W_hh^T (acc [B, G]): gates, BN, cell, output.
cudaError_t layer_step_forward(const LayerParams& p, int64_t s, const void* hh,
                               cudaStream_t stream);
// With projection, after hp = hc_s @ W_hr^T (data [B, P]): y, h_state and hm_{s+1}.
cudaError_t layer_step_forward_proj(const LayerParams& p, int64_t s, const void* hp,
                                    cudaStream_t stream);

struct LayerGrads {
  const void* grad_y;  // data [T, B, R]
  void* grad_xp;       // data [T, B, G]
  void* dhh;           // data [T, B, G]  dL/d(W_hh h) per step (the GEMM operand)
  void* dh_all;        // data [T, B, P]  (proj) dL/dh per step
  void* dh_carry;      // acc [B, R]      starts as grad_h_n; ends as grad_h0
  void* dc_carry;      // acc [B, H]      starts as grad_c_n; ends as grad_c0
  void* dgamma_h;      // acc [G]  (BN, accumulated); layer norm: [B, G], one row per batch row
  void* dgamma_c;      // acc [H]  (layer norm: [B, H])
  void* dbeta_c;       // acc [H]  (layer norm: [B, H])
};

// Per-step design, backward, per step s from T - 1 down to 0:
//   layer_step_backward_pre   dh_s = grad_y[pos] + dh_carry for running rows (into
//                             dh_all[s], proj only; then the caller computes dhc = dh_s @ W_hr)
//   layer_step_backward       gate gradients, BN backward, dc_carry (dhc: acc [B, H] or null)
//   (caller)                  dh_rec = dhh_s @ W_hh (acc [B, R])
//   layer_step_backward_merge dh_carry = dh_rec * m_s for running rows
cudaError_t layer_step_backward_pre(const LayerParams& p, const LayerGrads& g, int64_t s,
                                    cudaStream_t stream);
cudaError_t layer_step_backward(const LayerParams& p, const LayerGrads& g, int64_t s,
                                const void* dhc, cudaStream_t stream);
cudaError_t layer_step_backward_merge(const LayerParams& p, const LayerGrads& g, int64_t s,
                                      const void* dh_rec, cudaStream_t stream);

// Layer norm (p.ln, per-step design; layer_norm.cu), one block per batch row: in place of
// layer_step_forward after the step's GEMM (hh: acc [B, G]) ...
cudaError_t layer_ln_forward(const LayerParams& p, int64_t s, const void* hh, cudaStream_t stream);
// ... and of layer_step_backward (dhc: acc [B, H] or null, as there).
cudaError_t layer_ln_backward(const LayerParams& p, const LayerGrads& g, int64_t s, const void* dhc,
                              cudaStream_t stream);

// Persistent design (no projection; fp32 / fp16 / bf16): one cooperative launch runs the
// whole loop, W_hh slices stay in shared memory, one grid-wide synchronisation per step.  Its
// layout for a shape: whether it fits, the blocks and their units, shared memory and stages.
struct PersistentLayout {
  bool ok;
  const char* why;  // when !ok
  int units;        // hidden units per block
  int blocks;
  int threads;
  size_t smem_forward, smem_backward;
  bool stage_xp, stage_h;  // the forward's shared-memory stages of xp and h (when they fit)
  bool stage_saved;        // the backward's stage of each step's saved operands and dy
};
// The layout for this shape on the current device (reads its properties and occupancy).
PersistentLayout persistent_layout(DType dtype, int64_t B, int64_t H, int64_t R, bool proj,
                                   bool need_backward);
// Static resource facts, for a given shared-memory limit and SM count (compile gate).
PersistentLayout persistent_layout_for(DType dtype, int64_t B, int64_t H, int64_t R, bool proj,
                                       size_t smem_limit, int sm_count);
// The cooperative launches; they return the launch's error, which the device may give even for a
// layout that fits (the host falls back to the per-step design on a refusal: layer_host.cpp).
cudaError_t layer_persistent_forward(const LayerParams& p, const PersistentLayout& layout,
                                     const void* h0, void* exchange, cudaStream_t stream);
cudaError_t layer_persistent_backward(const LayerParams& p, const LayerGrads& g,
                                      const PersistentLayout& layout, void* exchange,
                                      cudaStream_t stream);
// Bytes of the exchange buffer the persistent kernels need (zero-initialised by the caller: it
// ends with the grid barrier's counter).
size_t persistent_exchange_bytes(DType dtype, int64_t B, int64_t H, int64_t R);

// ---- per-step batch norm over a sequence (BN_x) ------------------------------------------
// v, out: data [T, B, F]; weight, bias: data [F] (bias may be null); mean, var: acc [T, F]
// (computed when training, given otherwise); lengths on the device or null.  Backward:
// grad_v data [T, B, F]; grad_w_part acc [T, F], the weight gradient of each step (the
// caller sums it over steps).
cudaError_t batch_norm_steps_forward(DType dtype, const void* v, const void* weight,
                                     const void* bias, const int64_t* lengths, bool reverse,
                                     int64_t T, int64_t B, int64_t F, bool training, double eps,
                                     void* mean, void* var, void* out, cudaStream_t stream);
cudaError_t batch_norm_steps_backward(DType dtype, const void* grad_out, const void* v,
                                      const void* weight, const int64_t* lengths, bool reverse,
                                      int64_t T, int64_t B, int64_t F, bool training,
                                      double eps, const void* mean, const void* var,
                                      void* grad_v, void* grad_w_part, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
