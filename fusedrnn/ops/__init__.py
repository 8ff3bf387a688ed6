"""The op layer: deciding what runs a call, and the ops that call the chosen backend.

    modules (LSTM, LSTMCell)  ->  ops (this package)  ->  backends  ->  core (contract, schema)

- :mod:`.decision`: one :class:`Decision` per module or op call (torch's own module, or a
  backend and a dtype), the backend order and :func:`available_backends`,
  :func:`explain_config`; :mod:`.evidence`: what real GPUs have shown;
- :func:`lstm_layer` / :func:`gru_layer`: one layer, one direction, a whole sequence (input
  projection + recurrence); :func:`lstm_recurrence` / :func:`gru_recurrence`: the recurrence
  alone; :func:`lstm_cell` / :func:`gru_cell`: one step;
- :mod:`.dropout`: the masks.

The contract's types (Config, MaskMode, NormMode, RecurrentBN, RecurrentLN, Zoneout, ...)
live in :mod:`fusedrnn.core.contract` and are re-exported here.
"""

from ..core.contract import (Backend, BackendError, BatchStats, CellKind, Config, MaskMode, NormMode,
                             RecurrenceResult, RecurrentBN, RecurrentLN, Zoneout)
from .cell import gru_cell, lstm_cell
from .decision import (PREFERENCE, Decision, available_backends, check_backend_name, decide, decide_module,
                       decide_op, explain_config, exporting)
from .dropout import dropout_mask, recurrent_mask, survival_probability, zoneout_weights
from .layer import (autocast_dtype, check_recurrence_args, gru_layer, gru_recurrence, lstm_layer, lstm_recurrence,
                    update_running_stats)

__all__ = [
    "Backend",
    "BackendError",
    "BatchStats",
    "CellKind",
    "Config",
    "Decision",
    "MaskMode",
    "NormMode",
    "PREFERENCE",
    "RecurrenceResult",
    "RecurrentBN",
    "RecurrentLN",
    "Zoneout",
    "autocast_dtype",
    "available_backends",
    "check_backend_name",
    "check_recurrence_args",
    "decide",
    "decide_module",
    "decide_op",
    "dropout_mask",
    "explain_config",
    "exporting",
    "gru_cell",
    "gru_layer",
    "gru_recurrence",
    "lstm_cell",
    "lstm_layer",
    "lstm_recurrence",
    "recurrent_mask",
    "survival_probability",
    "update_running_stats",
    "zoneout_weights",
]
