from __future__ import annotations

from typing import Any

import lightning as L


class RunMetadata(L.Callback):
    """Puts what a checkpoint needs to stand alone into it: model and data config, vocabulary."""

    KEY = "lrnn"

    def __init__(self, model_config: dict, data_config: dict, vocab: list[str]):
        self.meta = {"model_config": model_config, "data_config": data_config, "vocab": list(vocab)}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        meta = dict(self.meta)
        wandb_ids = [lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger) and lg.version]
        if wandb_ids:  # a run resumed from this checkpoint continues the same W&B run
            meta["wandb_id"] = str(wandb_ids[0])
        checkpoint[self.KEY] = meta
