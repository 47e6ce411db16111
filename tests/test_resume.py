"""Mid-epoch checkpoints and exact resume (ckpt_path=<run>/checkpoints/last.ckpt or ckpt_path=last).

An interrupted and resumed run must end bit-identical (CPU) to the uninterrupted one: the next
window of the same epoch, the carried hidden state, the epoch's partial loss sums, the random
streams (dropout is on), optimizer, ReduceLROnPlateau scheduler, global step and epoch.
"""

import csv
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import resume_helpers
from conftest import ROOT, run_script
from lrnn_lightning.callbacks import MidEpochCheckpoint, parse_interval
from lrnn_lightning.checkpoint import resolve_ckpt_path
from lrnn_lightning.errors import UserError
from lrnn_lightning.run import train

# 2000 training tokens, batch 8, bptt 10: 25 windows (optimizer steps) per epoch in one process
SMALL = ["experiment=tiny", "data.corpus.train_tokens=2000", "data.corpus.valid_tokens=600",
         "data.corpus.test_tokens=600", "model.dropout=0.3"]
LSTM = [*SMALL, "model=lstm"]
INTERRUPT = "+callbacks.interrupt._target_=resume_helpers.InterruptAt"
HELPERS_ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
RESULT_KEYS = ("train/loss", "train/ppl", "val/loss", "val/ppl", "test/loss", "test/ppl")


def load(path) -> dict:
    return torch.load(path, weights_only=True)  # checkpoints stay loadable without pickle


def assert_same(a, b, where="") -> None:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(ref: dict, got: dict) -> None:
    assert got["global_step"] == ref["global_step"] and got["epoch"] == ref["epoch"]
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    differ = [k for k in ref["state_dict"] if not torch.equal(ref["state_dict"][k], got["state_dict"][k])]
    assert not differ, f"weights differ: {differ}"
    assert_same(ref["optimizer_states"], got["optimizer_states"], "optimizer_states")
    assert_same(ref["lr_schedulers"], got["lr_schedulers"], "lr_schedulers")


def results(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in RESULT_KEYS}


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "train/tokens_per_sec"} for row in csv.DictReader(f)]


# ---- (a) one process: interrupted mid-epoch, resumed in the same run dir ------------------------------

def test_interrupted_mid_epoch_and_resumed_equals_the_uninterrupted_run(make_cfg, tmp_path):
    common = [*LSTM, "logger=csv", "callbacks.model_checkpoint.every_n_train_steps=7"]
    straight = train(make_cfg(common, run="straight"))
    # the same run killed during step 36 (epoch 1, window 11 of 25): the last save was at step 35.
    # ckpt_path=last finds no checkpoint in the fresh run dir and starts from scratch
    with pytest.raises(resume_helpers.Interrupted):
        train(make_cfg([*common, "ckpt_path=last", INTERRUPT, "+callbacks.interrupt.step=35"], run="run"))
    ckpts = tmp_path / "run" / "checkpoints"
    cut = load(ckpts / "last.ckpt")
    assert (cut["epoch"], cut["global_step"]) == (1, 35)
    assert cut["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"windows_done": 10, "windows": 25}]
    assert cut["lrnn_train_state"][0]["sums"][1] == 10 * 10 * 8  # tokens of the 10 windows of epoch 1
    rows_before = len(csv_rows(tmp_path / "run"))

    # requeued: the same command in the same run dir; ckpt_path=last resumes from last.ckpt
    resumed = train(make_cfg([*common, "ckpt_path=last"], run="run"))
    ref, got = load(tmp_path / "straight" / "checkpoints" / "last.ckpt"), load(ckpts / "last.ckpt")
    assert got["global_step"] == 50
    assert_same_training_state(ref, got)
    # the ReduceLROnPlateau memory of epoch 0 came through the resume (compared above)
    assert got["lr_schedulers"][0]["last_epoch"] == 1 and got["lr_schedulers"][0]["best"] < 10
    assert results(tmp_path / "run") == results(tmp_path / "straight")
    assert resumed["trainer/epochs"] == straight["trainer/epochs"] == 2
    # (e) the CSV log of the run dir was continued, not replaced: the same rows as one run
    rows = csv_rows(tmp_path / "run")
    assert len(rows) > rows_before and rows == csv_rows(tmp_path / "straight")


# ---- (b) DDP: two gloo processes, each with its own stream, state, sums and random streams ----------

@pytest.mark.slow
def test_ddp_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path):
    # one run is both the uninterrupted reference and the source of the mid-epoch checkpoint: a
    # helper keeps a copy of last.ckpt as saved at step 6 (window 6 of 13 per rank), the very file
    # a run killed during step 7 leaves behind
    common = [*LSTM, "logger=none", "hardware=ddp_cpu", "trainer.max_epochs=1",
              "callbacks.model_checkpoint.every_n_train_steps=3", f"paths.root_dir={tmp_path}"]
    mid = tmp_path / "mid.ckpt"
    proc = run_script("train.py", *common, "hydra.run.dir=straight",
                      "+callbacks.copy._target_=resume_helpers.CopyLastAt", "+callbacks.copy.step=6",
                      f"+callbacks.copy.source={tmp_path}/straight/checkpoints/last.ckpt",
                      f"+callbacks.copy.target={mid}", cwd=tmp_path, env_extra=HELPERS_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = load(mid)
    assert (saved["epoch"], saved["global_step"]) == (0, 6)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"windows_done": 6, "windows": 13}]
    per_rank = saved["lrnn_train_state"]
    assert len(per_rank) == len(saved["rng_states"]) == 2
    assert not torch.equal(per_rank[0]["sums"], per_rank[1]["sums"])  # each rank's own partial sums
    assert not torch.equal(per_rank[0]["state"][0], per_rank[1]["state"][0])  # and hidden state

    proc = run_script("train.py", *common, "hydra.run.dir=resumed", f"ckpt_path={mid}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_training_state(load(tmp_path / "straight" / "checkpoints" / "last.ckpt"),
                               load(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert results(tmp_path / "resumed") == results(tmp_path / "straight")


@pytest.mark.slow
def test_ddp_lightrnn_resume_carries_the_summed_partial_statistics_exactly(tmp_path):
    """Both ranks' partial reallocation statistics travel as their sum in the mid-epoch checkpoint;
    the round at the end of the resumed epoch sees the same total, so the table, the weights and the
    round's metrics equal the uninterrupted run's."""
    common = [*SMALL, "model=lightrnn", "logger=none", "hardware=ddp_cpu", "trainer.max_epochs=1",
              "callbacks.reallocation.skip_last_epoch=false", "callbacks.model_checkpoint.every_n_train_steps=3",
              f"paths.root_dir={tmp_path}"]
    mid = tmp_path / "mid.ckpt"
    proc = run_script("train.py", *common, "hydra.run.dir=straight",
                      "+callbacks.copy._target_=resume_helpers.CopyLastAt", "+callbacks.copy.step=6",
                      f"+callbacks.copy.source={tmp_path}/straight/checkpoints/last.ckpt",
                      f"+callbacks.copy.target={mid}", cwd=tmp_path, env_extra=HELPERS_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = load(mid)
    stats = saved["lrnn_realloc_statistics"]
    assert int(stats["count"].sum()) == 2 * 6 * 8 * 10  # 2 ranks x 6 windows x batch 8 x bptt 10 targets
    proc = run_script("train.py", *common, "hydra.run.dir=resumed", f"ckpt_path={mid}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = (load(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("straight", "resumed"))
    assert torch.equal(ref["state_dict"]["head.table.cell"], got["state_dict"]["head.table.cell"])
    assert_same_training_state(ref, got)
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "resumed"))
    keys = [k for k in a if k.startswith(("train/", "val/", "test/", "realloc/")) and not k.endswith(("seconds", "_sec"))]
    assert a["realloc/round"] == 1 and {k: b[k] for k in keys} == {k: a[k] for k in keys}


def test_a_ddp_checkpoint_resumed_by_another_number_of_processes_warns_and_goes_on(make_cfg, tmp_path):
    ckpt = tmp_path / "ddp.ckpt"
    with pytest.raises(resume_helpers.Interrupted):
        train(make_cfg([*LSTM, "logger=none", "callbacks.model_checkpoint.every_n_train_steps=6", INTERRUPT,
                        "+callbacks.interrupt.step=6"], run="one"))
    saved = load(tmp_path / "one" / "checkpoints" / "last.ckpt")
    # as two processes write it: one entry per rank
    saved["lrnn_train_state"] *= 2
    saved["rng_states"] *= 2
    torch.save(saved, ckpt)
    with pytest.warns(UserWarning, match="state and the epoch's partial loss sums are dropped"):
        metrics = train(make_cfg([*LSTM, "logger=none", "test=false", "trainer.max_epochs=1", f"ckpt_path={ckpt}"],
                                 run="other"))
    assert load(tmp_path / "other" / "checkpoints" / "last.ckpt")["global_step"] == 25
    assert metrics["train/loss"] > 0


@pytest.mark.parametrize("workers", [0, 1])
def test_the_training_loader_skips_the_done_windows_once(workers):
    import numpy as np

    from lrnn_lightning.data.datamodule import ResumableLoader
    from lrnn_lightning.data.streams import BPTTWindows

    windows = BPTTWindows(np.arange(400, dtype=np.int64), batch_size=4, bptt=10, eos_id=0)
    done = {"n": 0}
    loader = ResumableLoader(windows, position=lambda: done["n"], num_workers=workers)
    assert len(loader) == len(windows) == 10
    done["n"] = 3
    assert loader.state_dict() == {"windows_done": 3, "windows": 10}
    loader.load_state_dict({"windows_done": 3, "windows": 10})
    assert len(loader) == 10  # the full epoch, as Lightning counts it
    first = [x for x, _ in loader]
    assert len(first) == 7 and torch.equal(first[0], windows[3][0])  # the next window, without reading 0..2
    assert [x for x, _ in loader][0].equal(windows[0][0])  # the next epoch starts at its first window


# ---- (c) what the mid-epoch saves write ---------------------------------------------------------------

def test_mid_epoch_saves_write_last_ckpt_only_and_epoch_end_saves_still_happen(make_cfg, tmp_path):
    # one epoch of 24 steps, validation after window 12 and at the end; the step trigger fires at
    # 6, 12 (the same global step as the validation save) and 18, never at 24 (the last batch).
    # mode=max: the second validation (lower perplexity) makes no new best; last.ckpt is saved anyway
    resume_helpers.RECORDED.clear()
    train(make_cfg([*LSTM, "logger=none", "trainer.max_epochs=1", "trainer.limit_train_batches=24",
                    "trainer.val_check_interval=0.5", "test=false", "callbacks.model_checkpoint.mode=max",
                    "callbacks.model_checkpoint.every_n_train_steps=6",
                    "+callbacks.record._target_=resume_helpers.RecordCheckpoints",
                    f"+callbacks.record.dirpath={tmp_path}/run/checkpoints"]))
    # global step at a batch start (or ("val", step) at a validation start) -> {checkpoint file: its step}
    seen = dict(resume_helpers.RECORDED)
    for step in range(1, 12):  # mid-epoch saves write last.ckpt, never a "best" checkpoint
        assert seen[step] == ({"last.ckpt": 6} if step >= 6 else {}), step
    assert seen["val", 12] == {"last.ckpt": 12}  # the step trigger fired before the validation
    # the validation then saved best + last at the same global step 12
    assert seen[13] == {"epoch_000.ckpt": 12, "last.ckpt": 12}
    assert seen[23] == {"epoch_000.ckpt": 12, "last.ckpt": 18}
    assert seen["val", 24] == {"epoch_000.ckpt": 12, "last.ckpt": 18}  # no mid-epoch save on the last batch

    ckpts = tmp_path / "run" / "checkpoints"
    last = ckpts / "last.ckpt"
    assert not last.is_symlink()
    assert load(ckpts / "epoch_000.ckpt")["global_step"] == 12  # still the best
    final = load(last)
    assert final["global_step"] == 24  # the epoch-end save, not a mid-epoch one
    assert final["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"windows_done": 0, "windows": 25}]
    assert "lrnn_train_state" not in final  # nothing to carry past an epoch's end
    newest = max(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.stat().st_mtime_ns == last.stat().st_mtime_ns


def test_train_time_interval_from_the_command_line_saves_mid_epoch(make_cfg, tmp_path):
    # an interval of 0 is due after every batch: no clock involved in what the test sees
    with pytest.raises(resume_helpers.Interrupted):
        train(make_cfg([*LSTM, "logger=none", "callbacks.model_checkpoint.train_time_interval=00:00:00",
                        INTERRUPT, "+callbacks.interrupt.step=4"]))
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    assert load(ckpts / "last.ckpt")["global_step"] == 4


# ---- (d) ckpt_path=last ---------------------------------------------------------------------------------

def test_ckpt_path_last_picks_the_newest_checkpoint_of_the_run_dir_or_none(tmp_path, caplog):
    caplog.set_level("INFO", logger="lrnn_lightning.checkpoint")
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("some/where.ckpt", tmp_path) == "some/where.ckpt"
    assert resolve_ckpt_path("last", tmp_path) is None
    assert "a fresh run" in caplog.text

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    (tmp_path / "checkpoints" / "epoch_003.ckpt").write_bytes(b"x")  # a best checkpoint never counts
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    now = time.time()
    os.utime(last, (now - 100, now - 100))
    os.utime(hpc, (now - 50, now - 50))
    os.utime(tmp_path / "checkpoints" / "epoch_003.ckpt", (now, now))
    assert resolve_ckpt_path("last", tmp_path) == str(hpc)
    assert f"resuming from {hpc}" in caplog.text
    os.utime(last, (now - 10, now - 10))
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    # the checkpoint callback's dirpath when it is configured elsewhere
    assert resolve_ckpt_path("last", tmp_path, tmp_path / "elsewhere") == str(hpc)


def test_multinode_resumes_by_itself_and_saves_mid_epoch(make_cfg):
    cfg = make_cfg(["hardware=multinode"])
    assert cfg.ckpt_path == "last"
    callback = instantiate(cfg.callbacks.model_checkpoint)
    assert callback.mid_epoch_interval == timedelta(minutes=30)


# ---- (e) logs of a run resumed into its own dir ------------------------------------------------------------

def test_csv_log_is_continued_and_rows_after_the_checkpoint_are_dropped(tmp_path):
    from lrnn_lightning.loggers import CSVLogger

    first = CSVLogger(tmp_path, name="csv", version="")
    for step in range(10):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    # a run resumed from a checkpoint at global step 6: steps 6.. were logged after it
    again = CSVLogger(tmp_path, name="csv", version="")
    again.resume_from_step(6)
    again.log_metrics({"train/loss": 60.0, "val/ppl": 1.5}, step=6)
    again.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert rows[3]["train/loss"] == "3.0" and rows[-1]["train/loss"] == "60.0" and rows[-1]["val/ppl"] == "1.5"
    # a run without a checkpoint in the same dir keeps every earlier row too
    third = CSVLogger(tmp_path, name="csv", version="")
    third.log_metrics({"train/loss": 1.0}, step=0)
    third.save()
    assert (tmp_path / "csv" / "metrics.csv").read_text().count("\n") == 1 + 7 + 1


def test_tensorboard_keeps_earlier_event_files_and_hides_events_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lrnn_lightning.loggers import TensorBoardLogger

    first = TensorBoardLogger(tmp_path, name=None, version="")
    for step in range(1, 6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.finalize("success")
    # resumed from a checkpoint at global step 3 into the same dir: steps 3.. are logged again
    again = TensorBoardLogger(tmp_path, name=None, version="")
    again.resume_from_step(3)
    for step in range(3, 7):
        again.log_metrics({"train/loss": 10.0 * step}, step=step)
    again.finalize("success")
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # the earlier file is kept
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == \
        [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0), (6, 60.0)]


# ---- (f) train_time_interval --------------------------------------------------------------------------------

@pytest.mark.parametrize("value,seconds", [
    ("00:30:00", 1800), ("01:02:03", 3723), ("1:00:00:00", 86400), ("30m", 1800), ("2h", 7200), ("90s", 90),
    ("1h30m", 5400), ("1.5h", 5400), ("45 min", 2700), ("1800", 1800), (1800, 1800), (0.5, 0.5), ("0", 0),
    (timedelta(minutes=5), 300),
])
def test_train_time_interval_parses(value, seconds):
    assert parse_interval(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["soon", "30x", "12:00", "-5", -1, "1h-", True])
def test_train_time_interval_rejects_nonsense_with_a_message(value):
    with pytest.raises(UserError, match="train_time_interval"):
        parse_interval(value)


@pytest.mark.parametrize("given,expected", [("00:30:00", timedelta(minutes=30)), ("2h", timedelta(hours=2)),
                                            ("90", timedelta(seconds=90)), ("null", None)])
def test_train_time_interval_and_steps_from_the_command_line(make_cfg, given, expected):
    cfg = make_cfg([f"callbacks.model_checkpoint.train_time_interval={given}",
                    "callbacks.model_checkpoint.every_n_train_steps=100"])
    callback = instantiate(cfg.callbacks.model_checkpoint)
    assert isinstance(callback, MidEpochCheckpoint)
    assert callback.mid_epoch_interval == expected and callback.mid_epoch_every_n_steps == 100
    assert callback.every_n_epochs == 1 and callback.save_last is True


# ---- LightRNN: the word table through a mid-epoch resume ------------------------------------------------------

# The reallocation statistics (head.stats, summed during the epoch for the round at its end) travel in
# the mid-epoch checkpoint as their sum over ranks (integers: the round's total is the same bit for
# bit). Lightning 2.6 does not call on_train_epoch_start for the epoch a run resumes mid-way, so a
# flag set on resume must not outlive the resumed epoch; the second epoch below catches that.
def test_lightrnn_mid_epoch_resume_keeps_the_table(make_cfg, tmp_path):
    # interrupted after step 10 of 25 in epoch 0; a reallocation round ends each of the 2 epochs
    common = [*SMALL, "model=lightrnn", "logger=none", "test=false", "callbacks.model_checkpoint.every_n_train_steps=5",
              "callbacks.reallocation.skip_last_epoch=false"]
    straight = train(make_cfg(common, run="straight"))
    with pytest.raises(resume_helpers.Interrupted):
        train(make_cfg([*common, INTERRUPT, "+callbacks.interrupt.step=10"], run="run"))
    resumed = train(make_cfg([*common, "ckpt_path=last"], run="run"))
    ref = load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    got = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert torch.equal(ref["state_dict"]["head.table.cell"], got["state_dict"]["head.table.cell"])
    assert_same_training_state(ref, got)
    keys = [k for k in straight if k.startswith(("train/loss", "val/", "realloc/")) and not k.endswith("seconds")]
    assert {k: resumed.get(k) for k in keys} == {k: straight[k] for k in keys}
