"""Encoder-decoder with optional attention, input feeding, teacher forcing, greedy and beam
search decoding.

Dimension letters: B batch, S source steps, T target steps, E embedding, H hidden,
D = 2 if the encoder is bidirectional else 1, M = D * H (encoder output), V target vocabulary,
K beam size.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ..modules import GRUCell, LSTMCell
from ._common import length_mask, lstm_options, rnn_class
from .attention import BahdanauAttention, LuongAttention

ATTENTIONS = ("bahdanau", "luong-dot", "luong-general", "none")


class EncoderMemory(NamedTuple):
    """What the decoder attends to: values [B, S, M], keys [B, S, Kd], prepared keys, mask
    [B, S] bool, and the decoder's initial state: (h0 [B, H], c0 [B, H]) for an LSTM, (h0,) for
    a GRU."""

    values: Tensor
    keys: Tensor
    prepared: Optional[Tensor]
    mask: Tensor
    state: tuple

    def repeat(self, k: int) -> "EncoderMemory":
        """Every row repeated k times (row b -> rows b*k … b*k+k-1), for beam search."""
        r = lambda t: None if t is None else t.repeat_interleave(k, dim=0)  # noqa: E731
        return EncoderMemory(r(self.values), r(self.keys), r(self.prepared), r(self.mask),
                             tuple(r(s) for s in self.state))


class Seq2Seq(nn.Module):
    r"""An LSTM (or GRU) encoder-decoder.

    Encoder: embedding -> fusedrnn.LSTM or GRU (bidirectional by default) over the source (padded, with
    ``src_len``).  Its last layer's final states (both directions) initialise the decoder
    through a linear bridge.  Decoder: a fusedrnn.LSTMCell or GRUCell (its variational recurrent dropout
    mask is held for the whole target sequence), Luong-style: at step t

        h_t = cell([emb(y_{t-1}); h~_{t-1}])            (input feeding: h~_{t-1} fed back)
        context_t, a_t = attention(h_t, encoder outputs)
        h~_t = tanh(W_c [h_t; context_t])                (h~_t = h_t without attention)
        logits_t = W_o dropout(h~_t)

    ``attention``: "bahdanau" (additive), "luong-general", "luong-dot" (the encoder outputs are
    projected to H when M != H), "none", or any module with the interface of
    :mod:`fusedrnn.models.attention` (query size H, key size M).

    Args:
        src_vocab_size, tgt_vocab_size (int); embed_size (E), hidden_size (H), num_layers
        (encoder layers); bidirectional (bool, encoder); input_feeding (bool);
        dropout (float, embeddings and h~); recurrent_dropout, variational, batch_norm,
        zoneout, layer_norm, weight_dropout, backend: see :class:`fusedrnn.LSTM` (applied to
        encoder and decoder); pad_id, bos_id, eos_id (int): special target
        ids; cell (str): "lstm" or "gru" (encoder and decoder; a GRU's state is h alone).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 64, hidden_size: int = 128,
                 num_layers: int = 1, attention: Union[str, nn.Module, None] = "bahdanau", bidirectional: bool = True,
                 input_feeding: bool = True, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 variational: bool = True, batch_norm: bool = False, backend: str = "auto",
                 pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, *, cell: str = "lstm", zoneout: float = 0.0,
                 layer_norm: bool = False, weight_dropout: float = 0.0):
        super().__init__()
        encoder_cls = rnn_class("Seq2Seq", cell)
        self.cell_kind = cell
        H, E = hidden_size, embed_size
        D = 2 if bidirectional else 1
        M = D * H
        self.hidden_size, self.num_directions, self.input_feeding = H, D, input_feeding
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        opts = lstm_options(recurrent_dropout, variational, batch_norm, backend, zoneout=zoneout,
                            layer_norm=layer_norm, weight_dropout=weight_dropout)
        self.src_embed = nn.Embedding(src_vocab_size, E, padding_idx=pad_id)
        self.encoder = encoder_cls(E, H, num_layers, batch_first=True, bidirectional=bidirectional,
                                   dropout=dropout if num_layers > 1 else 0.0, **opts)
        self.bridge_h = nn.Linear(M, H)
        self.bridge_c = nn.Linear(M, H) if cell == "lstm" else None
        self.tgt_embed = nn.Embedding(tgt_vocab_size, E, padding_idx=pad_id)
        self.memory_proj = None
        if attention is None or attention == "none":
            self.attention = None
        elif isinstance(attention, nn.Module):
            self.attention = attention
        elif attention == "bahdanau":
            self.attention = BahdanauAttention(H, M)
        elif attention == "luong-general":
            self.attention = LuongAttention(H, M, "general")
        elif attention == "luong-dot":
            if M != H:
                self.memory_proj = nn.Linear(M, H, bias=False)
            self.attention = LuongAttention(H, H, "dot")
        else:
            raise ValueError(f"attention must be one of {ATTENTIONS} or an nn.Module, got {attention!r}")
        self.cell = (LSTMCell if cell == "lstm" else GRUCell)(E + (H if input_feeding else 0), H, **opts)
        self.combine = nn.Linear(H + M, H) if self.attention is not None else None
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(H, tgt_vocab_size)

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_len: Optional[Tensor] = None) -> EncoderMemory:
        """src [B, S] long, src_len [B] (None: all S) -> :class:`EncoderMemory`."""
        if src.dim() != 2:
            raise ValueError(f"Seq2Seq: src must be [B, S], got shape {tuple(src.shape)}")
        B, S = src.shape
        x = self.drop(self.src_embed(src))
        y, final = self.encoder(x, lengths=src_len)  # padded + lengths: no packing, compiles
        D = self.num_directions
        last = lambda t: torch.cat(list(t[-D:]), -1)  # noqa: E731  (the last layer, both directions)
        if self.bridge_c is None:  # a GRU: h alone
            state = (torch.tanh(self.bridge_h(last(final))),)
        else:
            state = (torch.tanh(self.bridge_h(last(final[0]))), self.bridge_c(last(final[1])))
        keys = y if self.memory_proj is None else self.memory_proj(y)
        prepared = self.attention.prepare(keys) if self.attention is not None else None
        return EncoderMemory(y, keys, prepared, length_mask(src_len, B, S, src.device), state)

    # -- decoder ------------------------------------------------------------------------------
    def init_feed(self, mem: EncoderMemory) -> Tensor:
        return mem.values.new_zeros(mem.values.shape[0], self.hidden_size)

    def step(self, tokens: Tensor, state: tuple, feed: Tensor, mem: EncoderMemory):
        """One decoder step: tokens [B] (y_{t-1}), state (h, c) [B, H] ((h,) for a GRU), feed
        h~_{t-1} [B, H] -> (logits [B, V], state, h~_t [B, H], attention weights [B, S] or None)."""
        emb = self.drop(self.tgt_embed(tokens))
        inp = torch.cat([emb, feed], -1) if self.input_feeding else emb
        if len(state) == 1:
            state = (self.cell(inp, state[0]),)
        else:
            state = self.cell(inp, state)
        h = state[0]
        if self.attention is not None:
            ctx, w = self.attention(h, mem.keys, mem.mask, mem.values, mem.prepared)
            ht = torch.tanh(self.combine(torch.cat([h, ctx], -1)))
        else:
            ht, w = h, None
        return self.out(self.drop(ht)), state, ht, w

    def forward(self, src: Tensor, src_len: Optional[Tensor], tgt_in: Tensor, teacher_forcing: float = 1.0):
        """Teacher-forced decoding.

        src [B, S], src_len [B] or None, tgt_in [B, T] (BOS first) -> (logits [B, T, V],
        attention [B, T, S] or None).  With ``teacher_forcing`` < 1 each row feeds back its own
        previous prediction instead of the gold token with probability 1 - teacher_forcing.
        """
        mem = self.encode(src, src_len)
        self.cell.reset()
        state, feed = mem.state, self.init_feed(mem)
        logits, attn = [], []
        tok = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                tok = tgt_in[:, t]
                if teacher_forcing < 1.0:
                    own = logits[-1].argmax(-1)
                    keep = torch.rand(tok.shape, device=tok.device) < teacher_forcing
                    tok = torch.where(keep, tok, own)
            lg, state, feed, w = self.step(tok, state, feed, mem)
            logits.append(lg)
            attn.append(w)
        return torch.stack(logits, 1), (torch.stack(attn, 1) if self.attention is not None else None)

    @torch.no_grad()
    def greedy(self, src: Tensor, src_len: Optional[Tensor] = None, max_len: int = 50):
        """Greedy decoding -> (tokens [B, L] (EOS then pad after it), attention [B, L, S] or None),
        L <= max_len.  Stops when every row has produced EOS."""
        mem = self.encode(src, src_len)
        self.cell.reset()
        B = src.shape[0]
        state, feed = mem.state, self.init_feed(mem)
        tok = torch.full((B,), self.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        toks, attn = [], []
        for _ in range(max_len):
            lg, state, feed, w = self.step(tok, state, feed, mem)
            tok = lg.argmax(-1).masked_fill(done, self.pad_id)
            toks.append(tok)
            attn.append(w)
            done = done | (tok == self.eos_id)
            if bool(done.all()):
                break
        return torch.stack(toks, 1), (torch.stack(attn, 1) if self.attention is not None else None)

    @torch.no_grad()
    def beam_search(self, src: Tensor, src_len: Optional[Tensor] = None, beam_size: int = 5, max_len: int = 50,
                    length_penalty: float = 1.0):
        """Batched beam search -> (tokens [B, L] of the best hypothesis (EOS, then pad),
        scores [B] (sum of log-probabilities / length ** length_penalty)).

        Every row keeps ``beam_size`` hypotheses; a finished hypothesis (EOS) is extended only
        by pad at no cost; decoding stops when all are finished or at ``max_len``.
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        B, K = src.shape[0], beam_size
        mem = self.encode(src, src_len).repeat(K)
        self.cell.reset()
        state, feed = mem.state, self.init_feed(mem)
        dev = src.device
        tok = torch.full((B * K,), self.bos_id, dtype=torch.long, device=dev)
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        finished = torch.zeros(B, K, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, K, device=dev)
        hist = torch.zeros(B, K, 0, dtype=torch.long, device=dev)
        base = (torch.arange(B, device=dev) * K).unsqueeze(1)
        for _ in range(max_len):
            lg, state, feed, _ = self.step(tok, state, feed, mem)
            logp = torch.log_softmax(lg.float(), -1).view(B, K, -1)
            V = logp.shape[-1]
            # finished hypotheses: only pad, at no cost
            pad_row = torch.full((V,), float("-inf"), device=dev)
            pad_row[self.pad_id] = 0.0
            logp = torch.where(finished.unsqueeze(-1), pad_row, logp)
            total = (scores.unsqueeze(-1) + logp).view(B, K * V)
            scores, idx = total.topk(K, dim=-1)
            beam, tok2 = idx // V, idx % V
            sel = (base + beam).view(-1)
            state = tuple(s[sel] for s in state)
            feed = feed[sel]
            finished = finished.gather(1, beam)
            lengths = lengths.gather(1, beam) + (~finished).float()
            hist = torch.cat([hist.gather(1, beam.unsqueeze(-1).expand(-1, -1, hist.shape[-1])),
                              tok2.unsqueeze(-1)], -1)
            finished = finished | (tok2 == self.eos_id)
            tok = tok2.view(-1)
            if bool(finished.all()):
                break
        norm = scores / lengths.clamp_min(1).pow(length_penalty)
        best = norm.argmax(-1)
        tokens = hist[torch.arange(B, device=dev), best]
        return tokens, norm.gather(1, best.unsqueeze(1)).squeeze(1)
