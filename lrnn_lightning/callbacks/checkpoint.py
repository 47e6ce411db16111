"""ModelCheckpoint with mid-epoch saves of ``last.ckpt``, by steps or by wall time."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from datetime import timedelta
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose
from lightning.pytorch.utilities import rank_zero_warn

from lrnn_lightning import resume
from lrnn_lightning.errors import UserError
from lrnn_lightning.resume import epoch_cut_short, stop_after_batch, windows_done

log = logging.getLogger(__name__)

_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")


def parse_interval(value: Any) -> timedelta | None:
    """A wall-time interval from the command line or a config: a ``timedelta``; a number of seconds
    (``1800``); ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"`` (``"00:30:00"``); or amounts with units, summed
    (``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"``, ``"1.5h"``, ``"1d"``). ``None``/``"null"``: no interval."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise UserError(f"train_time_interval: {value!r} is not a time interval")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "null", "none"):
            return None
        seconds = _parse_text(text, value)
    else:
        raise UserError(f"train_time_interval: {value!r} is not a time interval")
    if not seconds >= 0 or seconds == float("inf"):
        raise UserError(f"train_time_interval must be a finite, non-negative time; got {value!r}")
    return timedelta(seconds=seconds)


def _parse_text(text: str, original: str) -> float:
    usage = ('use seconds (1800), "HH:MM:SS" ("00:30:00"), "DD:HH:MM:SS", or amounts with units '
             '("30m", "2h", "1h30m", "90s")')
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise UserError(f"train_time_interval {original!r}: {usage}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise UserError(f"train_time_interval {original!r}: {usage}") from None
        return sum(v * f for v, f in zip(reversed(values), (1, 60, 3600, 86400)))
    seconds, pos = 0.0, 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None or m.group(2) not in _UNITS:
            raise UserError(f"train_time_interval {original!r}: {usage}")
        seconds += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
        while pos < len(text) and text[pos] in " ,":
            pos += 1
    return seconds


class MidEpochCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (best ``top_k`` by ``monitor`` and ``last.ckpt`` after each
    epoch's validation), plus mid-epoch saves of ``last.ckpt`` alone every ``every_n_train_steps``
    optimizer steps and/or every ``train_time_interval`` (see ``parse_interval``).

    Every epoch-end save point writes ``last.ckpt``, also when the epoch made no new top-k
    checkpoint (Lightning 2.6 would then leave ``last.ckpt`` behind).

    A mid-epoch save writes ``last.ckpt`` only: the monitored validation metric is stale then, so
    it never makes a top-k checkpoint. It never happens on an epoch's last batch (the epoch-end save
    follows), nor inside a gradient accumulation (those gradients are not in a checkpoint). The
    epoch-end save happens as usual even when a mid-epoch save happened at the same global step.
    ``last.ckpt`` is always the newest checkpoint, and always a file (``save_last="link"`` is
    turned into ``True``). Resuming from a mid-epoch ``last.ckpt`` is exact: see
    ``lrnn_lightning.resume``.

    Under DDP every rank takes the same decision (the step count is the same everywhere; the
    time trigger is rank 0's clock, broadcast), since saving is a collective.

    **Stops.** However a run stops gracefully, it stops at a step boundary and this callback writes
    its final checkpoint there, once (see ``lrnn_lightning.resume.stop_after_batch``):
    ``trainer.max_steps`` and ``trainer.max_time`` (any ``trainer.should_stop``) end the fit after the
    step in which they happen; SIGTERM, Ctrl-C (SIGINT) and SLURM's requeue signal (SIGUSR1, when
    Lightning's SLURM auto-requeue is on) are noted wherever they arrive and acted on at the end of
    the current training step, where the checkpoint is written, the job requeued (``scontrol
    requeue``, SIGUSR1), and the fit ended as Lightning ends it after SIGTERM (``SIGTERMException``;
    a second Ctrl-C interrupts at once). A signal during a validation waits for the next training
    step. In the middle of an epoch that
    checkpoint is an ordinary mid-epoch ``last.ckpt``: the epoch that the stop cut short is not
    validated, and its epoch-end hooks save nothing (Lightning runs them even for an unfinished epoch,
    and a checkpoint written there would record the epoch as done: a resume would skip its rest).
    A crash (SIGKILL, power loss) resumes from the newest mid-epoch or epoch-end checkpoint.
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | str | float | None = None, every_n_epochs: int | None = 1,
                 save_last: bool | str | None = True, **kwargs: Any):
        if save_last == "link":
            rank_zero_warn("save_last='link' is not supported (last.ckpt must be a file that a resume can read "
                           "atomically); saving it as a file")
            save_last = True
        # the base class forbids combining step/time triggers with every_n_epochs: it handles the
        # epoch-end saves, the mid-epoch triggers are ours
        super().__init__(*args, every_n_epochs=every_n_epochs, save_last=save_last, **kwargs)
        steps = int(every_n_train_steps or 0)
        if steps < 0:
            raise UserError(f"every_n_train_steps must be >= 0 (0 or null: off), got {every_n_train_steps}")
        self.mid_epoch_every_n_steps = steps
        self.mid_epoch_interval = parse_interval(train_time_interval)
        self._mid_time_checked: float | None = None
        self._mid_step_saved = -1
        self._requeue_after_epoch_end = False

    @property
    def state_key(self) -> str:
        # the key of the plain ModelCheckpoint with the same epoch-end settings: checkpoints written
        # before this class, or with other mid-epoch settings, restore its best-k bookkeeping
        # Lightning reads it at every hook of every step (the profiler's label): built once per setting
        settings = (self.monitor, self.mode, self._every_n_epochs)
        cached = self.__dict__.get("_state_key_cache")
        if cached is None or cached[0] != settings:
            key = dict(monitor=self.monitor, mode=self.mode, every_n_train_steps=0,
                       every_n_epochs=self._every_n_epochs, train_time_interval=None)
            cached = self._state_key_cache = (settings, f"ModelCheckpoint{key!r}")
        return cached[1]

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._mid_time_checked = time.monotonic()
        resume.clear_stop_requests()
        if not trainer.fast_dev_run:
            self._defer_signals(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning 2.6 writes last.ckpt here even under fast_dev_run, which promises no checkpoints;
        # after a stop that cut an epoch short, the final checkpoint is written already
        if not trainer.fast_dev_run and not epoch_cut_short(trainer):
            super().on_train_end(trainer, pl_module)
        resume.clear_stop_requests()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if windows_done(trainer) % trainer.accumulate_grad_batches:
            return  # inside a gradient accumulation (not in a checkpoint): deferred signals wait for its step
        stops = stop_after_batch(trainer) if not trainer.fast_dev_run else set()
        if stops and windows_done(trainer) > 0:
            self._final_save(trainer)
        elif self._mid_epoch_due(trainer):
            self.save_last_mid_epoch(trainer)
        if "should_stop" in stops:
            # Lightning would send the step metrics' last values to the loggers once more at this step (a
            # row the uninterrupted run does not have): the fit ends after this step as max_steps ends it
            trainer.should_stop = False
            trainer.fit_loop.epoch_loop.max_steps = trainer.global_step
        if stops & {"sigint", "requeue"} and trainer.is_global_zero:
            log.warning("%s: stopping after global step %d with a checkpoint", "Ctrl-C" if "sigint" in stops
                        else "SLURM requeue signal", trainer.global_step)
        if stops & {"sigint", "requeue"}:
            # Lightning's way out after SIGTERM: the fit ends once this batch is logged (in the middle of
            # an epoch) or once the epoch has ended, validated and saved (on its last batch)
            trainer._signal_connector.received_sigterm = True
        if "requeue" in stops:
            if windows_done(trainer) > 0:
                self._requeue(trainer)
            else:
                self._requeue_after_epoch_end = True

    def _final_save(self, trainer) -> None:
        """The checkpoint of a stop in the middle of an epoch: ``last.ckpt`` at this step boundary,
        and nothing more (no validation of the unfinished epoch, no epoch-end or train-end save)."""
        if self.save_last and not trainer.sanity_checking and self._mid_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._mid_step_saved = trainer.global_step
            log.info("stopping after global step %d in the middle of epoch %d: saved %s", trainer.global_step,
                     trainer.current_epoch, self.last_model_path)
        # the base class saves nothing more at this global step
        self._last_global_step_saved = trainer.global_step
        trainer.fit_loop.epoch_loop._skip_next_val = True

    # ---- signals deferred to the next step boundary --------------------------------------------------
    def _defer_signals(self, trainer) -> None:
        """Ctrl-C and Lightning's SLURM requeue signal wait for the end of the current step (see the
        class docstring). Lightning puts back the handlers it found when the fit ends."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
        current = signal.getsignal(signal.SIGTERM)
        notifier = trainer._signal_connector._sigterm_notifier_fn
        if isinstance(current, _HandlersCompose) and notifier in current.signal_handlers:
            # Lightning's SIGTERM notifier flags the trainer wherever the signal lands (and, under DDP,
            # broadcasts from inside the handler): Lightning could then end the fit before the step's
            # checkpoint. Ours only takes note (and passes the signal on to the ranks that Lightning
            # started, as its notifier does); the step boundary flags the trainer after saving.
            others = [h for h in current.signal_handlers if h != notifier]
            signal.signal(signal.SIGTERM, _HandlersCompose([_SigtermNote(trainer.strategy.launcher), *others]))
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None \
                and isinstance(signal.getsignal(env.requeue_signal), _HandlersCompose):
            # replaces Lightning's handler, which saves and requeues wherever the signal lands, mid-step
            signal.signal(env.requeue_signal, _on_requeue_signal)

    def _requeue(self, trainer) -> None:
        """After the final checkpoint: requeue this SLURM job, as Lightning's handler does (the run
        itself ends as after SIGTERM: SLURM would end the job anyway)."""
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.save()
            array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
            if job and re.fullmatch(r"[0-9_]+", job):
                try:
                    result = subprocess.call(["scontrol", "requeue", job])
                except OSError as e:
                    result = f"{type(e).__name__}: {e}"
                if result == 0:
                    log.info("requeued SLURM job %s", job)
                else:
                    log.warning("requeuing SLURM job %s failed (%s)", job, result)
            else:
                log.warning("requeue signal outside a SLURM job (no SLURM_JOB_ID): nothing requeued")

    # Lightning 2.6 writes last.ckpt after a validation only when a top-k checkpoint was written at
    # that step: after an epoch that is no new best, last.ckpt would stay behind (and a resume from
    # it would redo that epoch). Here every epoch-end save point writes last.ckpt.
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if epoch_cut_short(trainer):  # a stop: the final checkpoint was written at its step boundary
            return
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)
        if self._requeue_after_epoch_end:  # the requeue signal came during the epoch's last step
            self._requeue_after_epoch_end = False
            self._requeue(trainer)

    def _save_last_if_not_saved(self, trainer) -> None:
        due = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        # skipped when this step is already saved (the base class wrote top-k and last just now)
        if self.save_last and due and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _mid_epoch_due(self, trainer) -> bool:
        if not self.save_last or (self.mid_epoch_every_n_steps < 1 and self.mid_epoch_interval is None):
            return False
        step = trainer.global_step
        due_steps = self.mid_epoch_every_n_steps >= 1 and step % self.mid_epoch_every_n_steps == 0
        due_time = False
        if self.mid_epoch_interval is not None:
            now = time.monotonic()
            due_time = (self._mid_time_checked is not None
                        and now - self._mid_time_checked >= self.mid_epoch_interval.total_seconds())
            due_time = bool(trainer.strategy.broadcast(due_time, src=0))  # rank 0's clock decides for all
            if due_time:
                self._mid_time_checked = now
        if not (due_steps or due_time):
            return False
        return (
            windows_done(trainer) > 0  # not on the epoch's last batch: the epoch-end save follows
            and windows_done(trainer) % trainer.accumulate_grad_batches == 0  # the optimizer just stepped
            and step != self._mid_step_saved
            and step > 0
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
        )

    def save_last_mid_epoch(self, trainer) -> None:
        """Write ``last.ckpt`` now (every rank calls this: saving is a collective)."""
        # Lightning skips a save at a global step it has already saved: the epoch-end save (best +
        # last) must happen whatever was saved mid-epoch, so its bookkeeping forgets this save
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_step
        self._mid_step_saved = trainer.global_step


# signal handlers do no more than take note (no logging, no I/O): the next step boundary acts on it

def _on_sigint(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once
    resume.request_stop("sigint")


def _on_requeue_signal(signum, frame) -> None:
    resume.request_stop("requeue")


class _SigtermNote:
    def __init__(self, launcher):
        self.launcher = launcher

    def __call__(self, signum, frame) -> None:
        if self.launcher is not None and not resume.stop_requested("sigterm"):
            self.launcher.kill(signum)  # the other ranks of a DDP run this process started
        resume.request_stop("sigterm")
