"""Image captioning decoder (Show and Tell style): image features initialise the LSTM state,
and at every tick the previous token (optionally with the features) is the input.

Dimension letters: B batch, F feature size, T steps, E embedding, H hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..modules import LSTMCell
from ._common import lstm_options


class CaptionDecoder(nn.Module):
    r"""Caption decoder on a fusedrnn.LSTMCell.

        h_0 = tanh(W_h f),  c_0 = W_c f                     (f: image features [B, F])
        h_t = cell([emb(y_{t-1}); (tanh(W_f f) if feed_features)])
        logits_t = W_o dropout(h_t)

    With ``variational`` recurrent dropout the cell's mask is held for the whole caption
    (the cell is reset at the start of every forward / decode).

    Args:
        feature_size (F), vocab_size (V), embed_size (E), hidden_size (H);
        feed_features (bool): also feed the (projected) features at every tick;
        feature_hidden (int): size of an optional MLP layer on the features (0: none);
        dropout (float): on the embeddings and the outputs;
        recurrent_dropout, variational, batch_norm, backend: see :class:`fusedrnn.LSTMCell`;
        bos_id, eos_id, pad_id (int).

    Forward: features [B, F], tgt_in [B, T] (BOS first) -> logits [B, T, V].
    """

    def __init__(self, feature_size: int, vocab_size: int, embed_size: int = 32, hidden_size: int = 128,
                 feed_features: bool = False, feature_hidden: int = 0, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, variational: bool = True, batch_norm: bool = False,
                 backend: str = "auto", bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
        super().__init__()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.feed_features = feed_features
        if feature_hidden:
            self.features = nn.Sequential(nn.Linear(feature_size, feature_hidden), nn.ReLU())
            F = feature_hidden
        else:
            self.features, F = nn.Identity(), feature_size
        self.init_h = nn.Linear(F, hidden_size)
        self.init_c = nn.Linear(F, hidden_size)
        self.feature_in = nn.Linear(F, embed_size) if feed_features else None
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=pad_id)
        self.cell = LSTMCell(embed_size * (2 if feed_features else 1), hidden_size,
                             **lstm_options(recurrent_dropout, variational, batch_norm, backend))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    def init_state(self, features: Tensor):
        """features [B, F] -> ((h_0, c_0) [B, H] each, per-tick feature input [B, E] or None)."""
        if features.dim() != 2:
            raise ValueError(f"CaptionDecoder: features must be [B, F], got shape {tuple(features.shape)}")
        f = self.features(features)
        feat = torch.tanh(self.feature_in(f)) if self.feature_in is not None else None
        return (torch.tanh(self.init_h(f)), self.init_c(f)), feat

    def step(self, tokens: Tensor, state, feat: Optional[Tensor]):
        """tokens [B] -> (logits [B, V], state)."""
        x = self.drop(self.embed(tokens))
        if feat is not None:
            x = torch.cat([x, feat], -1)
        h, c = self.cell(x, state)
        return self.out(self.drop(h)), (h, c)

    def forward(self, features: Tensor, tgt_in: Tensor) -> Tensor:
        state, feat = self.init_state(features)
        self.cell.reset()
        logits = []
        for t in range(tgt_in.shape[1]):
            lg, state = self.step(tgt_in[:, t], state, feat)
            logits.append(lg)
        return torch.stack(logits, 1)

    @torch.no_grad()
    def greedy(self, features: Tensor, max_len: int = 20) -> Tensor:
        """Greedy decoding -> tokens [B, L] (EOS, then pad), L <= max_len."""
        state, feat = self.init_state(features)
        self.cell.reset()
        B = features.shape[0]
        tok = torch.full((B,), self.bos_id, dtype=torch.long, device=features.device)
        done = torch.zeros(B, dtype=torch.bool, device=features.device)
        out = []
        for _ in range(max_len):
            lg, state = self.step(tok, state, feat)
            tok = lg.argmax(-1).masked_fill(done, self.pad_id)
            out.append(tok)
            done = done | (tok == self.eos_id)
            if bool(done.all()):
                break
        return torch.stack(out, 1)
