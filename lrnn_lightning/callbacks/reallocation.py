"""LightRNN's bootstrap: after a training epoch, move words to cells by a minimum-weight matching."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from lrnn_lightning import resume
from lrnn_lightning.allocation.context import context_table
from lrnn_lightning.allocation.solvers import (CHUNK_WORDS, EXACT_MAX_WORDS, POLISH_SWEEPS, CandidateBuilder,
                                               RoundInterrupted, candidate_width, poll, solve)
from lrnn_lightning.allocation.stats import token_counts
from lrnn_lightning.allocation.table import row_purity
from lrnn_lightning.atomic import atomic_path

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
    fresh run, by a clustering of the words by their contexts in the training data
    (``lrnn_lightning.allocation.context``: k-means on left contexts, then ``context_refine``
    iterations of class-bigram refinement), so that rows start as word classes; ``classes`` (the
    synthetic language only, a reference point for experiments) puts each true class in a row.

    On data that knows its words' classes (``data=synthetic``), ``realloc/row_purity`` (see
    ``lrnn_lightning.allocation.row_purity``) is logged for the table training starts from and
    after every round.

    move_penalty: nats per occurrence charged for changing a word's row, and again for changing its
    column. The statistics price each cell by the current model's output losses only; a moved word
    also loses the input vectors the model has learned to read as that word (its new cell's
    vectors meant another word), so a word moves only where the estimated gain per occurrence
    beats the penalty. 0 is the paper's plain matching.

    profile_route: where the auction leaves a certified gap above 5%, also try
    ``solvers.profile_route`` (early in training every word's losses follow the model's marginals);
    ``realloc/profile_route`` is 1 when its table was taken.

    A round changes the function the model computes, so a ``ReduceLROnPlateau`` scheduler's memory
    of the best validation loss is reset after it: the jump in loss that follows a move must not
    halve the learning rate.

    A round is interruptible: the solver polls for a stop request (SIGTERM, Ctrl-C and SLURM's
    requeue signal, as ``lrnn_lightning.resume`` notes them) every auction round and every chunk of
    statistics. When asked, the round ends at once without touching the table, the job is requeued
    if that was the request, and the run stops as a SIGTERM stops it. ``ckpt_path=last`` resumes from
    the newest checkpoint, whose summed partial statistics (``every_n_train_steps`` /
    ``train_time_interval`` saves carry them) plus the windows redone give the same integer sums,
    so the redone round makes the table the uninterrupted run made. A checkpoint is not written
    at the interruption itself: Lightning resumes a checkpoint saved after an epoch's last batch
    by starting that epoch again.
    """

    def __init__(self, every_n_epochs: int = 1, max_rounds: int | None = None, min_moved_fraction: float = 0.0,
                 statistics: str = "during", method: str = "auto", top_k: int | None = None,
                 skip_last_epoch: bool = True, initial_table: str = "model", move_penalty: float = 0.0,
                 sample_rows: int = 8, words_per_row: int = 12, tolerance: float | None = None,
                 save_statistics: str | None = None, context_refine: int = 10, polish_sweeps: int | None = None,
                 profile_route: bool = True):
        if statistics not in ("during", "extra_pass"):
            raise ValueError("statistics must be 'during' or 'extra_pass'")
        self.every_n_epochs, self.max_rounds = every_n_epochs, max_rounds
        self.min_moved_fraction, self.statistics = min_moved_fraction, statistics
        if initial_table not in ("model", "context", "classes"):
            raise ValueError(f"initial_table must be 'model', 'context' or 'classes', got '{initial_table}'")
        self.method, self.top_k, self.skip_last_epoch = method, top_k, skip_last_epoch
        self.initial_table, self.initialized = initial_table, False
        self.context_refine = context_refine
        self._classes: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        if move_penalty < 0:
            raise ValueError(f"move_penalty must be >= 0 (nats per occurrence), got {move_penalty}")
        self.move_penalty = move_penalty
        self.sample_rows, self.words_per_row = sample_rows, words_per_row
        self.tolerance, self.save_statistics = tolerance, save_statistics
        if polish_sweeps is not None and polish_sweeps < 0:
            raise ValueError(f"polish_sweeps must be >= 0 (0: no polish; null: the solver's default), "
                             f"got {polish_sweeps}")
        self.polish_sweeps = polish_sweeps
        self.profile_route = bool(profile_route)
        self._resumed_stats: dict | None = None
        self._keep_started = False
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
        if head is None:
            return
        ids = getattr(getattr(trainer, "datamodule", None), "ids", None) or {}
        if ids.get("train") is not None:  # tiers of the statistics: the same on every rank
            self._counts = token_counts(ids["train"], head.vocab_size)
            head.stats.configure(self._counts)
        self._classes = self._word_classes(trainer, head)
        if self._resumed_stats is not None:  # a mid-epoch checkpoint: its partial statistics go on
            head.stats.start(pl_module.device)
            if trainer.is_global_zero:
                head.stats.load(self._resumed_stats)
            self._resumed_stats = None
            self._keep_started = True
        self._context_start(trainer, pl_module, head)
        purity = self.row_purity(head)
        if purity is not None and trainer.global_step == 0:  # a resumed run logged it when it started
            self.metrics["realloc/row_purity"] = purity
            log.info("row purity of the starting table: %.4f", purity)
            self._log_metrics(trainer, {"realloc/row_purity": purity})

    @staticmethod
    def _log_metrics(trainer, metrics: dict[str, float]) -> None:
        """Straight to the loggers at the current step: ``self.log`` from a batch hook would reach
        them only on a step that ``log_every_n_steps`` divides, and a round happens once an epoch."""
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(dict(metrics), step=trainer.global_step)

    @staticmethod
    def _word_classes(trainer, head) -> np.ndarray | None:
        """Each word's true class where the data knows it (the synthetic language), else None."""
        dm = getattr(trainer, "datamodule", None)
        corpus, vocab = getattr(dm, "corpus", None), getattr(dm, "vocab", None)
        if vocab is None or not hasattr(corpus, "word_classes") or len(vocab.words) != head.vocab_size:
            return None
        return corpus.word_classes(vocab.words)

    def row_purity(self, head) -> float | None:
        """``realloc/row_purity`` of the current table (None without known classes and counts)."""
        if self._classes is None or self._counts is None:
            return None
        return row_purity(head.table.row(torch.arange(head.vocab_size, device=head.table.cell.device)).cpu().numpy(),
                          self._classes, self._counts)

    def _context_start(self, trainer, pl_module, head) -> None:
        if self.initial_table == "model" or self.initialized or trainer.global_step > 0:
            return
        if self.initial_table == "classes":
            self._classes_start(trainer, head)
            return
        if getattr(trainer.datamodule, "ids", None) is None:
            log.warning("initial_table=context needs the LMDataModule's token ids; keeping the model's table")
            return
        t0 = time.perf_counter()
        cells = None
        if trainer.is_global_zero:
            table = head.table
            cells = context_table(trainer.datamodule.ids["train"], head.vocab_size, table.rows, table.cols,
                                  refine=self.context_refine)
        cells = trainer.strategy.broadcast(cells, src=0)
        moved = head.table.assign(torch.as_tensor(cells))
        self.initialized = True
        log.info("initial table from contexts: %d words placed in %.1f s; table %s", moved,
                 time.perf_counter() - t0, head.table.fingerprint())

    def _classes_start(self, trainer, head) -> None:
        """Each true class in rows of its own (synthetic data): the table a perfect clustering finds.
        A class larger than a row takes several; words without a class (``<eos>``, ``<unk>``) share
        the last ones."""
        if self._classes is None or self._counts is None:
            raise ValueError("callbacks.reallocation.initial_table=classes needs data that knows its words' "
                             "classes (data=synthetic); use initial_table=context or model")
        table, classes = head.table, self._classes
        group = np.where(classes >= 0, classes, classes.max() + 1)
        # words by class, the frequent first; each class starts on a fresh row
        order = np.lexsort((np.arange(len(group)), -self._counts, group))
        start = np.searchsorted(group[order], np.arange(group.max() + 1))
        size = np.diff(np.append(start, len(order)))
        first_row = np.concatenate([[0], np.cumsum(-(-size // table.cols))])
        if first_row[-1] > table.rows:
            raise ValueError(f"initial_table=classes: {len(size)} classes need {first_row[-1]} rows of "
                             f"{table.cols} words, the table has {table.rows}")
        rank = np.arange(len(order)) - start[group[order]]
        cells = np.empty(len(order), dtype=np.int64)
        cells[order] = (first_row[group[order]] + rank // table.cols) * table.cols + rank % table.cols
        head.table.assign(torch.as_tensor(cells))
        self.initialized = True
        log.info("initial table from the true classes: table %s", head.table.fingerprint())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        head = self.head_of(pl_module)
        if self._keep_started:  # resumed mid-epoch: the restored partial statistics go on
            self._keep_started = False
            return
        if head is not None and self.statistics == "during" and self._due(trainer):
            head.stats.start(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning does not call on_train_epoch_start for the epoch a run resumes in
        self._keep_started = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        head = self.head_of(pl_module)
        if head is None or not trainer.is_last_batch or not self._due(trainer):
            return
        if self.statistics == "extra_pass":
            self._extra_pass(trainer, pl_module, head)
        head.stats.stop()
        self._finish_round(trainer, head)

    def _finish_round(self, trainer, head) -> None:
        """One round and what follows it; a stop request during the round stops the run."""
        try:
            metrics = self.round(trainer, head)
        except RoundInterrupted:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if resume.stop_requested("requeue"):  # SLURM's requeue signal: the job comes back and resumes
                for cb in trainer.checkpoint_callbacks:
                    if hasattr(cb, "_requeue"):
                        cb._requeue(trainer)
                        break
            log.warning("reallocation round %d interrupted by a stop request: the table is unchanged; resuming "
                        "(ckpt_path=last) redoes the windows after the newest checkpoint and the round",
                        self.rounds + 1)
            raise SIGTERMException() from None
        self._reset_plateau(trainer)
        self._log_metrics(trainer, metrics)
        self._log_rows(trainer, head)

    @staticmethod
    def _reset_plateau(trainer) -> None:
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config.scheduler._reset()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        head = self.head_of(pl_module)
        # statistics still accumulating here mean the epoch was cut short (max_steps, a time limit):
        # keep them, so that the checkpoint Lightning writes at the stop carries them
        if head is not None and not head.stats.enabled:
            head.stats.release()

    # ---- one round ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _extra_pass(self, trainer, pl_module, head) -> None:
        was_training = pl_module.training
        pl_module.eval()
        head.stats.start(pl_module.device)
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
        """Sum the statistics over ranks (in place, onto rank 0), stream them a chunk of words at a
        time into the solver's candidates (top-k on the statistics' device), solve on rank 0,
        broadcast the table (the statistics are freed once the solver's polish, which re-solves rows
        and columns on them, is done). A stop request raises ``RoundInterrupted`` on every rank with the table untouched."""
        t0 = time.perf_counter()
        stats, table = head.stats, head.table
        stats.reduce_to_rank0()
        new, info = None, None

        def stop() -> bool:  # a signal noted since the last step boundary, or Lightning's SIGTERM flag
            return bool(getattr(trainer, "received_sigterm", False)) or any(
                resume.stop_requested(reason) for reason in resume.SIGNAL_REASONS)

        interrupted = False
        if trainer.is_global_zero:
            try:
                new, info = self._solve(trainer, head, stop)
            except RoundInterrupted:
                interrupted = True
        new, info, interrupted = trainer.strategy.broadcast((new, info, interrupted), src=0)
        stats.release()
        if interrupted:
            raise RoundInterrupted("the reallocation round was interrupted by a stop request")
        moved = table.assign(torch.as_tensor(new))
        self.rounds += 1
        info.update({"realloc/moved_words": float(moved), "realloc/seconds": time.perf_counter() - t0,
                     "realloc/round": float(self.rounds)})
        purity = self.row_purity(head)
        if purity is not None:
            info["realloc/row_purity"] = purity
            log.info("row purity after round %d: %.4f", self.rounds, purity)
        if moved < self.min_moved_fraction * head.vocab_size:
            self.stopped = True
        self.metrics = info
        self.history.append(info)
        log.info("reallocation round %d (rank %d): moved %d words, cost %.6g -> %.6g (lower bound %.6g, certified "
                 "gap %.3g%%) in %.1f s; table %s", self.rounds, trainer.global_rank, moved,
                 info["realloc/cost_before"], info["realloc/cost_after"], info["realloc/lower_bound"],
                 100 * info["realloc/gap"], info["realloc/seconds"], table.fingerprint())
        return info

    def _solve(self, trainer, head, stop) -> tuple[np.ndarray, dict]:
        """Rank 0: stream the summed statistics into the candidates, solve; ``(new cells, metrics)``."""
        stats, table = head.stats, head.table
        V, R, C = head.vocab_size, table.rows, table.cols
        current = table.cell.cpu().numpy()
        bonus = None
        if self.move_penalty > 0:  # the current row and column are cheaper by the penalty
            # (a word never seen as a target has no loss anywhere: a token of bonus keeps it still)
            bonus = self.move_penalty * np.maximum(stats.count.cpu().numpy().astype(np.float64), 1e-3)
        dense = self.method == "exact" or (self.method == "auto" and V <= EXACT_MAX_WORDS)
        builder = CandidateBuilder(V, R, C, current, bonus, width=candidate_width(V, self.top_k), keep_dense=dense)
        dump = self._dump_open(trainer, V, R, C) if self.save_statistics else None
        for a in range(0, V, CHUNK_WORDS):
            poll(stop)
            row, col = stats.chunk(a, min(V, a + CHUNK_WORDS))
            if dump is not None:
                dump[0][a:a + len(row)], dump[1][a:a + len(row)] = row.cpu().numpy(), col.cpu().numpy()
            builder.add(a, row, col, owned=True)  # fresh float64 tensors: the bonus goes in place
        counts = stats.count.cpu().numpy()
        stats_bytes = stats.nbytes()
        if dump is not None:
            self._dump_close(dump, current, counts, bonus)
        sweeps = POLISH_SWEEPS if self.polish_sweeps is None else self.polish_sweeps
        if sweeps == 0 or dense:  # nothing reads them again: free the V x (R + C) sums before the solve
            stats.release()
        # the polish re-solves rows and columns on the full statistics, a group of words at a time
        cells, solved = solve(builder.finish(), self.method, self.top_k, self.tolerance, stop=stop,
                              gather=stats.gather if stats.allocated else None, polish_sweeps=sweeps,
                              profile=self.profile_route)
        stats.release()
        del builder
        new = cells
        info = {"realloc/cost_before": solved["cost_before"], "realloc/cost_after": solved["cost_after"],
                "realloc/lower_bound": solved["lower_bound"], "realloc/dual_bound": solved["dual_bound"],
                "realloc/gap": solved["gap"], "realloc/objective": solved["objective"],
                "realloc/solve_seconds": solved["seconds"], "realloc/stats_mb": stats_bytes / 2 ** 20,
                "realloc/polish_gain": solved.get("polish_gain", 0.0),
                "realloc/profile_route": float(bool(solved.get("profile_table")))}
        return new, info

    # ---- the statistics of a round, for solver benchmarks and debugging -------------------------------
    def _dump_open(self, trainer, V, R, C):
        from pathlib import Path

        folder = Path(self.save_statistics)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round_{self.rounds + 1:03d}.npz"
        tmp = folder / f".round_{self.rounds + 1:03d}.tmp"
        tmp.mkdir(exist_ok=True)
        row = np.lib.format.open_memmap(tmp / "row_loss.npy", mode="w+", dtype=np.float64, shape=(V, R))
        col = np.lib.format.open_memmap(tmp / "col_loss.npy", mode="w+", dtype=np.float64, shape=(V, C))
        return row, col, tmp, path

    def _dump_close(self, dump, current, counts, bonus) -> None:
        import shutil
        import zipfile

        row, col, tmp, path = dump
        row.flush()
        col.flush()
        np.save(tmp / "current.npy", current)
        np.save(tmp / "counts.npy", counts)
        np.save(tmp / "move_penalty.npy", np.float64(self.move_penalty))
        del row, col
        with atomic_path(path) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            for f in sorted(tmp.iterdir()):
                z.write(f, f.name)
        shutil.rmtree(tmp)
        log.info("reallocation statistics saved to %s", path)

    # ---- mid-epoch checkpoints carry the partial statistics ------------------------------------------
    KEY = "lrnn_realloc_statistics"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        head = self.head_of(pl_module)
        if head is None or not head.stats.enabled or not head.stats.allocated:
            return
        # integer sums: moving every rank's partial sum onto rank 0 changes no bit of the final total
        head.stats.reduce_to_rank0()
        if trainer.is_global_zero:
            checkpoint[self.KEY] = head.stats.state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._resumed_stats = checkpoint.get(self.KEY)

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
        self.metrics = dict(self.history[-1]) if self.history else {}  # the last round's, as reported at the end
        self.initialized = state_dict.get("initialized", self.rounds > 0)
