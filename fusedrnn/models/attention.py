"""Pluggable attention modules: additive (Bahdanau) and multiplicative (Luong dot / general).

Interface (both): ``prepare(keys)`` precomputes what does not depend on the query (call once
per source), ``forward(query, keys, mask=None, values=None, prepared=None)`` returns
``(context, weights)``:

    query [B, Q], keys [B, S, K], values [B, S, Vd] (default: keys), mask [B, S] bool
    (True = attend; padded source positions False)
    -> context [B, Vd], weights [B, S] (a softmax over S; zero where mask is False)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def _masked_softmax(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    w = torch.softmax(scores, dim=-1)
    return w if mask is None else w * mask


class BahdanauAttention(nn.Module):
    r"""Additive attention (Bahdanau et al., arXiv 1409.0473):
    score(q, k) = v^T tanh(W_q q + W_k k).

    Args:
        query_size (int): Q.  key_size (int): K.  attn_size (int): hidden size of the scorer
        (default Q).
    """

    def __init__(self, query_size: int, key_size: int, attn_size: Optional[int] = None):
        super().__init__()
        attn_size = attn_size or query_size
        self.query_proj = nn.Linear(query_size, attn_size, bias=True)
        self.key_proj = nn.Linear(key_size, attn_size, bias=False)
        self.v = nn.Linear(attn_size, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        """keys [B, S, K] -> W_k keys [B, S, A]."""
        return self.key_proj(keys)

    def forward(self, query: Tensor, keys: Tensor, mask: Optional[Tensor] = None, values: Optional[Tensor] = None,
                prepared: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        pk = self.prepare(keys) if prepared is None else prepared
        scores = self.v(torch.tanh(pk + self.query_proj(query).unsqueeze(1))).squeeze(-1)
        w = _masked_softmax(scores, mask)
        values = keys if values is None else values
        return torch.bmm(w.unsqueeze(1), values).squeeze(1), w


class LuongAttention(nn.Module):
    r"""Multiplicative attention (Luong et al., arXiv 1508.04025).

    ``method="dot"``: score = q · k (needs Q == K); ``"general"``: score = q^T W k.

    Args:
        query_size (int): Q.  key_size (int): K.  method (str): "dot" or "general".
    """

    def __init__(self, query_size: int, key_size: int, method: str = "general"):
        super().__init__()
        if method not in ("dot", "general"):
            raise ValueError(f"LuongAttention: method must be 'dot' or 'general', got {method!r}")
        if method == "dot" and query_size != key_size:
            raise ValueError(f"LuongAttention(method='dot') needs query_size == key_size, got {query_size} and {key_size}")
        self.method = method
        self.key_proj = nn.Linear(key_size, query_size, bias=False) if method == "general" else None

    def prepare(self, keys: Tensor) -> Tensor:
        """keys [B, S, K] -> keys in query space [B, S, Q]."""
        return keys if self.key_proj is None else self.key_proj(keys)

    def forward(self, query: Tensor, keys: Tensor, mask: Optional[Tensor] = None, values: Optional[Tensor] = None,
                prepared: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        pk = self.prepare(keys) if prepared is None else prepared
        scores = torch.bmm(pk, query.unsqueeze(-1)).squeeze(-1)
        w = _masked_softmax(scores, mask)
        values = keys if values is None else values
        return torch.bmm(w.unsqueeze(1), values).squeeze(1), w

    def extra_repr(self) -> str:
        return f"method={self.method!r}"
