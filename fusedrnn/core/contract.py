"""The op contract every backend implements.

Dimension letters: T steps, B batch, I input, H hidden, P projection (proj_size),
R = P if P > 0 else H (the width of h), G = 4H gate columns in the order i, f, g, o.

The unit of fusion is one LSTM layer in one direction over a whole sequence.  The layer op
(:mod:`fusedrnn.ops.layer`) computes ``xp = norm_x(x @ W_ih^T) + b_ih + b_hh`` with one GEMM
and the backend's input norm, then the backend's *recurrence*:

    for step s = 0 .. T-1 (t = s, or the row's own reversed position when reverse):
        hh_s   = (h_{s-1} * m_s) @ W_hh^T                      [B, G]
        pre_s  = xp_t + N_h(hh_s)                              (N_h: BN_h or LN_h, with a norm)
        i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of pre_s
        c~_s   = f * c_{s-1} + i * g                           [B, H]
        h~_s   = o * tanh(N_c(c~_s))                           (N_c: BN_c or LN_c, with a norm)
        h~_s   = h~_s @ W_hr^T                                  (only with proj_size)
        c_s    = zc_s * c_{s-1} + (1 - zc_s) * c~_s            (zoneout; else c_s = c~_s)
        h_s    = zh_s * h_{s-1} + (1 - zh_s) * h~_s            (zoneout; else h_s = h~_s)
        y_t    = h_s                                           [B, R]

with, for variable lengths, rows whose sequence has ended (s >= lengths[b]) keeping their
state and emitting zeros.  In the reverse direction each row runs over its own sequence
backwards: step s reads position t = lengths[b] - 1 - s (T - 1 - s without lengths).
Batch-norm statistics, per-step masks, zoneout weights and running-statistics slots are
indexed by the step s, not by the position t.

The GRU (``Config.cell`` GRU; G = 3H gate columns in the order r, z, n; R = H, no cell state,
no projection) runs the same loop with torch's gates and b_hh inside the recurrence, since
b_hn sits inside the reset product:

        hg_s   = N_h((h_{s-1} * m_s) @ W_hh^T) + b_hh           [B, 3H]
        r, z   = sigmoid(xp_t + hg_s) on the r and z blocks      (xp = N_x(x @ W_ih^T) + b_ih)
        n      = tanh(xp_t,n + r * hg_s,n)
        h~_s   = (1 - z) * n + z * h_{s-1}
        h_s    = zh_s * h_{s-1} + (1 - zh_s) * h~_s            (zoneout; else h_s = h~_s)

with N_h batch norm (gain only: b_hh is its shift) or layer norm (its bias folded into b_hh).

Zoneout (Krueger et al.): zc [T, B, H] and zh [T, B, R] (:class:`Zoneout`) weigh the previous
state; in training 0/1 draws (1 with the zoneout rate: the unit keeps its previous value),
in eval the rates themselves (the expectation).  The unit emits its own zoned-out h, and
c~ (not the zoned-out c) goes through the output tanh.

Layer norm (Ba et al., :class:`RecurrentLN`): LN_h normalises each row's G columns of
hh_s, LN_c each row's H columns of c~_s, each with its own gain and bias; LN_x (the
layer op's input norm) each row of x @ W_ih^T.  No batch statistics: train = eval.

Batch norm (Cooijmans et al.): in training, per-step statistics over the rows active at
that step (biased variance to normalise); in eval the running statistics of slot
``min(step_offset + s, S - 1)``.  Backends return the batch statistics of every step; the
layer op updates the running statistics (one home: :func:`fusedrnn.ops.layer.update_running_stats`).

Here: the encodings (:class:`MaskMode`, :class:`NormMode`), the configuration record
(:class:`Config`, built by its constructors :meth:`Config.build` and :meth:`Config.of`
only), the norm states (:class:`RecurrentBN`, :class:`RecurrentLN`: a recurrence's ``norm``
argument), what a recurrence returns, the :class:`Backend` protocol, and the indexing
helpers of the semantics above.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from .arch import device_arch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a data dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class CellKind(enum.IntEnum):
    """The recurrent cell a layer runs: the LSTM (gates i, f, g, o; a cell state) or the GRU
    (gates r, z, n; torch's formulation, b_hn inside the reset product)."""

    LSTM = 0
    GRU = 1

    @property
    def gates(self) -> int:
        """Gate blocks per unit: G = gates * H."""
        return 4 if self == CellKind.LSTM else 3


class MaskMode(enum.IntEnum):
    """The recurrent dropout mask on h_{s-1}: none, one [B, R] mask for every step
    (shared, variational), or one [T, B, R] mask per step.  The integer is the encoding of
    every op (``mask_mode``) and kernel (``MASK``)."""

    NONE = 0
    SHARED = 1
    PER_STEP = 2

    @staticmethod
    def of(mask: Optional[Tensor]) -> "MaskMode":
        """The mode of a mask tensor: [B, R] shared, [T, B, R] per step (the one place the
        mode is read off a tensor's rank)."""
        if mask is None:
            return MaskMode.NONE
        return MaskMode.SHARED if mask.dim() == 2 else MaskMode.PER_STEP


class NormMode(enum.IntEnum):
    """Normalisation inside the recurrence: none, batch norm with per-step batch statistics
    (training) or with the running statistics (eval), or layer norm.  The op encoding
    ``norm_mode`` and the kernels' ``BN``."""

    NONE = 0
    BATCH_TRAIN = 1
    BATCH_EVAL = 2
    LAYER = 3

    @staticmethod
    def of(norm: Optional["Norm"]) -> "NormMode":
        if norm is None:
            return NormMode.NONE
        if isinstance(norm, RecurrentLN):
            return NormMode.LAYER
        return NormMode.BATCH_TRAIN if norm.training else NormMode.BATCH_EVAL

    @property
    def batch(self) -> bool:
        """Batch norm (either mode)."""
        return self in (NormMode.BATCH_TRAIN, NormMode.BATCH_EVAL)


@dataclasses.dataclass
class RecurrentBN:
    """Parameters and state of recurrent batch norm for one layer and direction.

    Shapes: weight_x, weight_h [G]; weight_c, bias_c [H]; running_* [S, G] for x and h,
    [S, H] for c, where S = bn_max_steps.  BN_x is the backend's input norm; the recurrence
    uses the h and c parts.  A GRU has no c parts (None).
    """

    weight_x: Tensor
    weight_h: Tensor
    weight_c: Optional[Tensor]
    bias_c: Optional[Tensor]
    running_mean_x: Tensor
    running_var_x: Tensor
    running_mean_h: Tensor
    running_var_h: Tensor
    running_mean_c: Optional[Tensor]
    running_var_c: Optional[Tensor]
    training: bool
    momentum: float
    eps: float
    step_offset: int = 0  # the step index of the first step (LSTMCell steps one at a time)
    recompute: bool = False  # the backward rebuilds BN_h's x_hat instead of keeping it (a family that can)

    @property
    def max_steps(self) -> int:
        return self.running_mean_h.shape[0]

    def slot_index(self, T: int, device) -> Tensor:
        """Running-statistics slot of each of T steps: min(step_offset + s, S - 1)."""
        s = torch.arange(T, device=device) + self.step_offset
        return s.clamp_(max=self.max_steps - 1)


@dataclasses.dataclass
class RecurrentLN:
    """Parameters of layer norm inside the recurrence for one layer and direction (the
    LayerNorm LSTM of Ba et al.; haste's LayerNormLSTM).  Shapes: weight_x, bias_x, weight_h,
    bias_h [G]; weight_c, bias_c [H].  LN_x is the layer op's input norm; the recurrence uses
    the h and c parts.  No state: training and eval compute the same.  A GRU (haste's
    LayerNormGRU) has no c parts (None)."""

    weight_x: Tensor
    bias_x: Tensor
    weight_h: Tensor
    bias_h: Tensor
    weight_c: Optional[Tensor]
    bias_c: Optional[Tensor]
    eps: float
    recompute: bool = False  # the backward rebuilds LN_h's x_hat instead of keeping it (a family that can)


Norm = Union[RecurrentBN, RecurrentLN]  # what a recurrence's ``norm`` argument holds


class Zoneout(NamedTuple):
    """Zoneout weights of one layer and direction, indexed by the step s: c [T, B, H] the
    weight of c_{s-1} (None for a GRU, which has one rate), h [T, B, R] the weight of
    h_{s-1} (0/1 draws in training, the rates in eval), in the data dtype."""

    c: Optional[Tensor]
    h: Tensor


class BatchStats(NamedTuple):
    """Biased batch statistics of each step, returned by a backend in training mode.

    mean_h, var_h: [T, G]; mean_c, var_c: [T, H] (None for a GRU).
    """

    mean_h: Tensor
    var_h: Tensor
    mean_c: Optional[Tensor]
    var_c: Optional[Tensor]


class RecurrenceResult(NamedTuple):
    y: Tensor  # [T, B, R]
    h_n: Tensor  # [B, R]
    c_n: Optional[Tensor]  # [B, H]; None for a GRU
    stats: Optional[BatchStats]  # only with batch norm in training


@dataclasses.dataclass(frozen=True)
class Config:
    """What a backend needs to know to say whether it can run a recurrence (or a cell step).

    Built only by :meth:`build` (from plain facts) and :meth:`of` (from the op's tensors)."""

    device_type: str
    dtype: torch.dtype
    T: int
    B: int
    H: int
    R: int
    proj: bool
    mask: MaskMode
    lengths: bool
    reverse: bool
    norm: NormMode
    requires_grad: bool
    arch: str  # the GPU's compute capability as "sm_90" (device_arch); "" elsewhere
    zoneout: bool = False
    cell: CellKind = CellKind.LSTM

    @staticmethod
    def build(device: torch.device, dtype: torch.dtype, T: int, B: int, H: int, R: int, *,
              proj: bool = False, mask: MaskMode = MaskMode.NONE, lengths: bool = False,
              reverse: bool = False, norm: NormMode = NormMode.NONE, requires_grad: bool = False,
              zoneout: bool = False, arch: Optional[str] = None, cell: CellKind = CellKind.LSTM) -> "Config":
        """The constructor from plain facts: a recurrence on ``device`` (a device type will do
        with ``arch`` given: the GPU class, "sm_90", which is otherwise asked of the device)."""
        device = torch.device(device)
        return Config(device_type=device.type, dtype=dtype, T=T, B=B, H=H, R=R, proj=bool(proj),
                      mask=MaskMode(mask), lengths=bool(lengths), reverse=bool(reverse), norm=NormMode(norm),
                      requires_grad=bool(requires_grad), arch=device_arch(device) if arch is None else arch,
                      zoneout=bool(zoneout), cell=CellKind(cell))

    @staticmethod
    def of(xp: Tensor, h0: Tensor, c0: Optional[Tensor], w_hh: Tensor, w_hr: Optional[Tensor],
           mask: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, norm: Optional[Norm],
           zoneout: Optional[Zoneout] = None, cell: CellKind = CellKind.LSTM,
           b_hh: Optional[Tensor] = None) -> "Config":
        """The configuration of the recurrence op's arguments (xp [T, B, G], w_hh [G, R])."""
        T, B, G = xp.shape
        return Config.build(xp.device, xp.dtype, T, B, G // CellKind(cell).gates, w_hh.shape[1],
                            proj=w_hr is not None, mask=MaskMode.of(mask), lengths=lengths is not None,
                            reverse=reverse, norm=NormMode.of(norm),
                            requires_grad=needs_grad((xp, h0, c0, w_hh, w_hr, b_hh), norm),
                            zoneout=zoneout is not None, cell=cell)


def needs_grad(tensors: tuple, norm: Optional[Norm] = None) -> bool:
    """Whether autograd will differentiate a call on these tensors and the norm's parameters:
    grad mode on and one of them requires grad."""
    if not torch.is_grad_enabled():
        return False
    if norm is not None:
        tensors = tensors + tuple(getattr(norm, f.name) for f in dataclasses.fields(norm)
                                  if f.name.startswith(("weight_", "bias_")))
    return any(t is not None and t.requires_grad for t in tensors)


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run here or cannot serve this configuration."""


class Backend:
    """What a backend implements for the layer op and the cell op.  Subclasses override
    what they implement; every method gets the :class:`Config` the op built once."""

    name: str = "?"
    # Under autocast the recurrence may run in the 16-bit autocast dtype: the backend keeps
    # its cell state and accumulation in float32 (else the op runs it in float32).
    autocast_native: bool = False
    # The cells the backend has kernels for, and why not the others (the decision checks it
    # before asking unsupported_reason).
    cells: tuple = (CellKind.LSTM,)
    cells_note: str = ""

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        """None if the backend can run on ``device``, else why not."""
        return None

    def unsupported_reason(self, cfg: Config) -> Optional[str]:
        """None if the backend can run this recurrence, else why not.

        Must not depend on ``cfg.T``: under torch.compile one traced decision serves every
        sequence length (see :mod:`fusedrnn.ops.decision`)."""
        return None

    def recurrence(self, cfg: Config, xp: Tensor, h0: Tensor, c0: Optional[Tensor], w_hh: Tensor,
                   w_hr: Optional[Tensor], mask: Optional[Tensor], lengths: Optional[Tensor],
                   norm: Optional[Norm], zoneout: Optional[Zoneout] = None,
                   b_hh: Optional[Tensor] = None) -> RecurrenceResult:
        """The recurrence (module docstring) on xp [T, B, G]; cfg.cell, cfg.reverse, cfg.mask,
        cfg.norm and cfg.zoneout say the cell, the direction and the modes.  A GRU has no c0
        and no w_hr, and takes b_hh [3H] (LN_h's bias included), which an LSTM has in xp."""
        raise NotImplementedError

    def project(self, cfg: Config, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The input projection x [T, B, I] @ weight^T [I, G] (+ bias [G]) -> [T, B, G], one
        GEMM over all steps.  Default: F.linear (torch's GEMM)."""
        return torch.nn.functional.linear(x, weight, bias)

    def input_norm(self, cfg: Config, xw: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor],
                   bn: RecurrentBN, slots: Tensor) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """BN_x of the input projection xw = x @ W_ih^T [T, B, G] (time order), plus bias:
        per-step statistics over the rows active at each step s (the row's reversed position
        when cfg.reverse); eval uses the running statistics of ``slots`` [T].  Returns
        (xp, mean [T, G], biased var [T, G]); the statistics only in training."""
        raise NotImplementedError

    def cell_unsupported_reason(self, cfg: Config) -> Optional[str]:
        """None if :meth:`cell` can run this configuration (T = 1), else why not."""
        return None

    def describe(self, cfg: Config, device: torch.device) -> Optional[str]:
        """What design the recurrence would run for this configuration (explain() prints it)."""
        return None

    def fingerprint(self) -> Optional[str]:
        """What a GPU validation of this backend vouches for: a digest of its kernel sources and
        the compiler that builds them.  A validation recorded with another fingerprint does not
        count (the kernels changed since).  None: nothing GPU-specific to validate."""
        return None

    def cell(self, gates: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
        """The pointwise LSTM cell step: gates [B, G] pre-activations, cx [B, H] -> (hy, cy)."""
        raise NotImplementedError


# ---- the indexing of the semantics (shared by the reference backend and the layer op) -------


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


__all__ = ["Backend", "BackendError", "BatchStats", "CellKind", "Config", "MaskMode", "Norm", "NormMode", "RecurrenceResult",
           "RecurrentBN", "RecurrentLN", "Zoneout", "acc_dtype", "active_rows", "needs_grad",
           "reverse_sequences", "step_counts"]
