"""Sequence models: a Caffe2-style recurrent engine for any cell.

- :class:`RecurrentNetwork` runs a step :class:`convnet.Net` over time with Caffe2's links
  (states, per-step inputs, static inputs), BPTT, ``recompute``, ``forward_only`` and a
  static unrolled mode;
- cells (:class:`LSTMCell`, :class:`MILSTMCell`, :class:`GRUCell`, :class:`AttentionCell`,
  :class:`MultiRNNCell`) are small nets of ordinary layers, run over a sequence by
  :class:`CellRunner` (one cell) or :class:`LayeredRunner` (one cell per layer);
- Caffe's :class:`LSTM` and :class:`RNN` layers (``cont``, ``expose_hidden``);
- :func:`beam_search` and :func:`greedy_decode` over any decoder step net.
"""

from convnet.rnn.attention import Attention
from convnet.rnn.beam import beam_search, decoder_net, greedy_decode
from convnet.rnn.cells import AttentionCell, Cell, GRUCell, LSTMCell, MILSTMCell, MultiRNNCell
from convnet.rnn.engine import RecurrentNetwork
from convnet.rnn.layers import LSTM, RNN, CellLayer
from convnet.rnn.runner import CellRunner, LayeredRunner

__all__ = ["RecurrentNetwork", "Cell", "LSTMCell", "MILSTMCell", "GRUCell", "AttentionCell",
           "MultiRNNCell", "CellRunner", "LayeredRunner", "CellLayer", "LSTM", "RNN", "Attention",
           "beam_search", "greedy_decode", "decoder_net"]
