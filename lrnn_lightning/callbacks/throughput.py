from __future__ import annotations

import time
from collections import deque

import lightning as L


class TokensPerSecond(L.Callback):
    """Logs ``train/tokens_per_sec`` (all processes together) over a sliding window of batches.

    Wall time between consecutive batch ends, so data loading and the optimizer step count too.
    ``epoch_tokens_per_sec`` keeps the average of the last finished epoch.
    """

    def __init__(self, window: int = 20):
        self.window = window
        self.epoch_tokens_per_sec: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start for the epoch it resumes
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._recent: deque = deque(maxlen=self.window)
        self._epoch_tokens, self._epoch_start = 0, time.perf_counter()
        self._last = self._epoch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        # training windows are never padded: numel, not a count that would sync with the GPU
        tokens = batch[1].numel() * trainer.world_size
        self._recent.append((tokens, now - self._last))
        self._last = now
        self._epoch_tokens += tokens
        seconds = sum(s for _, s in self._recent)
        if seconds > 0:
            pl_module.log("train/tokens_per_sec", sum(t for t, _ in self._recent) / seconds)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._epoch_start
        if seconds > 0 and self._epoch_tokens:
            self.epoch_tokens_per_sec = self._epoch_tokens / seconds
