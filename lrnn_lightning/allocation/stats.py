"""Loss statistics for reallocation: ``row_loss[w, i] += -log P_row(i | context)`` for every training
target ``w`` (and likewise ``col_loss[w, j]``), keyed by the target word, float32, ``V x R`` / ``V x C``."""

from __future__ import annotations

import torch
from torch import nn


class LossStatistics(nn.Module):
    """Accumulates per-word row and column losses; not saved in checkpoints (rebuilt every round)."""

    def __init__(self, vocab_size: int, rows: int, cols: int):
        super().__init__()
        self.vocab_size, self.rows, self.cols = vocab_size, rows, cols
        self.enabled = False
        self.register_buffer("row_loss", torch.zeros(0), persistent=False)
        self.register_buffer("col_loss", torch.zeros(0), persistent=False)
        self.register_buffer("count", torch.zeros(0), persistent=False)

    def start(self) -> None:
        """Zero the statistics (allocating them on first use) and begin accumulating."""
        device = self.row_loss.device
        if self.row_loss.numel() == 0:
            self.row_loss = torch.zeros(self.vocab_size, self.rows, device=device)
            self.col_loss = torch.zeros(self.vocab_size, self.cols, device=device)
            self.count = torch.zeros(self.vocab_size, device=device)
        else:
            self.row_loss.zero_()
            self.col_loss.zero_()
            self.count.zero_()
        self.enabled = True

    def stop(self) -> None:
        self.enabled = False

    def release(self) -> None:
        """Free the V x R and V x C buffers between rounds."""
        self.enabled = False
        device = self.row_loss.device
        self.row_loss = torch.zeros(0, device=device)
        self.col_loss = torch.zeros(0, device=device)
        self.count = torch.zeros(0, device=device)

    @torch.no_grad()
    def add(self, targets: torch.Tensor, row_logp: torch.Tensor, col_logp: torch.Tensor) -> None:
        """``targets[N]`` (negative: ignored), ``row_logp[N, R]``, ``col_logp[N, C]`` (log-probabilities)."""
        keep = targets >= 0
        t = targets[keep]
        self.row_loss.index_add_(0, t, -row_logp[keep].float())
        self.col_loss.index_add_(0, t, -col_logp[keep].float())
        self.count.index_add_(0, t, torch.ones_like(t, dtype=torch.float32))
