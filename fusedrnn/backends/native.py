"""The compiled backends: the C++ ops of fusedrnn._C (csrc/).

One set of ``fusedrnn::`` ops, with a kernel per dispatch key: the CPU kernels form the
``native`` backend, the CUDA kernels the ``cuda`` backend.  This module loads the
library and registers, for every op, the fake (meta) kernel and the autograd formula,
so that torch.compile traces through the ops and autograd differentiates them.

Dimension letters: B batch, H hidden, G = 4H gates (i, f, g, o).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Backend, BatchStats, Config, RecurrenceResult, arch_capability

try:  # the compiled library; absent when the package was not built
    from .. import _C  # noqa: F401  (loading it registers the ops)

    LOAD_ERROR: Optional[str] = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    LOAD_ERROR = f"fusedrnn._C could not be imported ({e}); build it with `pip install -e .`"


def _parse_targets(spec: str) -> tuple[tuple[str, int, int, bool], ...]:
    """"sm_80/sm_90/compute_90" -> (("sm", 8, 0, False), ("sm", 9, 0, False), ("compute", 9, 0, False));
    the last field marks an arch-specific target (sm_90a), which runs on that exact arch only."""
    out = []
    for tok in spec.replace(";", "/").split("/"):
        kind, _, num = tok.strip().partition("_")
        specific = num.endswith(("a", "f"))
        num = num.rstrip("af")
        if kind in ("sm", "compute") and num.isdigit() and len(num) >= 2:
            out.append((kind, int(num[:-1]), int(num[-1]), specific))
    return tuple(out)


CUDA_TARGETS = _parse_targets(getattr(_C, "CUDA_TARGETS", "")) if LOAD_ERROR is None else ()


def cuda_targets_text(targets=None) -> str:
    t = CUDA_TARGETS if targets is None else targets
    return ", ".join(f"{k}_{a}{b}{'a' if s else ''}" for k, a, b, s in t) or "none"


def cuda_arch_reason(capability: tuple[int, int], targets=None) -> Optional[str]:
    """None if the build has code a GPU of this compute capability runs, else why not.

    A kernel image sm_XY runs on GPUs of the same major version and minor >= Y (sm_80 on an
    sm_86 / sm_89 card); PTX compute_XY is JIT-compiled for any GPU of capability >= X.Y;
    an arch-specific image (sm_90a) runs on that arch only."""
    targets = CUDA_TARGETS if targets is None else targets
    major, minor = capability
    for kind, a, b, specific in targets:
        if specific and (a, b) != (major, minor):
            continue
        if kind == "sm" and a == major and b <= minor:
            return None
        if kind == "compute" and (a, b) <= (major, minor):
            return None
    return (f"fusedrnn._C has no kernel image or PTX for this GPU (sm_{major}{minor}); it was built "
            f"for {cuda_targets_text(targets)} (rebuild with TORCH_CUDA_ARCH_LIST including "
            f"{major}.{minor})")


def _query_kernel(op: str, dispatch_key: str) -> bool:
    if LOAD_ERROR is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{op}", dispatch_key)
    except RuntimeError:  # no such op in this build
        return False


# Registrations are fixed once the library is loaded: the answers are looked up in a plain
# dict, which torch.compile traces (it cannot trace the dispatcher query itself).
_KERNELS = {(op, key): _query_kernel(op, key)
            for op in ("lstm_cell_forward", "lstm_cell_backward", "lstm_layer_forward",
                       "lstm_layer_backward", "batch_norm_steps_forward",
                       "batch_norm_steps_backward", "cuda_layer_plan")
            for key in ("CPU", "CUDA")}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether fusedrnn::<op> has a kernel registered for dispatch_key ("CPU", "CUDA")."""
    if (op, dispatch_key) not in _KERNELS:
        _KERNELS[op, dispatch_key] = _query_kernel(op, dispatch_key)
    return _KERNELS[op, dispatch_key]


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- lstm_cell_forward / lstm_cell_backward -----------------------------------------

if LOAD_ERROR is None:

    @torch.library.register_fake("fusedrnn::lstm_cell_forward")
    def _cell_forward_fake(gates: Tensor, cx: Tensor):
        B, H = cx.shape
        torch._check(gates.shape[0] == B and gates.shape[1] == 4 * H)
        return cx.new_empty(B, H), cx.new_empty(B, H), cx.new_empty(B, 4 * H, dtype=_acc(cx.dtype))

    @torch.library.register_fake("fusedrnn::lstm_cell_backward")
    def _cell_backward_fake(grad_hy, grad_cy, act, cx, cy):
        B, H = cx.shape
        return cx.new_empty(B, 4 * H), cx.new_empty(B, H)

    def _cell_setup_context(ctx, inputs, output):
        _, cx = inputs
        _, cy, act = output
        ctx.save_for_backward(act, cx, cy)

    def _cell_backward(ctx, grad_hy, grad_cy, _grad_act):
        act, cx, cy = ctx.saved_tensors
        grad_hy = torch.zeros_like(cy) if grad_hy is None else grad_hy
        grad_cy = torch.zeros_like(cy) if grad_cy is None else grad_cy
        grad_gates, grad_cx = torch.ops.fusedrnn.lstm_cell_backward(grad_hy, grad_cy, act, cx, cy)
        return grad_gates, grad_cx

    torch.library.register_autograd(
        "fusedrnn::lstm_cell_forward", _cell_backward, setup_context=_cell_setup_context
    )


# ---- lstm_layer_forward / lstm_layer_backward ---------------------------------------

# Argument order of the layer ops (see csrc/module.cpp for the schemas).
_FWD_ARGS = ("xp", "h0", "c0", "w_hh", "w_hr", "mask", "lengths", "reverse", "bn_h_weight",
             "bn_c_weight", "bn_c_bias", "bn_h_running_mean", "bn_h_running_var",
             "bn_c_running_mean", "bn_c_running_var", "bn_training", "bn_step_offset", "bn_eps",
             "save_workspace")

if LOAD_ERROR is None:

    @torch.library.register_fake("fusedrnn::lstm_layer_forward")
    def _layer_forward_fake(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn_h_weight, bn_c_weight,
                            bn_c_bias, rm_h, rv_h, rm_c, rv_c, bn_training, bn_step_offset, bn_eps,
                            save_workspace):
        T, B, G = xp.shape
        H, R = G // 4, w_hh.shape[1]
        bn = bn_h_weight is not None
        bn_train = bn and bn_training
        TW = T if save_workspace else 1
        e = xp.new_empty

        def a(*shape):  # statistics and workspace in the accumulation dtype
            return xp.new_empty(shape, dtype=_acc(xp.dtype))

        return (e(T, B, R), e(B, R), e(B, H), a(T if bn_train else 0, 2, G),
                a(T if bn_train else 0, 2, H), e(TW, B, R), a(TW, B, G),
                a(T + 1 if save_workspace else 2, B, H), a(TW if bn else 0, B, G),
                e(TW if w_hr is not None else 0, B, H))

    @torch.library.register_fake("fusedrnn::lstm_layer_backward")
    def _layer_backward_fake(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, mask, lengths, reverse,
                             bn_h_weight, bn_c_weight, bn_c_bias, rv_h, rm_c, rv_c, bn_training,
                             bn_step_offset, bn_eps, h_stats, c_stats, ws_hm, ws_act, ws_c,
                             ws_hh_hat, ws_hc):
        T, B, _ = grad_y.shape
        G, R = w_hh.shape
        H = G // 4
        bn = bn_h_weight is not None
        e = grad_y.new_empty
        return (e(T, B, G), e(B, R), e(B, H), e(G, R),
                e(*w_hr.shape) if w_hr is not None else e(0),
                e(G if bn else 0), e(H if bn else 0), e(H if bn else 0))

    def _layer_setup_context(ctx, inputs, output):
        a = dict(zip(_FWD_ARGS, inputs))
        _, _, _, h_stats, c_stats, hm, act, c, hh_hat, hc = output
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(h_stats, c_stats, hm, act, c, hh_hat, hc)
        ctx.save_for_backward(a["w_hh"], a["w_hr"], a["mask"], a["lengths"], a["bn_h_weight"],
                              a["bn_c_weight"], a["bn_c_bias"], a["bn_h_running_var"],
                              a["bn_c_running_mean"], a["bn_c_running_var"], h_stats, c_stats, hm,
                              act, c, hh_hat, hc)
        ctx.flags = (a["reverse"], a["bn_training"], a["bn_step_offset"], a["bn_eps"],
                     a["save_workspace"])
        ctx.shapes = (a["h0"].shape, a["c0"].shape)

    def _layer_backward(ctx, grad_y, grad_h_n, grad_c_n, *_unused):
        (w_hh, w_hr, mask, lengths, gh, gc, bc, rv_h, rm_c, rv_c, h_stats, c_stats, hm, act, c,
         hh_hat, hc) = ctx.saved_tensors
        reverse, bn_training, offset, eps, saved = ctx.flags
        if not saved:
            raise RuntimeError(
                "fusedrnn: lstm_layer_forward ran with save_workspace=False (no grad was "
                "required), so it cannot be differentiated"
            )
        (T, B, _), (h_shape, c_shape) = act.shape, ctx.shapes
        R = w_hh.shape[1]
        z = w_hh.new_zeros  # the data dtype (the workspace may be in the accumulation dtype)
        grad_y = z(T, B, R) if grad_y is None else grad_y
        grad_h_n = z(h_shape) if grad_h_n is None else grad_h_n
        grad_c_n = z(c_shape) if grad_c_n is None else grad_c_n
        (g_xp, g_h0, g_c0, g_whh, g_whr, g_gh, g_gc, g_bc) = torch.ops.fusedrnn.lstm_layer_backward(
            grad_y, grad_h_n, grad_c_n, w_hh, w_hr, mask, lengths, reverse, gh, gc, bc, rv_h, rm_c,
            rv_c, bn_training, offset, eps, h_stats, c_stats, hm, act, c, hh_hat, hc)
        bn = gh is not None
        return (g_xp, g_h0, g_c0, g_whh, g_whr if w_hr is not None else None, None, None, None,
                g_gh if bn else None, g_gc if bn else None, g_bc if bn else None,
                None, None, None, None, None, None, None, None)

    torch.library.register_autograd(
        "fusedrnn::lstm_layer_forward", _layer_backward, setup_context=_layer_setup_context
    )

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "fusedrnn: the fused backward ops are not differentiable (no double backward); "
            "use backend='reference' for higher-order gradients"
        )

    for _op in ("fusedrnn::lstm_layer_backward", "fusedrnn::lstm_cell_backward"):
        torch.library.register_autograd(_op, _no_double_backward,
                                        setup_context=lambda ctx, inputs, output: None)


# ---- batch_norm_steps_forward / _backward (BN_x over a whole sequence) --------------

if LOAD_ERROR is None:

    @torch.library.register_fake("fusedrnn::batch_norm_steps_forward")
    def _bn_steps_fake(v, weight, bias, lengths, reverse, eval_mean, eval_var, training, eps):
        T, _, F = v.shape
        n = T if training else 0
        acc = _acc(v.dtype)
        return v.new_empty(v.shape), v.new_empty(n, F, dtype=acc), v.new_empty(n, F, dtype=acc)

    @torch.library.register_fake("fusedrnn::batch_norm_steps_backward")
    def _bn_steps_backward_fake(grad_out, v, weight, lengths, reverse, mean, var, training, eps):
        F = v.shape[2]
        return v.new_empty(v.shape), v.new_empty(F), v.new_empty(F)

    def _bn_steps_setup_context(ctx, inputs, output):
        v, weight, bias, lengths, reverse, eval_mean, eval_var, training, eps = inputs
        _, mean, var = output
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(v, weight, lengths, mean if training else eval_mean,
                              var if training else eval_var)
        ctx.flags = (reverse, training, eps, bias is not None)

    def _bn_steps_backward(ctx, grad_out, _gm, _gv):
        v, weight, lengths, mean, var = ctx.saved_tensors
        reverse, training, eps, has_bias = ctx.flags
        if grad_out is None:
            return (None,) * 9
        g_v, g_w, g_b = torch.ops.fusedrnn.batch_norm_steps_backward(
            grad_out, v, weight, lengths, reverse, mean, var, training, eps)
        return g_v, g_w, g_b if has_bias else None, None, None, None, None, None, None

    torch.library.register_autograd(
        "fusedrnn::batch_norm_steps_forward", _bn_steps_backward, setup_context=_bn_steps_setup_context
    )
    torch.library.register_autograd("fusedrnn::batch_norm_steps_backward", _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


def batch_norm_steps_available(v: Tensor) -> bool:
    """Whether the fused per-step batch norm runs on v (device kernel built, dtype served)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(v.device.type)
    if key is None or not has_kernel("batch_norm_steps_forward", key):
        return False
    return v.device.type != "cpu" or v.dtype in (torch.float32, torch.float64)


def batch_norm_steps(v: Tensor, weight: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor],
                     reverse: bool, slots: Tensor, bn) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Fused per-step batch norm of v [T, B, F] (+ bias): the same function as
    :func:`fusedrnn.backends.base.batch_norm_steps` with the processing-order mapping of
    reverse / lengths done in the kernel.  Returns (out, mean, var); statistics only in
    training."""
    em = ev = None
    if not bn.training:
        em = bn.running_mean_x.index_select(0, slots).to(v.dtype)
        ev = bn.running_var_x.index_select(0, slots).to(v.dtype)
    out, mean, var = torch.ops.fusedrnn.batch_norm_steps_forward(
        v, weight.to(v.dtype), None if bias is None else bias.to(v.dtype), lengths, reverse, em, ev,
        bn.training, bn.eps)
    return out, (mean if bn.training else None), (var if bn.training else None)


def layer_forward(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn) -> RecurrenceResult:
    """Run fusedrnn::lstm_layer_forward (any device it has a kernel for) on the contract's
    arguments; returns the contract's result."""
    needs_grad = Config.of(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn).requires_grad
    if bn is not None:
        bn_args = (bn.weight_h, bn.weight_c, bn.bias_c) + (
            (None,) * 4 if bn.training else
            (bn.running_mean_h, bn.running_var_h, bn.running_mean_c, bn.running_var_c))
        if not bn.training:
            bn_args = bn_args[:3] + tuple(t.to(xp.dtype) for t in bn_args[3:])
        flags = (bn.training, bn.step_offset, bn.eps)
    else:
        bn_args = (None,) * 7
        flags = (False, 0, 1e-5)
    y, h_n, c_n, h_stats, c_stats, *_ = torch.ops.fusedrnn.lstm_layer_forward(
        xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, *bn_args, *flags, needs_grad)
    stats = None
    if bn is not None and bn.training:
        stats = BatchStats(h_stats[:, 0], h_stats[:, 1], c_stats[:, 0], c_stats[:, 1])
    return RecurrenceResult(y, h_n, c_n, stats)


def cuda_design(cfg: Config, device: torch.device, needs_grad: bool) -> str:
    """Which CUDA design the layer op runs for this configuration: "persistent", or
    "per-step (<why the persistent kernel does not fit>)"."""
    if not has_kernel("cuda_layer_plan", "CUDA"):
        return "unknown (no CUDA kernels)"
    like = torch.empty(0, dtype=cfg.dtype, device=device)
    ok, why, units, blocks, smem_f, smem_b = torch.ops.fusedrnn.cuda_layer_plan(
        like, cfg.B, cfg.H, cfg.R, cfg.proj, needs_grad)
    if ok:
        return f"persistent ({blocks} blocks x {units} units, {smem_f} / {smem_b} B shared memory)"
    return f"per-step ({why})"


class CompiledBackend(Backend):
    """The fusedrnn._C kernels of one dispatch key."""

    def __init__(self, name: str, device_type: str, dispatch_key: str):
        self.name = name
        self.device_type = device_type
        self.dispatch_key = dispatch_key

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if device.type != self.device_type:
            return (
                f"backend {self.name!r} runs on {self.device_type} tensors, got {device.type}"
            )
        if not has_kernel("lstm_cell_forward", self.dispatch_key):
            return f"fusedrnn._C was built without {self.dispatch_key} kernels"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "no CUDA device is available"
            return cuda_arch_reason(torch.cuda.get_device_capability(device))
        return None

    def unsupported_reason(self, cfg) -> Optional[str]:
        if not has_kernel("lstm_layer_forward", self.dispatch_key):
            return f"the {self.name} layer recurrence kernel is not built"
        if self.device_type == "cpu" and cfg.dtype not in (torch.float32, torch.float64):
            return f"the native CPU kernel takes float32 or float64, got {cfg.dtype}"
        if self.device_type == "cuda" and cfg.arch:
            return cuda_arch_reason(arch_capability(cfg.arch))
        return None

    def cell_unsupported_reason(self, cfg) -> Optional[str]:
        if self.device_type == "cuda" and cfg.arch:
            return cuda_arch_reason(arch_capability(cfg.arch))
        return None

    def recurrence(self, xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn) -> RecurrenceResult:
        return layer_forward(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn)

    def cell(self, gates: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
        hy, cy, _ = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
        return hy, cy


NATIVE = CompiledBackend("native", "cpu", "CPU")
CUDA = CompiledBackend("cuda", "cuda", "CUDA")
