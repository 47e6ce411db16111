"""Plain nn.Modules (no Lightning): recurrent cores and output heads.

A *core* maps ``x[L, B, input_size]`` and a state to ``h[L, B, output_size]`` and a new state.
A *head* owns the word embeddings and the output layer and drives the core: it decides what
sequence the core reads (one vector per word for a full softmax; a row and a column vector per
word for the LightRNN table).
"""

from lrnn_lightning.modules.adaptive import AdaptiveSoftmaxHead
from lrnn_lightning.modules.lightrnn import LightRNNHead
from lrnn_lightning.modules.lstm import LSTMCore
from lrnn_lightning.modules.softmax import SoftmaxHead
from lrnn_lightning.modules.state import detach_state

__all__ = ["AdaptiveSoftmaxHead", "LSTMCore", "LightRNNHead", "SoftmaxHead", "detach_state"]
