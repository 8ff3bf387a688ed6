"""What :class:`fusedrnn.LSTM` and :class:`fusedrnn.GRU` share: one module pipeline for either
cell (torch's arguments and checks, PackedSequence / ``lengths=`` / unbatched inputs, the
decision, the layers and directions, between-layer dropout), with the cell's own parts as
hooks (its torch class, its states, its layer op).

Dimension letters: T steps, B batch, I input, H hidden, P proj_size (LSTM only), R = P or H,
L num_layers, D = 2 if bidirectional else 1, G = 4H (LSTM) or 3H (GRU).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import ops
from ..ops.dropout import drop_connect, dropout_mask, recurrent_mask, zoneout_weights
from .regularizers import RegularizedMixin, take_options


def _packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PackedSequence data [N, F] -> (padded [T, B, F] time-major, lengths [B], index [N]).

    ``index`` maps each packed row to its row of the padded tensor viewed as [T * B, F];
    it packs an output back with ``out.reshape(T * B, -1)[index]``.  Differentiable.
    """
    bs = batch_sizes.to("cpu", torch.int64)
    T, B = bs.numel(), int(bs[0])
    t = torch.arange(T).repeat_interleave(bs)
    offsets = torch.cumsum(bs, 0) - bs
    b = torch.arange(bs.sum()) - offsets.repeat_interleave(bs)
    index = (t * B + b).to(data.device)
    padded = data.new_zeros(T * B, data.shape[1]).index_copy(0, index, data)
    lengths = (bs.unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)
    return padded.view(T, B, -1), lengths.to(data.device), index


def _check_batch_sizes(data: Tensor, batch_sizes: Tensor) -> None:
    """A PackedSequence's batch_sizes: a non-empty CPU int64 vector of positive,
    non-increasing counts that sum to the number of packed rows (pack_padded_sequence and
    pack_sequence make nothing else; anything else would index out of range or silently
    mix rows)."""
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise RuntimeError("PackedSequence batch_sizes must be a 1-D int64 CPU tensor, got "
                           f"{batch_sizes.dtype} of shape {tuple(batch_sizes.shape)} on {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN (the PackedSequence "
                           "has no steps: batch_sizes is empty)")
    if torch.compiler.is_compiling():
        return
    if int(batch_sizes.min()) < 1:
        raise RuntimeError("PackedSequence batch_sizes must be positive (every sequence has length "
                           f">= 1), got {batch_sizes.tolist()}")
    if batch_sizes.numel() > 1 and bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError("PackedSequence batch_sizes must be non-increasing (sequences sorted by "
                           f"decreasing length), got {batch_sizes.tolist()}")
    if data.dim() >= 1 and int(batch_sizes.sum()) != data.shape[0]:
        raise RuntimeError(f"PackedSequence batch_sizes sum to {int(batch_sizes.sum())} but data has "
                           f"{data.shape[0]} rows")


def torch_forward_padded(module: nn.RNNBase, input: Tensor, hx, lengths: Tensor, torch_class=None):
    """``lengths=`` on torch's own forward (for a fused module on the "aten" path, or a torch
    LSTM / GRU standing in for one; ``torch_class`` the torch class whose forward runs, by
    default the module's): pack, run, pad back (zeros past each length).  A zero length is
    given one step, and its outputs and state are then masked back to the initial state."""
    cls = torch_class or module._torch_class
    bf = module.batch_first
    T = input.shape[1] if bf else input.shape[0]
    packed = pack_padded_sequence(input, lengths.clamp(min=1).cpu(), batch_first=bf, enforce_sorted=False)
    out, hidden = cls.forward(module, packed, hx)
    y, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
    empty = lengths == 0
    if bool(empty.any()):
        B = lengths.shape[0]
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        given = hx if isinstance(hx, tuple) else ((hx,) if hx is not None else None)
        init = given if given is not None else tuple(torch.zeros_like(s) for s in states)
        keep = empty.to(y.device).view(1, B, 1)
        states = tuple(torch.where(keep, s0, s) for s0, s in zip(init, states))
        hidden = states if isinstance(hidden, tuple) else states[0]
        y = y.masked_fill(keep.view(B, 1, 1) if bf else keep, 0)
    return y, hidden


class FusedRNN(RegularizedMixin, nn.RNNBase):
    """The pipeline of a fused multi-layer RNN module; subclasses say which cell.

    Class attributes of a subclass: ``_cell`` (ops.CellKind), ``_torch_class`` (torch's own
    module class: its forward on the "aten" path, its argument checks), ``_mode`` (nn.RNNBase's
    mode string).  States: a tuple of [L * D, B, width] tensors inside (LSTM (h, c), GRU (h,)).
    """

    _cell: ops.CellKind
    _torch_class: type
    _mode: str

    def __init__(self, *args, **kwargs):
        options = take_options(kwargs, self._mode)  # the fusedrnn options; the rest are torch's
        super().__init__(self._mode, *args, **kwargs)
        self._init_regularizers(**options)
        factory_kwargs = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        for suffix in self._suffixes():
            if self.batch_norm:
                self._add_bn(suffix, self.hidden_size, factory_kwargs)
            if self.layer_norm:
                self._add_ln(suffix, self.hidden_size, factory_kwargs)

    def _suffixes(self) -> list[str]:
        D = 2 if self.bidirectional else 1
        return [f"_l{layer}{'_reverse' if d else ''}" for layer in range(self.num_layers) for d in range(D)]

    def reset_parameters(self) -> None:
        """torch's initialization of the weights (same draws, same order); BN gammas 0.1."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for name in self._flat_weights_names:
            nn.init.uniform_(getattr(self, name), -stdv, stdv)
        for suffix in self._suffixes():
            if getattr(self, "batch_norm", False):
                self._reset_bn(suffix)
            if getattr(self, "layer_norm", False):
                self._reset_ln(suffix)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._regularizer_repr()

    def _needs_grad(self, ref: Tensor) -> bool:
        return torch.is_grad_enabled() and (ref.requires_grad or self._flat_weights[1].requires_grad)

    def _batch_size(self, input) -> int:
        if isinstance(input, PackedSequence):
            return int(input.batch_sizes[0]) if input.batch_sizes.numel() else 0
        if input.dim() != 3:
            return 1
        return input.shape[0] if self.batch_first else input.shape[1]

    def _width(self) -> int:
        """R: the width of h."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def decide(self, input, lengths: Optional[Tensor] = None) -> ops.Decision:
        """What runs a forward on ``input`` in the current mode (:mod:`fusedrnn.ops.decision`):
        torch's own module, or the backend and dtype every layer runs in.  Made once per call."""
        ref = input.data if isinstance(input, PackedSequence) else input
        return ops.decide_module(
            "rnn", "recurrence", self.backend, ref.device, ref.dtype, ops.autocast_dtype(ref), self.regularized(),
            self.training, self._needs_grad(ref), self._batch_size(input), self.hidden_size, self._width(),
            self.proj_size > 0, self._mask_mode(), self._norm_mode(),
            lengths is not None or isinstance(input, PackedSequence), self.zoneout_active(), self._cell)

    # ---- the cell's parts ------------------------------------------------------------------

    def _split_hx(self, hx, is_batched: bool, packed: bool):
        """The given initial state as a tuple of tensors, checked as torch's module checks it
        (count, and rank unless the input is packed) and given a batch dimension when the
        input has none."""
        raise NotImplementedError

    def _state_widths(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _outputs(self, states: tuple[Tensor, ...]):
        """The final states as torch's module returns them."""
        raise NotImplementedError

    def _run_layer(self, x, states0, weights, mask, lengths, reverse, norm, zoneout, decision):
        """One layer and direction: (y [T, B, R], final states as a tuple)."""
        raise NotImplementedError

    # ---- the pipeline ----------------------------------------------------------------------

    def forward(self, input, hx=None, *, lengths: Optional[Tensor] = None):
        """See the class docstring for shapes.  ``lengths`` (fusedrnn only): see there."""
        name = type(self).__name__
        if not isinstance(input, (Tensor, PackedSequence)):
            raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if lengths is not None:
            lengths = self._check_lengths(input, lengths)
        if ops.exporting():
            self.check_exportable()
        decision = self.decide(input, lengths)  # every call pays this: plain reads, one cached decision
        if decision.aten:
            if lengths is not None:
                return torch_forward_padded(self, input, hx, lengths)
            return self._torch_class.forward(self, input, hx)
        autocast = decision.autocast is not None
        if not ops.exporting():  # under export the weights are read as attributes (_layer_weights)
            self._update_flat_weights()
        orig_input = input
        num_directions = 2 if self.bidirectional else 1
        index = batch_sizes = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            _check_batch_sizes(input, batch_sizes)
            is_batched = True
            max_batch_size = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = unsorted_indices = None
        states = self._split_hx(hx, is_batched, batch_sizes is not None) if hx is not None else None
        if states is None:
            kw = {"dtype": input.dtype, "device": input.device}
            L = self.num_layers * num_directions
            states = tuple(torch.zeros(L, max_batch_size, w, **kw) for w in self._state_widths())
            self.check_forward_args(input, self._as_torch_hidden(states), batch_sizes)
        else:
            self.check_forward_args(input, self._as_torch_hidden(states), batch_sizes)
            self._check_devices_and_dtypes(input, states, autocast)
            states = self._as_tuple(self.permute_hidden(self._as_torch_hidden(states), sorted_indices))
        if input.device != self.weight_ih_l0.device:
            raise RuntimeError("Input and parameter tensors are not at the same device, found input "
                               f"tensor at {input.device} and parameter tensor at {self.weight_ih_l0.device}")
        if batch_sizes is not None:
            x, lengths, index = _packed_to_padded(input, batch_sizes)
        elif lengths is not None:
            x = input.transpose(0, 1) if self.batch_first else input
            lengths = lengths.to(x.device)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            if x.shape[0] == 0:  # torch's error for an empty sequence
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        self._check_bn_batch(max_batch_size)

        output, finals = self._layers(x, states, lengths, decision.check())

        if index is not None:
            T, B = x.shape[0], x.shape[1]
            packed = PackedSequence(output.reshape(T * B, -1)[index], batch_sizes,
                                    sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(self._outputs(finals), unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:  # the batch dimension the input was given (as torch's module)
            output = output.squeeze(0 if self.batch_first else 1)
            finals = tuple(s.squeeze(1) for s in finals)
        return output, self._outputs(finals)

    def _as_torch_hidden(self, states: tuple):
        return states if len(states) > 1 else states[0]

    @staticmethod
    def _as_tuple(hidden) -> tuple:
        return hidden if isinstance(hidden, tuple) else (hidden,)

    def _check_lengths(self, input, lengths) -> Tensor:
        """``lengths=`` goes with a batched padded tensor: an integer [B] tensor of values in
        [0, T] (checked where that costs no device sync)."""
        if isinstance(input, PackedSequence) or input.dim() != 3:
            raise ValueError("lengths= goes with a batched (3-D) padded input tensor, not "
                             f"{'a PackedSequence' if isinstance(input, PackedSequence) else f'{input.dim()}-D input'}")
        if not isinstance(lengths, Tensor) or lengths.dtype not in (torch.int64, torch.int32) or lengths.dim() != 1:
            raise ValueError("lengths must be a 1-D int64 tensor of sequence lengths, got "
                             f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
        T, B = (input.shape[1], input.shape[0]) if self.batch_first else input.shape[:2]
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must have one entry per sequence (B = {B}), got {lengths.shape[0]}")
        if lengths.device.type == "cpu" and B > 0 and not torch.compiler.is_compiling():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 0 or hi > T:
                raise ValueError(f"lengths must lie in [0, T = {T}], got values in [{lo}, {hi}]")
        return lengths.long()

    def _check_devices_and_dtypes(self, input: Tensor, states: tuple, autocast: bool) -> None:
        """The initial states on the input's device (torch's message) and, outside autocast, in
        its dtype (torch fails in its kernel; the reference would silently promote)."""
        names = ("h_0", "c_0")
        for i, h in enumerate(states):
            if h.device != input.device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found input "
                                   f"tensor at {input.device} and hidden tensor at {h.device}")
            if not autocast and h.dtype != input.dtype:
                raise RuntimeError(f"hx[{i}] ({names[i]}) must have the dtype of "
                                   f"the input ({input.dtype}), got {h.dtype}")

    def _layer_weights(self, k: int) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        n = len(self._all_weights[0])
        if ops.exporting():  # no attribute assignment inside an exported forward
            w = [getattr(self, name) for name in self._flat_weights_names[k * n:(k + 1) * n]]
        else:
            w = self._flat_weights[k * n:(k + 1) * n]
        w_ih, w_hh = w[0], w[1]
        b_ih = w[2] if self.bias else None
        b_hh = w[3] if self.bias else None
        w_hr = w[-1] if self.proj_size > 0 else None
        return w_ih, w_hh, b_ih, b_hh, w_hr

    def _layers(self, x: Tensor, states: tuple, lengths: Optional[Tensor], decision: ops.Decision):
        """Run every layer and direction on x [T, B, I] as decided; returns (y [T, B, D*R], the
        final states as a tuple of [L * D, B, width])."""
        T, B = x.shape[0], x.shape[1]
        D = 2 if self.bidirectional else 1
        R = self._width()
        p_rec = self.recurrent_dropout if self.training else 0.0
        p_w = self.weight_dropout if self.training else 0.0
        zoneout = self.zoneout_rates() if self.zoneout_active() else None
        suffixes = self._suffixes()
        layer_input = x
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                mask = (recurrent_mask(p_rec, T, B, R, x, shared=self.variational)
                        if p_rec > 0 else None)
                zo = (zoneout_weights(zoneout, T, B, self.hidden_size, R, x, self.training, self._cell)
                      if zoneout is not None else None)
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_weights(k)
                if p_w > 0:  # DropConnect: one mask over W_hh's elements for this call
                    w_hh = drop_connect(p_w, w_hh)
                y, ends = self._run_layer(layer_input, tuple(s[k] for s in states), (w_ih, w_hh, b_ih, b_hh, w_hr),
                                          mask, lengths, d == 1, self._norm_state(suffixes[k]), zo, decision)
                outs.append(y)
                for f, e in zip(finals, ends):
                    f.append(e)
            layer_input = outs[0] if D == 1 else torch.cat(outs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                if self.variational:
                    layer_input = layer_input * dropout_mask(self.dropout, (B, layer_input.shape[2]), x)
                else:
                    layer_input = F.dropout(layer_input, self.dropout, True)
        return layer_input, tuple(torch.stack(f) for f in finals)

    def layer_configs(self, input) -> list[tuple[str, ops.Config]]:
        """(parameter suffix, recurrence Config) of every layer and direction for an input."""
        if isinstance(input, PackedSequence):
            T, B, lengths = len(input.batch_sizes), int(input.batch_sizes[0]), True
            ref = input.data
        else:
            ref = input
            if input.dim() == 2:
                T, B = input.shape[0], 1
            else:
                T, B = (input.shape[1], input.shape[0]) if self.batch_first else input.shape[:2]
            lengths = False
        return [(suffix, ops.Config.build(ref.device, ref.dtype, T, B, self.hidden_size, self._width(),
                                          proj=self.proj_size > 0, mask=self._mask_mode(), lengths=lengths,
                                          reverse=suffix.endswith("_reverse"), norm=self._norm_mode(),
                                          requires_grad=self._needs_grad(ref), zoneout=self.zoneout_active(),
                                          cell=self._cell))
                for suffix in self._suffixes()]


__all__ = ["FusedRNN", "torch_forward_padded"]
