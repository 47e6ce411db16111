"""Contiguous streams and BPTT windows (pytorch word_language_model semantics), rank-aware.

A split of ``N`` tokens has ``N`` targets: token ``p`` is predicted from the tokens before it, and
the first token from ``<eos>`` (a split starts at a sentence start). Under ``world`` processes,
rank ``r`` takes a contiguous part of the targets and cuts it into ``batch_size`` contiguous
columns read top to bottom in windows of ``bptt`` steps.

- ``pad=False`` (training): rank ``r`` takes the ``r``-th of ``world`` equal contiguous parts
  (``N // world`` targets) and cuts it into ``batch_size`` columns, trimmed to whole columns; all
  ranks see the same number of windows and no window has padding.
- ``pad=True`` (evaluation): the split is cut into ``batch_size`` columns whatever ``world`` is,
  and rank ``r`` takes the ``r``-th run of ``ceil(batch_size / world)`` consecutive columns (again
  one contiguous part). Every target belongs to exactly one rank, column and window, short
  columns are padded with ``IGNORE``, every rank runs the same number of windows, and the loss
  is the one a single process computes: perplexity does not depend on the number of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE = -100  # target id of a padded position (torch cross_entropy's default ignore_index)


class BPTTWindows(Dataset):
    """Window ``i`` is ``(inputs[L, B], targets[L, B])`` as int64 tensors; read it in order."""

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        bptt: int,
        eos_id: int,
        rank: int = 0,
        world: int = 1,
        pad: bool = False,
    ):
        if batch_size < 1 or bptt < 1:
            raise ValueError("batch_size and bptt must be positive")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        n = int(ids.shape[0])
        self.ids, self.bptt, self.eos_id = ids, bptt, eos_id
        if pad:
            rows = math.ceil(n / batch_size)
            per_rank = math.ceil(batch_size / world)
            columns = np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64)
            self.col_start = columns * rows
            self.col_len = np.clip(n - self.col_start, 0, rows)
        else:
            part = n // world
            rows = part // batch_size
            self.col_start = rank * part + rows * np.arange(batch_size, dtype=np.int64)
            self.col_len = np.full(batch_size, rows, dtype=np.int64)
        if rows == 0:
            raise ValueError(
                f"a split of {n} tokens is too short for {world} process(es) x batch size {batch_size}: "
                "lower the batch size or use more data"
            )
        self.rows = rows
        self.num_targets = int(self.col_len.sum())

    def __len__(self) -> int:
        return math.ceil(self.rows / self.bptt)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        t = np.arange(i * self.bptt, min((i + 1) * self.bptt, self.rows), dtype=np.int64)[:, None]
        pos = self.col_start[None, :] + t
        valid = t < self.col_len[None, :]
        safe = np.where(valid, pos, 0)
        targets = np.where(valid, self.ids[safe], IGNORE)
        prev = np.where(valid, safe - 1, 0)
        inputs = np.where(valid & (prev >= 0), self.ids[np.maximum(prev, 0)], self.eos_id)
        return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64))
