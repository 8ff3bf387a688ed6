"""The op layer: the one op contract, planning, and the ops that call the planned backend.

    modules (LSTM, LSTMCell)  ->  ops (this package)  ->  backends (reference | native | cuda | triton)

- :mod:`.contract`: Config, MaskMode, NormMode, RecurrentBN, RecurrentLN, Zoneout, the Backend
  protocol;
- :mod:`.plan`: one plan per module call (torch's own module, or a backend and a dtype);
- :mod:`.dispatch`: which backend serves a configuration (:func:`available_backends`,
  :func:`explain_config`); :mod:`.evidence`: what real GPUs have shown;
- :mod:`.schema`: the layer-op schema every op family shares;
- :func:`lstm_layer`: one layer, one direction, a whole sequence (input projection +
  recurrence); :func:`lstm_recurrence`: the recurrence alone; :func:`lstm_cell`: one step;
- :mod:`.dropout`: the masks.
"""

from .contract import (Backend, BackendError, BatchStats, Config, MaskMode, NormMode, RecurrenceResult,
                       RecurrentBN, RecurrentLN, Zoneout)
from .cell import lstm_cell
from .dispatch import PREFERENCE, available_backends, check_backend_name, explain_config
from .dropout import dropout_mask, recurrent_mask, survival_probability, zoneout_weights
from .layer import autocast_dtype, check_recurrence_args, lstm_layer, lstm_recurrence, update_running_stats
from .plan import Plan, exporting, plan_module, plan_op

__all__ = [
    "Backend",
    "BackendError",
    "BatchStats",
    "Config",
    "MaskMode",
    "NormMode",
    "PREFERENCE",
    "Plan",
    "RecurrenceResult",
    "RecurrentBN",
    "RecurrentLN",
    "Zoneout",
    "zoneout_weights",
    "autocast_dtype",
    "available_backends",
    "check_backend_name",
    "check_recurrence_args",
    "dropout_mask",
    "explain_config",
    "lstm_cell",
    "lstm_layer",
    "lstm_recurrence",
    "exporting",
    "plan_module",
    "plan_op",
    "recurrent_mask",
    "survival_probability",
    "update_running_stats",
]
