"""LightRNN (Li et al., NIPS 2016): the 2-component shared embedding over a word table.

Word ``w`` sits in cell ``(r(w), c(w))`` of an ``R x C`` table (``R = C = ceil(sqrt(V))``) and is
embedded by the row vector ``x_r`` plus the column vector ``x_c``. The core reads
``x_r(w_1), x_c(w_1), x_r(w_2), x_c(w_2), ...``: the state after ``x_c(w_{t-1})`` predicts the
row of ``w_t``; the TRUE row vector of ``w_t`` is then fed and that state predicts its column:

    P(w_t | context) = P_row(r(w_t) | h_{t-1}^c) * P_col(c(w_t) | h_t^r)

Empty cells (``R*C > V``) are masked out of the column softmax, and rows with no word out of the
row softmax, so the model is a proper distribution over the V words.
"""

from __future__ import annotations

import torch
from torch import nn

from lrnn_lightning.allocation.stats import LossStatistics
from lrnn_lightning.allocation.table import WordTable
from lrnn_lightning.modules.state import repeat_state


class LightRNNHead(nn.Module):
    def __init__(self, vocab_size: int, input_size: int, hidden_size: int, dropout: float = 0.0,
                 table_init: str = "random", seed: int = 0):
        super().__init__()
        self.vocab_size = vocab_size
        self.table = WordTable(vocab_size, init=table_init, seed=seed)
        R, C = self.table.rows, self.table.cols
        self.row_embedding = nn.Embedding(R, input_size)
        self.col_embedding = nn.Embedding(C, input_size)
        self.row_decoder = nn.Linear(hidden_size, R)
        self.col_decoder = nn.Linear(hidden_size, C)
        self.drop = nn.Dropout(dropout)
        self.stats = LossStatistics(vocab_size, R, C)
        for emb in (self.row_embedding, self.col_embedding):
            nn.init.uniform_(emb.weight, -0.1, 0.1)
        for dec in (self.row_decoder, self.col_decoder):
            nn.init.uniform_(dec.weight, -0.1, 0.1)
            nn.init.zeros_(dec.bias)

    # ---- log-probabilities with empty cells masked -----------------------------------------------
    def _row_logp(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.table.occupied.any(1), float("-inf")).log_softmax(-1)

    def _col_logp(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.table.occupied[rows], float("-inf")).log_softmax(-1)

    # ---- training / evaluation ---------------------------------------------------------------------
    def forward(self, core: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-position NLL ``[L, B]`` (row + column; 0 where the target is ignored) and the new state.

        The carried state has read every earlier word but the column of the last one, so a window
        starts by feeding ``x_c`` of its first input; a fresh stream (``state is None``) first reads
        the row vector of its first input too.
        """
        L, B = inputs.shape
        t = targets.clamp_min(0)
        rows_t, cols_t = self.table.row(t), self.table.col(t)
        x = torch.stack([self.col_embedding(self.table.col(inputs)), self.row_embedding(rows_t)], 1).flatten(0, 1)
        if state is None:
            x = torch.cat([self.row_embedding(self.table.row(inputs[:1])), x])
        h, state = core(self.drop(x), state)
        h = self.drop(h[-2 * L :]).view(L, 2, B, -1)
        row_logits = self.row_decoder(h[:, 0]).float()
        col_logits = self.col_decoder(h[:, 1]).float()
        row_lp, col_lp = self._row_logp(row_logits), self._col_logp(col_logits, rows_t)
        nll = -(row_lp.gather(-1, rows_t[..., None]) + col_lp.gather(-1, cols_t[..., None]))[..., 0]
        nll = nll.masked_fill(targets < 0, 0.0)
        if self.stats.enabled:
            # the cost of every cell, occupied or not: unmasked log-softmax, keyed by the target
            self.stats.add(targets.flatten(), row_logits.log_softmax(-1).flatten(0, 1), col_logits.log_softmax(-1).flatten(0, 1))
        return nll, state

    # ---- full distributions and sampling ---------------------------------------------------------
    def _read(self, core: nn.Module, words: torch.Tensor, state):
        """Feed the row then the column vector of ``words[B]``; the row logits of what follows."""
        x = torch.stack([self.row_embedding(self.table.row(words)), self.col_embedding(self.table.col(words))])
        h, state = core(x, state)
        return self.row_decoder(h[-1]).float(), state

    def _col_logits_given_row(self, core: nn.Module, rows: torch.Tensor, state):
        h, _ = core(self.row_embedding(rows)[None], state)
        return self.col_decoder(h[0]).float()

    @torch.no_grad()
    def log_probs(self, core: nn.Module, inputs: torch.Tensor, state=None):
        """``log P(w | context)`` for every word ``[L, B, V]`` (one column softmax per row: slow,
        for tests, evaluation of small vocabularies and priming generation)."""
        L, B = inputs.shape
        R, C = self.table.rows, self.table.cols
        word_at = self.table.word_at()
        out = torch.empty(L, B, self.vocab_size, device=inputs.device)
        all_rows = torch.arange(R, device=inputs.device).repeat(B)
        for t in range(L):
            row_logits, state = self._read(core, inputs[t], state)
            row_lp = self._row_logp(row_logits)  # [B, R]
            col_logits = self._col_logits_given_row(core, all_rows, repeat_state(state, R)).view(B, R, C)
            col_lp = self._col_logp(col_logits, all_rows.view(B, R))  # [B, R, C]
            cell_lp = (row_lp[:, :, None] + col_lp).view(B, R * C)
            out[t] = cell_lp[:, word_at >= 0][:, torch.argsort(word_at[word_at >= 0])]
        return out, state

    @torch.no_grad()
    def sample(self, core: nn.Module, prev: torch.Tensor, state=None, temperature: float = 1.0, generator=None):
        """Read ``prev[B]``, draw a row, feed that row's vector, draw a column in it: the next word."""
        row_logits, state = self._read(core, prev, state)
        row_p = (self._row_logp(row_logits) / temperature).softmax(-1)
        rows = torch.multinomial(row_p, 1, generator=generator)[:, 0]
        col_p = (self._col_logp(self._col_logits_given_row(core, rows, state), rows) / temperature).softmax(-1)
        cols = torch.multinomial(col_p, 1, generator=generator)[:, 0]
        return self.table.word_at()[rows * self.table.cols + cols], state
