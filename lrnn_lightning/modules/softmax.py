from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """Word embedding in, full softmax over the vocabulary out (optionally tied)."""

    def __init__(self, vocab_size: int, input_size: int, hidden_size: int, dropout: float = 0.0, tie_weights: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, input_size)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.drop = nn.Dropout(dropout)
        if tie_weights:
            if input_size != hidden_size:
                raise ValueError(f"tie_weights needs input size == hidden size, got {input_size} and {hidden_size}")
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if not tie_weights:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def logits(self, core: nn.Module, inputs: torch.Tensor, state=None):
        h, state = core(self.drop(self.embedding(inputs)), state)
        return self.decoder(self.drop(h)).float(), state

    def forward(self, core: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-position negative log-likelihood ``[L, B]`` (0 where the target is ignored) and the new state."""
        logits, state = self.logits(core, inputs, state)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return nll.view_as(targets), state

    def log_probs(self, core: nn.Module, inputs: torch.Tensor, state=None):
        """``log P(w | context)`` for every word: ``[L, B, V]``."""
        logits, state = self.logits(core, inputs, state)
        return logits.log_softmax(-1), state

    @torch.no_grad()
    def sample(self, core: nn.Module, prev: torch.Tensor, state=None, temperature: float = 1.0, generator=None):
        """Read ``prev[B]`` (``state`` summarizes what came before it) and draw the next word."""
        logits, state = self.logits(core, prev[None], state)
        probs = (logits[0] / temperature).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0], state
