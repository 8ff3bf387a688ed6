"""Many-to-many sequence tagging and many-to-one sequence classification on fusedrnn.LSTM
(or GRU).

Dimension letters: B batch, T steps, I input features, V vocabulary, H hidden,
D = 2 if bidirectional else 1, C classes / tags.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..modules import LockedDropout
from ._common import check_input_spec, final_h, length_mask, lstm_options, rnn_class


class _Encoder(nn.Module):
    """Token ids (through an embedding) or features -> fusedrnn.LSTM or GRU, optional lengths.
    The recurrent module is ``self.lstm`` or ``self.gru`` (state_dict keys as before for the
    LSTM); ``self.rnn`` is either."""

    def __init__(self, name, vocab_size, input_size, embed_size, hidden_size, num_layers, bidirectional,
                 dropout, recurrent_dropout, variational, batch_norm, backend, cell="lstm", **options):
        super().__init__()
        check_input_spec(name, vocab_size, input_size)
        cls = rnn_class(name, cell)
        self.cell = cell
        self.embedding = nn.Embedding(vocab_size, embed_size) if vocab_size is not None else None
        in_size = embed_size if vocab_size is not None else input_size
        self.drop = LockedDropout(dropout)
        setattr(self, cell, cls(in_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                                dropout=dropout if num_layers > 1 else 0.0,
                                **lstm_options(recurrent_dropout, variational, batch_norm, backend, **options)))
        self.output_size = hidden_size * (2 if bidirectional else 1)

    @property
    def rnn(self) -> nn.Module:
        return getattr(self, self.cell)

    def forward(self, x: Tensor, lengths: Optional[Tensor]):
        """-> (outputs [B, T, D*H] (zeros past each length), h_n [L*D, B, H])."""
        if self.embedding is not None:
            if x.dim() != 2 or x.is_floating_point():
                raise ValueError(f"expected token ids [B, T], got {x.dtype} {tuple(x.shape)}")
            x = self.embedding(x)
        elif x.dim() != 3:
            raise ValueError(f"expected features [B, T, I], got shape {tuple(x.shape)}")
        x = self.drop(x)
        y, state = self.rnn(x, lengths=lengths)  # padded + lengths: no packing, compiles
        return self.drop(y), final_h(state)


class SequenceTagger(nn.Module):
    r"""Many-to-many tagging: one label per step, bidirectional by default.

    Args:
        num_tags (int): C.
        vocab_size (int) *or* input_size (int): token inputs (embedded) or feature inputs.
        embed_size, hidden_size, num_layers, bidirectional: the encoder.
        dropout (float): locked dropout on the LSTM input, between layers and on its output.
        recurrent_dropout, variational, batch_norm, zoneout, layer_norm, weight_dropout, backend:
            see :class:`fusedrnn.LSTM`.
        cell (str): "lstm" or "gru" (fusedrnn.GRU, the same options).

    Forward: x ([B, T] long or [B, T, I] float), lengths ([B] or None) -> logits [B, T, C]
    (logits past a sequence's length are those of a zero LSTM output).
    """

    def __init__(self, num_tags: int, vocab_size: Optional[int] = None, input_size: Optional[int] = None,
                 embed_size: int = 64, hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, variational: bool = True,
                 batch_norm: bool = False, backend: str = "auto", *, cell: str = "lstm", zoneout: float = 0.0,
                 layer_norm: bool = False, weight_dropout: float = 0.0):
        super().__init__()
        self.encoder = _Encoder("SequenceTagger", vocab_size, input_size, embed_size, hidden_size, num_layers,
                                bidirectional, dropout, recurrent_dropout, variational, batch_norm, backend, cell,
                                zoneout=zoneout, layer_norm=layer_norm, weight_dropout=weight_dropout)
        self.classifier = nn.Linear(self.encoder.output_size, num_tags)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        y, _ = self.encoder(x, lengths)
        return self.classifier(y)


class SequenceClassifier(nn.Module):
    r"""The encoder pooled over time, then a linear classifier (many-to-one).

    ``pooling``: "last" (the final state of the last layer: h at each sequence's last step,
    both directions when bidirectional), "max" or "mean" over the valid steps.

    Args: as :class:`SequenceTagger`, with ``num_classes`` and ``pooling``;
    ``bidirectional`` defaults to False.

    Forward: x ([B, T] long or [B, T, I] float), lengths ([B] or None) -> logits [B, C].
    """

    POOLINGS = ("last", "max", "mean")

    def __init__(self, num_classes: int, vocab_size: Optional[int] = None, input_size: Optional[int] = None,
                 embed_size: int = 64, hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False,
                 pooling: str = "last", dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 variational: bool = True, batch_norm: bool = False, backend: str = "auto", *, cell: str = "lstm",
                 zoneout: float = 0.0, layer_norm: bool = False, weight_dropout: float = 0.0):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.encoder = _Encoder("SequenceClassifier", vocab_size, input_size, embed_size, hidden_size, num_layers,
                                bidirectional, dropout, recurrent_dropout, variational, batch_norm, backend, cell,
                                zoneout=zoneout, layer_norm=layer_norm, weight_dropout=weight_dropout)
        self.num_directions = 2 if bidirectional else 1
        self.classifier = nn.Linear(self.encoder.output_size, num_classes)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        y, h_n = self.encoder(x, lengths)
        if self.pooling == "last":
            pooled = torch.cat(list(h_n[-self.num_directions:]), dim=-1)
        else:
            m = length_mask(lengths, y.shape[0], y.shape[1], y.device).unsqueeze(-1)
            if self.pooling == "max":
                pooled = y.masked_fill(~m, float("-inf")).amax(1)
            else:
                pooled = (y * m).sum(1) / m.sum(1).clamp_min(1)
        return self.classifier(pooled)
