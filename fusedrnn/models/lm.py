"""Language model: embedding -> fusedrnn.LSTM (or GRU) -> linear decoder, many-to-many.

Dimension letters: B batch, T steps, V vocabulary, E embedding, H hidden, L layers.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..modules import LockedDropout
from ._common import lstm_options, rnn_class


class LanguageModel(nn.Module):
    r"""A character- or word-level LSTM or GRU language model (the level is only the vocabulary).

    Regularization: ``dropout`` is variational (locked) dropout on the embeddings, between
    layers and on the last layer's output, one mask per sequence; ``recurrent_dropout`` is
    the LSTM's dropout on h_{t-1} (shared over time when ``variational``).
    ``tie_weights`` shares the embedding matrix with the decoder (Press & Wolf; Inan et al.);
    when embed_size < hidden_size the LSTM gets ``proj_size=embed_size`` so the shapes match
    (embed_size > hidden_size is an error).

    Args:
        vocab_size (int): V.
        embed_size (int): E.  hidden_size (int): H.  num_layers (int): L.
        dropout (float), recurrent_dropout (float), variational (bool), batch_norm (bool),
        zoneout (float), layer_norm (bool), weight_dropout (float), backend (str): see
        :class:`fusedrnn.LSTM`.
        tie_weights (bool): tie the decoder to the embedding (a GRU has no projection: it needs
            embed_size == hidden_size).
        cell (str): "lstm" (the module is ``self.lstm``) or "gru" (``self.gru``); ``self.rnn``
            is either.

    Forward: tokens [B, T] long, state (LSTM: (h [L, B, R], c [L, B, H]); GRU: h [L, B, H];
        or None) -> logits [B, T, V], state.
    """

    def __init__(self, vocab_size: int, embed_size: int = 128, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, variational: bool = True,
                 tie_weights: bool = False, batch_norm: bool = False, backend: str = "auto", *,
                 cell: str = "lstm", zoneout: float = 0.0, layer_norm: bool = False, weight_dropout: float = 0.0):
        super().__init__()
        cls = rnn_class("LanguageModel", cell)
        self.vocab_size, self.embed_size, self.hidden_size = vocab_size, embed_size, hidden_size
        self.tie_weights, self.cell = tie_weights, cell
        if tie_weights and embed_size > hidden_size:
            raise ValueError(f"LanguageModel: tie_weights needs embed_size <= hidden_size (the LSTM projects "
                             f"its output to embed_size), got {embed_size} > {hidden_size}")
        self.embedding = nn.Embedding(vocab_size, embed_size)
        proj = embed_size if tie_weights and hidden_size != embed_size else 0
        if proj and cell == "gru":
            raise ValueError(f"LanguageModel: tie_weights with a GRU needs embed_size == hidden_size (a GRU has no "
                             f"projection), got {embed_size} != {hidden_size}")
        opts = lstm_options(recurrent_dropout, variational, batch_norm, backend, zoneout=zoneout,
                            layer_norm=layer_norm, weight_dropout=weight_dropout)
        if proj:
            opts["proj_size"] = proj
        setattr(self, cell, cls(embed_size, hidden_size, num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0, **opts))
        self.drop = LockedDropout(dropout)
        out_size = proj or hidden_size
        self.decoder = nn.Linear(out_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    @property
    def rnn(self) -> nn.Module:
        """The recurrent module: ``self.lstm`` or ``self.gru``."""
        return getattr(self, self.cell)

    def forward(self, tokens: Tensor, state=None):
        """tokens [B, T] -> (logits [B, T, V], state: (h_n, c_n) or a GRU's h_n)."""
        if tokens.dim() != 2:
            raise ValueError(f"LanguageModel: tokens must be [B, T], got shape {tuple(tokens.shape)}")
        y, state = self.rnn(self.drop(self.embedding(tokens)), state)
        return self.decoder(self.drop(y)), state

    @torch.no_grad()
    def sample(self, prefix: Tensor, steps: int, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Continue ``prefix`` [B, P] (or [P]) by ``steps`` sampled tokens -> [B, P + steps].

        ``temperature`` 0 is greedy.  Draws from ``generator`` (torch's default if None).
        Runs in eval mode and restores the mode afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            seq = prefix.unsqueeze(0) if prefix.dim() == 1 else prefix
            logits, state = self(seq)
            out = [seq]
            for _ in range(steps):
                last = logits[:, -1]
                if temperature == 0:
                    nxt = last.argmax(-1, keepdim=True)
                else:
                    probs = torch.softmax(last.float() / temperature, -1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                out.append(nxt)
                if self.rnn.batch_norm:  # per-step statistics: rerun from the start
                    logits, _ = self(torch.cat(out, 1))
                else:
                    logits, state = self(nxt, state)
            return torch.cat(out, 1)
        finally:
            self.train(was_training)
