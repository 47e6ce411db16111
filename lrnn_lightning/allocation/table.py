"""The LightRNN word table: which cell (row, column) each word occupies."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def row_purity(rows, classes, counts) -> float:
    """How well the rows of a table match known word classes (synthetic data), in ``[0, 1]``.

    For a word ``w`` of class ``k`` in row ``r``, its share is the fraction of the training tokens
    (``counts``) of the *other* words in ``r`` that belong to ``k``; purity is the mean share over
    the training tokens (``sum_w counts[w] * share[w] / sum_w counts[w]``): how much of a token's
    row it shares with its own class. A table whose rows are the classes has purity 1 (also when a
    class spans several rows of its own), a random table about ``1 / #classes`` (0.012 on the
    default 10,000-word, 100-class language). Words without a class (``classes < 0``: ``<eos>``,
    ``<unk>``) count neither way, nor do words whose row holds no other tokens.
    """
    rows, classes, counts = (np.asarray(x, dtype=np.int64) for x in (rows, classes, counts))
    keep = classes >= 0
    rows, classes, counts = rows[keep], classes[keep], counts[keep].astype(np.float64)
    if not len(rows):
        return float("nan")
    m = np.zeros((int(rows.max()) + 1, int(classes.max()) + 1))
    np.add.at(m, (rows, classes), counts)
    same = m[rows, classes] - counts  # tokens of the word's class in its row, the word's own left out
    others = m.sum(1)[rows] - counts  # tokens of every other classed word in its row
    ok = (others > 0) & (counts > 0)
    if not ok.any():
        return float("nan")
    return float((counts[ok] * same[ok] / others[ok]).sum() / counts[ok].sum())


def table_shape(vocab_size: int) -> tuple[int, int]:
    """``R = C = ceil(sqrt(V))``: the smallest square table with a cell for every word."""
    side = math.isqrt(max(vocab_size - 1, 0)) + 1
    return side, side


class WordTable(nn.Module):
    """A persistent buffer ``cell[V]`` (``row * C + col``), saved with the model's state dict.

    Moving words changes no parameter: embeddings and softmax weights belong to rows and columns.
    """

    def __init__(self, vocab_size: int, rows: int | None = None, cols: int | None = None,
                 init: str = "random", seed: int = 0):
        super().__init__()
        if rows is None or cols is None:
            rows, cols = table_shape(vocab_size)
        if rows * cols < vocab_size:
            raise ValueError(f"a {rows}x{cols} table has fewer cells than {vocab_size} words")
        self.vocab_size, self.rows, self.cols = vocab_size, rows, cols
        self.register_buffer("cell", self.initial_cells(init, seed))
        self.register_buffer("occupied", torch.zeros(rows, cols, dtype=torch.bool), persistent=False)
        self._refresh()

    def initial_cells(self, init: str, seed: int) -> torch.Tensor:
        V, R, C = self.vocab_size, self.rows, self.cols
        if init == "random":
            g = torch.Generator().manual_seed(seed)
            return torch.randperm(R * C, generator=g)[:V]
        if init == "frequency":
            # ids are in order of decreasing frequency: deal the words over the rows like cards, so
            # that the frequent words sit in different rows (each row's softmax stays informative)
            i = torch.arange(V)
            return (i % R) * C + i // R
        if init == "frequency_rows":
            # frequency binning as in class-based softmax: the C most frequent words fill row 0, the
            # next C row 1, ... (the row softmax then predicts a frequency band)
            return torch.arange(V)
        raise ValueError(f"unknown table init '{init}': use 'random', 'frequency' or 'frequency_rows'")

    def _refresh(self) -> None:
        occupied = torch.zeros(self.rows * self.cols, dtype=torch.bool, device=self.cell.device)
        occupied[self.cell] = True
        self.occupied = occupied.view(self.rows, self.cols)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def row(self, words: torch.Tensor) -> torch.Tensor:
        return self.cell[words] // self.cols

    def col(self, words: torch.Tensor) -> torch.Tensor:
        return self.cell[words] % self.cols

    def word_at(self) -> torch.Tensor:
        """``[R * C]``: the word in each cell, -1 where empty."""
        out = torch.full((self.rows * self.cols,), -1, dtype=torch.long, device=self.cell.device)
        out[self.cell] = torch.arange(self.vocab_size, device=self.cell.device)
        return out

    @torch.no_grad()
    def assign(self, cells: torch.Tensor) -> int:
        """Move the words to ``cells`` (a permutation into the table); returns how many moved."""
        cells = torch.as_tensor(cells, dtype=torch.long).to(self.cell.device)
        if cells.shape != self.cell.shape:
            raise ValueError(f"expected {self.vocab_size} cells, got {tuple(cells.shape)}")
        if cells.min() < 0 or cells.max() >= self.rows * self.cols or cells.unique().numel() != cells.numel():
            raise ValueError("cells must be distinct cells of the table")
        moved = int((cells != self.cell).sum())
        self.cell.copy_(cells)
        self._refresh()
        return moved

    def fingerprint(self) -> str:
        """A short hash of the allocation (compare tables across processes or checkpoints)."""
        import hashlib

        return hashlib.sha256(self.cell.cpu().numpy().tobytes()).hexdigest()[:12]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, rows={self.rows}, cols={self.cols}"
