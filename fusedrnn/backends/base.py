"""The op contract every backend implements (see DESIGN.md, "One op contract").

Dimension letters: T steps, B batch, I input, H hidden, P projection (proj_size),
R = P if P > 0 else H (the width of h), G = 4H gate columns in the order i, f, g, o.

The unit of fusion is one LSTM layer in one direction over a whole sequence.  The
input projection (``xp = BN_x(x @ W_ih^T) + b_ih + b_hh``) is shared code in
:mod:`fusedrnn.ops.layer`; a backend implements the *recurrence*:

    for step s = 0 .. T-1 (t = s, or the row's own reversed position when reverse):
        hh_s   = (h_{s-1} * m_s) @ W_hh^T                      [B, G]
        pre_s  = xp_t + BN_h(hh_s)                             (BN_h only with batch norm)
        i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of pre_s
        c_s    = f * c_{s-1} + i * g                           [B, H]
        h_s    = o * tanh(BN_c(c_s))                           (BN_c only with batch norm)
        h_s    = h_s @ W_hr^T                                   (only with proj_size)
        y_t    = h_s                                           [B, R]

with, for variable lengths, rows whose sequence has ended (s >= lengths[b]) keeping
their state and emitting zeros.  In the reverse direction each row runs over its own
sequence backwards: step s reads position t = lengths[b] - 1 - s (T - 1 - s without
lengths).  Batch-norm statistics, per-step masks and running-statistics slots are
indexed by the step s, not by the position t.

Batch norm (Cooijmans et al.): in training, per-step statistics over the rows active at
that step (biased variance to normalise); in eval the running statistics of slot
``min(step_offset + s, S - 1)``.  Backends return the batch statistics of every step so
that the caller updates the running statistics (one home: :mod:`fusedrnn.ops.layer`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch
from torch import Tensor


@dataclasses.dataclass
class RecurrentBN:
    """Parameters and state of recurrent batch norm for one layer and direction.

    Shapes: weight_x, weight_h [G]; weight_c, bias_c [H]; running_* [S, G] for x and h,
    [S, H] for c, where S = bn_max_steps.  BN_x is applied by the shared input projection;
    backends use the h and c parts.
    """

    weight_x: Tensor
    weight_h: Tensor
    weight_c: Tensor
    bias_c: Tensor
    running_mean_x: Tensor
    running_var_x: Tensor
    running_mean_h: Tensor
    running_var_h: Tensor
    running_mean_c: Tensor
    running_var_c: Tensor
    training: bool
    momentum: float
    eps: float
    step_offset: int = 0  # the step index of the first step (LSTMCell steps one at a time)

    @property
    def max_steps(self) -> int:
        return self.running_mean_h.shape[0]

    def slot_index(self, T: int, device) -> Tensor:
        """Running-statistics slot of each of T steps: min(step_offset + s, S - 1)."""
        s = torch.arange(T, device=device) + self.step_offset
        return s.clamp_(max=self.max_steps - 1)


class BatchStats(NamedTuple):
    """Biased batch statistics of each step, returned by a backend in training mode.

    mean_h, var_h: [T, G]; mean_c, var_c: [T, H].
    """

    mean_h: Tensor
    var_h: Tensor
    mean_c: Tensor
    var_c: Tensor


class RecurrenceResult(NamedTuple):
    y: Tensor  # [T, B, R]
    h_n: Tensor  # [B, R]
    c_n: Tensor  # [B, H]
    stats: Optional[BatchStats]  # only with batch norm in training


@dataclasses.dataclass(frozen=True)
class Config:
    """What a backend needs to know to say whether it can run a recurrence."""

    device_type: str
    dtype: torch.dtype
    T: int
    B: int
    H: int
    R: int
    proj: bool
    mask: Optional[str]  # None, "shared" ([B, R]) or "per_step" ([T, B, R])
    lengths: bool
    reverse: bool
    bn: Optional[str]  # None, "train" or "eval"
    requires_grad: bool
    arch: str = ""  # the GPU's compute capability as "sm_90" (device_arch); "" on the CPU

    @staticmethod
    def of(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn) -> "Config":
        T, B, G = xp.shape
        return Config(
            device_type=xp.device.type,
            dtype=xp.dtype,
            T=T,
            B=B,
            H=G // 4,
            R=w_hh.shape[1],
            proj=w_hr is not None,
            mask=None if mask is None else ("shared" if mask.dim() == 2 else "per_step"),
            lengths=lengths is not None,
            reverse=bool(reverse),
            bn=None if bn is None else ("train" if bn.training else "eval"),
            requires_grad=torch.is_grad_enabled()
            and any(
                t is not None and t.requires_grad
                for t in (xp, h0, c0, w_hh, w_hr)
                + ((bn.weight_h, bn.weight_c, bn.bias_c) if bn is not None else ())
            ),
            arch=device_arch(xp.device),
        )


def device_arch(device: torch.device) -> str:
    """"sm_XY" for a CUDA device of compute capability X.Y, "" for any other device."""
    if device.type != "cuda":
        return ""
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


_ARCHS: dict[int, str] = {}


@torch.compiler.assume_constant_result  # a trace-time constant under torch.compile
def _cuda_arch(index: int) -> str:
    if index not in _ARCHS:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCHS[index] = f"sm_{major}{minor}"
    return _ARCHS[index]


def arch_capability(arch: str) -> tuple[int, int]:
    """"sm_90" -> (9, 0); "sm_120" -> (12, 0)."""
    num = arch.partition("_")[2]
    return int(num[:-1]), int(num[-1])


class Backend:
    """A backend of the recurrence op.  Subclasses override what they implement."""

    name: str = "?"

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        """None if the backend can run on ``device``, else why not."""
        return None

    def unsupported_reason(self, cfg: Config) -> Optional[str]:
        """None if the backend can run this configuration, else why not.

        Must not depend on ``cfg.T``: under torch.compile one traced decision serves every
        sequence length (see :mod:`fusedrnn.ops.dispatch`)."""
        return None

    def recurrence(
        self,
        xp: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        w_hr: Optional[Tensor],
        mask: Optional[Tensor],
        lengths: Optional[Tensor],
        reverse: bool,
        bn: Optional[RecurrentBN],
    ) -> RecurrenceResult:
        raise NotImplementedError

    def cell_unsupported_reason(self, cfg: Config) -> Optional[str]:
        """None if :meth:`cell` can run this configuration (T = 1), else why not."""
        return None

    def cell(self, gates: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
        """The pointwise LSTM cell step: gates [B, G] pre-activations, cx [B, H] -> (hy, cy)."""
        raise NotImplementedError


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run here or cannot serve this configuration."""


# ---- helpers shared by the reference backend and the shared input projection --------


def reverse_sequences(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each row of x [T, B, ...] within its own length (padding stays in place).

    Maps between time order and the processing order of the reverse direction; it is its
    own inverse.  Differentiable.
    """
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[0], x.shape[1]
    s = torch.arange(T, device=x.device).unsqueeze(1)  # [T, 1]
    L = lengths.to(x.device).unsqueeze(0)  # [1, B]
    idx = torch.where(s < L, L - 1 - s, s)  # [T, B]
    idx = idx.view(T, B, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def active_rows(T: int, lengths: Optional[Tensor], device) -> Optional[Tensor]:
    """[T, B] bool: row b is still running at step s (s < lengths[b]); None without lengths."""
    if lengths is None:
        return None
    return torch.arange(T, device=device).unsqueeze(1) < lengths.to(device).unsqueeze(0)


def step_counts(T: int, B: int, lengths: Optional[Tensor], device) -> Tensor:
    """[T] number of rows running at each step."""
    if lengths is None:
        return torch.full((T,), B, device=device, dtype=torch.int64)
    return active_rows(T, lengths, device).sum(1)


def batch_norm_steps(
    v: Tensor,
    active: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    slots: Tensor,
    training: bool,
    eps: float,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Per-step batch norm of v [T, B, F] (statistics over B, separately for each step).

    Training: statistics over the active rows of each step (active [T, B] bool or None),
    biased variance; returns (out, mean [T, F], var [T, F]) with the statistics detached.
    Eval: running statistics of the given slots [T]; returns (out, None, None).
    Inactive rows (padding) come out as 0 (+ bias).
    Differentiable through the batch statistics.  Plain PyTorch: the oracle.
    """
    if training:
        if active is None:
            mean = v.mean(1)
            # an empty batch has no statistics: NaN, as nn.BatchNorm1d (without its warning)
            var = v.var(1, unbiased=False) if v.shape[1] else mean.clone()
        else:
            a = active.to(v.dtype).unsqueeze(2)  # [T, B, 1]
            n = a.sum(1).clamp(min=1)  # [T, 1]
            mean = (v * a).sum(1) / n
            var = (((v - mean.unsqueeze(1)) * a) ** 2).sum(1) / n
        stats = (mean.detach(), var.detach())
    else:
        mean = running_mean.index_select(0, slots).to(v.dtype)
        var = running_var.index_select(0, slots).to(v.dtype)
        stats = (None, None)
    out = (v - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + eps) * weight.to(v.dtype)
    if active is not None:  # finished rows (padding) normalise to 0
        out = out * active.to(v.dtype).unsqueeze(2)
    if bias is not None:
        out = out + bias.to(v.dtype)
    return out, stats[0], stats[1]
