"""Optuna pruning from inside a sweep job: report each validation epoch, stop a hopeless trial.

``hparams_search=optuna`` adds this callback; the sweeper passes each job its trial
(``optuna_trial.number``, ``.study_name``, ``.storage``). Outside a sweep (no trial) it does nothing
and never imports optuna. Under DDP only rank 0 talks to the study; its decision is broadcast so
that every rank stops together.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L

from lrnn_lightning.errors import UserError

log = logging.getLogger(__name__)

# the trial attribute the sweeper reads to tell the study PRUNED (hydra_plugins/lrnn_sweepers)
PRUNED_AT = "pruned_at_epoch"


class OptunaPruning(L.Callback):
    """After each validation epoch, ``trial.report(<monitor>, epoch)`` then ``trial.should_prune()``;
    when the pruner says so, the trial is marked (``pruned_at_epoch``) and training stops after this
    epoch. The job ends normally (its best checkpoint is tested, ``metrics.json`` written, with
    ``optuna/pruned``) and the sweeper tells the study the trial was PRUNED.

    ``pruner``: an instantiable config (``_target_: optuna.pruners.MedianPruner`` ...), normally
    ``${hydra:sweeper.pruner}``; null: report only (the dashboard still plots the curves).
    """

    def __init__(self, monitor: str = "val/ppl", trial_number: int | None = None, study_name: str | None = None,
                 storage: str | None = None, pruner: Any = None) -> None:
        self.monitor = monitor
        self.trial_number = trial_number
        self.study_name = study_name
        self.storage = storage
        self.pruner = pruner
        self._trial = None
        self.metrics: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.trial_number is not None

    def _connect(self) -> Any:
        """The job's ``optuna.Trial``, or None when it cannot be reported to (already finished)."""
        try:
            import optuna
        except ImportError:
            raise UserError("this job belongs to an Optuna study but optuna is not installed: "
                            "pip install 'lrnn-lightning[sweep]'") from None
        from hydra.utils import instantiate
        from omegaconf import DictConfig, OmegaConf

        if not (self.study_name and self.storage):
            raise UserError(f"optuna_trial.number={self.trial_number} needs optuna_trial.study_name and "
                            "optuna_trial.storage (the sweeper sets all three)")
        pruner_cfg = OmegaConf.to_container(self.pruner, resolve=True) if isinstance(self.pruner, DictConfig) else self.pruner
        pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
        connect = {"connect_args": {"timeout": 60}} if self.storage.startswith("sqlite:") else None
        storage = optuna.storages.RDBStorage(self.storage, engine_kwargs=connect)
        # the job never samples: a plain sampler keeps the Trial's set-up cheap
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.RandomSampler())
        frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == self.trial_number), None)
        if frozen is None:
            raise UserError(f"study '{self.study_name}' in {self.storage} has no trial {self.trial_number}")
        if frozen.state.is_finished():
            log.warning("trial %d of study '%s' is already %s: this run does not report to it",
                        self.trial_number, self.study_name, frozen.state.name)
            return None
        # the storage maps (study, number) to the trial's id, and Trial(study, id) continues that trial
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name),
                                                                   self.trial_number)
        return optuna.Trial(study, trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self._trial is not False:
            try:
                prune = self._report(trainer)
            except Exception as e:  # the other ranks wait for the decision: never leave them hanging
                log.error("optuna pruning: cannot report to trial %s of study '%s' (%s: %s); "
                          "this job goes on unpruned", self.trial_number, self.study_name, type(e).__name__, e)
                self._trial = False
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            trainer.should_stop = True

    def _report(self, trainer: L.Trainer) -> bool:
        if self._trial is None:
            self._trial = self._connect() or False
            if self._trial is False:
                return False
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            log.warning("optuna pruning: no '%s' after validation; nothing reported", self.monitor)
            return False
        value, epoch = float(value), int(trainer.current_epoch)
        self.metrics = {"optuna/trial": float(self.trial_number), "optuna/pruned": 0.0}
        if not math.isfinite(value):
            return False  # Optuna refuses NaN reports; the job's NaN result fails the trial
        self._trial.report(value, epoch)
        if not self._trial.should_prune():
            return False
        self._trial.set_user_attr(PRUNED_AT, epoch)
        self.metrics.update({"optuna/pruned": 1.0, "optuna/pruned_epoch": float(epoch)})
        log.info("optuna: trial %d pruned after epoch %d (%s %.4g); stopping", self.trial_number, epoch,
                 self.monitor, value)
        return True
