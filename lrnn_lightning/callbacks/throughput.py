from __future__ import annotations

import time

import lightning as L
import torch

from lrnn_lightning.lit.lm import is_logging_step


class TokensPerSecond(L.Callback):
    """Logs ``train/tokens_per_sec`` (all processes together): the tokens of the training steps
    since it was last logged over their wall time, at the steps Lightning sends to the loggers
    (``trainer.log_every_n_steps``); between those steps it only adds two numbers per step.

    The time of a step runs from the end of the step before it (so data loading, the optimizer step
    and the other callbacks count) to its own end; validation and the checkpoint saves that follow
    it are left out: the first step after a validation is timed from its own start.
    ``epoch_tokens_per_sec`` keeps the average of the last finished epoch (its training steps only).
    """

    def __init__(self, window: int | None = None):
        # ``window`` (batches) is accepted for configs written before the window became the logging interval
        self.window = window
        self.epoch_tokens_per_sec: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start for the epoch it resumes
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_tokens, self._epoch_seconds = 0, 0.0
        self._recent_tokens, self._recent_seconds = 0, 0.0
        self._last: float | None = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is None:  # a validation (or a checkpoint save) ran since the last step ended
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        # training windows are never padded: numel, not a count that would sync with the GPU
        tokens = batch[1].numel() * trainer.world_size
        seconds = now - self._last
        self._last = now
        self._epoch_tokens += tokens
        self._epoch_seconds += seconds
        self._recent_tokens += tokens
        self._recent_seconds += seconds
        if is_logging_step(trainer) and self._recent_seconds > 0:
            # a host tensor: a float would be copied to the module's device (a sync) and back
            pl_module.log("train/tokens_per_sec", torch.tensor(self._recent_tokens / self._recent_seconds))
            self._recent_tokens, self._recent_seconds = 0, 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._last = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_seconds > 0 and self._epoch_tokens:
            self.epoch_tokens_per_sec = self._epoch_tokens / self._epoch_seconds
