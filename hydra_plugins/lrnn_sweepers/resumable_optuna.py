"""An Optuna sweeper whose study survives interruption.

Hydra's Optuna sweeper already keeps a study in ``storage`` and reopens it (``load_if_exists``),
but a second invocation runs ``n_trials`` *more* trials, restarts the job numbers at 0 (so new
jobs overwrite the old jobs' directories) and leaves the trial that was running when the sweep
died in the RUNNING state forever. ``ResumableOptunaSweeper`` makes ``n_trials`` the study's
total: on start it marks trials left RUNNING by a dead sweep as FAIL (they are run again), runs
only the trials still missing, numbers the new jobs after the existing ones, and reseeds the
sampler (seeded as the first time, it would propose the first trials' parameters again).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def _sqlite_path(storage: Any) -> Path | None:
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///"):])
    return None


class ResumableOptunaSweeper(OptunaSweeper):
    """``hydra.sweeper._target_``: the plugin's sweeper, resumable (see the module doc)."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        db = _sqlite_path(impl.storage)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        if impl.storage is None or impl.study_name is None:
            return super().sweep(arguments)
        if impl.study_name not in {s.study_name for s in optuna.get_all_study_summaries(impl.storage)}:
            return super().sweep(arguments)  # a new study
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state.name in FINISHED for t in trials)
        stale = [t for t in trials if t.state.name == "RUNNING"]
        for t in stale:  # the sweep that ran them is gone
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        impl.n_trials = max(0, impl.n_trials - finished)
        impl.job_idx = len(trials)
        # a sampler seeded as the first time would propose the first trials' parameters again
        if hasattr(impl.sampler, "reseed_rng"):
            impl.sampler.reseed_rng()
        log.info("resuming study '%s': %d trials finished, %d interrupted (marked failed), %d to run",
                 impl.study_name, finished, len(stale), impl.n_trials)
        if impl.n_trials == 0:
            log.info("study '%s' already has its trials; best value %s", impl.study_name, study.best_value)
            return None
        return super().sweep(arguments)
