"""fusedrnn.LSTMCell and fusedrnn.GRUCell: drop-in torch.nn.LSTMCell / nn.GRUCell that step
one time step at a time with the regularizers of the sequence modules, and the state a cell
holds per sequence (masks, batch norm's step index) with the rule that finds where a
sequence starts (:class:`SequenceCell`).

Dimension letters: B batch, I input, H hidden, G = 4H (LSTM) or 3H (GRU).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..ops.dropout import dropout_mask, weight_mask, zoneout_weights
from ._torch import TorchGRUCell, TorchLSTMCell
from .regularizers import RegularizedMixin, check_option_names, take_options


class SequenceCell(RegularizedMixin):
    """What LSTMCell and GRUCell share: the options, the per-sequence state, the boundary rule
    and the step's pipeline.  A subclass gives ``_cell``, ``_torch_class``, ``_name`` and its
    states (:meth:`_split_hx`, :meth:`_run_step`, :meth:`_outputs`)."""

    _torch_class: type
    _name: str

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, **options):
        check_option_names(options, self._name)
        options = take_options(options, self._name)
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)  # torch's cell
        self._init_cell(options, hidden_size, device, dtype)

    def _init_cell(self, options: dict, hidden_size: int, device, dtype) -> None:
        self._init_regularizers(**options)
        if self.batch_norm:
            self._add_bn("", hidden_size, {"device": device, "dtype": dtype})
        if self.layer_norm:
            self._add_ln("", hidden_size, {"device": device, "dtype": dtype})
        self._mask: Optional[Tensor] = None
        self._weight_mask: Optional[Tensor] = None
        self._step = 0
        self._last: Optional[tuple] = None  # the state returned last: (its tensors, their autograd nodes)

    def reset_parameters(self) -> None:
        """torch's initialization of the cell (same draws, same order); BN gammas 0.1."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if w is not None:
                nn.init.uniform_(w, -stdv, stdv)
        if getattr(self, "batch_norm", False):
            self._reset_bn("")
        if getattr(self, "layer_norm", False):
            self._reset_ln("")

    def extra_repr(self) -> str:
        return super().extra_repr() + self._regularizer_repr()

    def reset(self) -> None:
        """Start a new sequence: forget the held dropout masks and restart the BN step count."""
        self._mask = None
        self._weight_mask = None
        self._step = 0
        self._last = None

    def __getstate__(self):
        """Pickling (torch.save of a whole model, copy.deepcopy) leaves out the last returned
        state: it holds autograd nodes, and a restored cell starts a new sequence anyway."""
        state = super().__getstate__()
        state["_last"] = None
        return state

    def train(self, mode: bool = True):
        """As nn.Module.train; switching between training and eval starts a new sequence."""
        if mode != self.training:
            self.reset()
        return super().train(mode)

    def holds_sequence_state(self) -> bool:
        """Whether a step in the current mode depends on where its sequence started: batch
        norm's step counter, or (in training) a held variational or weight-dropout mask."""
        return self.batch_norm or (self.training and (
            (self.variational and self.recurrent_dropout > 0) or self.weight_dropout > 0))

    def _continues(self, states) -> bool:
        """Whether the given states descend from the states this cell returned last (the
        boundary rule in LSTMCell's docstring)."""
        if torch.compiler.is_compiling():
            return states is not None
        if states is None or self._last is None:
            return False
        lasts, nodes = self._last
        given = [t for t in states if isinstance(t, Tensor)]
        if any(_same_storage(t, last) for t in given for last in lasts):
            return True
        if any(t.grad_fn is not None for t in given):
            return _descends(given, nodes)
        return any(_shares_a_row(t, last) for t, last in zip(given, lasts))

    def sample_mask(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        """A fresh [batch_size, H] recurrent dropout mask (scaled by 1 / (1 - p))."""
        like = torch.empty(0, device=device or self.weight_hh.device, dtype=dtype or self.weight_hh.dtype)
        return dropout_mask(self.recurrent_dropout, (batch_size, self.hidden_size), like)

    def decide(self, input: Tensor, mask: Optional[Tensor] = None) -> ops.Decision:
        """What runs a step on ``input`` in the current mode (:mod:`fusedrnn.ops.decision`)."""
        B = input.shape[0] if input.dim() == 2 else 1
        masked = mask is not None or self._mask_mode() != ops.MaskMode.NONE  # a cell's mask is [B, H]
        layer_op = self.batch_norm or self.layer_norm or self.zoneout_active() or self._cell == ops.CellKind.GRU
        return ops.decide_module(
            "cell", "recurrence" if layer_op else "cell", self.backend, input.device, input.dtype,
            ops.autocast_dtype(input), self.regularized(mask), self.training, False, B, self.hidden_size,
            self.hidden_size, False, ops.MaskMode.SHARED if masked else ops.MaskMode.NONE, self._norm_mode(), False,
            self.zoneout_active(), self._cell)

    # ---- the cell's parts ------------------------------------------------------------------

    def _split_hx(self, hx) -> Optional[tuple]:
        """The given state as a tuple of tensors (checked as torch's cell checks it), or None."""
        raise NotImplementedError

    def _run_step(self, input, states, weight_hh, mask, norm, zoneout, decision) -> tuple:
        raise NotImplementedError

    def _outputs(self, states: tuple):
        raise NotImplementedError

    # ---- the pipeline ----------------------------------------------------------------------

    def forward(self, input: Tensor, hx=None, *, mask: Optional[Tensor] = None, step: Optional[int] = None):
        """One step; see the class docstring."""
        name = self._name
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if ops.exporting():
            self.check_exportable(mask)
        decision = self.decide(input, mask)  # every call pays this: plain reads, one cached decision
        if decision.aten:
            return self._torch_class.forward(self, input, hx)  # torch's own cell (fusedrnn.ops.decision)
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = self._split_hx(hx)
        if self.holds_sequence_state() and not self._continues(states):
            self.reset()
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if states is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = (zeros,) * len(self._state_names)
        elif not is_batched:
            states = tuple(s.unsqueeze(0) for s in states)
        self._check_args(input, states)
        B = input.size(0)
        self._check_bn_batch(B)

        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise ValueError(f"step must be an integer >= 0 (the batch-norm step index), got {step!r}")
        if mask is not None:
            if not isinstance(mask, Tensor):
                raise TypeError(f"mask must be a Tensor, got {type(mask).__name__}")
            if mask.dim() == 1 and not is_batched:
                mask = mask.unsqueeze(0)
            if mask.shape != (B, self.hidden_size):
                raise ValueError(f"mask must have shape {(B, self.hidden_size)}, got {tuple(mask.shape)}")
        elif self.training and self.recurrent_dropout > 0:
            if not self.variational:
                mask = self.sample_mask(B, device=input.device, dtype=input.dtype)
            else:
                if self._mask is None or self._mask.shape[0] != B or self._mask.device != input.device:
                    self._mask = self.sample_mask(B, device=input.device, dtype=input.dtype)
                mask = self._mask
        norm = self._norm_state("", step_offset=self._step if step is None else int(step))
        if self.batch_norm and step is None:
            self._step += 1
        weight_hh = self.weight_hh
        if self.training and self.weight_dropout > 0:
            wm = self._weight_mask
            if wm is None or wm.device != weight_hh.device or wm.dtype != weight_hh.dtype:
                wm = self._weight_mask = weight_mask(self.weight_dropout, weight_hh.shape, weight_hh)
            weight_hh = weight_hh * wm
        zo = None
        if self.zoneout_active():
            z = zoneout_weights(self.zoneout_rates(), 1, B, self.hidden_size, self.hidden_size, input, self.training,
                                self._cell)
            zo = ops.Zoneout(None if z.c is None else z.c[0], z.h[0])
        out = self._run_step(input, states, weight_hh, mask, norm, zo, decision.check())
        if not is_batched:
            out = tuple(t.squeeze(0) for t in out)
        if self.holds_sequence_state() and not torch.compiler.is_compiling():
            self._last = (tuple(t.detach() for t in out), tuple(t.grad_fn for t in out if t.grad_fn is not None))
        return self._outputs(out)

    def _check_args(self, input: Tensor, states: tuple) -> None:
        """torch's cell size checks (raised by ATen there), with its messages."""
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        for i, h in enumerate(states):
            if input.size(0) != h.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}"
                )
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}"
                )
        if input.device != self.weight_ih.device:
            raise RuntimeError("Input and parameter tensors are not at the same device, found input "
                               f"tensor at {input.device} and parameter tensor at {self.weight_ih.device}")
        autocast = ops.autocast_dtype(input) is not None
        if input.dtype != self.weight_ih.dtype and not autocast:
            raise RuntimeError(  # torch's cell fails in its GEMM with a RuntimeError
                f"{self._name} input dtype ({input.dtype}) does not match weight dtype ({self.weight_ih.dtype})"
            )
        for i, h in enumerate(states):
            if h.device != input.device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found input "
                                   f"tensor at {input.device} and hidden tensor at {h.device}")
            if h.dtype != input.dtype and not autocast:
                raise RuntimeError(f"hx[{i}] ({self._state_names[i]}) must have the dtype of the "
                                   f"input ({input.dtype}), got {h.dtype}")


class LSTMCell(SequenceCell, TorchLSTMCell):
    r"""Drop-in replacement for :class:`torch.nn.LSTMCell` (and a subclass of it).

    Args:
        input_size, hidden_size, bias, device, dtype: as :class:`torch.nn.LSTMCell`.

    Keyword-only options: recurrent_dropout, variational, batch_norm, bn_max_steps,
    bn_momentum, bn_eps, zoneout, layer_norm, weight_dropout, recompute, backend, as
    :class:`fusedrnn.LSTM` (and, like it, defaulting to an active :func:`fusedrnn.patch`'s
    values).  Zoneout draws fresh weights at every step (its definition); recompute rebuilds
    each step's normalised W_hh h in that step's backward.

    A decoder steps the cell through a sequence, so the cell carries per-sequence state (the
    same for :class:`GRUCell`):

    - the recurrent dropout mask.  With ``variational=True`` the cell draws a [B, H]
      mask on the first training step of a sequence and reuses it on its later steps (a new
      one is drawn if the batch size changes).  With ``variational=False`` every step draws
      a fresh mask.  ``forward(..., mask=m)`` uses an explicit mask instead (m of shape
      [B, H] scaled by 1 / (1 - p), e.g. from :meth:`sample_mask`).
    - the step counter of batch norm, which selects the per-step statistics.  It starts
      at 0 with each sequence, counts calls, and can be overridden with ``forward(..., step=t)``.
    - the weight-dropout mask of W_hh ([4H, H]), drawn on the first training step of a
      sequence and reused on its later steps, as the LSTM uses one per sequence.

    Where a sequence starts (the boundary rule; code that cannot call :meth:`reset`, such as
    a third-party loop under :func:`fusedrnn.patch`, relies on it):

    - :meth:`reset`, ``hx=None``, and a switch between train() and eval() start one;
    - otherwise a call continues the sequence exactly when the state it is given descends
      from the state the cell returned last: the same tensors or views of them (``detach()``
      included: truncated BPTT continues), tensors autograd records as computed from them
      (``index_select`` for beam search, ``torch.where`` for finished rows, ``clone``), or,
      with no autograd record (under ``no_grad``), a state with a row equal to a row the cell
      returned (beam search in eval).  A fresh zero state, an encoder's state handed to a
      decoder, or another module's state start a new sequence.
    - under torch.compile only :meth:`reset`, ``hx=None`` and the mode switch start one.

    A cell without per-sequence state (no batch norm; in training no variational recurrent
    dropout and no weight dropout) skips the rule.  ``fusedrnn.explain`` says which applies.

    Inputs: input [B, I] or [I], (h_0 [B, H] or [H], c_0 likewise; zeros when omitted).
    Outputs: (h_1, c_1), shaped as h_0.
    """

    _cell = ops.CellKind.LSTM
    _torch_class = TorchLSTMCell
    _name = "LSTMCell"
    _state_names = ("h_0", "c_0")

    def _split_hx(self, hx):
        if hx is None:
            return None
        if len(hx) != 2:
            raise RuntimeError("lstm_cell expects two hidden states")
        for idx, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        return tuple(hx)

    def _run_step(self, input, states, weight_hh, mask, norm, zoneout, decision):
        return ops.lstm_cell(input, states[0], states[1], self.weight_ih, weight_hh, self.bias_ih, self.bias_hh,
                             mask=mask, norm=norm, zoneout=zoneout, backend=decision)

    def _outputs(self, states):
        return states[0], states[1]


class GRUCell(SequenceCell, TorchGRUCell):
    r"""Drop-in replacement for :class:`torch.nn.GRUCell` (and a subclass of it).

    Args:
        input_size, hidden_size, bias, device, dtype: as :class:`torch.nn.GRUCell`.

    Keyword-only options: recurrent_dropout, variational, batch_norm, bn_max_steps,
    bn_momentum, bn_eps, zoneout (one rate), layer_norm, weight_dropout, recompute, backend,
    with the semantics of :class:`fusedrnn.GRU` and the per-sequence state and boundary rule
    of :class:`fusedrnn.LSTMCell` (``reset()``, ``mask=``, ``step=``).

    Inputs: input [B, I] or [I], h_0 [B, H] or [H] (zeros when omitted).
    Outputs: h_1, shaped as h_0.
    """

    _cell = ops.CellKind.GRU
    _torch_class = TorchGRUCell
    _name = "GRUCell"
    _state_names = ("h_0",)

    def _split_hx(self, hx):
        if hx is None:
            return None
        if not isinstance(hx, Tensor):
            raise TypeError(f"GRUCell: hx must be a Tensor, got {type(hx).__name__}")
        if hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        return (hx,)

    def _run_step(self, input, states, weight_hh, mask, norm, zoneout, decision):
        hy = ops.gru_cell(input, states[0], self.weight_ih, weight_hh, self.bias_ih, self.bias_hh, mask=mask,
                          norm=norm, zoneout=None if zoneout is None else zoneout.h, backend=decision)
        return (hy,)

    def _outputs(self, states):
        return states[0]


def _same_storage(a: Tensor, b: Tensor) -> bool:
    """a and b are views of one storage (the tensor itself, a view, a detach())."""
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


_SEARCH_NODES = 64  # how much of the given state's autograd history the rule reads at most


def _descends(given: list, nodes: tuple) -> bool:
    """Whether autograd records one of ``given`` as computed from the nodes that produced
    the cell's last state (a breadth-first walk of at most _SEARCH_NODES nodes)."""
    if not nodes:
        return False
    queue = [t.grad_fn for t in given if t.grad_fn is not None]
    seen = set()
    while queue and len(seen) < _SEARCH_NODES:
        node = queue.pop(0)
        if node is None or node in seen:
            continue
        if any(node is n for n in nodes):
            return True
        seen.add(node)
        queue.extend(nxt for nxt, _ in node.next_functions)
    return False


def _shares_a_row(given: Tensor, last: Tensor) -> bool:
    """Whether a row of ``given`` equals a row of ``last`` bit for bit (beam search reorders
    rows of the cell's own state under no_grad): rows compared by an exact integer
    fingerprint of their bits; one device sync."""
    if given.dtype != last.dtype or given.device != last.device or given.shape[-1] != last.shape[-1]:
        return False
    if not given.numel() or not last.numel():
        return False
    return bool(torch.isin(_fingerprint(given), _fingerprint(last)).any())


_INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _fingerprint(t: Tensor) -> Tensor:
    """[rows] int64: a weighted sum of each row's bit patterns, exact (integer arithmetic
    wraps, in any order) so that equal rows give equal fingerprints."""
    bits = t.reshape(-1, t.shape[-1]).contiguous().view(_INT_OF[t.element_size()]).to(torch.int64)
    weights = torch.arange(1, 2 * t.shape[-1], 2, device=t.device, dtype=torch.int64)
    return (bits * weights).sum(-1)
