"""lrnn-lightning's Optuna sweeper (Optuna >= 4, ask/tell): resumable SQLite studies and pruning.

``hparams_search=optuna`` selects it (``hydra/sweeper: lrnn_optuna``). Each batch of ``n_jobs``
trials is asked from the study, launched through Hydra's launcher (basic, joblib, submitit) and
told. ``n_trials`` is the study's total: rerunning the same command continues an interrupted study
(trials left RUNNING by the dead sweep are failed and their parameters queued again; new jobs are
numbered after the old ones, job N running trial N). Each job gets its trial as
``optuna_trial.{number,study_name,storage}``; ``lrnn_lightning.callbacks.OptunaPruning`` reports
``val/ppl`` per epoch to it and stops a trial the pruner gives up on, which is told PRUNED.

Hydra imports every module of ``hydra_plugins`` on each start (and each tab completion): this one
imports hydra-core alone, and optuna only when a sweep starts.
"""

import functools
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lrnn-lightning[sweep]'"
MIN_OPTUNA = (4, 0)
# a study attribute: trials failed because their sweep died (not counted in n_trials, rerun)
INTERRUPTED = "lrnn_interrupted_trials"
# a trial attribute set by the job's pruning callback: the epoch at which the pruner stopped it
PRUNED_AT = "pruned_at_epoch"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lrnn_sweepers.optuna_sweeper.OptunaSweeper"
    # sampler and pruner stay configs until a sweep starts (optuna is imported then, not before)
    _recursive_: bool = False
    # the study, kept in `storage` (an Optuna RDB URL, e.g. sqlite:///<dir>/optuna.db; null: in memory,
    # neither resumable nor prunable since the jobs cannot reach it)
    study_name: Optional[str] = None
    storage: Optional[str] = None
    direction: str = "minimize"
    # the study's total number of finished trials (a rerun runs only the missing ones)
    n_trials: int = 20
    # trials asked, launched and told together (run in parallel by the joblib/submitit launchers)
    n_jobs: int = 1
    # instantiated: an optuna sampler and pruner (`_target_` + arguments); pruner null: no pruning
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner",
                                                 "n_startup_trials": 5, "n_warmup_steps": 1})
    # search space: key -> interval(a,b) | tag(log, interval(a,b)) | choice(a,b,..) | range(a,b[,step]) | value
    params: Optional[Dict[str, Any]] = None
    # share of failed jobs (exceptions) tolerated before the sweep stops; a NaN/inf result fails its trial only
    max_failure_rate: float = 0.0


ConfigStore.instance().store(group="hydra/sweeper", name="lrnn_optuna", node=OptunaSweeperConf, provider="lrnn-lightning")


class SweepError(Exception):
    """A configuration the sweep cannot run with: printed alone, exit status 2."""


def require_optuna() -> Any:
    """The optuna module, or a SweepError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise SweepError(f"hparams_search=optuna needs Optuna, which is not installed: {INSTALL_HINT}") from None
    version = tuple(int(p) for p in optuna.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_OPTUNA:
        raise SweepError(f"hparams_search=optuna needs optuna >= 4 (found {optuna.__version__}): {INSTALL_HINT}"
                         " (and `pip uninstall hydra-optuna-sweeper` if an older install left it)")
    return optuna


def exit_on_sweep_error(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def open_storage(url: str | None) -> Any:
    """An Optuna storage for ``url``; SQLite gets its folder, an absolute path and a patient lock
    timeout (parallel jobs write their epochs to the same file)."""
    import optuna

    if url is None:
        return None
    url = sqlite_absolute(url)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def sqlite_absolute(url: str) -> str:
    """``sqlite:///relative/x.db`` -> ``sqlite:////abs/relative/x.db``: jobs may start in another folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix):]).absolute())
    return url


def resume(study: Any, n_trials: int) -> int:
    """Make ``study`` ready to continue; returns how many trials are still to run for ``n_trials``
    in all. Trials left RUNNING by a sweep that died are told FAIL, recorded as interrupted (not
    counted) and, when they had parameters, queued again; finished trials (COMPLETE, PRUNED and
    FAIL that are not interrupts) count; WAITING (queued) trials are asked first."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    stale = [t for t in trials if t.state == TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    if stale:
        interrupted |= {t.number for t in stale}
        study.set_user_attr(INTERRUPTED, sorted(interrupted))
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   or (t.state == TrialState.FAIL and t.number not in interrupted) for t in trials)
    log.info("study '%s': %d trials finished, %d interrupted (failed, queued again), %d to run",
             study.study_name, finished, len(stale), max(0, n_trials - finished))
    return max(0, n_trials - finished)


def consecutive(numbers: Sequence[int]) -> List[List[int]]:
    """Indices of ``numbers`` grouped into runs of consecutive values (job N must run trial N)."""
    runs: List[List[int]] = []
    for i, n in enumerate(numbers):
        if runs and numbers[runs[-1][-1]] + 1 == n:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class OptunaSweeper(Sweeper):
    """``hydra.sweeper`` for ``hparams_search=optuna`` (see the module doc)."""

    def __init__(self, study_name: Optional[str] = None, storage: Optional[str] = None, direction: str = "minimize",
                 n_trials: int = 20, n_jobs: int = 1, sampler: Any = None, pruner: Any = None,
                 params: Optional[Dict[str, Any]] = None, max_failure_rate: float = 0.0) -> None:
        self.study_name = study_name
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler = sampler
        self.pruner = pruner
        self.params = params
        self.max_failure_rate = max_failure_rate
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None
        self.last_failure: Optional[BaseException] = None

    @exit_on_sweep_error
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        require_optuna()
        self.check_settings()
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def check_settings(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise SweepError(f"hydra.sweeper.direction must be minimize or maximize (got {self.direction!r})")
        if not (isinstance(self.n_trials, int) and self.n_trials >= 0):
            raise SweepError(f"hydra.sweeper.n_trials must be a whole number >= 0 (got {self.n_trials!r})")
        if not (isinstance(self.n_jobs, int) and self.n_jobs >= 1):
            raise SweepError(f"hydra.sweeper.n_jobs must be a whole number >= 1 (got {self.n_jobs!r})")
        if not 0.0 <= float(self.max_failure_rate) <= 1.0:
            raise SweepError(f"hydra.sweeper.max_failure_rate must lie in [0, 1] (got {self.max_failure_rate})")

    @exit_on_sweep_error
    def sweep(self, arguments: List[str]) -> Any:
        from hydra_plugins.lrnn_sweepers._search_space import SearchSpaceError, parse

        optuna = require_optuna()
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        try:
            space = parse(_plain(self.params), arguments, self.hydra_context.config_loader)
        except SearchSpaceError as e:
            raise SweepError(f"search space: {e}") from None
        if not space.distributions:
            raise SweepError("nothing to search: give hydra.sweeper.params or a sweep on the command line, "
                             "e.g. model.optimizer.lr='tag(log, interval(1e-4, 1e-2))' model.hidden_size='choice(128,256)'")

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))

        study = self.open_study(optuna)
        remaining = resume(study, self.n_trials) if self.storage is not None else self.n_trials
        trial_args = self.trial_arguments(study)
        if self.storage is None and self.pruner is not None:
            log.warning("hydra.sweeper.storage is null: the jobs cannot reach the study, so nothing is pruned")

        launched = failed = 0
        while remaining > 0:
            trials = [study.ask(fixed_distributions=space.distributions) for _ in range(min(self.n_jobs, remaining))]
            batch = [space.overrides(t.params) + trial_args(t.number) for t in trials]
            try:
                self.validate_batch_is_legal(batch)
            except Exception:
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                raise
            for run in consecutive([t.number for t in trials]):
                returns = self.launcher.launch([batch[i] for i in run], initial_job_idx=trials[run[0]].number)
                for i, ret in zip(run, returns):
                    failed += self.tell(study, trials[i], ret)
            launched += len(trials)
            remaining -= len(trials)
            if failed and failed / launched > self.max_failure_rate:
                log.error("%d of %d jobs failed (hydra.sweeper.max_failure_rate=%s): stopping the sweep",
                          failed, launched, self.max_failure_rate)
                raise self.last_failure
        self.report(study, sweep_dir)
        return study

    def open_study(self, optuna: Any) -> Any:
        from hydra.utils import instantiate

        storage = open_storage(self.storage)
        existing = 0
        if storage is not None and self.study_name is not None:
            names = optuna.get_all_study_names(storage)
            if self.study_name in names:
                old = optuna.load_study(study_name=self.study_name, storage=storage)
                want = optuna.study.StudyDirection[self.direction.upper()]
                if old.direction != want:
                    raise SweepError(f"study '{self.study_name}' in {self.storage} was created to "
                                     f"{old.direction.name.lower()}, not to {self.direction}: set "
                                     f"hydra.sweeper.direction={old.direction.name.lower()} or choose another study_name")
                existing = len(old.get_trials(deepcopy=False))
        try:
            sampler = _instantiate_sampler(self.sampler, existing) if self.sampler is not None else None
            pruner = instantiate(_plain(self.pruner)) if self.pruner is not None else optuna.pruners.NopPruner()
        except Exception as e:
            raise SweepError(f"hydra.sweeper.sampler / pruner: {e}") from None
        return optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                   direction=self.direction, load_if_exists=True)

    def trial_arguments(self, study: Any):
        """The overrides that tell a job its trial (``optuna_trial.*``), by trial number."""
        from hydra_plugins.lrnn_sweepers._search_space import render

        if self.storage is None:
            return lambda number: []
        url, name = render(sqlite_absolute(self.storage)), render(study.study_name)
        return lambda number: [f"++optuna_trial.number={number}", f"++optuna_trial.study_name={name}",
                               f"++optuna_trial.storage={url}"]

    def tell(self, study: Any, trial: Any, ret: JobReturn) -> int:
        """Tell the study how the job of ``trial`` ended; returns 1 for a failed job, else 0."""
        import optuna
        from optuna.trial import TrialState

        if ret.status != JobStatus.COMPLETED:
            try:
                ret.return_value  # re-raises the job's exception
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                return 0
            except Exception as e:
                log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
                study.tell(trial, state=TrialState.FAIL)
                self.last_failure = e
                return 1
        value = ret.return_value
        # the job's OptunaPruning callback marks a trial it stopped (read afresh: another process wrote it)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        pruned_at = next((t.user_attrs.get(PRUNED_AT) for t in running if t.number == trial.number), None)
        if pruned_at is not None:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned after epoch %d", trial.number, pruned_at)
            return 0
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = float("nan")
        if not math.isfinite(value):
            log.warning("trial %d returned %r, not a finite number: told FAIL", trial.number, ret.return_value)
            study.tell(trial, state=TrialState.FAIL)
            return 0
        study.tell(trial, value)
        log.info("trial %d: %s with %s", trial.number, value, " ".join(f"{k}={v}" for k, v in trial.params.items()))
        return 0

    def report(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        summary = " ".join(f"{k.lower()} {v}" for k, v in counts.items())
        if not counts["COMPLETE"]:
            log.warning("study '%s': no trial completed (%s)", study.study_name, summary)
            return
        best = study.best_trial
        log.info("study '%s': %s; best trial %d: %s = %s with %s", study.study_name, summary, best.number,
                 self.config.get("optimized_metric", "value"), best.value,
                 " ".join(f"{k}={v}" for k, v in best.params.items()))
        results = {"name": "optuna", "study_name": study.study_name, "storage": self.storage,
                   "best_trial": best.number, "best_value": best.value, "best_params": best.params, "trials": counts}
        _write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _instantiate_sampler(cfg: Any, existing_trials: int) -> Any:
    """The configured sampler; a resumed study's seed moves on by the trials it holds, else the
    sampler would propose the first trials' parameters again."""
    from hydra.utils import instantiate

    cfg = dict(_plain(cfg))
    if existing_trials and cfg.get("seed") is not None:
        cfg["seed"] = int(cfg["seed"]) + existing_trials
    return instantiate(cfg)


def _write_text(path: Path, text: str) -> None:
    from lrnn_lightning.atomic import write_text

    write_text(path, text)
