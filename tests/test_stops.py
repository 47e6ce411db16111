"""Every way a run stops, resumed in its own run directory with ``ckpt_path=last``, ends bit-identical
(CPU) to the uninterrupted run: weights, optimizer, scheduler, word table, reallocation rounds,
metrics, and the CSV and TensorBoard logs (no step logged twice or lost).

Stops: ``trainer.max_steps``, ``trainer.max_time`` (Lightning's Timer), SIGTERM, Ctrl-C (SIGINT),
SLURM's requeue signal (SIGUSR1 under ``hardware=multinode``) and a crash (SIGKILL) after a step
checkpoint; in one process here, under DDP in ``test_ddp_stops.py``. A graceful stop writes its final
checkpoint once, at the step boundary where it stops.

One uninterrupted reference run is shared by all cases (module scope): each case costs one stopped
and one resumed run of a small LightRNN (17 windows per epoch, 2 epochs, a reallocation round after
each, step checkpoints every 4 steps, dropout on).
"""

import csv
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.utilities.exceptions import SIGTERMException

import resume_helpers
from conftest import ROOT, compose_cfg, run_script
from lrnn_lightning.run import train

BASE = ["experiment=tiny", "data.corpus.train_tokens=1200", "data.corpus.valid_tokens=600",
        "data.corpus.test_tokens=600", "model=lightrnn", "model.dropout=0.3", "test=false",
        "trainer.num_sanity_val_steps=0",
        "callbacks.reallocation.skip_last_epoch=false", "callbacks.model_checkpoint.every_n_train_steps=4",
        # CSV and TensorBoard (W&B: no network in the tests)
        "logger=many", "logger.wandb=null",
        "+callbacks.count._target_=resume_helpers.CountSaves"]
STOP = 6  # every graceful stop below ends after global step 6 (epoch 0, between the step saves at 4 and 8)
SIGNAL = ["+callbacks.signal._target_=resume_helpers.SignalAt", f"+callbacks.signal.step={STOP - 1}"]
SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242",
             "SLURM_NODELIST": "127.0.0.1"}
# hardware=multinode on this machine: a SLURM job of one CPU task (one process: no DDP wrapper, so
# that its numbers are the reference run's; test_ddp_stops.py runs two tasks)
MULTINODE = ["hardware=multinode", "hydra.mode=RUN", "nodes=1", "gpus_per_node=1", "trainer.accelerator=cpu",
             "trainer.strategy=auto", "trainer.precision=32-true"]
HELPERS_ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
# columns that hold wall times: never compared
TIMES = ("train/tokens_per_sec", "realloc/seconds", "realloc/solve_seconds")
SCALARS = ("train/loss", "train/ppl", "val/ppl", "realloc/moved_words", "realloc/row_purity", "test/ppl")


def run(root: Path, name: str, overrides: list[str]):
    """``train.py`` in this process, in run directory ``root/name``: metrics, or the exception it ended with."""
    cfg = compose_cfg("train", [*BASE, *overrides], root / name, root)
    try:
        return train(cfg)
    finally:
        GlobalHydra.instance().clear()


def load(path) -> dict:
    return torch.load(path, weights_only=True)


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(f)]


def tensorboard_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in SCALARS if tag in tags}


def final_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if k.startswith(("train/", "val/", "test/", "realloc/")) and k not in TIMES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: 2 epochs of 17 steps."""
    root = tmp_path_factory.mktemp("stops")
    metrics = run(root, "straight", [])
    return root, metrics


def assert_resumed_like_the_reference(root: Path, name: str, reference_metrics: dict) -> None:
    resumed = run(root, name, ["ckpt_path=last"])
    ref, got = load(root / "straight" / "checkpoints" / "last.ckpt"), load(root / name / "checkpoints" / "last.ckpt")
    assert (got["global_step"], got["epoch"]) == (ref["global_step"], ref["epoch"]) == (34, 1)
    for key in ref["state_dict"]:  # the word table (head.table.cell) included
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key]), f"{key} differs"
    assert ref["optimizer_states"][0]["state"].keys() == got["optimizer_states"][0]["state"].keys()
    for i, state in ref["optimizer_states"][0]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, got["optimizer_states"][0]["state"][i][k]), f"optimizer state {i}/{k} differs"
    assert ref["lr_schedulers"] == got["lr_schedulers"]
    realloc = next(k for k in ref["callbacks"] if k.startswith("Reallocation"))
    rounds = [{k: v for k, v in r.items() if k not in TIMES} for r in ref["callbacks"][realloc]["history"]]
    assert len(rounds) == 2
    assert [{k: v for k, v in r.items() if k not in TIMES} for r in got["callbacks"][realloc]["history"]] == rounds
    assert final_metrics(resumed) == final_metrics(reference_metrics)
    # the logs of the run directory go on as one run's: no step twice, none lost
    assert csv_rows(root / name) == csv_rows(root / "straight")
    assert tensorboard_scalars(root / name) == tensorboard_scalars(root / "straight")


# (the overrides that stop the run after global step STOP, the exception the run ends with or None)
GRACEFUL = {
    "max_steps": ([f"trainer.max_steps={STOP}"], None),
    # Lightning's Timer (what trainer.max_time installs), on a clock of one second per step
    "max_time": (["+callbacks.timer._target_=resume_helpers.step_clock_timer", f"+callbacks.timer.steps={STOP}"], None),
    "sigterm": ([*SIGNAL, "+callbacks.signal.signal=SIGTERM"], SIGTERMException),
    "ctrl_c": ([*SIGNAL, "+callbacks.signal.signal=SIGINT"], SystemExit),  # exit(1), as Lightning ends on Ctrl-C
    "slurm_requeue": ([*MULTINODE, *SIGNAL, "+callbacks.signal.signal=SIGUSR1"], SIGTERMException),
}


@pytest.mark.parametrize("cause", list(GRACEFUL))
def test_a_stopped_run_resumes_exactly_and_saved_its_final_checkpoint_once(reference, cause, monkeypatch, tmp_path):
    root, reference_metrics = reference
    overrides, ends_with = GRACEFUL[cause]
    monkeypatch.setattr(signal, "SIGINT", signal.SIGINT)  # (restored below, whatever the run did to it)
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    requeued = tmp_path / "requeued"
    if cause == "slurm_requeue":
        for key, value in SLURM_ENV.items():
            monkeypatch.setenv(key, value)
        # SLURM's scontrol on this machine: records what it was asked to do
        scontrol = tmp_path / "bin" / "scontrol"
        scontrol.parent.mkdir()
        scontrol.write_text(f'#!/bin/sh\necho "$@" >> {requeued}\n')
        scontrol.chmod(0o755)
        monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    resume_helpers.SAVES.clear()
    try:
        if ends_with is None:
            run(root, cause, ["ckpt_path=last", *overrides])
        else:
            with pytest.raises(ends_with):
                run(root, cause, ["ckpt_path=last", *overrides])
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    # the final checkpoint is the exact mid-epoch one of step STOP, written once
    assert resume_helpers.SAVES == [4, STOP]
    ckpts = root / cause / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]  # no best checkpoint of an unfinished epoch
    cut = load(ckpts / "last.ckpt")
    assert (cut["epoch"], cut["global_step"]) == (0, STOP)
    assert cut["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"windows_done": STOP, "windows": 17}]
    assert cut["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 0  # epoch 0 is not over
    if cause == "slurm_requeue":
        assert requeued.read_text().split() == ["requeue", "4242"]
        for key, value in SLURM_ENV.items():
            monkeypatch.setenv(key, value)  # the requeued job runs in the same SLURM environment
        assert_resumed_like_the_reference(root, cause, reference_metrics)
        return
    assert_resumed_like_the_reference(root, cause, reference_metrics)


def test_a_run_killed_after_a_step_checkpoint_resumes_exactly(reference):
    """SIGKILL: nothing runs after it; the run resumes from the step checkpoint before it (step 8)."""
    root, reference_metrics = reference
    proc = run_script("train.py", *BASE, f"paths.root_dir={root}", "hydra.run.dir=killed",
                      "+callbacks.kill._target_=resume_helpers.KillAt", "+callbacks.kill.step=8",
                      cwd=root, env_extra=HELPERS_ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert load(root / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert_resumed_like_the_reference(root, "killed", reference_metrics)
