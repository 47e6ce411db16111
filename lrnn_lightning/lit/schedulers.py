"""Learning-rate schedules for runs with an epoch budget."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lrnn_lightning.errors import UserError


class PlateauWithFinalDecay(ReduceLROnPlateau):
    """``ReduceLROnPlateau``, and in a run of ``max_epochs`` epochs the learning rate times
    ``final_factor`` for the last ``final_epochs`` of them (never below ``min_lr``).

    A plateau schedule never lowers the rate while validation still improves, so a short run
    ends at its starting rate; the last epoch at a lower rate settles the weights (the default
    3-epoch synthetic run: val/ppl 166.5 -> 163.7, ``benchmarks/default_run.py``). Steps once per
    validated epoch (Lightning's ``interval: epoch``): after the step that ends epoch
    ``max_epochs - final_epochs - 1`` the rate drops. ``max_epochs`` null or < 2, or
    ``final_epochs=0``: a plain ``ReduceLROnPlateau`` (a run bounded by ``max_time`` or
    ``max_steps`` does not know its last epoch).

    ``max_epochs``, ``final_epochs`` and ``final_factor`` come from the config, not from a
    checkpoint: a run resumed with a larger ``trainer.max_epochs`` decays before its new last
    epoch (a decay already taken stays taken).
    """

    _SETTINGS = ("max_epochs", "final_epochs", "final_factor")

    def __init__(self, optimizer: Optimizer, max_epochs: int | None = None, final_epochs: int = 1,
                 final_factor: float = 0.1, **plateau: Any):
        if not 0.0 < float(final_factor) <= 1.0:
            raise UserError(f"scheduler.final_factor must be in (0, 1] (1: no final decay), got {final_factor}")
        if int(final_epochs) < 0:
            raise UserError(f"scheduler.final_epochs must be >= 0 (0: no final decay), got {final_epochs}")
        super().__init__(optimizer, **plateau)
        self.max_epochs = None if max_epochs is None or int(max_epochs) < 0 else int(max_epochs)
        self.final_epochs = int(final_epochs)
        self.final_factor = float(final_factor)

    @property
    def decay_after_epochs(self) -> int | None:
        """The number of finished epochs after which the rate drops; None: never."""
        if self.max_epochs is None or self.final_epochs == 0 or self.final_factor == 1.0:
            return None
        after = self.max_epochs - self.final_epochs
        return after if after >= 1 else None

    def step(self, metrics, epoch=None) -> None:  # noqa: D102 - ReduceLROnPlateau.step
        super().step(metrics, epoch)
        if self.last_epoch == self.decay_after_epochs:
            for group, floor in zip(self.optimizer.param_groups, self.min_lrs):
                group["lr"] = max(float(group["lr"]) * self.final_factor, floor)
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k not in self._SETTINGS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self._SETTINGS})
