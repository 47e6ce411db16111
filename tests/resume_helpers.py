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
