"""Lightning's own flags: every lightning.Trainer argument is trainer.<arg>=... without '+';
fast_dev_run runs end to end; the debug configs log to their own task, without W&B."""

import inspect
import json

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, TINY
from lrnn_lightning.run import train

PARAMS = inspect.signature(L.Trainer).parameters
# not trainer.* keys: lrnn_lightning.run builds them from the callbacks/ and logger/ groups, and
# passes its own checkpoint IO (atomic writes) as the plugin
BUILT_ELSEWHERE = {"callbacks", "logger", "plugins"}
TRAINER_ARGS = sorted(set(PARAMS) - BUILT_ELSEWHERE)
# where conf/train.yaml departs from Lightning's default on purpose
OURS = {
    "default_root_dir",  # the run directory
    "max_epochs",  # the default run: 3 epochs
    "gradient_clip_val",  # recurrent LMs clip (0.25)
    "log_every_n_steps",
    "num_sanity_val_steps",  # 2: Lightning's None means 2 as well
    "use_distributed_sampler",  # the data module splits the streams over ranks itself
    "deterministic",
    "enable_model_summary",
}


def test_train_yaml_lists_every_trainer_argument_with_lightnings_default():
    listed = OmegaConf.load(CONF / "train.yaml").trainer
    assert set(TRAINER_ARGS) <= set(listed), sorted(set(TRAINER_ARGS) - set(listed))
    assert set(listed) - {"_target_"} <= set(PARAMS), "a key lightning.Trainer does not take"
    differ = {n: (listed[n], PARAMS[n].default) for n in TRAINER_ARGS if n not in OURS and listed[n] != PARAMS[n].default}
    assert not differ, differ  # listed value vs Lightning's default


def test_every_trainer_argument_is_settable_without_plus(make_cfg):
    cfg = make_cfg([*TINY, *(f"trainer.{name}=7" for name in TRAINER_ARGS)])
    assert {name: cfg.trainer[name] for name in TRAINER_ARGS} == dict.fromkeys(TRAINER_ARGS, 7)


def test_common_flags_reach_the_trainer(make_cfg):
    cfg = make_cfg([*TINY, "trainer.limit_train_batches=5", "trainer.limit_val_batches=0.5",
                    "trainer.limit_test_batches=3", "trainer.max_steps=10", "trainer.val_check_interval=0.25",
                    "trainer.accumulate_grad_batches=2", "trainer.precision=bf16-mixed", "trainer.profiler=simple",
                    "trainer.max_time=00:00:10:00", "trainer.check_val_every_n_epoch=2"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (5, 0.5, 3)
    assert (trainer.max_steps, trainer.val_check_interval, trainer.accumulate_grad_batches) == (10, 0.25, 2)
    assert trainer.precision == "bf16-mixed" and type(trainer.profiler).__name__ == "SimpleProfiler"
    assert trainer.check_val_every_n_epoch == 2
    assert trainer.fit_loop.max_steps == 10 and not trainer.fast_dev_run


def test_fast_dev_run_end_to_end(make_cfg, tmp_path):
    """One batch each of training, validation and test, through our callbacks (the context-clustered
    start and reallocation of the LightRNN table, checkpointing, tokens/s) and the metrics file."""
    cfg = make_cfg([*TINY, "logger=csv", "trainer.fast_dev_run=true", "model=lightrnn",
                    "callbacks.reallocation.skip_last_epoch=false"])
    metrics = train(cfg)
    assert metrics["trainer/epochs"] == 1 and "test/ppl" in metrics and "train/loss" in metrics
    assert "realloc/moved_words" in metrics  # the one round ran after the one training batch
    assert "ckpt/best" not in metrics  # fast_dev_run writes no checkpoint: the in-memory model is tested
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test/ppl"] == pytest.approx(metrics["test/ppl"])
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "csv").exists()  # nor a log


@pytest.mark.parametrize("name", sorted(f.stem for f in (CONF / "debug").glob("*.yaml")))
def test_debug_configs_have_their_own_task_and_no_wandb(make_cfg, tmp_path, name):
    cfg = make_cfg([f"debug={name}"])
    assert cfg.task_name == f"debug_{name}"
    targets = [c.get("_target_", "") for c in (cfg.get("logger") or {}).values() if c]
    assert not any("wandb" in t.lower() for t in targets), targets
    # runs go to logs/<task_name>/ (the fixture sets hydra.run.dir itself; the sweep dir follows the same rule)
    assert f"{tmp_path}/logs/debug_{name}/multiruns/" in cfg.hydra.sweep.dir
    # W&B stays one override away
    cfg = make_cfg([f"debug={name}", "logger=wandb"])
    assert any("wandb" in c._target_.lower() for c in cfg.logger.values())
