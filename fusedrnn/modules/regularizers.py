"""The regularizer options shared by :class:`~fusedrnn.LSTM` and :class:`~fusedrnn.LSTMCell`:
recurrent dropout (naive or variational), recurrent batch norm, zoneout, layer norm and
weight dropout (DropConnect on W_hh), with their validation and their parameters.

Batch-norm parameters of one layer/direction (suffix "_l0", "_l0_reverse", or "" for a
cell), G = 4H gate columns (3H for a GRU), H hidden, S = bn_max_steps; a GRU has no c parts:

    bn_x_weight{sfx} [G]   gamma of BN_x (no beta: the LSTM bias covers it)
    bn_h_weight{sfx} [G]   gamma of BN_h (no beta)
    bn_c_weight{sfx} [H]   gamma of BN_c;  bn_c_bias{sfx} [H]  beta of BN_c
    bn_{x,h,c}_running_{mean,var}{sfx} [S, G or H]   per-step running statistics (buffers)

gammas start at 0.1 and betas at 0 (Cooijmans et al.).

Layer-norm parameters (layer_norm=True), gains start at 1 and biases at 0 (Ba et al.):

    ln_x_weight{sfx}, ln_x_bias{sfx} [G]   LN of x @ W_ih^T (the LSTM bias is added after)
    ln_h_weight{sfx}, ln_h_bias{sfx} [G]   LN of h @ W_hh^T
    ln_c_weight{sfx}, ln_c_bias{sfx} [H]   LN of c before the output tanh (LSTM only)
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..core.contract import CellKind, MaskMode, NormMode, RecurrentBN, RecurrentLN
from ..ops.decision import check_backend_name

BN_GAMMA_INIT = 0.1

# The keyword-only options of LSTM and LSTMCell (beyond torch's own arguments) and their
# defaults: the one list that the constructors, convert() and patch() accept.
class ExportError(RuntimeError):
    """A module configuration that torch.export / torch.onnx.export cannot capture."""


OPTIONS = {
    "recurrent_dropout": 0.0,
    "variational": False,
    "batch_norm": False,
    "bn_max_steps": 1000,
    "bn_momentum": 0.1,
    "bn_eps": 1e-5,
    "zoneout": 0.0,
    "layer_norm": False,
    "weight_dropout": 0.0,
    "recompute": False,
    "backend": "auto",
}
LN_EPS = 1e-5

# Defaults set by active fusedrnn.patch(...) calls, innermost last: (owners, options), owners
# the class names ("LSTM", "LSTMCell") the patch swapped; see modules/patch.py.
_patch_defaults: list[tuple[frozenset, dict]] = []


def take_options(kwargs: dict, owner: str) -> dict:
    """Remove the fusedrnn options from a constructor's ``kwargs`` and return all of them:
    given ones, else those of the innermost active patch that swapped ``owner``'s class,
    else :data:`OPTIONS`.  Validated."""
    opts = dict(OPTIONS)
    for owners, patched in reversed(_patch_defaults):
        if owner in owners:
            opts.update(patched)
            break
    for k in [k for k in kwargs if k in OPTIONS]:
        opts[k] = kwargs.pop(k)
    validate(**opts)
    if owner.startswith("GRU") and isinstance(opts["zoneout"], (tuple, list)):
        raise ValueError(f"{owner}: zoneout is one rate (a GRU has no cell state), got {opts['zoneout']!r}")
    return opts


def check_option_names(options: dict, owner: str) -> None:
    """TypeError naming an unknown option (as Python names an unexpected keyword)."""
    for k in options:
        if k not in OPTIONS:
            raise TypeError(f"{owner}() got an unexpected keyword argument {k!r} (fusedrnn options: "
                            f"{', '.join(OPTIONS)})")


def _is_rate(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool) and 0 <= v < 1


def zoneout_rates(zoneout) -> tuple[float, float]:
    """The (cell, hidden) zoneout rates of the ``zoneout`` option (a float sets both)."""
    if isinstance(zoneout, (tuple, list)):
        return float(zoneout[0]), float(zoneout[1])
    return float(zoneout), float(zoneout)


def validate(recurrent_dropout, variational, batch_norm, bn_max_steps, bn_momentum, bn_eps, backend,
             zoneout=0.0, layer_norm=False, weight_dropout=0.0, recompute=False):
    """Check the regularizer options; raises ValueError / TypeError naming the argument."""
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute should be of type bool, got: {type(recompute).__name__}")
    if isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2 or not all(_is_rate(z) for z in zoneout):
            raise ValueError("zoneout should be a number in range [0, 1) or a (cell, hidden) pair of them, "
                             f"got {zoneout!r}")
    elif not _is_rate(zoneout):
        raise ValueError("zoneout should be a number in range [0, 1) (the probability that a unit keeps its "
                         f"previous value) or a (cell, hidden) pair of them, got {zoneout!r}")
    if not isinstance(layer_norm, bool):
        raise TypeError(f"layer_norm should be of type bool, got: {type(layer_norm).__name__}")
    if layer_norm and batch_norm is True:
        raise ValueError("layer_norm=True and batch_norm=True cannot be combined: both normalise the same "
                         "pre-activations and the cell state; choose one")
    if not _is_rate(weight_dropout):
        raise ValueError("weight_dropout should be a number in range [0, 1) representing the probability of "
                         f"an element of weight_hh being zeroed, got {weight_dropout!r}")
    if (
        not isinstance(recurrent_dropout, numbers.Number)
        or isinstance(recurrent_dropout, bool)
        or not 0 <= recurrent_dropout < 1
    ):
        raise ValueError(
            "recurrent_dropout should be a number in range [0, 1) representing the "
            f"probability of an element of h being zeroed, got {recurrent_dropout!r}"
        )
    if not isinstance(variational, bool):
        raise TypeError(f"variational should be of type bool, got: {type(variational).__name__}")
    if not isinstance(batch_norm, bool):
        raise TypeError(f"batch_norm should be of type bool, got: {type(batch_norm).__name__}")
    if not isinstance(bn_max_steps, int) or isinstance(bn_max_steps, bool) or bn_max_steps < 1:
        raise ValueError(f"bn_max_steps should be an integer >= 1, got {bn_max_steps!r}")
    if (
        not isinstance(bn_momentum, numbers.Number)
        or isinstance(bn_momentum, bool)
        or not 0 <= bn_momentum <= 1
    ):
        raise ValueError(f"bn_momentum should be a number in range [0, 1], got {bn_momentum!r}")
    if not isinstance(bn_eps, numbers.Number) or isinstance(bn_eps, bool) or not bn_eps > 0:
        raise ValueError(f"bn_eps should be a number > 0, got {bn_eps!r}")
    check_backend_name(backend)


class RegularizedMixin:
    """Holds the options and the norm parameters of one module (LSTM or GRU: ``_cell``)."""

    _cell = CellKind.LSTM

    def _init_regularizers(self, recurrent_dropout, variational, batch_norm, bn_max_steps,
                           bn_momentum, bn_eps, backend, zoneout=0.0, layer_norm=False, weight_dropout=0.0,
                           recompute=False):
        zc, zh = zoneout_rates(zoneout)
        self.zoneout = zc if zc == zh else (zc, zh)
        self.layer_norm = layer_norm
        self.weight_dropout = float(weight_dropout)
        self.recompute = recompute
        self.recurrent_dropout = float(recurrent_dropout)
        self.variational = variational
        self.batch_norm = batch_norm
        self.bn_max_steps = bn_max_steps
        self.bn_momentum = float(bn_momentum)
        self.bn_eps = float(bn_eps)
        self.backend = backend

    def regularized(self, mask=None) -> bool:
        """Whether a call in the current mode uses an option torch's module lacks: batch norm,
        layer norm, zoneout (its eval mode is an expectation), an explicit mask, and in training
        recurrent dropout, weight dropout or variational between-layer dropout (the one rule of
        LSTM and LSTMCell)."""
        if self.batch_norm or self.layer_norm or self.zoneout_active() or mask is not None:
            return True
        if not self.training:
            return False
        return (self.recurrent_dropout > 0 or self.weight_dropout > 0
                or (getattr(self, "dropout", 0) > 0 and self.variational))

    def zoneout_rates(self) -> tuple[float, float]:
        """(cell, hidden) zoneout rates."""
        return zoneout_rates(self.zoneout)

    def zoneout_active(self) -> bool:
        z = self.zoneout  # a rate, or a (cell, hidden) pair (every module call asks: kept cheap)
        return (z[0] > 0 or z[1] > 0) if isinstance(z, (tuple, list)) else z > 0

    def check_exportable(self, mask=None) -> None:
        """ExportError naming each option that makes a call impossible to export: the options
        that draw masks or batch statistics at run time in training mode, and an explicit mask.
        In eval mode they are off (batch norm runs on its running statistics)."""
        active = []
        if mask is not None:
            active.append("mask=<tensor> (an explicit mask is a run-time input of one call)")
        if self.training:
            if self.recurrent_dropout > 0:
                active.append(f"recurrent_dropout={self.recurrent_dropout:g} (masks drawn at run time)")
            if getattr(self, "dropout", 0) > 0:
                active.append(f"dropout={self.dropout:g} (masks drawn at run time)")
            if self.batch_norm:
                active.append("batch_norm=True (statistics of the batch at run time)")
            if self.zoneout_active():
                active.append(f"zoneout={self.zoneout} (masks drawn at run time)")
            if self.weight_dropout > 0:
                active.append(f"weight_dropout={self.weight_dropout:g} (a weight mask drawn at run time)")
        if active:
            raise ExportError(f"fusedrnn.{type(self).__name__} cannot be exported with " + "; ".join(active)
                              + ". Export the model in eval mode (model.eval()), where these are off"
                              + (" and batch norm uses its running statistics" if self.batch_norm else "")
                              + (" and zoneout its expectation" if self.zoneout_active() else "") + ".")

    def _mask_mode(self) -> MaskMode:
        """The recurrent mask of a call in the current mode."""
        if not (self.training and self.recurrent_dropout > 0):
            return MaskMode.NONE
        return MaskMode.SHARED if self.variational else MaskMode.PER_STEP

    def _norm_mode(self) -> NormMode:
        if self.layer_norm:
            return NormMode.LAYER
        if not self.batch_norm:
            return NormMode.NONE
        return NormMode.BATCH_TRAIN if self.training else NormMode.BATCH_EVAL

    def _norm_parts(self) -> str:
        """The norms' parts: x, h and the LSTM's c (a GRU has no cell state)."""
        return "xhc" if self._cell == CellKind.LSTM else "xh"

    def _add_bn(self: nn.Module, suffix: str, hidden_size: int, factory_kwargs) -> None:
        G, H, S = self._cell.gates * hidden_size, hidden_size, self.bn_max_steps
        for name, n in (("bn_x_weight", G), ("bn_h_weight", G), ("bn_c_weight", H), ("bn_c_bias", H)):
            if name[3] in self._norm_parts():
                self.register_parameter(name + suffix, nn.Parameter(torch.empty(n, **factory_kwargs)))
        for part, n in (("x", G), ("h", G), ("c", H)):
            if part in self._norm_parts():
                self.register_buffer(f"bn_{part}_running_mean{suffix}", torch.empty(S, n, **factory_kwargs))
                self.register_buffer(f"bn_{part}_running_var{suffix}", torch.empty(S, n, **factory_kwargs))
        self._reset_bn(suffix)

    @torch.no_grad()
    def _reset_bn(self: nn.Module, suffix: str) -> None:
        for part in self._norm_parts():
            getattr(self, f"bn_{part}_weight{suffix}").fill_(BN_GAMMA_INIT)
            getattr(self, f"bn_{part}_running_mean{suffix}").zero_()
            getattr(self, f"bn_{part}_running_var{suffix}").fill_(1.0)
        if "c" in self._norm_parts():
            getattr(self, "bn_c_bias" + suffix).zero_()

    def _add_ln(self: nn.Module, suffix: str, hidden_size: int, factory_kwargs) -> None:
        G, H = self._cell.gates * hidden_size, hidden_size
        for part, n in (("x", G), ("h", G), ("c", H)):
            if part in self._norm_parts():
                self.register_parameter(f"ln_{part}_weight{suffix}", nn.Parameter(torch.empty(n, **factory_kwargs)))
                self.register_parameter(f"ln_{part}_bias{suffix}", nn.Parameter(torch.empty(n, **factory_kwargs)))
        self._reset_ln(suffix)

    @torch.no_grad()
    def _reset_ln(self: nn.Module, suffix: str) -> None:
        for part in self._norm_parts():
            getattr(self, f"ln_{part}_weight{suffix}").fill_(1.0)
            getattr(self, f"ln_{part}_bias{suffix}").zero_()

    def _ln_state(self: nn.Module, suffix: str) -> RecurrentLN:
        g = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        return RecurrentLN(weight_x=g("ln_x_weight"), bias_x=g("ln_x_bias"), weight_h=g("ln_h_weight"),
                           bias_h=g("ln_h_bias"), weight_c=g("ln_c_weight"), bias_c=g("ln_c_bias"), eps=LN_EPS,
                           recompute=self._recomputes())

    def _norm_state(self, suffix: str, step_offset: int = 0):
        """The recurrence's ``norm`` argument: batch norm, layer norm, or None."""
        if self.layer_norm:
            return self._ln_state(suffix)
        return self._bn_state(suffix, step_offset) if self.batch_norm else None

    def _bn_state(self: nn.Module, suffix: str, step_offset: int = 0) -> RecurrentBN:
        g = lambda name: getattr(self, name + suffix, None)  # noqa: E731 (a GRU's c parts: None)
        return RecurrentBN(
            weight_x=g("bn_x_weight"), weight_h=g("bn_h_weight"), weight_c=g("bn_c_weight"),
            bias_c=g("bn_c_bias"),
            running_mean_x=g("bn_x_running_mean"), running_var_x=g("bn_x_running_var"),
            running_mean_h=g("bn_h_running_mean"), running_var_h=g("bn_h_running_var"),
            running_mean_c=g("bn_c_running_mean"), running_var_c=g("bn_c_running_var"),
            training=self.training, momentum=self.bn_momentum, eps=self.bn_eps,
            step_offset=step_offset, recompute=self._recomputes(),
        )

    def _recomputes(self) -> bool:
        """The ``recompute`` option (False in a module pickled before it existed)."""
        return getattr(self, "recompute", False)

    def _check_bn_batch(self: nn.Module, batch_size: int) -> None:
        if self.batch_norm and self.training and batch_size == 1:
            raise ValueError(
                "batch_norm in training needs more than one sequence per batch to compute "
                f"batch statistics, got input batch size {batch_size} (call .eval() to use "
                "the running statistics)"
            )  # an empty batch (0) runs and returns empty outputs, as nn.LSTM does

    def _regularizer_repr(self) -> str:
        s = ""
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if self.variational:
            s += ", variational=True"
        if self.batch_norm:
            s += f", batch_norm=True, bn_max_steps={self.bn_max_steps}"
            if self.bn_momentum != 0.1:
                s += f", bn_momentum={self.bn_momentum}"
            if self.bn_eps != 1e-5:
                s += f", bn_eps={self.bn_eps}"
        if self.zoneout_active():
            s += f", zoneout={self.zoneout}"
        if self.layer_norm:
            s += ", layer_norm=True"
        if self.weight_dropout:
            s += f", weight_dropout={self.weight_dropout}"
        if self._recomputes():
            s += ", recompute=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s
