"""Callbacks the interrupted-round tests add from the command line (``+callbacks.<name>._target_=round_helpers...``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigtermBeforeRound(L.Callback):
    """Sends this process a real SIGTERM as the last batch of epoch ``epoch`` starts: Lightning's
    handler records it, the batch trains, and the reallocation round at its end sees the request."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            os.kill(os.getpid(), signal.SIGTERM)
