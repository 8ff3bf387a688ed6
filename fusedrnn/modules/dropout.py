"""fusedrnn.modules.LockedDropout: variational (locked) dropout on a sequence, the module form
of the masks of :mod:`fusedrnn.ops.dropout`."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.dropout import dropout_mask


class LockedDropout(nn.Module):
    """Variational (locked) dropout on a sequence: one [B, 1, F] mask per sequence, the same at
    every step (Gal & Ghahramani).  Input [B, T, F] (or [B, F]: plain dropout); identity in
    eval.  Kept units are scaled by 1 / (1 - p).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout should be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (x.shape[0], 1, x.shape[2]) if x.dim() == 3 else x.shape
        return x * dropout_mask(self.p, shape, x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


__all__ = ["LockedDropout"]
