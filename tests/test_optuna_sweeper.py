"""Our Optuna sweeper (hydra_plugins/lrnn_sweepers): search space, resume, batches, failures,
loading without optuna, and pruning through the job's OptunaPruning callback."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose_cfg, run_script

optuna = pytest.importorskip("optuna")

from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.lrnn_sweepers._search_space import SearchSpaceError, parse, render  # noqa: E402
from hydra_plugins.lrnn_sweepers.optuna_sweeper import INTERRUPTED, consecutive, resume  # noqa: E402

APP = ROOT / "tests" / "sweep_app" / "app.py"


# --- search space ---------------------------------------------------------------------------------

def test_interval_log_choice_and_range_become_optuna_distributions():
    space = parse(
        {"model.dropout": "interval(0, 0.5)", "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
         "model.hidden_size": [128, 256], "model.num_layers": "range(1, 4)", "data.bptt": 35},
        ["model=choice(lstm,sru)", "x=choice(0.1,'0.2',true)", "w=range(0,1,0.25)", "n=tag(log, range(1, 9))",
         "s=a,b", "experiment=tiny", "+extra=1"])
    d = space.distributions
    assert d["model.dropout"] == FloatDistribution(0.0, 0.5)
    assert d["model.optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.hidden_size"] == CategoricalDistribution([128, 256])
    assert d["model.num_layers"] == IntDistribution(1, 3)  # Python's range: the stop is excluded
    assert d["model"] == CategoricalDistribution(["lstm", "sru"])
    assert d["x"] == CategoricalDistribution([0.1, "0.2", True])
    assert d["w"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert d["n"] == IntDistribution(1, 8, log=True)
    assert d["s"] == CategoricalDistribution(["a", "b"])
    assert space.fixed == ["data.bptt=35", "experiment=tiny", "+extra=1"]


def test_command_line_replaces_the_configured_entry_of_the_same_key():
    space = parse({"model.hidden_size": "choice(128, 256)", "model.dropout": "interval(0, 0.5)"},
                  ["model.hidden_size=64", "model.dropout=choice(0.1,0.2)", "+model.extra=interval(0,1)"])
    assert "model.hidden_size" not in space.distributions and space.fixed == ["model.hidden_size=64"]
    assert space.distributions["model.dropout"] == CategoricalDistribution([0.1, 0.2])
    assert space.keys["model.extra"] == "+model.extra"
    assert space.overrides({"model.dropout": 0.2, "model.extra": 0.5}) == [
        "model.hidden_size=64", "model.dropout=0.2", "+model.extra=0.5"]


@pytest.mark.parametrize("value", ["lstm", "1.0", "true", "null", "a b", "x,y", "it's", "c:\\dir\\", "", 1e-06, 3,
                                   -2.5, True, None, "sqlite:////tmp/a b/optuna.db", "choice(1,2)"])
def test_values_written_as_overrides_parse_back_to_themselves(value):
    parsed = OverridesParser.create().parse_override(f"k={render(value)}")
    assert not parsed.is_sweep_override()
    assert parsed.value() == value and type(parsed.value()) is type(value)


@pytest.mark.parametrize("line, message", [
    ("a=tag(log, interval(0, 1))", "positive lower bound"),
    ("a=interval(2, 1)", "is empty"),
    ("a=range(5, 1)", "is empty"),
    ("a=tag(log, range(1, 10, 2))", "step 1"),
    ("a=tag(foo, interval(0, 1))", "unknown tag"),
    ("a=choice([1,2],[3])", "numbers, strings"),
    ("a=choice(1,1)", "twice"),
    ("a=interval(", "no viable alternative"),
])
def test_bad_search_space_entries_say_what_is_wrong(line, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse(None, [line])


# --- resume and numbering -------------------------------------------------------------------------

def test_resume_fails_and_requeues_the_trials_a_dead_sweep_left_running(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    space = {"x": FloatDistribution(0, 1)}
    for v in (0.1, 0.2):
        t = study.ask(space)
        study.tell(t, v)
    t = study.ask(space)
    study.tell(t, state=TrialState.FAIL)  # a job that failed: it counts
    running = study.ask(space)  # the sweep died while this job ran
    bare = study.ask()  # ... and this one had no parameters yet

    assert resume(study, n_trials=6) == 3  # 3 finished; the 2 interrupted ones do not count
    trials = study.get_trials()
    assert [t.state for t in trials[3:5]] == [TrialState.FAIL, TrialState.FAIL]
    assert study.user_attrs[INTERRUPTED] == [running.number, bare.number]
    # the interrupted point is asked again first; the bare trial had nothing to repeat
    assert len(trials) == 6 and trials[5].state == TrialState.WAITING
    again = study.ask(space)
    assert again.number == 5 and again.params == running.params and again.user_attrs["retry_of"] == running.number
    study.tell(again, 0.3)
    # a later resume still leaves the interrupts out of the count, and finds nothing stale
    assert resume(study, n_trials=6) == 2
    assert resume(study, n_trials=3) == 0


def test_jobs_are_launched_in_runs_of_consecutive_trial_numbers():
    assert consecutive([4, 5, 6]) == [[0, 1, 2]]
    assert consecutive([4, 5, 9, 10, 12]) == [[0, 1], [2, 3], [4]]


# --- whole sweeps of a model-free Hydra app (seconds each) ----------------------------------------

def run_app(*args, env_extra=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    proc = subprocess.run([sys.executable, str(APP), *args], cwd=APP.parent, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, proc.stdout + proc.stderr


def load(sweep_dir: Path, name="app"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted((p.name for p in sweep_dir.iterdir() if p.name.isdigit()), key=int)


def job_trial(sweep_dir: Path, job: str) -> int:
    lines = (sweep_dir / job / ".hydra" / "overrides.yaml").read_text().splitlines()
    return int(next(line for line in lines if "optuna_trial.number=" in line).rsplit("=", 1)[1])


def test_joblib_runs_batches_of_n_jobs_trials_and_job_n_runs_trial_n(tmp_path):
    proc, out = run_app(f"hydra.sweep.dir={tmp_path}", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
                        "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, out[-3000:]
    assert out.count("is launching 2 jobs") == 1 and out.count("is launching 1 jobs") == 1
    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(math.isclose(t.value, (t.params["x"] - 0.3) ** 2 + t.params["k"]) for t in trials)
    assert job_dirs(tmp_path) == ["0", "1", "2"] and [job_trial(tmp_path, j) for j in ("0", "1", "2")] == [0, 1, 2]
    assert "best trial" in out and (tmp_path / "optimization_results.yaml").is_file()


def test_rerunning_the_command_continues_an_interrupted_study(tmp_path):
    args = [f"hydra.sweep.dir={tmp_path}"]
    first, out = run_app(*args, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, out[-3000:]
    study = load(tmp_path)
    stale = study.ask({"x": FloatDistribution(0, 1), "k": CategoricalDistribution([0, 1])})  # killed mid-job

    second, out = run_app(*args, "hydra.sweeper.n_trials=3")
    assert second.returncode == 0, out[-3000:]
    assert "1 interrupted" in out
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].params == stale.params  # the interrupted point ran again, as trial and job 3
    assert job_dirs(tmp_path) == ["0", "1", "3"] and job_trial(tmp_path, "3") == 3

    # the interrupt does not count toward n_trials: n_trials=4 runs exactly one more
    third, out = run_app(*args, "hydra.sweeper.n_trials=4")
    trials = load(tmp_path).get_trials()
    assert third.returncode == 0 and len(trials) == 5 and trials[4].state == TrialState.COMPLETE
    # the resumed sampler (seed moved on) does not propose the first trials' points again
    assert trials[4].params["x"] not in {t.params["x"] for t in trials[:4]}


def test_a_failing_job_fails_its_trial_and_stops_the_sweep_unless_tolerated(tmp_path):
    args = ["k=1", "fail_at_k=1", "hydra.sweeper.n_trials=2"]
    proc, out = run_app(f"hydra.sweep.dir={tmp_path / 'a'}", *args)
    assert proc.returncode != 0 and "job asked to fail" in out
    assert [t.state for t in load(tmp_path / "a").get_trials()] == [TrialState.FAIL]
    proc, out = run_app(f"hydra.sweep.dir={tmp_path / 'b'}", *args, "hydra.sweeper.max_failure_rate=1.0")
    assert proc.returncode == 0, out[-3000:]
    assert [t.state for t in load(tmp_path / "b").get_trials()] == [TrialState.FAIL] * 2


def test_bad_sweeper_settings_are_one_clear_error(tmp_path):
    proc, out = run_app(f"hydra.sweep.dir={tmp_path}", "x=tag(log, interval(0, 1))")
    assert proc.returncode == 2 and "error: search space: x: a log interval needs a positive lower bound" in out
    assert "Traceback" not in out


def test_a_study_is_not_reopened_with_the_other_direction(tmp_path):
    from hydra_plugins.lrnn_sweepers.optuna_sweeper import OptunaSweeper, SweepError

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="s", storage=storage, direction="minimize")
    with pytest.raises(SweepError, match="was created to minimize.*direction=minimize"):
        OptunaSweeper(study_name="s", storage=storage, direction="maximize").open_study(optuna)
    assert OptunaSweeper(study_name="s", storage=storage).open_study(optuna).direction.name == "MINIMIZE"


# --- a plain install (no optuna) ----------------------------------------------------------------

def no_optuna(tmp_path: Path) -> dict:
    """Environment in which `import optuna` fails, as on an install without the sweep extra."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "optuna.py").write_text("raise ImportError(\"No module named 'optuna'\")\n")
    return {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}


def test_without_optuna_the_plugin_loads_silently_and_a_study_says_how_to_install(tmp_path):
    # Hydra imports every plugin module at start: ours must load, silently, without optuna, and
    # then (our sweeper being registered) say what to install when a study is asked for.
    # (An older install's hydra-optuna-sweeper would print "Error importing": pip uninstall it.)
    proc = run_script("train.py", "hparams_search=optuna", "experiment=tiny", "logger=none",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path, env_extra=no_optuna(tmp_path))
    out = proc.stdout + proc.stderr
    assert "Error importing" not in out and "Traceback" not in out
    assert proc.returncode == 2 and "error: hparams_search=optuna needs Optuna" in out
    assert "pip install 'lrnn-lightning[sweep]'" in out


def test_the_plugin_modules_import_neither_optuna_nor_torch():
    # Hydra imports plugin modules on every start and tab completion: they must stay light
    code = ("import sys, hydra_plugins.lrnn_sweepers.optuna_sweeper, hydra_plugins.lrnn_sweepers._search_space; "
            "print(sorted(m for m in ('optuna', 'torch', 'lightning', 'sqlalchemy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_pruning_callback_is_configured_and_idle_outside_a_study(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["experiment=tiny", "logger=none", "hparams_search=optuna"], tmp_path / "run", tmp_path)
    assert cfg.hydra.sweeper._target_.endswith("lrnn_sweepers.optuna_sweeper.OptunaSweeper")
    assert cfg.hydra.sweeper.storage == f"sqlite:///{tmp_path}/logs/train/studies/train_study/optuna.db"
    callback = instantiate(cfg.callbacks.optuna_pruning)
    assert callback.monitor == "val/ppl" and callback.pruner["_target_"] == "optuna.pruners.MedianPruner"
    assert not callback.active
    plain = compose_cfg("train", ["experiment=tiny", "logger=none"], tmp_path / "run2", tmp_path)
    assert "optuna_pruning" not in plain.callbacks


def trainer_after_validation(ppl: float, epoch: int):
    """What the callback reads from a Lightning Trainer at the end of a validation epoch (one process)."""
    from types import SimpleNamespace

    import torch

    return SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=epoch, should_stop=False,
                           callback_metrics={"val/ppl": torch.tensor(ppl)},
                           strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))


def test_pruning_callback_reports_each_epoch_and_stops_a_trial_worse_than_the_median(tmp_path):
    from lrnn_lightning.callbacks import OptunaPruning

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    good = study.ask()
    for epoch, ppl in enumerate([150.0, 120.0]):
        good.report(ppl, epoch)
    study.tell(good, 120.0)
    trial = study.ask()
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 1}
    callback = OptunaPruning(trial_number=trial.number, study_name="s", storage=storage, pruner=pruner)

    first = trainer_after_validation(200.0, epoch=0)
    callback.on_validation_end(first, None)
    assert not first.should_stop  # epoch 0 is a warm-up step
    second = trainer_after_validation(190.0, epoch=1)
    callback.on_validation_end(second, None)
    assert second.should_stop
    [frozen] = study.get_trials(states=(TrialState.RUNNING,))
    assert frozen.intermediate_values == {0: 200.0, 1: 190.0} and frozen.user_attrs["pruned_at_epoch"] == 1
    assert callback.metrics == {"optuna/trial": 1.0, "optuna/pruned": 1.0, "optuna/pruned_epoch": 1.0}


def test_pruning_callback_does_nothing_outside_a_study_or_for_a_finished_trial(tmp_path):
    from lrnn_lightning.callbacks import OptunaPruning

    idle = trainer_after_validation(1e9, epoch=5)
    OptunaPruning(pruner={"_target_": "no.such.Pruner"}).on_validation_end(idle, None)
    assert not idle.should_stop

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    done = study.ask()
    study.tell(done, 1.0)
    rerun = OptunaPruning(trial_number=done.number, study_name="s", storage=storage)  # a job run again by hand
    trainer = trainer_after_validation(1e9, epoch=0)
    rerun.on_validation_end(trainer, None)
    assert not trainer.should_stop and study.trials[0].intermediate_values == {}


# --- pruning through train.py ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_study_prunes_the_hopeless_learning_rate(tmp_path):
    """8 trials over lr in {1e-6, 0.01}: once a good trial completed, each 1e-6 trial is stopped after
    its first epoch and told PRUNED; the 0.01 trials run all their epochs and complete."""
    study_dir = tmp_path / "logs" / "train" / "studies" / "p"
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    study_dir.mkdir(parents=True)
    # whatever the sampler draws: a good first trial (the median pruner's reference), then a bad one
    study = optuna.create_study(study_name="p", storage=storage)
    for lr in (0.01, 1e-6):
        study.enqueue_trial({"model.optimizer.lr": lr})
    proc = run_script(
        "train.py", "hparams_search=optuna", "experiment=tiny", "model=lstm", "logger=none", "test=false",
        f"paths.root_dir={tmp_path}", "study_name=p", "hydra.sweeper.params=null",
        "model.optimizer.lr=choice(0.000001,0.01)", "hydra.sweeper.n_trials=8",
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0",
        "trainer.max_epochs=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        cwd=tmp_path, env_extra={"OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name="p", storage=storage).get_trials()
    assert len(trials) == 8
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and len(pruned) + len(complete) == 8, [t.state for t in trials]
    assert all(t.params["model.optimizer.lr"] == 1e-06 for t in pruned)
    assert all(t.params["model.optimizer.lr"] == 0.01 for t in complete)
    assert all(t.value is not None and math.isfinite(t.value) for t in complete)
    # a pruned job reported its first epoch only, a completed one all three
    assert all(sorted(t.intermediate_values) == [0] for t in pruned)
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in complete)
    assert all(t.value < min(p.intermediate_values[0] for p in pruned) for t in complete)
    metrics = (study_dir / str(pruned[0].number) / "metrics.json").read_text()
    assert '"optuna/pruned": 1.0' in metrics and '"trainer/epochs": 1' in metrics
    print("\n".join(line for line in out.splitlines() if "[HYDRA] trial" in line or "study 'p'" in line))
