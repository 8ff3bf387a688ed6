"""``make mutants``: apply realistic bugs one at a time and check that the tests catch each.

Every mutant is a small edit of one source file (an exact text that must occur once) and
the fast tests that should catch it.  The working tree is copied once to a scratch folder
(tracked and untracked, not ignored files, plus the built fusedrnn/_C library); each
mutant is applied there, its tests run with the scratch copy first on the import path,
and the edit is undone.  A mutant of a C++ source (csrc/) rebuilds the scratch copy's library
first (CPU kernels only, in the scratch copy's own build folder: the first such mutant compiles
every CPU source, a later one what its edit touches) and restores the original library after.
The report says, per mutant, caught or SURVIVED (a survivor is a missing test).  Not part of CI
(it runs the selected tests once per mutant).

    python tests/mutants.py [--only NAME ...] [--list] [--keep]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str

    @property
    def compiled(self) -> bool:
        return self.file.startswith("csrc/")


SEM = "tests/test_semantics.py"
MUTANTS = [
    Mutant("running-stats-one-row", "fusedrnn/ops/layer.py", "upd = cnt > 1", "upd = cnt > 0",
           (SEM + "::test_running_stats_with_one_active_row", SEM + "::test_update_running_stats_skips_single_row_steps"),
           "steps with a single active row pull running_var towards 0"),
    Mutant("running-stats-uniform-biased-var", "fusedrnn/ops/layer.py", "alpha=momentum * counts / (counts - 1))",
           "alpha=momentum)",
           (SEM + "::test_update_running_stats_uniform_counts_match_per_step_counts",),
           "without lengths the running variance takes the biased batch variance"),
    Mutant("drop-connect-scale-from-p", "fusedrnn/ops/dropout.py",
           "return torch.ops.fusedrnn.drop_connect(weight, words, low, top, 1.0 - p)",
           "return torch.ops.fusedrnn.drop_connect(weight, words, low, top, 1.0 - p / 2)",
           ("tests/test_regularizers.py::test_drop_connect_is_the_mask_product_bit_for_bit",),
           "the fused DropConnect scales kept weights by a keep rate other than the mask's"),
    Mutant("lstm-native-rule-in-inference", "fusedrnn/ops/decision.py",
           "and training and cfg.requires_grad\n", "and training\n",
           ("tests/test_decide.py::test_cpu_rules", SEM + "::test_which_path_runs_lstm"),
           "auto runs the native LSTM for plain float32 inference too, where torch's LSTM measures faster"),
    Mutant("dropout-after-last-layer", "fusedrnn/modules/rnn.py",
           "if self.dropout > 0 and self.training and layer < self.num_layers - 1:",
           "if self.dropout > 0 and self.training:",
           (SEM + "::test_between_layer_dropout_matches_nn_lstm", SEM + "::test_no_dropout_after_the_last_layer"),
           "between-layer dropout also on the last layer's output"),
    Mutant("variational-dropout-not-regularized", "fusedrnn/modules/regularizers.py",
           'or (getattr(self, "dropout", 0) > 0 and self.variational))',
           ")",
           (SEM + "::test_variational_between_layer_mask_is_constant_over_time", SEM + "::test_which_path_runs_lstm"),
           "auto runs torch's LSTM (per-element masks) for variational between-layer dropout"),
    Mutant("cell-mask-ignored-under-auto", "fusedrnn/modules/regularizers.py",
           "if self.batch_norm or self.layer_norm or self.zoneout_active() or mask is not None:",
           "if self.batch_norm or self.layer_norm or self.zoneout_active():",
           (SEM + "::test_explicit_cell_mask_is_honoured", SEM + "::test_which_path_runs_cell"),
           "an explicit LSTMCell mask is ignored and the call goes to torch's cell"),
    Mutant("python-bn-x-raises", "fusedrnn/backends/reference.py",
           "        xs = reverse_sequences(xw, lengths) if cfg.reverse else xw  # processing order\n",
           "        raise RuntimeError('mutant')\n",
           (SEM + "::test_reference_backend_runs_without_compiled_code",),
           "the plain-PyTorch BN_x (the reference backend's input norm) is broken"),
    Mutant("triton-persistent-block-mapping", "fusedrnn/backends/triton/kernels/common.py",
           "    pid_b = pid % n_bblk\n    pid_c = pid // n_bblk\n",
           "    pid_c = pid % n_bblk\n    pid_b = pid // n_bblk\n",
           (SEM + "::test_triton_persistent_with_several_row_and_column_blocks",),
           "row and column block indices of the persistent kernels swapped"),
    Mutant("gate-order", "fusedrnn/backends/reference.py",
           "i, f, g, o = (xp[s] + hh).chunk(4, 1)", "f, i, g, o = (xp[s] + hh).chunk(4, 1)",
           ("tests/test_lstm_dropin.py::test_matches_nn_lstm",),
           "input and forget gates swapped in the reference recurrence"),
    Mutant("dropout-scale", "fusedrnn/ops/dropout.py",
           "drawn.to(like.dtype).div_(keep)", "drawn.to(like.dtype)",
           ("tests/test_regularizers.py::test_drop_rate_and_scaling",
            SEM + "::test_variational_between_layer_mask_is_constant_over_time"),
           "masks not scaled by 1 / (1 - p)"),
    Mutant("zoneout-threshold-unsigned", "fusedrnn/ops/dropout.py",
           "return round(rate * 65536) - 32768", "return round(rate * 32768)",
           ("tests/test_regularizers.py::test_zoneout_rates_in_every_lane",),
           "zoneout's threshold as if the 16-bit lanes were unsigned: units zone out at (1 + rate) / 2"),
    Mutant("zoneout-c-and-h-share-lanes", "fusedrnn/ops/dropout.py",
           "torch.lt(u[..., H:], _lane_threshold(zh)", "torch.lt(u[..., :R], _lane_threshold(zh)",
           ("tests/test_regularizers.py::test_zoneout_rates_in_every_lane",),
           "the h weights read c's lanes: a unit's c and h zone out together"),
    Mutant("trace-constant-unmarked", "fusedrnn/core/trace.py",
           "    fn._dynamo_marked_constant = True", "    pass",
           ("tests/test_compile.py::test_compile_lstm_fullgraph_matches_eager",),
           "the decision is not a trace-time constant: Dynamo traces into it and breaks the graph"),
    Mutant("interpreter-patches-every-helper-call", "tests/conftest.py",
           "if active and langs <= active:", "if False:",
           ("tests/test_conftest.py::test_interpreter_patches_the_language_once_per_launch",),
           "the test suite's interpreter patch does nothing: every helper call re-patches the language"),
    Mutant("interpreter-np-dtype-of-blocks-float32", "tests/conftest.py",
           "tt_dtype = tt_dtype.element_ty", "tt_dtype = tl.float32",
           ("tests/test_conftest.py::test_interpreter_numpy_dtypes_as_the_interpreter_gives_them",),
           "the suite's cached dtype lookup answers float32 for every block"),
    Mutant("decision-cache-ignores-env", "fusedrnn/ops/decision.py",
           "        key = (kind, op, name, tuple(map(os.environ.get, DECISION_ENV)), device,", "        key = (kind, op, name, device,",
           ("tests/test_decide.py::test_one_cache_keyed_on_the_decision_switches",),
           "cached backend decisions blind to FUSEDRNN_CUDA_UNVERIFIED: a flipped switch answered from the cache"),
    Mutant("layer-decides-again", "fusedrnn/ops/layer.py",
           "    d = decided if decided is not None else decide_op(backend, cfg, autocast=dt)",
           "    d = decide_op(\"auto\" if decided is not None else backend, cfg, autocast=dt)",
           ("tests/test_decide.py::test_the_layers_run_the_modules_decision",),
           "a layer ignores the module's decision and decides again"),
    Mutant("layer-reads-autocast-again", "fusedrnn/ops/layer.py",
           "    dt = decided.autocast if decided is not None else autocast_dtype(x)", "    dt = autocast_dtype(x)",
           ("tests/test_decide.py::test_a_call_builds_one_config_per_layer_and_reads_autocast_once",),
           "every layer resolves autocast again instead of reading the module's decision"),
    Mutant("c0-gradient", "fusedrnn/core/schema.py",
           "result = list(out[:k0])", "result = list(out[:k0 - 1]) + [None] * (k0 == 3)",
           ("tests/test_lstm_dropin.py::test_matches_nn_lstm",),
           "the compiled layer ops' autograd drops the gradient of c0"),
    Mutant("reverse-off-by-one", "fusedrnn/core/contract.py",
           "idx = torch.where(s < L, L - 1 - s, s)", "idx = torch.where(s < L - 1, L - 2 - s, s)",
           ("tests/test_lstm_dropin.py::test_matches_nn_lstm", "tests/test_regularizers.py::test_layer_matches_direct"),
           "each row reversed within one step less than its length"),
    Mutant("bn-eval-uses-batch-stats", "fusedrnn/backends/reference.py",
           "    if training:\n        if active is None:", "    if True:\n        if active is None:",
           ("tests/test_regularizers.py::test_layer_matches_direct",),
           "eval-mode batch norm normalises with batch statistics (reference)"),
    Mutant("mask-mode-from-rank", "fusedrnn/core/contract.py",
           "return MaskMode.SHARED if mask.dim() == 2 else MaskMode.PER_STEP", "return MaskMode.SHARED",
           ("tests/test_regularizers.py::test_layer_matches_direct",),
           "a per-step mask encoded as shared (the one place the mode is read off a tensor)"),
    Mutant("patch-defaults-leak", "fusedrnn/modules/patch.py",
           "            if stack[i] is self._entry:\n                del stack[i]\n",
           "            if stack[i] is self._entry:\n                pass\n",
           ("tests/test_user_paths.py::test_patch_builds_fusedrnn_modules_with_options_and_restores",),
           "restore() leaves the patch's options as the defaults"),
    Mutant("unbatched-batch-first", "fusedrnn/modules/rnn.py",
           "output = output.squeeze(0 if self.batch_first else 1)", "output = output.squeeze(1)",
           ("tests/test_lstm_dropin.py::test_matches_nn_lstm",),
           "unbatched input with batch_first returns [1, T, H]"),
    Mutant("zoneout-eval-draws", "fusedrnn/ops/dropout.py",
           "    if training:\n        u = _lanes(", "    if True:\n        u = _lanes(",
           ("tests/test_zoneout_layernorm.py::test_module_zoneout_against_oracle_with_the_modules_draws",),
           "eval-mode zoneout draws masks instead of using the expectation"),
    Mutant("weight-dropout-in-eval", "fusedrnn/modules/rnn.py",
           "p_w = self.weight_dropout if self.training else 0.0", "p_w = self.weight_dropout",
           ("tests/test_zoneout_layernorm.py::test_weight_dropout_semantics",),
           "DropConnect also in eval mode"),
    Mutant("zoneout-h-ignored", "fusedrnn/backends/reference.py",
           "c_new = zc[s] * c + (1 - zc[s]) * c_new\n                h_new = zh[s] * h + (1 - zh[s]) * h_new",
           "c_new = zc[s] * c + (1 - zc[s]) * c_new\n                h_new = h_new",
           ("tests/test_zoneout_layernorm.py::test_layer_matches_direct_oracle",),
           "zoneout on the cell state only (the reference recurrence)"),
    Mutant("ln-bias-before-norm", "fusedrnn/ops/layer.py",
           "        return F.layer_norm(xw, (xw.shape[2],), norm.weight_x.to(xw.dtype), shift, norm.eps)",
           "        xb = xw if bias is None else xw + bias.to(xw.dtype)\n"
           "        return F.layer_norm(xb, (xw.shape[2],), norm.weight_x.to(xw.dtype), norm.bias_x.to(xw.dtype), norm.eps)",
           ("tests/test_zoneout_layernorm.py::test_layer_matches_direct_oracle",),
           "the LSTM bias normalised with W_ih x instead of added after LN_x"),
    Mutant("triton-zoneout-no-carry", "fusedrnn/backends/triton/kernels/common.py",
           "tr = tr + load_zone(zh, nxt, offs_b, vb, offs_r, vr, B, R, tr.dtype, ZO) * dh", "tr = tr",
           ("tests/test_zoneout_layernorm.py::test_triton_designs_match_direct_oracle",),
           "the Triton backward drops dL/dh that zoneout carries to the step before"),
    Mutant("triton-ln-h-moment", "fusedrnn/backends/triton/kernels/layer_norm.py",
           "rstd_h[:, None] * (dxh - n1[:, None] - xh * n2[:, None])", "rstd_h[:, None] * (dxh - n1[:, None])",
           ("tests/test_zoneout_layernorm.py::test_triton_designs_match_direct_oracle",),
           "LN_h's backward without the x_hat term (the Triton row kernel)"),
    Mutant("triton-ln-h-merge", "fusedrnn/backends/triton/kernels/layer_norm.py",
           "+ n_k[None, :] * d * d, 0.0)", ", 0.0)",
           ("tests/test_zoneout_layernorm.py::test_triton_step_design_with_many_blocks",),
           "LN_h's variance merged from the GEMM blocks without the spread of their means"),
    Mutant("triton-ln-c-merge", "fusedrnn/backends/triton/kernels/layer_norm.py",
           "m2 + tl.sum(dv * dv, axis=1) + d * d * (n * nb / n_new)", "m2 + tl.sum(dv * dv, axis=1)",
           ("tests/test_zoneout_layernorm.py::test_triton_step_design_with_many_blocks",),
           "LN_c's variance merged over column blocks without the spread of their means"),
    Mutant("triton-forced-design-per-thread", "fusedrnn/backends/triton/host.py",
           "    d = _forced[-1][1] if _forced else _env_design()",
           "    d = _forced[-1][1] if _forced and __import__('threading').current_thread() is __import__('threading').main_thread() else _env_design()",
           ("tests/test_triton.py::test_forced_design_reaches_other_threads",),
           "a forced design seen by the calling thread only (autograd's device thread plans the backward)"),
    Mutant("triton-h-exchange-unmasked-dw", "fusedrnn/backends/triton/host.py",
           "    ws_h = hs[:T] if mask is None else hs[:T] * mask", "    ws_h = hs[:T]",
           ("tests/test_triton.py::test_half_precision_exchange",),
           "dW_hh from the 16-bit h states without the recurrent mask"),
    Mutant("convert-copies-parameters", "fusedrnn/modules/convert.py",
           "        table.update(theirs)  #", "        table.update({k: v.clone() for k, v in theirs.items()})  #",
           ("tests/test_third_party.py::test_frozen_weight_and_an_optimizer_built_before_keep_working",),
           "convert() copies the weights: an optimizer built before it no longer trains the model"),
    Mutant("cell-never-starts-a-sequence", "fusedrnn/modules/cell.py",
           "        if self.holds_sequence_state() and not self._continues(states):",
           "        if False:",
           ("tests/test_third_party.py::test_examples_loop_gets_a_mask_and_a_step_count_per_sequence",),
           "a cell in a loop that never calls reset() holds one mask and one step count for the whole training"),
    Mutant("validation-ignores-fingerprint", "fusedrnn/ops/evidence.py",
           '    if fingerprint is not None and rec.get("fingerprint") == fingerprint:', "    if True:",
           ("tests/test_decide.py::test_a_validation_counts_only_for_the_kernels_it_ran",),
           "a GPU validation keeps counting after the kernels it ran have changed"),
    Mutant("cell-zoneout-eval-draws", "fusedrnn/modules/cell.py",
           "self.hidden_size, self.hidden_size, input, self.training,",
           "self.hidden_size, self.hidden_size, input, True,",
           ("tests/test_option_matrix.py",),
           "LSTMCell in eval draws random zoneout weights instead of using the expectation"),
    Mutant("gru-b-hn-outside-reset", "fusedrnn/backends/reference.py",
           "n = torch.tanh(x_n + r * h_n)",
           "n = torch.tanh(x_n + r * h_n) if b_hh is None else torch.tanh(x_n + r * (h_n - b_hh.chunk(3)[2]) + "
           "b_hh.chunk(3)[2])",
           ("tests/test_gru.py::test_matches_nn_gru",),
           "the other GRU variant: b_hn added outside the reset product"),
    Mutant("gru-rz-order", "fusedrnn/backends/reference.py",
           "r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)",
           "z, r = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)",
           ("tests/test_gru.py::test_matches_nn_gru",),
           "the GRU's reset and update gates swapped (torch's order is r, z, n)"),
    Mutant("gru-grad-slots", "fusedrnn/core/schema.py",
           '{"w_hh": 2, "b_hh": 3, "norm_h_weight": 4}', '{"w_hh": 2, "b_hh": 4, "norm_h_weight": 3}',
           ("tests/test_gru_ops.py",),
           "the GRU op's gradients of b_hh and of N_h's gain returned to each other's parameter"),
    Mutant("triton-gru-no-update-path", "fusedrnn/backends/triton/kernels/gru.py",
           "        dh += load_tile(dz_buf + step_offset(nxt % 2, B, H), offs_b, vb, offs_j, vj, H)\n", "",
           ("tests/test_gru_ops.py",),
           "the Triton GRU backward drops dL/dh~ * z, the update gate's direct path to h_{s-1}"),
    Mutant("triton-gru-ln-gate-count", "fusedrnn/backends/triton/kernels/gru.py",
           "merged_stats(ln_part, offs_b, vb, H, eps, stats_h, s, B, BB, BG, NP, 3)",
           "merged_stats(ln_part, offs_b, vb, H, eps, stats_h, s, B, BB, BG, NP, 4)",
           ("tests/test_gru_ops.py",),
           "the Triton GRU's LN_h statistics merged as if each block had the LSTM's four gates"),
    Mutant("weight-mask-top-lane-threshold", "fusedrnn/ops/dropout.py",
           "[low, low, low, top]", "[low, low, low, low]", ("tests/test_regularizers.py",),
           "DropConnect's top 16-bit lane (15 random bits) compared with the full lanes' threshold"),
    Mutant("triton-gru-persistent-bias-row", "fusedrnn/backends/triton/kernels/gru.py",
           "db_part, s * n_bblk + tl.program_id(0) % n_bblk, s, t,", "db_part, s * n_bblk, s, t,",
           ("tests/test_gru_ops.py::test_triton_persistent_with_several_row_and_column_blocks",),
           "the persistent GRU backward writes every row block's dL/db_hh sum to the first block's row"),
    Mutant("triton-gru-persistent-no-update-path", "fusedrnn/backends/triton/kernels/gru.py",
           "                          MASK, REVERSE, RESIDENT, ZO, PREC, BK, GP, KST) + dz\n        dh, dz",
           "                          MASK, REVERSE, RESIDENT, ZO, PREC, BK, GP, KST)\n        dh, dz",
           ("tests/test_gru_ops.py",),
           "the persistent GRU backward drops the update gate's direct path to h_{s-1} between steps"),
    Mutant("recompute-mode-sent-to-cuda", "fusedrnn/backends/compiled/layer.py",
           'norm.recompute and cfg.device_type == "cpu"', "norm.recompute",
           ("tests/test_recompute.py::test_the_mode_goes_to_the_cpu_kernel_only",),
           "the CUDA kernel, which has no recompute mode, is asked for it (and refuses)"),
    Mutant("recompute-fake-keeps-x-hat", "fusedrnn/backends/compiled/layer.py",
           "new(TW if norm and save != schema.SAVE_RECOMPUTE_NORM else 0, B, 4 * H)", "new(TW if norm else 0, B, 4 * H)",
           ("tests/test_native_ops.py::test_opcheck_and_gradcheck_recompute_mode",),
           "the fake kernel says ws_hh_hat is kept in the recompute mode: torch.compile's shapes are wrong"),
    Mutant("recompute-option-not-passed-to-the-norm", "fusedrnn/modules/regularizers.py",
           "step_offset=step_offset, recompute=self._recomputes(),", "step_offset=step_offset,",
           ("tests/test_recompute.py::test_recompute_keeps_one_gate_tensor_less_per_layer_and_direction",),
           "recompute=True on a batch-norm module saves as much as without it"),
    # C++ (each rebuilds the scratch copy's library)
    Mutant("fused-step-operand-unmasked", "csrc/cpu/fused_step.h",
           "      for (int64_t l = 0; l < kLanes; ++l) hm[l] = hn[l] * m[l];",
           "      for (int64_t l = 0; l < kLanes; ++l) hm[l] = hn[l];",
           ("tests/test_native_ops.py::test_fused_step_matches_float64",),
           "the fused step's epilogue writes the next step's GEMM operand without the recurrent mask"),
    Mutant("fused-step-mask-of-this-step", "csrc/cpu/layer_forward.cpp",
           "st.m_next = last ? nullptr : f.mask_at(s + 1, B * R);", "st.m_next = last ? nullptr : f.mask_at(s, B * R);",
           ("tests/test_native_ops.py::test_fused_step_matches_float64",),
           "the fused step masks the next step's operand with this step's mask (per-step masks differ)"),
    Mutant("ln-small-batch-rows-skipped", "csrc/cpu/fused_step.h",
           "for (int64_t b = B * w0 / slots; b < B * w1 / slots; ++b) row(st, b);",
           "for (int64_t b = B * w0 / slots + 1; b < B * w1 / slots; ++b) row(st, b);",
           ("tests/test_native_ops.py::test_fused_step_matches_float64",
            "tests/test_native_ops.py::test_layer_norm_at_small_batch_in_third_party_training"),
           "layer norm at small B (unit-split products, rows split after a barrier) leaves a row per thread out"),
    Mutant("ln-small-batch-backward-groups-skipped", "csrc/cpu/layer_backward.cpp",
           "for (int64_t g = NG * w0 / slots; g < NG * w1 / slots; ++g)",
           "for (int64_t g = NG * w0 / slots + 1; g < NG * w1 / slots; ++g)",
           ("tests/test_native_ops.py::test_fused_step_matches_float64",
            "tests/test_native_ops.py::test_layer_norm_at_small_batch_in_third_party_training"),
           "layer norm's backward at small B leaves each thread's first column group of dL/dh_{s-1} out"),
    Mutant("packed-weight-compares-a-prefix", "csrc/cpu/linear.cpp",
           "std::memcmp(it->copy.data_ptr(), w.data_ptr(), bytes) == 0",
           "std::memcmp(it->copy.data_ptr(), w.data_ptr(), bytes / 2) == 0",
           ("tests/test_native_ops.py::test_linear_keeps_the_packed_weight_only_while_it_is_unchanged",
            "tests/test_native_ops.py::test_regularized_inference_follows_weight_writes_that_bump_no_version"),
           "inference reuses a packed weight whose second half changed through .data or numpy"),
]


def _copy_tree(dst: str) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    files += [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "fusedrnn", "_C*.so"))]
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, f)) or dst, exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f))


def _rebuild(scratch: str) -> tuple[bool, str]:
    """The scratch copy's library rebuilt from its sources, CPU kernels only (ninja recompiles
    what changed since the scratch copy's last build)."""
    env = dict(os.environ, FUSEDRNN_CUDA="0", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=scratch, env=env,
                       capture_output=True, text=True, timeout=3600)
    return r.returncode == 0, (r.stdout + r.stderr)[-300:]


def _run_tests(scratch: str, tests: tuple[str, ...]) -> tuple[bool, str]:
    env = dict(os.environ, PYTHONPATH=scratch, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:logging", *tests]
    r = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=1800)
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in r.stdout.splitlines() if ln.startswith("FAILED ")]
    return r.returncode != 0, (failed[0] if failed else r.stdout.strip().splitlines()[-1] if r.stdout else r.stderr[-200:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="mutant names")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = ap.parse_args(argv)
    todo = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in todo:
            print(f"{m.name:38s} {m.file}: {m.why}")
        return 0
    scratch = tempfile.mkdtemp(prefix="fusedrnn-mutants-")
    _copy_tree(scratch)
    check = subprocess.run([sys.executable, "-c", "import fusedrnn; print(fusedrnn.__file__)"], cwd=scratch,
                           env=dict(os.environ, PYTHONPATH=scratch), capture_output=True, text=True)
    if not check.stdout.startswith(scratch):
        print(f"mutants: the scratch copy does not shadow the installed fusedrnn ({check.stdout or check.stderr})")
        return 2
    rows, survivors = [], 0
    libraries = {}  # the built library, restored after each C++ mutant
    for so in glob.glob(os.path.join(scratch, "fusedrnn", "_C*.so")):
        with open(so, "rb") as f:
            libraries[so] = f.read()
    try:
        failed, last = _run_tests(scratch, tuple(sorted({t for m in todo for t in m.tests})))
        if failed:
            print(f"mutants: the selected tests fail without any mutant ({last}); fix them first")
            return 2
        for m in todo:
            path = os.path.join(scratch, m.file)
            with open(path) as f:
                src = f.read()
            if src.count(m.old) != 1:
                rows.append((m.name, "STALE", 0.0, f"the text to mutate occurs {src.count(m.old)} times in {m.file}"))
                survivors += 1
                continue
            with open(path, "w") as f:
                f.write(src.replace(m.old, m.new))
            t0 = time.time()
            try:
                built, detail = _rebuild(scratch) if m.compiled else (True, "")
                if not built:  # a mutant that does not compile tests nothing
                    rows.append((m.name, "STALE", time.time() - t0, "does not build: " + detail.replace("\n", " ")))
                    survivors += 1
                    continue
                caught, detail = _run_tests(scratch, m.tests)
            finally:
                with open(path, "w") as f:
                    f.write(src)
                for so, data in libraries.items() if m.compiled else ():
                    with open(so, "wb") as f:
                        f.write(data)
            survivors += not caught
            rows.append((m.name, "caught" if caught else "SURVIVED", time.time() - t0, detail))
            print(f"{m.name:38s} {rows[-1][1]:9s} {rows[-1][2]:6.1f} s  {detail}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n| mutant | result | by |\n|---|---|---|")
    for name, res, _, detail in rows:
        print(f"| {name} | {res} | {detail} |")
    print(f"\n{len(rows) - survivors} of {len(rows)} caught" + (f"; {survivors} survived" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
