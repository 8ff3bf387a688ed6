"""The op layer: the one op contract and the backend dispatch.

    modules (LSTM, LSTMCell)  ->  ops (this package)  ->  backends (reference | native | cuda | triton)

- :func:`lstm_layer`: one layer, one direction, a whole sequence (input projection +
  recurrence); :func:`lstm_recurrence`: the recurrence alone, which backends implement;
- :func:`lstm_cell`: one step;
- :func:`available_backends`, :func:`explain_config`: what runs where, and why.
"""

from ..backends.base import BackendError, BatchStats, Config, RecurrentBN
from .cell import lstm_cell
from .dispatch import PREFERENCE, available_backends, check_backend_name, explain_config, resolve
from .dropout import dropout_mask, recurrent_mask, survival_probability
from .layer import (autocast_dtype, check_recurrence_args, input_projection, lstm_layer, lstm_recurrence,
                    update_running_stats)

__all__ = [
    "BackendError",
    "BatchStats",
    "Config",
    "PREFERENCE",
    "RecurrentBN",
    "autocast_dtype",
    "available_backends",
    "check_recurrence_args",
    "check_backend_name",
    "dropout_mask",
    "explain_config",
    "input_projection",
    "lstm_cell",
    "lstm_layer",
    "lstm_recurrence",
    "recurrent_mask",
    "resolve",
    "survival_probability",
    "update_running_stats",
]
