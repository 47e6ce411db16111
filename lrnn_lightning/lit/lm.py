"""The one language-model LightningModule: a recurrent core and a head, both from config."""

from __future__ import annotations

import math
import random
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lrnn_lightning.modules.state import detach_state


class LanguageModel(L.LightningModule):
    """Word-level language model trained with truncated BPTT over contiguous streams.

    The hidden state is carried across windows (detached) and reset at the start of each epoch
    and each evaluation. Perplexity is ``exp`` of the token-weighted mean loss over the whole
    split, summed over all processes; never an average of per-batch perplexities.
    """

    def __init__(
        self,
        core: nn.Module,
        head: Callable[..., nn.Module],
        vocab_size: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        **shared: Any,
    ):
        """``shared``: the model config's top-level sizes (``hidden_size``, ``dropout``, ...) that
        ``core`` and ``head`` interpolate; recorded as hyperparameters, not used directly."""
        super().__init__()
        # plain containers: checkpoints must load with torch.load(weights_only=True)
        shared = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
                  for k, v in shared.items()}
        self.save_hyperparameters(shared, logger=False)
        self.core = core
        self.head = head(vocab_size=vocab_size, input_size=core.input_size, hidden_size=core.output_size)
        self.vocab_size = vocab_size
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_monitor = scheduler_monitor
        self._state: dict[str, Any] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self.epoch_metrics: dict[str, float] = {}

    # ---- parameters --------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        return {
            "params/total": sum(p.numel() for p in self.parameters()),
            "params/embedding": sum(p.numel() for p in self.head.parameters()),
        }

    # ---- one window ---------------------------------------------------------------------------
    def _window(self, split: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        nll, state = self.head(self.core, inputs, targets, self._state.get(split))
        self._state[split] = detach_state(state)
        total, count = nll.sum(), (targets >= 0).sum()
        self._sums[split] += torch.stack([total.detach().double(), count.double()])
        return total, count

    def _reset(self, split: str) -> None:
        self._state[split] = None
        self._sums[split] = torch.zeros(2, dtype=torch.float64, device=self.device)

    def _split_loss(self, split: str) -> float:
        total, count = self.trainer.strategy.reduce(self._sums[split], reduce_op="sum").tolist()
        return total / max(count, 1.0)

    # ---- training -------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def training_step(self, batch, batch_idx):
        total, count = self._window("train", batch)
        loss = total / count.clamp_min(1)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def on_train_epoch_end(self) -> None:
        loss = self._split_loss("train")
        self.epoch_metrics.update({"train/loss": loss, "train/ppl": math.exp(min(loss, 700))})
        self.log("train/ppl", self.epoch_metrics["train/ppl"], sync_dist=True)

    # ---- evaluation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def validation_step(self, batch, batch_idx):
        self._window("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def test_step(self, batch, batch_idx):
        self._window("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _log_split(self, split: str) -> None:
        loss = self._split_loss(split)
        ppl = math.exp(min(loss, 700))
        self.epoch_metrics.update({f"{split}/loss": loss, f"{split}/ppl": ppl})
        # values are already summed over ranks, identical everywhere: sync_dist only averages equals
        self.log(f"{split}/loss", loss, sync_dist=True)
        self.log(f"{split}/ppl", ppl, prog_bar=True, sync_dist=True)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch"},
        }

    # ---- exact resume: the random streams travel with the checkpoint ----------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # plain types, so the checkpoint still loads with torch.load(weights_only=True)
            "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng_states")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        kind, key, *rest = rng["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
        random.setstate(rng["python"])
