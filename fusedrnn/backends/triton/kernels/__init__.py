"""Triton kernels of the layer recurrence op (forward and backward over a whole sequence).

Dimension letters: T steps, B batch, H hidden, P projection (proj_size), R = P or H (the
width of h), G = 4H gate columns in the order i, f, g, o.  s is the processing step; t the
time position a row reads / writes at step s (t = s, or L_b - 1 - s in reverse).

One module per design; launch.ROLES maps the roles a tiling launches to their kernels:

- step.py, per-step (fwd_step_kernel, fwd_proj_kernel, bwd_step_kernel, bwd_transfer_kernel):
  the host launches one fused kernel per step (two with proj_size);
- layer_norm.py (fwd_ln_kernel, bwd_ln_kernel): the per-step design's whole-row kernels of
  layer norm, after the step's GEMM / transfer kernel;
- persistent.py (fwd_persistent_kernel, bwd_persistent_kernel): one launch runs the whole
  time loop, a grid barrier per step;
- gru.py (fwd_gru_kernel, bwd_gru_kernel, gru_final_kernel; with layer norm also
  gru_ln_fwd_kernel, gru_ln_bwd_kernel): the GRU's per-step design (G = 3H, gates r, z, n), on
  the same building blocks;
- common.py: what they share (the option encodings, the building blocks and the per-step
  arithmetic of the cell: fwd_cell, emit_h, bwd_cell, output_grad, transfer).

Buffers (fp32, or fp64 for fp64 inputs; "ACC"), except hs and dhh:
  hs [NS, B, R]  h states: hs[0] = h0, hs[s + 1] = h after step s (NS = T + 1 when the
                 forward saves for backward, else 2 used as a ring).  In the model's dtype:
                 bf16 / fp16 models exchange h between programs in 16 bits (it is the
                 W_hh GEMM's operand, rounded to that dtype anyway)
  cs [NS, B, H]  c states, the same way
  hc [NSC, B, H] o * tanh(c_hat) before the projection (proj_size only)
  act [T, B, G]  gate activations i, f, g, o (saved for backward)
  hhat [T, B, G] N_h's x_hat (saved for backward); layer norm: also the raw W_hh h m of
                 step s in slot s % NSC, normalised in place
  stats_h [T, 2, G], stats_c [T, 2, H]: per-step batch mean / biased variance (BN train);
                 layer norm: [T, 2, B], each row's mean / rstd
  dhh [T, B, G]  gradient wrt W_hh h_{s-1} m_s (zero on finished rows): the dW_hh GEMM input
                 and the next step's W_hh^T GEMM operand; in the model's dtype (16 bits for
                 bf16 / fp16 models) except with layer norm (ACC: bwd_ln_kernel rewrites it)
  dhn [T, B, P]  gradient wrt the projected h (proj_size): the dW_hr GEMM input; layer norm:
                 [T, B, R], dL/dh~ of each step
  dg_h [T, G], dg_c [T, H], db_c [T, H]: per-step norm parameter gradients (layer norm: a
                 row per step and row block)
Norm parameters: norm_wh (N_h's gain), norm_wc, norm_bc (N_c's gain and bias), batch norm
or layer norm; rm_* / rv_* the batch-norm running statistics (eval), slot
min(bn_off + s, bn_S - 1).
Constexpr flags: MASK the contract's MaskMode (0 none / 1 shared [B, R] / 2 per step
[T, B, R]); BN its NormMode (0 none / 1 batch norm, train / 2 batch norm, eval / 3 layer
norm); ZO common.ZoneoutMode (0 none / 1 [T, B, *] weights / 2 one rate each); PREC the
tl.dot input precision for fp32 ("ieee" or "tf32").  The kernels compare them with the
named constants of common.py.
"""
