"""Callbacks the resume tests add from the command line (``+callbacks.<name>._target_=resume_helpers...``)."""

from __future__ import annotations

import lightning as L


class Interrupted(RuntimeError):
    pass


class InterruptAt(L.Callback):
    """Dies when the batch after global step ``step`` starts, as a killed job would: the mid-epoch
    ``last.ckpt`` of step ``step`` is on disk (ModelCheckpoint saves when a batch ends), nothing of
    the next step is."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise Interrupted(f"interrupted after global step {trainer.global_step}")


class CopyLastAt(L.Callback):
    """Keeps a copy of ``last.ckpt`` as it was written mid-epoch at global step ``step``: the
    file an interrupted run would have left, taken from a run that goes on to the end (one run
    serves as both the uninterrupted reference and the source of the checkpoint)."""

    def __init__(self, step: int, source: str, target: str):
        self.step, self.source, self.target = step, source, target

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # ModelCheckpoint saved when the batch of this global step ended; nothing has been written since
        if trainer.global_step == self.step and trainer.is_global_zero:
            import shutil

            shutil.copyfile(self.source, self.target)


RECORDED: dict = {}


class RecordCheckpoints(L.Callback):
    """``RECORDED[global_step]`` at each batch start and ``RECORDED["val", global_step]`` at each
    validation start (after that batch's checkpoint callbacks): ``{checkpoint file: its global step}``."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def _files(self) -> dict[str, int]:
        from pathlib import Path

        import torch

        return {p.name: torch.load(p, weights_only=True)["global_step"]
                for p in sorted(Path(self.dirpath).glob("*.ckpt"))}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        RECORDED[trainer.global_step] = self._files()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            RECORDED["val", trainer.global_step] = self._files()


# ---- the ways a run stops (tests/test_stops.py) -------------------------------------------------------

class SignalAt(L.Callback):
    """Sends ``signal`` (a name: ``SIGTERM``, ``SIGINT``, ``SIGUSR1``) to this very process in the
    middle of the optimizer step that follows global step ``step`` (between its backward and its
    update), as a signal from outside lands wherever the process happens to be; ``ranks``: the
    global ranks that send it to themselves (default: all)."""

    def __init__(self, step: int, signal: str, ranks: list[int] | None = None):
        self.step, self.signal, self.ranks = step, signal, ranks
        self.sent = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        import os
        import signal

        if self.sent or trainer.global_step != self.step:
            return
        if self.ranks is None or trainer.global_rank in self.ranks:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))


class KillAt(L.Callback):
    """SIGKILL (nothing runs after it: no hook, no flush) when the batch after global step ``step``
    starts: the mid-epoch checkpoint of step ``step`` is on disk."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def step_clock_timer(steps: int):
    """Lightning's ``Timer`` (the callback behind ``trainer.max_time``) with a limit of ``steps``
    seconds, reading a clock that shows one second per optimizer step: the time limit is reached
    after global step ``steps`` on every machine, however fast (tests never time anything)."""
    from datetime import timedelta

    from lightning.pytorch.callbacks import Timer

    class StepClockTimer(Timer):
        def setup(self, trainer, pl_module, stage) -> None:
            self._clock = lambda: float(trainer.global_step)

        def time_elapsed(self, stage="train") -> float:
            clock = getattr(self, "_clock", None)
            return clock() if clock is not None and stage == "train" else 0.0

    return StepClockTimer(duration=timedelta(seconds=steps), interval="step")


SAVES: list = []


class CountSaves(L.Callback):
    """``SAVES``: the global step of every checkpoint this process writes (each call of the
    checkpoint hooks is one checkpoint file written, by any callback or by Lightning itself)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        SAVES.append(trainer.global_step)
