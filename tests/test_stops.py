"""Every way a run stops, resumed in its own run directory with ``ckpt_path=last``, ends bit-identical
(CPU) to the uninterrupted run: weights, optimizer, scheduler, word table, reallocation rounds,
metrics, and the CSV and TensorBoard logs (no step logged twice or lost).

Stops: ``trainer.max_steps``, ``trainer.max_time`` (Lightning's Timer), SIGTERM, Ctrl-C (SIGINT),
SLURM's requeue signal (SIGUSR1 under ``hardware=multinode``) and a crash (SIGKILL) after a step
checkpoint, in one process and under DDP. A graceful stop writes its final
checkpoint once, at the step boundary where it stops. Under DDP (two CPU processes started as the
tasks of a SLURM job), one run directory goes through every stop in turn (``test_ddp_*``).

One uninterrupted reference run is shared by all cases (module scope): each case costs one stopped
and one resumed run of a small LightRNN (one epoch of 17 windows, a reallocation round at its end,
step checkpoints every 4 steps, dropout on).
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

BASE = ["experiment=tiny", "data.corpus.valid_tokens=600",
        "data.corpus.test_tokens=600", "model=lightrnn", "model.dropout=0.3", "test=false",
        "trainer.num_sanity_val_steps=0",
        "callbacks.reallocation.skip_last_epoch=false", "callbacks.model_checkpoint.every_n_train_steps=4",
        # CSV and TensorBoard (W&B: no network in the tests)
        "logger=many", "logger.wandb=null",
        "+callbacks.count._target_=resume_helpers.CountSaves"]
# one process: one epoch of 17 windows, a reallocation round at its end
ONE = [*BASE, "data.corpus.train_tokens=1200", "trainer.max_epochs=1"]
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
    cfg = compose_cfg("train", [*ONE, *overrides], root / name, root)
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
    # by step: the event files of one directory are read in name order, and a resumed run's file can
    # sort before the first one's (names hold the second and the process id)
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in SCALARS if tag in tags}


def final_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if k.startswith(("train/", "val/", "test/", "realloc/")) and k not in TIMES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: 17 steps."""
    root = tmp_path_factory.mktemp("stops")
    metrics = run(root, "straight", [])
    return root, metrics


def assert_resumed_like_the_reference(root: Path, name: str, reference_metrics: dict) -> None:
    resumed = run(root, name, ["ckpt_path=last"])
    ref, got = load(root / "straight" / "checkpoints" / "last.ckpt"), load(root / name / "checkpoints" / "last.ckpt")
    assert (got["global_step"], got["epoch"]) == (ref["global_step"], ref["epoch"]) == (17, 0)
    for key in ref["state_dict"]:  # the word table (head.table.cell) included
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key]), f"{key} differs"
    assert ref["optimizer_states"][0]["state"].keys() == got["optimizer_states"][0]["state"].keys()
    for i, state in ref["optimizer_states"][0]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, got["optimizer_states"][0]["state"][i][k]), f"optimizer state {i}/{k} differs"
    assert ref["lr_schedulers"] == got["lr_schedulers"]
    realloc = next(k for k in ref["callbacks"] if k.startswith("Reallocation"))
    rounds = [{k: v for k, v in r.items() if k not in TIMES} for r in ref["callbacks"][realloc]["history"]]
    assert len(rounds) == 1  # the round at the end of the epoch that the stop cut short
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
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (restored below)
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
    if cause == "slurm_requeue":  # the requeued job runs in the same SLURM environment
        assert requeued.read_text().split() == ["requeue", "4242"]
    assert_resumed_like_the_reference(root, cause, reference_metrics)


def test_a_run_killed_after_a_step_checkpoint_resumes_exactly(reference):
    """SIGKILL: nothing runs after it; the run resumes from the step checkpoint before it (step 8)."""
    root, reference_metrics = reference
    proc = run_script("train.py", *ONE, f"paths.root_dir={root}", "hydra.run.dir=killed",
                      "+callbacks.kill._target_=resume_helpers.KillAt", "+callbacks.kill.step=8",
                      cwd=root, env_extra=HELPERS_ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert load(root / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert_resumed_like_the_reference(root, "killed", reference_metrics)


# ---- DDP: two processes, every stop in turn in one run directory -----------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(root: Path, plan: list[dict], report: Path, bin_dir: Path) -> list[int]:
    """Starts the two ranks of a SLURM job running ``ddp_stop_chain.py`` over ``plan``; their exit codes."""
    import json
    import subprocess

    plan_file = root / f"plan_{report.stem}.json"
    plan_file.write_text(json.dumps(plan))
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, **HELPERS_ENV, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               **SLURM_ENV, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": str(rank),
               "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": "4343"}
        log = open(root / f"{report.stem}_rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_stop_chain.py"), str(root),
                                       str(plan_file), str(report)], cwd=root, env=env, stdout=log, stderr=log))
    return [p.wait(timeout=900) for p in procs]


@pytest.mark.slow
def test_ddp_every_stop_in_turn_resumes_exactly(tmp_path):
    """One run directory of two processes (13 windows per rank and epoch, 26 steps) is stopped by
    max_steps (after step 3), max_time (6), SIGTERM to rank 0 alone (8, also a step save), Ctrl-C to rank 1
    alone (11), the requeue signal to rank 0 alone under hardware=multinode (17, in epoch 1) and SIGKILL
    (after the step save of 20), each time resumed with ckpt_path=last; it ends as the uninterrupted run."""
    import json

    ddp = [*BASE, "data.corpus.train_tokens=2000", "hardware=ddp_cpu", "trainer.devices=2"]
    multinode = ["hardware=multinode", "hydra.mode=RUN", "nodes=1", "gpus_per_node=2", "trainer.accelerator=cpu",
                 "trainer.precision=32-true"]
    signal_at = lambda step, sig, ranks: [*SIGNAL[:1], f"+callbacks.signal.step={step}",  # noqa: E731
                                          f"+callbacks.signal.signal={sig}", f"+callbacks.signal.ranks={ranks}"]
    chain = [*ddp, "ckpt_path=last"]
    plan = [
        {"run": "straight", "overrides": ddp},
        {"run": "chain", "overrides": [*chain, "trainer.max_steps=3"]},
        {"run": "chain", "overrides": [*chain, "+callbacks.timer._target_=resume_helpers.step_clock_timer",
                                       "+callbacks.timer.steps=6"]},
        {"run": "chain", "overrides": [*chain, *signal_at(7, "SIGTERM", [0])]},
        {"run": "chain", "overrides": [*chain, *signal_at(10, "SIGINT", [1])]},
        {"run": "chain", "overrides": [*chain, *multinode, *signal_at(16, "SIGUSR1", [0])]},
        {"run": "chain", "overrides": [*chain, "+callbacks.kill._target_=resume_helpers.KillAt",
                                       "+callbacks.kill.step=20"]},
    ]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requeued = tmp_path / "requeued"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {requeued}\n')
    (bin_dir / "scontrol").chmod(0o755)
    report = tmp_path / "report_a.json"
    codes = _ranks(tmp_path, plan, report, bin_dir)
    logs = "".join((tmp_path / f"report_a_rank{r}.log").read_text()[-3000:] for r in (0, 1))
    assert codes == [-signal.SIGKILL, -signal.SIGKILL], f"{codes}\n{logs}"
    jobs = json.loads(report.read_text())
    assert len(jobs) == 6, logs  # the seventh was killed
    assert [(j["ended"], j["saves"]) for j in jobs[1:]] == [
        (None, [3]),  # max_steps: its final checkpoint, once
        (None, [4, 6]),  # max_time: the step save at 4, the final one at 6
        ("SIGTERMException", [8]),  # the stop and the step save at the same step: one checkpoint
        ("SystemExit", [11]),  # Ctrl-C, as Lightning ends on Ctrl-C
        # step saves at 12 and 16, the end of epoch 0 at 13 (the best and last.ckpt), the requeue's at 17
        ("SIGTERMException", [12, 13, 13, 16, 17]),
    ], logs
    assert requeued.read_text().split() == ["requeue", "4343"]
    assert load(tmp_path / "chain" / "checkpoints" / "last.ckpt")["global_step"] == 20

    report = tmp_path / "report_b.json"
    codes = _ranks(tmp_path, [{"run": "chain", "overrides": chain}], report, bin_dir)
    assert codes == [0, 0], "".join((tmp_path / f"report_b_rank{r}.log").read_text()[-3000:] for r in (0, 1))
    resumed = json.loads(report.read_text())[0]
    ref, got = (load(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("straight", "chain"))
    assert (got["global_step"], got["epoch"]) == (ref["global_step"], ref["epoch"]) == (26, 1)
    for key in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key]), f"{key} differs"
    for i, state in ref["optimizer_states"][0]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, got["optimizer_states"][0]["state"][i][k]), f"optimizer state {i}/{k} differs"
    assert ref["lr_schedulers"] == got["lr_schedulers"]
    assert final_metrics(resumed["metrics"]) == final_metrics(jobs[0]["metrics"])
    assert csv_rows(tmp_path / "chain") == csv_rows(tmp_path / "straight")
    assert tensorboard_scalars(tmp_path / "chain") == tensorboard_scalars(tmp_path / "straight")
