"""The one language-model LightningModule: a recurrent core and a head, both from config."""

from __future__ import annotations

import math
import random
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lrnn_lightning.modules.state import detach_state
from lrnn_lightning.resume import epoch_cut_short, gather_ranks, to_device, windows_done

TRAIN_STATE_KEY = "lrnn_train_state"  # checkpoint key of the per-rank carried state and partial sums
LOG_WINDOW_KEY = "lrnn_log_window"  # per rank: [loss sum, steps] since train/loss was last logged


def is_logging_step(trainer) -> bool:
    """Whether Lightning sends step metrics to the loggers at the end of the current training
    batch (every ``trainer.log_every_n_steps`` optimizer steps, and when the run stops)."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(connector is not None and connector.should_update_logs)


class LanguageModel(L.LightningModule):
    """Word-level language model trained with truncated BPTT over contiguous streams.

    The hidden state is carried across windows (detached) and reset at the start of each epoch
    and each evaluation. Perplexity is ``exp`` of the token-weighted mean loss over the whole
    split, summed over all processes; never an average of per-batch perplexities.

    A checkpoint saved mid-epoch carries, per rank, the training hidden state, the epoch's partial
    loss sums and the random streams; a run resumed from it continues exactly (see
    ``lrnn_lightning.resume``).

    The training step does no host work beyond the step itself: no ``.item()``, no per-step
    ``self.log``, no host synchronisation. ``train/loss`` is the mean loss of the steps since it
    was last logged, summed on the device and read (one sync) and logged (with ``train/lr``) only at
    the steps Lightning sends to the loggers (``trainer.log_every_n_steps``); that running sum
    travels through checkpoints too.
    """

    def __init__(
        self,
        core: nn.Module,
        head: Callable[..., nn.Module],
        vocab_size: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        compile: bool = False,
        compile_options: dict | None = None,
        **shared: Any,
    ):
        """``shared``: the model config's top-level sizes (``hidden_size``, ``dropout``, ...) that
        ``core`` and ``head`` interpolate; recorded as hyperparameters, not used directly.
        ``compile``: compile the core and the head with ``torch.compile`` (keyword arguments
        ``compile_options``) when training starts; see ``compile_modules``."""
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
        self.use_compile = bool(compile)  # not self.compile: that is nn.Module.compile
        options = (OmegaConf.to_container(compile_options, resolve=True)
                   if isinstance(compile_options, DictConfig) else dict(compile_options or {}))
        self.compile_options = {k: v for k, v in options.items() if v is not None}  # null: torch's default
        self._state: dict[str, Any] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._log_window: torch.Tensor | None = None  # [loss sum, steps] since train/loss was last logged
        self.epoch_metrics: dict[str, float] = {}
        # read from a checkpoint by on_load_checkpoint, applied by on_train_start
        self._resumed_rng: dict | None = None
        self._resumed_train: dict | None = None
        self._resumed_window: torch.Tensor | None = None
        # the restored mid-epoch state must survive the epoch-start hook of the epoch it belongs to
        self._keep_train_state = False

    # ---- parameters --------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        return {
            "params/total": sum(p.numel() for p in self.parameters()),
            "params/embedding": sum(p.numel() for p in self.head.parameters()),
        }

    # ---- torch.compile ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.use_compile and stage == "fit":
            self.compile_modules()

    def compile_modules(self) -> None:
        """Compile the core and the head in place (``nn.Module.compile``: the module stays itself, so
        its ``state_dict`` keys carry no ``_orig_mod.`` prefix and checkpoints of compiled and
        uncompiled runs are interchangeable). Once per module; evaluation reuses the compiled code."""
        for module in (self.core, self.head):
            if getattr(module, "_compiled_call_impl", None) is None:
                module.compile(**self.compile_options)

    # ---- one window ---------------------------------------------------------------------------
    def _window(self, split: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        nll, state = self.head(self.core, inputs, targets, self._state.get(split))
        self._state[split] = detach_state(state)
        total = nll.sum()
        if split == "train":  # training windows are never padded: no count to reduce on the device
            count = targets.numel()
            sums = self._sums[split]
            sums[0] += total.detach()
            sums[1] += count
        else:
            count = (targets >= 0).sum()
            self._sums[split] += torch.stack([total.detach().double(), count.double()])
        return total, count

    def _reset(self, split: str) -> None:
        self._state[split] = None
        self._sums[split] = torch.zeros(2, dtype=torch.float64, device=self.device)

    def _split_loss(self, split: str) -> float:
        total, count = self.trainer.strategy.reduce(self._sums[split], reduce_op="sum").tolist()
        return total / max(count, 1.0)

    # ---- training -------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Applies what a resumed checkpoint brought, on this rank's device, right before training:
        nothing between the restore and here may use the random streams of the first step."""
        rng, train, window = self._resumed_rng, self._resumed_train, self._resumed_window
        self._resumed_rng = self._resumed_train = self._resumed_window = None
        self._log_window = (window.to(self.device, torch.float64) if window is not None
                            else torch.zeros(2, dtype=torch.float64, device=self.device))
        if train is not None:
            self._state["train"] = to_device(train["state"], self.device)
            self._sums["train"] = train["sums"].to(self.device, torch.float64)
            self._keep_train_state = True
        elif "train" not in self._sums:
            self._reset("train")
        if rng is not None:
            _set_rng_state(rng)
        self._epoch_started()

    def _epoch_started(self) -> None:
        """Schedulers that change the rate by epoch number (``PlateauWithFinalDecay``) hear of each
        epoch before its first step; also at the start of a resumed run (Lightning may not call
        ``on_train_epoch_start`` for the epoch a run resumes in). They act once."""
        for config in self.trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "epoch_started"):
                config.scheduler.epoch_started(self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self._epoch_started()
        if self._keep_train_state:  # the first epoch start after a mid-epoch resume, if Lightning calls it
            self._keep_train_state = False
            return
        self._reset("train")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._keep_train_state = False  # the resumed epoch is under way: the next epoch start resets

    def training_step(self, batch, batch_idx):
        total, count = self._window("train", batch)
        loss = total / max(count, 1)
        window = self._log_window
        if window is None:  # a training step outside Trainer.fit
            window = self._log_window = torch.zeros(2, dtype=torch.float64, device=loss.device)
        window[0] += loss.detach()
        window[1] += 1
        if is_logging_step(self._trainer):
            # host tensors: Lightning turns progress-bar metrics into numbers after EVERY batch, which for a
            # tensor on the GPU is a sync per step; read here, it is one sync per logging step
            self.log("train/loss", (window[0] / window[1].clamp_min(1)).float().cpu(), prog_bar=True)
            self.log("train/lr", torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"])))
            window.zero_()
        return loss

    def on_train_epoch_end(self) -> None:
        loss = self._split_loss("train")
        self.epoch_metrics.update({"train/loss": loss, "train/ppl": math.exp(min(loss, 700))})
        if epoch_cut_short(self.trainer):
            # a stop in the middle of the epoch (max_steps, max_time, a signal): the epoch is not over,
            # its train/ppl is logged once, when the resumed run finishes it
            return
        self.log("train/ppl", self.epoch_metrics["train/ppl"], sync_dist=True)
        # Lightning keeps its fit loop "restarting" through the whole epoch a run resumed in, and then
        # skips that epoch's scheduler step (ReduceLROnPlateau included: it fears the metrics were
        # not saved). This epoch ran to its end and validated afresh, so it is an ordinary epoch end:
        # without this, a run resumed mid-epoch steps its scheduler once less than an uninterrupted one.
        fit_loop = self.trainer.fit_loop
        if fit_loop.restarting and fit_loop.epoch_loop._num_ready_batches_reached():
            fit_loop._restarting = False

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

    # ---- exact resume: random streams, and mid-epoch the carried state, per rank ------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # runs on every rank (rank 0 writes the file): each rank's entry is gathered into a list
        mid_epoch = windows_done(self._trainer) > 0
        mine: dict[str, Any] = {"rng": _rng_state()}
        if mid_epoch:
            mine["train"] = {"state": self._state.get("train"), "sums": self._sums["train"].detach()}
        if self._log_window is not None:
            mine["log_window"] = self._log_window.detach()
        ranks = gather_ranks(mine)
        checkpoint["rng_states"] = [r["rng"] for r in ranks]
        if self._log_window is not None:
            checkpoint[LOG_WINDOW_KEY] = [r["log_window"] for r in ranks]
        if mid_epoch:
            checkpoint[TRAIN_STATE_KEY] = [r["train"] for r in ranks]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rank, world = self._rank_world()
        rng = checkpoint.get("rng_states")
        if isinstance(rng, list):  # one entry per rank of the run that saved it
            if len(rng) != world:
                rank_zero_warn(f"the checkpoint's random streams come from {len(rng)} process(es), this run has "
                               f"{world}: resuming is not exact")
            rng = rng[rank] if rank < len(rng) else rng[0]
        self._resumed_rng = rng  # older checkpoints: one dict, rank 0's streams
        window = checkpoint.get(LOG_WINDOW_KEY)
        self._resumed_window = window[rank] if isinstance(window, list) and len(window) == world else None
        train = checkpoint.get(TRAIN_STATE_KEY)
        self._resumed_train = None
        if train is not None:
            if len(train) == world:
                self._resumed_train = train[rank]
            else:
                rank_zero_warn(f"the checkpoint was saved mid-epoch by {len(train)} process(es), this run has {world}: "
                               "the data is split differently, so the carried hidden state and the epoch's partial "
                               "loss sums are dropped (the epoch goes on from the same window count with a fresh "
                               "state; its train/loss covers only the windows after the resume)")


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # plain types, so the checkpoint still loads with torch.load(weights_only=True)
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "python": random.getstate(),
    }


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    kind, key, *rest = rng["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(rng["python"])
