"""Adaptive softmax (Grave et al., 2017) over a frequency-sorted vocabulary: the baseline head.

Word ids are in order of decreasing training frequency (``lrnn_lightning.data.Vocabulary``), so
the cutoffs ``c_1 < c_2 < ... < V`` split the vocabulary into a head of the ``c_1`` most frequent
words, which shares one softmax with one entry per tail cluster, and tail clusters
``[c_i, c_{i+1})`` whose softmax is computed only for the positions whose target lies in them,
through a projection ``div_value**i`` times smaller than the hidden size:

    P(w | h) = P_head(w | h)                                      for w < c_1
    P(w | h) = P_head(cluster i | h) * P_i(w | proj_i(h))         for c_i <= w < c_{i+1}

(``torch.nn.AdaptiveLogSoftmaxWithLoss``). The model is a proper distribution over the V words.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lrnn_lightning.errors import UserError


def default_cutoffs(vocab_size: int) -> list[int]:
    """``[V/20, V/5]``: 5% of the words in the head (the common ``[2000, 10000]`` at V = 40,000-50,000;
    ``[500, 2000]`` for PTB's 10,000), a middle cluster of the next 15% and the rare 80% last."""
    cuts = sorted({c for c in (vocab_size // 20, vocab_size // 5) if 0 < c < vocab_size})
    return cuts or [max(1, vocab_size // 2)]


def check_cutoffs(cutoffs: Sequence[int] | None, vocab_size: int) -> list[int]:
    """The cutoffs to use (``None`` or ``"auto"``: ``default_cutoffs``); a ``UserError`` that says
    what is wrong unless they are increasing integers between 1 and ``vocab_size - 1``."""
    if cutoffs is None or (isinstance(cutoffs, str) and cutoffs == "auto"):
        if vocab_size < 2:
            raise UserError(f"the adaptive softmax needs at least 2 words, the vocabulary has {vocab_size}")
        return default_cutoffs(vocab_size)
    fix = (f"set model.cutoffs to increasing word counts below the vocabulary size {vocab_size}, e.g. "
           f"model.cutoffs=[{','.join(map(str, default_cutoffs(max(vocab_size, 2))))}], or model.cutoffs=auto")
    def integral(c) -> bool:
        return (isinstance(c, int) and not isinstance(c, bool)) or (isinstance(c, float) and c.is_integer())

    if isinstance(cutoffs, (str, bytes)) or not hasattr(cutoffs, "__iter__") or not all(map(integral, cutoffs)):
        raise UserError(f"model.cutoffs must be a list of integers, got {cutoffs!r}: {fix}")
    cuts = [int(c) for c in cutoffs]
    if not cuts:
        raise UserError(f"model.cutoffs is empty: {fix}")
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise UserError(f"model.cutoffs must be strictly increasing, got {cuts}: {fix}")
    if cuts[0] < 1 or cuts[-1] >= vocab_size:
        raise UserError(f"model.cutoffs must lie between 1 and {vocab_size - 1} (the vocabulary has {vocab_size} "
                        f"words), got {cuts}: {fix}")
    return cuts


class AdaptiveSoftmaxHead(nn.Module):
    """Word embedding in, adaptive softmax out. ``cutoffs``: see ``check_cutoffs``; ``div_value``:
    each tail cluster's projection is this many times smaller than the one before;
    ``head_bias``: a bias in the head softmax."""

    def __init__(self, vocab_size: int, input_size: int, hidden_size: int, cutoffs: Sequence[int] | str | None = None,
                 div_value: float = 4.0, head_bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if div_value <= 0:
            raise UserError(f"model.div_value must be positive, got {div_value} (4.0 is the usual value)")
        self.vocab_size = vocab_size
        self.cutoffs = check_cutoffs(cutoffs, vocab_size)
        smallest = int(hidden_size // (div_value ** len(self.cutoffs)))
        if smallest < 1:
            raise UserError(f"the last tail cluster's projection would have {hidden_size} // {div_value}**"
                            f"{len(self.cutoffs)} = 0 dimensions: use fewer model.cutoffs, a smaller model.div_value "
                            "or a larger hidden size")
        self.embedding = nn.Embedding(vocab_size, input_size)
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, self.cutoffs, div_value=div_value,
                                                      head_bias=head_bias)
        self.drop = nn.Dropout(dropout)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def hidden(self, core: nn.Module, inputs: torch.Tensor, state=None):
        h, state = core(self.drop(self.embedding(inputs)), state)
        return self.drop(h).float(), state

    def forward(self, core: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-position negative log-likelihood ``[L, B]`` (0 where the target is ignored) and the new state."""
        h, state = self.hidden(core, inputs, state)
        # the adaptive softmax computes a tail cluster only for the positions whose target is in it
        target_logp, _ = self.adaptive(h.flatten(0, 1), targets.clamp_min(0).flatten())
        nll = (-target_logp).view_as(targets).masked_fill(targets < 0, 0.0)
        return nll, state

    def log_probs(self, core: nn.Module, inputs: torch.Tensor, state=None):
        """``log P(w | context)`` for every word: ``[L, B, V]``."""
        h, state = self.hidden(core, inputs, state)
        return self.adaptive.log_prob(h.flatten(0, 1)).view(*h.shape[:2], self.vocab_size), state

    @torch.no_grad()
    def sample(self, core: nn.Module, prev: torch.Tensor, state=None, temperature: float = 1.0, generator=None):
        """Read ``prev[B]`` (``state`` summarizes what came before it) and draw the next word."""
        logp, state = self.log_probs(core, prev[None], state)
        probs = (logp[0] / temperature).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0], state
