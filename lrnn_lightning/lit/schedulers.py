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
    3-epoch synthetic run: val/ppl 166.5 -> 163.7, ``benchmarks/default_run.py``). The plateau
    part steps once per validated epoch (Lightning's ``interval: epoch``); the decay is taken once,
    when epoch ``max_epochs - final_epochs`` (0-based) or a later one starts
    (``epoch_started``, called by ``LanguageModel``). ``max_epochs`` null or < 2, or
    ``final_epochs=0``, or no epoch left before the decay: a plain ``ReduceLROnPlateau`` (a run
    bounded by ``max_time`` or ``max_steps`` does not know its last epoch).

    ``max_epochs``, ``final_epochs`` and ``final_factor`` come from the config, not from a
    checkpoint; whether the decay was taken comes from the checkpoint. A run resumed with a larger
    ``trainer.max_epochs`` before its decay decays before its new last epoch; one resumed after it
    keeps the lower rate and takes no second decay (so a finished run continued for more epochs
    does not train as one run of the longer budget would).
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
        self.final_decay_taken = False

    @property
    def decay_epoch(self) -> int | None:
        """The (0-based) epoch that starts at the lower rate; None: never."""
        if self.max_epochs is None or self.final_epochs == 0 or self.final_factor == 1.0:
            return None
        first = self.max_epochs - self.final_epochs
        return first if first >= 1 else None

    def epoch_started(self, epoch: int) -> None:
        """Takes the final decay if ``epoch`` is the decay epoch or later and it was not taken."""
        at = self.decay_epoch
        if at is None or epoch < at or self.final_decay_taken:
            return
        for group, floor in zip(self.optimizer.param_groups, self.min_lrs):
            group["lr"] = max(float(group["lr"]) * self.final_factor, floor)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.final_decay_taken = True

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k not in self._SETTINGS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self._SETTINGS})
