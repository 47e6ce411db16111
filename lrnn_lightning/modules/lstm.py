from __future__ import annotations

import torch
from torch import nn


class LSTMCore(nn.Module):
    """A stack of LSTM layers with dropout between them (cuDNN on GPU)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.output_size = input_size, hidden_size
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, state=None):
        return self.rnn(x, state)
