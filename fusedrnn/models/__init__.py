"""Reference models built on :class:`fusedrnn.LSTM` and :class:`fusedrnn.LSTMCell` only.

Every model takes ``backend=`` (passed to its LSTM / LSTMCell) and the regularizer options
``recurrent_dropout``, ``variational`` and ``batch_norm``.  Inputs are batch-first.

- :class:`LanguageModel`       tokens [B, T] -> logits [B, T, V]
- :class:`SequenceTagger`      tokens [B, T] or features [B, T, I] -> logits [B, T, C]
- :class:`SequenceClassifier`  tokens or features -> logits [B, C] (last / max / mean pooling)
- :class:`Seq2Seq`             src [B, S] -> logits [B, T, V]; greedy / beam-search decoding;
                               with :class:`BahdanauAttention` or :class:`LuongAttention`
- :class:`CaptionDecoder`      features [B, F] -> logits [B, T, V]; greedy decoding
- :class:`NTM`                 x [B, T, I] -> logits [B, T, O] (Neural Turing Machine)
- :class:`StackRNN`            x [B, T, I] -> logits [B, T, O] (stack-augmented RNN)
"""

from .attention import BahdanauAttention, LuongAttention
from .caption import CaptionDecoder
from .lm import LanguageModel
from .ntm import NTM
from .seq2seq import Seq2Seq
from .stack import StackRNN
from .tagger import SequenceClassifier, SequenceTagger

__all__ = ["LanguageModel", "SequenceTagger", "SequenceClassifier", "Seq2Seq", "BahdanauAttention",
           "LuongAttention", "CaptionDecoder", "NTM", "StackRNN"]
