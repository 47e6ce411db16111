"""LightRNN's bootstrap: after a training epoch, move words to cells by a minimum-weight matching."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from lrnn_lightning.allocation import allocation_cost, lower_bound, reallocate
from lrnn_lightning.allocation.context import context_table

log = logging.getLogger(__name__)


class Reallocation(L.Callback):
    """Reallocates the word table of a model whose head has one (inert for other models).

    Runs when the last training batch of an epoch ends, before that epoch's validation, so the
    validation, the checkpoint and the next epoch all use the new table. Statistics are either
    accumulated ``during`` the epoch (training mode, dropout on) or in an ``extra_pass`` over the
    training data at its end (eval mode). Under DDP they are summed over ranks, rank 0 solves,
    and every rank receives the same table.

    every_n_epochs: reallocate after every n-th epoch. max_rounds: at most this many rounds (None:
    no limit). min_moved_fraction: stop reallocating once a round moves fewer than this fraction of
    the words. skip_last_epoch: no round after the run's final epoch (nothing would train on that
    table; it only disturbs the final validation and the test). A run resumed with a larger
    ``max_epochs`` therefore lacks the round its earlier final epoch skipped; an interrupted run
    resumed with the same ``max_epochs`` is exact. method/top_k: see
    ``lrnn_lightning.allocation.reallocate``.

    initial_table: ``model`` keeps the table the head was built with (``table_init``: random, as
    in the paper, or by frequency); ``context`` replaces it, before the first training step of a
    fresh run, by a clustering of the words by their left contexts in the training data
    (``lrnn_lightning.allocation.context``), so that rows start as word classes.

    move_penalty: nats per occurrence charged for changing a word's row, and again for changing its
    column. The statistics price each cell by the current model's output losses only; a moved word
    also loses the input vectors the model has learned to read as that word (its new cell's
    vectors meant another word), so a word moves only where the estimated gain per occurrence
    beats the penalty. 0 is the paper's plain matching.

    A round changes the function the model computes, so a ``ReduceLROnPlateau`` scheduler's memory
    of the best validation loss is reset after it: the jump in loss that follows a move must not
    halve the learning rate.
    """

    def __init__(self, every_n_epochs: int = 1, max_rounds: int | None = None, min_moved_fraction: float = 0.0,
                 statistics: str = "during", method: str = "auto", top_k: int | None = None,
                 skip_last_epoch: bool = True, initial_table: str = "model", move_penalty: float = 0.0,
                 sample_rows: int = 8,
                 words_per_row: int = 12):
        if statistics not in ("during", "extra_pass"):
            raise ValueError("statistics must be 'during' or 'extra_pass'")
        self.every_n_epochs, self.max_rounds = every_n_epochs, max_rounds
        self.min_moved_fraction, self.statistics = min_moved_fraction, statistics
        if initial_table not in ("model", "context"):
            raise ValueError(f"initial_table must be 'model' or 'context', got '{initial_table}'")
        self.method, self.top_k, self.skip_last_epoch = method, top_k, skip_last_epoch
        self.initial_table, self.initialized = initial_table, False
        if move_penalty < 0:
            raise ValueError(f"move_penalty must be >= 0 (nats per occurrence), got {move_penalty}")
        self.move_penalty = move_penalty
        self.sample_rows, self.words_per_row = sample_rows, words_per_row
        self.rounds, self.stopped = 0, False
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    @staticmethod
    def head_of(pl_module) -> Any:
        head = getattr(pl_module, "head", None)
        return head if hasattr(head, "table") and hasattr(head, "stats") else None

    def _due(self, trainer) -> bool:
        return (
            not self.stopped
            and (self.max_rounds is None or self.rounds < self.max_rounds)
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and not (self.skip_last_epoch and trainer.max_epochs not in (None, -1)
                     and trainer.current_epoch + 1 >= trainer.max_epochs)
        )

    # ---- hooks ---------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        head = self.head_of(pl_module)
        if head is None or self.initial_table != "context" or self.initialized or trainer.global_step > 0:
            return
        if getattr(trainer.datamodule, "ids", None) is None:
            log.warning("initial_table=context needs the LMDataModule's token ids; keeping the model's table")
            return
        t0 = time.perf_counter()
        cells = None
        if trainer.is_global_zero:
            table = head.table
            cells = context_table(trainer.datamodule.ids["train"], head.vocab_size, table.rows, table.cols)
        cells = trainer.strategy.broadcast(cells, src=0)
        moved = head.table.assign(torch.as_tensor(cells))
        self.initialized = True
        log.info("initial table from left contexts: %d words placed in %.1f s; table %s", moved,
                 time.perf_counter() - t0, head.table.fingerprint())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        head = self.head_of(pl_module)
        if head is not None and self.statistics == "during" and self._due(trainer):
            head.stats.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        head = self.head_of(pl_module)
        if head is None or not trainer.is_last_batch or not self._due(trainer):
            return
        if self.statistics == "extra_pass":
            self._extra_pass(trainer, pl_module, head)
        head.stats.stop()
        metrics = self.round(trainer, head)
        self._reset_plateau(trainer)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._log_rows(trainer, head)

    @staticmethod
    def _reset_plateau(trainer) -> None:
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config.scheduler._reset()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        head = self.head_of(pl_module)
        if head is not None:
            head.stats.release()

    # ---- one round ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _extra_pass(self, trainer, pl_module, head) -> None:
        was_training = pl_module.training
        pl_module.eval()
        head.stats.start()
        state = None
        limit = trainer.num_training_batches
        for i, batch in enumerate(trainer.datamodule.train_dataloader()):
            if i >= limit:
                break
            inputs, targets = (t.to(pl_module.device) for t in batch)
            _, state = head(pl_module.core, inputs, targets, state)
        pl_module.train(was_training)

    @torch.no_grad()
    def round(self, trainer, head) -> dict[str, float]:
        t0 = time.perf_counter()
        strategy = trainer.strategy
        row_loss = strategy.reduce(head.stats.row_loss, reduce_op="sum")
        col_loss = strategy.reduce(head.stats.col_loss, reduce_op="sum")
        count = strategy.reduce(head.stats.count, reduce_op="sum") if self.move_penalty > 0 else None
        current = head.table.cell
        new, info = None, None
        if trainer.is_global_zero:
            row, col, cur = row_loss.cpu().numpy(), col_loss.cpu().numpy(), current.cpu().numpy()
            row_p, col_p = row, col
            if count is not None:  # the current row and column are cheaper by the penalty (separable: any solver)
                # (a word never seen as a target has no loss anywhere: a token of bonus keeps it still)
                bonus = self.move_penalty * np.maximum(count.cpu().numpy().astype(np.float64), 1e-3)
                words = np.arange(len(cur))
                row_p, col_p = row.astype(np.float64), col.astype(np.float64)
                row_p[words, cur // head.table.cols] -= bonus
                col_p[words, cur % head.table.cols] -= bonus
            new = reallocate(row_p, col_p, cur, self.method, self.top_k)
            info = {
                "realloc/cost_before": allocation_cost(row, col, cur),
                "realloc/cost_after": allocation_cost(row, col, new),
                "realloc/lower_bound": lower_bound(row, col),
            }
        new, info = strategy.broadcast((new, info), src=0)
        moved = head.table.assign(torch.as_tensor(new))
        head.stats.release()
        self.rounds += 1
        info.update({"realloc/moved_words": float(moved), "realloc/seconds": time.perf_counter() - t0,
                     "realloc/round": float(self.rounds)})
        if moved < self.min_moved_fraction * head.vocab_size:
            self.stopped = True
        self.metrics = info
        self.history.append(info)
        log.info("reallocation round %d (rank %d): moved %d words, cost %.4g -> %.4g (lower bound %.4g) in %.1f s; "
                 "table %s", self.rounds, trainer.global_rank, moved, info["realloc/cost_before"],
                 info["realloc/cost_after"], info["realloc/lower_bound"], info["realloc/seconds"], head.table.fingerprint())
        return info

    def _log_rows(self, trainer, head) -> None:
        """A W&B table of the rows holding the most frequent words: which words now share a row."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        vocab = getattr(trainer.datamodule, "vocab", None)
        if not loggers or vocab is None or not trainer.is_global_zero:
            return
        word_at = head.table.word_at().view(head.table.rows, head.table.cols).cpu()
        rows = head.table.row(torch.arange(min(self.sample_rows * 4, head.vocab_size), device=head.table.cell.device))
        chosen = list(dict.fromkeys(rows.tolist()))[: self.sample_rows]
        data = []
        for r in chosen:
            words = sorted(w for w in word_at[r].tolist() if w >= 0)[: self.words_per_row]
            data.append([self.rounds, r, " ".join(vocab.words[w] for w in words)])
        for lg in loggers:
            lg.log_table(key="realloc/rows", columns=["round", "row", "most frequent words in the row"], data=data)

    # ---- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "stopped": self.stopped, "history": self.history,
                "initialized": self.initialized}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds, self.stopped = state_dict["rounds"], state_dict["stopped"]
        self.history = list(state_dict.get("history", []))
        self.initialized = state_dict.get("initialized", self.rounds > 0)
