"""fusedrnn.LSTM: a drop-in torch.nn.LSTM whose layers run on fused kernels, with optional
recurrent dropout (naive or variational), recurrent batch norm, layer norm, zoneout and
weight dropout (the pipeline it shares with fusedrnn.GRU: fusedrnn/modules/rnn.py).

Dimension letters: T steps, B batch, I input, H hidden, P proj_size, R = P or H,
L num_layers, D = 2 if bidirectional else 1, G = 4H.
"""

from __future__ import annotations

from torch import Tensor

from .. import ops
from ._torch import TorchLSTM
from .rnn import FusedRNN, torch_forward_padded  # noqa: F401  (torch_forward_padded: bench's import)


class LSTM(FusedRNN):
    r"""Drop-in replacement for :class:`torch.nn.LSTM`, on fused kernels.

    With only nn.LSTM arguments it *is* nn.LSTM: the same constructor, initialization
    (same draws from the generator), parameter names and order, inputs, outputs and
    errors; a state_dict moves both ways unchanged.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        proj_size, device, dtype: as :class:`torch.nn.LSTM`.

    Keyword-only options (all off by default; while a :func:`fusedrnn.patch` is active, an
    option not given takes the patch's value):
        recurrent_dropout (float in [0, 1)): dropout on h_{t-1} where it enters W_hh
            (the emitted h_t is not masked).
        variational (bool): every dropout mask of the module (between-layer ``dropout``
            and ``recurrent_dropout``) is drawn once per sequence, shape [B, features],
            and reused at every step (Gal & Ghahramani).  False: between-layer dropout as
            nn.LSTM, recurrent dropout a fresh mask at every step.
        batch_norm (bool): recurrent batch norm (Cooijmans et al.):
            gates = BN_h(W_hh h) + BN_x(W_ih x) + b,  h = o * tanh(BN_c(c)), per-step
            batch statistics, gammas 0.1; running statistics per step for
            t < bn_max_steps (eval uses slot min(t, bn_max_steps - 1)).
        bn_max_steps (int), bn_momentum (float), bn_eps (float): batch-norm settings.
        zoneout (float or (float, float)): the (cell, hidden) zoneout rates (Krueger et al.):
            in training each unit keeps its previous c (h) with that probability, drawn
            fresh at every step per unit and sequence; in eval the expectation
            c_t = z_c c_{t-1} + (1 - z_c) c~_t (likewise h).  A float sets both.
        layer_norm (bool): the LayerNorm LSTM (Ba et al.): LayerNorm over the 4H gate
            pre-activations of W_ih x and of W_hh h separately and over c before the output
            tanh, each with its own gain (1) and bias (0); the LSTM bias is added after.
            No batch statistics (train = eval).  Not with batch_norm.
        weight_dropout (float): DropConnect on W_hh (Wan et al.; awd-lstm-lm's WeightDrop):
            one Bernoulli mask over W_hh's elements per forward call, shared by every step
            and sequence, scaled by 1 / (1 - p), in training only; the parameters (and the
            state_dict) stay unmasked.
        recompute (bool): with batch_norm or layer_norm, trade time for memory in training:
            the backward rebuilds BN_h's / LN_h's normalised W_hh h (one GEMM over the
            saved h_{t-1}, per chunk of steps) instead of keeping [T, B, G] of them per
            layer and direction.  Same results.  The native CPU kernel only (the GPU kernels
            keep them); measured: v+bn's peak memory 1.50x -> 1.23x of plain at T = 4096,
            for 4-18 % more time.
        backend (str): "auto" (fastest that supports the configuration), "reference",
            "native", "cuda", "triton", or "aten" (torch's own LSTM, which "auto" picks on
            the CPU when no regularizer is active, except for float32 training at B <= 128
            without proj_size, which runs "native"; see fusedrnn.explain).

    Inputs: input, (h_0, c_0)
        input: [T, B, I] (or [B, T, I] with batch_first), [T, I] unbatched, or a
            PackedSequence.
        h_0: [L * D, B, R]; c_0: [L * D, B, H]; zeros when omitted.

        lengths (keyword, fusedrnn only): [B] int64 lengths of a padded batched input, instead
            of packing it: the same results as pack_padded_sequence -> LSTM ->
            pad_packed_sequence (zeros past each length, h_n / c_n at each row's last step),
            without the packing copies, and under torch.compile (which cannot trace
            PackedSequence).  A length may be 0 (the row keeps h_0 / c_0).

    Outputs: output, (h_n, c_n)
        output: [T, B, D * R] (or [B, T, D * R], [T, D * R], or a PackedSequence).
        h_n: [L * D, B, R]; c_n: [L * D, B, H].
    """

    _cell = ops.CellKind.LSTM
    _torch_class = TorchLSTM
    _mode = "LSTM"

    # nn.LSTM's own argument checks and helpers, so messages and exception classes match.
    get_expected_cell_size = TorchLSTM.get_expected_cell_size
    check_forward_args = TorchLSTM.check_forward_args
    permute_hidden = TorchLSTM.permute_hidden

    def _split_hx(self, hx, is_batched: bool, packed: bool):
        if len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        if packed:
            return tuple(hx)
        if is_batched:
            if hx[0].dim() != 3 or hx[1].dim() != 3:
                raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return tuple(hx)
        if hx[0].dim() != 2 or hx[1].dim() != 2:
            raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return (hx[0].unsqueeze(1), hx[1].unsqueeze(1))

    def _state_widths(self) -> tuple[int, ...]:
        return (self._width(), self.hidden_size)

    def _outputs(self, states):
        return states[0], states[1]

    def _run_layer(self, x, states0, weights, mask, lengths, reverse, norm, zoneout, decision):
        w_ih, w_hh, b_ih, b_hh, w_hr = weights
        y, h_n, c_n = ops.lstm_layer(x, states0[0], states0[1], w_ih, w_hh, b_ih, b_hh, w_hr, mask=mask,
                                     lengths=lengths, reverse=reverse, norm=norm, zoneout=zoneout, backend=decision)
        return y, (h_n, c_n)


__all__ = ["LSTM"]
