"""Sweeps and scale-out: multirun + DDP, Optuna studies that resume, joblib, W&B per job, DDP LightRNN."""

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg, run_script

pytestmark = pytest.mark.slow

SMALL = ["experiment=tiny", "trainer.max_epochs=1"]


def jobs_of(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "logs").rglob("metrics.json"))


def test_multirun_of_two_jobs_each_with_two_ddp_processes(tmp_path):
    proc = run_script("train.py", "-m", *SMALL, "logger=csv", "hardware=ddp_cpu", "model.hidden_size=16,24",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    # each job had its two ranks, and no child process launched a sweep (or a run) of its own
    assert out.count("Launching 2 jobs locally") == 1
    # (Lightning's rank line may reach the output through two log handlers: count the jobs that had it)
    rank1 = re.findall(r"GLOBAL_RANK: 1, MEMBER: 2/2", out)
    assert len(rank1) in (2, 4) and len(re.findall(r"GLOBAL_RANK: 0, MEMBER: 1/2", out)) == len(rank1)
    jobs = jobs_of(tmp_path)
    assert [p.name for p in jobs] == ["0", "1"] and len({p.parent for p in jobs}) == 1
    assert not (tmp_path / "logs" / "train" / "runs").exists()
    sizes = {p.name: (p / ".hydra" / "overrides.yaml").read_text() for p in jobs}
    assert "model.hidden_size=16" in sizes["0"] and "model.hidden_size=24" in sizes["1"]


def test_optuna_study_interrupted_after_two_trials_resumes_to_three(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution

    args = ["hparams_search=optuna", *SMALL, "logger=none", f"paths.root_dir={tmp_path}", "study_name=s",
            "model.hidden_size=choice(8,16)"]
    first = run_script("train.py", *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    study_dir = tmp_path / "logs" / "train" / "studies" / "s"
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    # the sweep dies while its third trial runs: the study is left with a RUNNING trial
    stale = study.ask({"model.hidden_size": CategoricalDistribution([8, 16])})

    second = run_script("train.py", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    # the interrupted point runs again, as a new trial whose job is numbered after the old ones
    assert trials[3].params["model.hidden_size"] == stale.params["model.hidden_size"]
    assert [p.name for p in jobs_of(tmp_path)] == ["0", "1", "3"]
    assert "1 interrupted" in second.stdout + second.stderr

    third = run_script("train.py", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 4  # nothing left to run


def test_joblib_launcher_runs_two_jobs(tmp_path):
    proc = run_script("train.py", "-m", *SMALL, "logger=csv", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      "seed=1,2", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel" in proc.stdout + proc.stderr
    assert [p.name for p in jobs_of(tmp_path)] == ["0", "1"]


def wandb_runs(job: Path) -> list[Path]:
    return sorted((job / "wandb").glob("offline-run-*/run-*.wandb"))


def test_wandb_offline_one_run_per_job_grouped_by_sweep(tmp_path):
    proc = run_script("train.py", "-m", *SMALL, "logger=wandb", "model.hidden_size=16,24",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path, env_extra={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(tmp_path)
    assert len(jobs) == 2
    sweep = jobs[0].parent.name
    ids = set()
    for job in jobs:
        runs = wandb_runs(job)
        assert len(runs) == 1
        ids.add(runs[0].name)
        record = runs[0].read_bytes()  # the run record holds group, name and tags as plain strings
        assert sweep.encode() in record and f"{sweep}/{job.name}".encode() in record
        size = "16" if job.name == "0" else "24"
        assert f"model.hidden_size={size}".encode() in record
    assert len(ids) == 2


def test_sweep_identity_outside_and_inside_a_sweep(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from lrnn_lightning.loggers import sweep_identity

    cfg = compose_cfg("train", [*TINY], tmp_path / "run", tmp_path)
    assert sweep_identity(["tiny"]) == {}
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "my_sweep")
        cfg.hydra.job.num = 3
        cfg.hydra.overrides.task = ["model.hidden_size=16", "paths.root_dir=/x", "x=" + "y" * 80]
    HydraConfig().set_config(cfg)
    ident = sweep_identity(["tiny"])
    assert ident["group"] == "my_sweep" and ident["name"] == "my_sweep/3"
    assert ident["tags"][:2] == ["tiny", "model.hidden_size=16"] and all(len(t) <= 64 for t in ident["tags"])
    assert not any(t.startswith("paths.") for t in ident["tags"])


def test_resumed_run_continues_its_wandb_run(tmp_path):
    env = {"WANDB_MODE": "offline"}
    first = run_script("train.py", *SMALL, "logger=wandb", f"paths.root_dir={tmp_path}", "hydra.run.dir=first",
                       cwd=tmp_path, env_extra=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_script("train.py", *SMALL, "logger=wandb", f"paths.root_dir={tmp_path}", "hydra.run.dir=second",
                        "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
                        cwd=tmp_path, env_extra=env)
    assert second.returncode == 0, second.stderr[-3000:]
    run_id = [wandb_runs(tmp_path / d)[0].stem.removeprefix("run-") for d in ("first", "second")]
    assert run_id[0] == run_id[1]


def test_ddp_lightrnn_checkpoint_resumes_in_one_process(tmp_path):
    from lrnn_lightning.checkpoint import load_language_model

    light = [*TINY, "model=lightrnn", "model.embedding_size=16", "model.hidden_size=16",
             "callbacks.reallocation.skip_last_epoch=false", "callbacks.reallocation.move_penalty=0"]
    ddp = run_script("train.py", *light, "hardware=ddp_cpu", "trainer.max_epochs=2", f"paths.root_dir={tmp_path}",
                     "hydra.run.dir=ddp", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    last = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    trained, _, _ = load_language_model(last)
    ckpt = torch.load(last, weights_only=True)
    assert any("Reallocation" in k and v["rounds"] == 2 for k, v in ckpt["callbacks"].items())
    single = run_script("train.py", *light, "hardware=cpu", "trainer.max_epochs=3", f"ckpt_path={last}",
                        f"paths.root_dir={tmp_path}", "hydra.run.dir=single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    # the single process continued from the DDP table: round 3 starts from it
    log = (tmp_path / "single" / "train.log").read_text()
    assert "reallocation round 3 (rank 0)" in log and "initial table" not in log
    # the table at the end is the DDP table with exactly round 3's moves: started from it, not anew
    resumed, _, _ = load_language_model(tmp_path / "single" / "checkpoints" / "last.ckpt")
    moved = json.loads((tmp_path / "single" / "metrics.json").read_text())["realloc/moved_words"]
    assert moved > 0
    assert int((resumed.head.table.cell != trained.head.table.cell).sum()) == moved


def test_multinode_config_targets_slurm_through_submitit(tmp_path):
    cfg = compose_cfg("train", ["hardware=multinode", "nodes=4", "gpus_per_node=4"], tmp_path / "run", tmp_path)
    assert cfg.trainer.num_nodes == 4 and cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp"
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.nodes == 4 and cfg.hydra.launcher.tasks_per_node == 4
    assert cfg.trainer.precision in ("bf16-mixed", "16-mixed")
