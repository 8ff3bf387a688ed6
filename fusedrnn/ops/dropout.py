"""Dropout masks (inverted: kept units are scaled by 1 / (1 - p)).

Every mask is drawn once per forward call from torch's generator on the tensor's device,
so ``torch.manual_seed`` makes runs reproducible, and the same mask tensor can be fed to
several backends to compare them exactly.  No draw depends on the model's dtype, so one seed
gives the same masks to a bf16 model and its float64 reference (CUDA's generator draws
doubles and floats by different paths, and torch.rand differs between float64 and float32 on
the CPU too): dropout masks are drawn in float32 (DRAW_DTYPE; a 16-bit uniform would quantise
the rates, bf16 has 8 significant bits), then cast; DropConnect and zoneout, which draw
hundreds of thousands of decisions a call, read four 16-bit integer lanes of each 64-bit
word, the rates met to within 2^-16.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .. import backends
from ..core.contract import CellKind, Zoneout


DRAW_DTYPE = torch.float32


def dropout_mask(p: float, shape: Sequence[int], like: Tensor) -> Tensor:
    """A mask of ``shape`` with zeros with probability p and 1 / (1 - p) elsewhere (like's
    dtype and device)."""
    keep = 1.0 - p
    drawn = torch.empty(tuple(shape), dtype=DRAW_DTYPE, device=like.device).bernoulli_(keep)
    return drawn.to(like.dtype).div_(keep)


def _weight_draw(p: float, n: int, device) -> tuple[Tensor, int, int]:
    """DropConnect's draw for n decisions: (words, low, top), as :func:`weight_mask` reads them."""
    keep = 1.0 - p
    words = torch.randint(0, 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=device)
    low = min(round(keep * 65536) - 32768, 32767)  # lanes 0-2 are uniform over the int16 range
    top = min(round(keep * 32768), 32767)  # lane 3 is uniform over [0, 2^15)
    return words, low, top


def _mask_of(words: Tensor, low: int, top: int, keep: float, shape: Sequence[int], like: Tensor) -> Tensor:
    n = math.prod(shape)
    lanes = words.view(torch.int16).view(-1, 4)  # little-endian: lane 3 holds bits 48-63
    thresholds = torch.tensor([low, low, low, top], dtype=torch.int16, device=like.device)
    return (lanes < thresholds).view(-1)[:n].view(tuple(shape)).to(like.dtype).div_(keep)


def weight_mask(p: float, shape: Sequence[int], like: Tensor) -> Tensor:
    """DropConnect's mask of a weight (Wan et al.; awd-lstm-lm's WeightDrop on W_hh): zeros with
    probability p and 1 / (1 - p) elsewhere (like's dtype and device).

    One call draws a weight's worth of decisions (196,608 for a GRU's [768, 256] W_hh), so
    the draw takes four per generator call: 64-bit words uniform over [0, 2^63 - 1), each read
    as four 16-bit lanes, kept where a lane is below the keep rate's threshold; the top lane
    has 15 random bits and its own threshold.  The keep rate is
    met to within 2^-15 (on the CPU this costs 0.40 ms for [768, 256] against 0.69 ms for a
    float32 uniform draw and a compare)."""
    words, low, top = _weight_draw(p, math.prod(shape), like.device)
    return _mask_of(words, low, top, 1.0 - p, shape, like)


def drop_connect(p: float, weight: Tensor) -> Tensor:
    """weight * weight_mask(p, weight.shape, weight), with the same draw and the same bits: on
    the CPU in float32 / float64 one pass of the native op fusedrnn::drop_connect (its
    backward one more), instead of a compare, a cast, a division and a product of the
    weight's size each way (0.5 ms for a GRU's W_hh at H = 256 on the benchmark machine)."""
    words, low, top = _weight_draw(p, weight.numel(), weight.device)
    native = weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
    if native and backends.native_op("drop_connect"):
        return torch.ops.fusedrnn.drop_connect(weight, words, low, top, 1.0 - p)
    return weight * _mask_of(words, low, top, 1.0 - p, weight.shape, weight)


def recurrent_mask(p: float, T: int, B: int, R: int, like: Tensor, shared: bool) -> Tensor:
    """Recurrent dropout mask for h_{t-1} where it enters W_hh.

    shared=True (variational, Gal & Ghahramani): one [B, R] mask for every step.
    shared=False (naive): a fresh mask at every step, [T, B, R].
    """
    return dropout_mask(p, (B, R) if shared else (T, B, R), like)


def _lanes(shape: Sequence[int], device) -> Tensor:
    """Uniform int16 integers of ``shape``: the 16-bit lanes (low to high) of 64-bit words
    from torch's generator, uniform over [-2^63, 2^63 - 1), four per word (one generator call
    per four decisions; a float32 uniform costs one call each).  randint, not random_: the
    draw stays inside a torch.compile(fullgraph=True) graph."""
    n = math.prod(shape)
    words = torch.randint(-2**63, 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=device)
    return words.view(torch.int16)[:n].view(tuple(shape))


def _lane_threshold(rate: float) -> int:
    """The int16 t with P(lane < t) = rate to within 2^-16, for a rate in [0, 1)."""
    return round(rate * 65536) - 32768


def zoneout_weights(rates: tuple[float, float], T: int, B: int, H: int, R: int, like: Tensor,
                    training: bool, cell: CellKind = CellKind.LSTM) -> Zoneout:
    """Zoneout weights of the previous state (Krueger et al.) for T steps: c [T, B, H], h [T, B, R].

    Training: Bernoulli draws, 1 with probability rate (the unit keeps its previous value),
    fresh at every step, per unit and per row: one draw u [T, B, H + R] of 16-bit lanes
    (:func:`_lanes`), c = u[..., :H] < t(rate_c) and h = u[..., H:] < t(rate_h) with t from
    :func:`_lane_threshold` (the rates to within 2^-16).  At B = 32, T = 100, H = 256 on the
    benchmark CPU a float32 uniform per decision took 7 ms of a 28 ms forward.
    Eval: the rates themselves (the expectation), as expanded views (no memory per step).
    A GRU (``cell``) has one rate, the hidden one, and no c weights: u [T, B, R], c None.
    """
    zc, zh = rates  # (the comparisons write 0 / 1 in like's dtype: one pass each, no bool tensor)
    if cell == CellKind.GRU:
        if training:
            u = _lanes((T, B, R), like.device)
            return Zoneout(None, torch.lt(u, _lane_threshold(zh), out=like.new_empty((T, B, R))))
        return Zoneout(None, like.new_full((1, 1, 1), zh).expand(T, B, R))
    if training:
        u = _lanes((T, B, H + R), like.device)
        return Zoneout(torch.lt(u[..., :H], _lane_threshold(zc), out=like.new_empty((T, B, H))),
                       torch.lt(u[..., H:], _lane_threshold(zh), out=like.new_empty((T, B, R))))
    return Zoneout(like.new_full((1, 1, 1), zc).expand(T, B, H), like.new_full((1, 1, 1), zh).expand(T, B, R))


def survival_probability(mask: Tensor, steps: int) -> float:
    """Fraction of (row, unit) pairs of a recurrent mask that are kept for ``steps`` steps in a row.

    For a shared [B, R] mask that is the keep rate itself; for a per-step [T, B, R] mask it
    is the fraction kept at every one of the first ``steps`` steps.
    """
    kept = mask != 0
    if kept.dim() == 2:
        return kept.float().mean().item()
    return kept[:steps].all(0).float().mean().item()
