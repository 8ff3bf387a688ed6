"""fusedrnn.GRU: a drop-in torch.nn.GRU whose layers run on fused kernels, with the
regularizers of fusedrnn.LSTM (the pipeline they share: fusedrnn/modules/rnn.py).

Dimension letters: T steps, B batch, I input, H hidden, L num_layers, D = 2 if bidirectional
else 1, G = 3H gate columns (r, z, n).
"""

from __future__ import annotations

from .. import ops
from ._torch import TorchGRU
from .rnn import FusedRNN


class GRU(FusedRNN):
    r"""Drop-in replacement for :class:`torch.nn.GRU`, on fused kernels.

    With only nn.GRU arguments it *is* nn.GRU: the same constructor, initialization (same
    draws from the generator), parameter names and order (weight_ih_l{k}, weight_hh_l{k},
    bias_ih_l{k}, bias_hh_l{k}, _reverse), gates r, z, n with b_hn inside the reset product
    (n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h), inputs,
    outputs and errors; a state_dict moves both ways unchanged.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        device, dtype: as :class:`torch.nn.GRU` (no proj_size).

    Keyword-only options (all off by default; a :func:`fusedrnn.patch` sets their defaults):
        recurrent_dropout (float in [0, 1)), variational (bool): a mask on h_{t-1} where it
            enters W_hh (all three gate blocks; the update z * h_{t-1} and the emitted h are
            not masked), one per sequence with ``variational`` (which also makes
            between-layer ``dropout`` one mask per sequence), else fresh every step.
        zoneout (float): one rate (a GRU has no cell state): in training each unit keeps
            h_{t-1} with that probability, h_t = d * h_{t-1} + (1 - d) * h~_t; in eval the
            expectation h_t = z h_{t-1} + (1 - z) h~_t.
        weight_dropout (float): DropConnect on W_hh, one mask per call, training only.
        layer_norm (bool): haste's LayerNormGRU placement: LN over the 3H columns of W_ih x
            and of W_hh h separately, each with its own gain (1) and bias (0), then the biases
            where torch adds them: r, z = sigmoid(LN_x(W_ih x) + b_i + LN_h(W_hh h) + b_h) on
            their blocks, n = tanh(LN_x(..)_n + b_in + r * (LN_h(..)_n + b_hn)).
        batch_norm (bool), bn_max_steps, bn_momentum, bn_eps: recurrent batch norm on W_ih x
            and W_hh h, per step, in the same places (gains 0.1, no betas: the GRU's biases
            shift them); running statistics per step as the LSTM's.  Not with layer_norm.
        recompute (bool): with a norm, the backward rebuilds N_h's normalised W_hh h instead
            of keeping it, as :class:`fusedrnn.LSTM`'s (native CPU kernel).
        backend (str): "auto", "reference", "native", "cuda", "triton" or "aten" (torch's own
            GRU, which auto picks for plain configurations).

    Inputs: input, h_0
        input: [T, B, I] (or [B, T, I] with batch_first), [T, I] unbatched, or a
            PackedSequence; h_0: [L * D, B, H] (zeros when omitted).
        lengths (keyword, fusedrnn only): [B] lengths of a padded batched input, as
            :class:`fusedrnn.LSTM` takes them.

    Outputs: output [T, B, D * H] (or [B, T, D * H], [T, D * H], a PackedSequence), h_n
        [L * D, B, H].
    """

    _cell = ops.CellKind.GRU
    _torch_class = TorchGRU
    _mode = "GRU"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__(*args, **kwargs)

    check_forward_args = TorchGRU.check_forward_args
    permute_hidden = TorchGRU.permute_hidden

    def _split_hx(self, hx, is_batched: bool, packed: bool):
        if packed:
            return (hx,)
        if is_batched:
            if hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            return (hx,)
        if hx.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
        return (hx.unsqueeze(1),)

    def _state_widths(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def _outputs(self, states):
        return states[0]

    def _run_layer(self, x, states0, weights, mask, lengths, reverse, norm, zoneout, decision):
        w_ih, w_hh, b_ih, b_hh, _ = weights
        y, h_n = ops.gru_layer(x, states0[0], w_ih, w_hh, b_ih, b_hh, mask=mask, lengths=lengths, reverse=reverse,
                               norm=norm, zoneout=zoneout, backend=decision)
        return y, (h_n,)


__all__ = ["GRU"]
