"""Smaller callbacks and helpers: the resource log, the throttled rich progress bar, atomic checkpoint
writes."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY
from lrnn_lightning.callbacks import progress
from lrnn_lightning.callbacks.resources import peak_rss_mb, phase_peak_mb, reset_phase_peak

LINUX_PHASES = Path("/proc/self/clear_refs").exists() and sys.platform.startswith("linux")


# ---- resources -----------------------------------------------------------------------------------
def test_resource_log_records_every_phase_of_a_run(make_cfg, tmp_path):
    from lrnn_lightning.run import train

    out = tmp_path / "resources"
    train(make_cfg([*TINY, "logger=none", "model=lightrnn", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                    "trainer.limit_val_batches=1", "test=false", "callbacks.reallocation.skip_last_epoch=false",
                    "+callbacks.resources._target_=lrnn_lightning.callbacks.resources.ResourceLog",
                    f"+callbacks.resources.dirpath={out}"]))
    assert [p.name for p in out.iterdir()] == ["rank0.json"]  # one process, no temporary file left
    log = json.loads((out / "rank0.json").read_text())
    events = log["events"]
    names = [e["event"] for e in events]
    assert names[:3] == ["fit_start", "train_start", "epoch_start"] and names[-1] == "train_end"
    assert names.count("epoch_start") == 2 and names.count("validation_end") == 2
    assert names.count("reallocation_round") == 2 and names.count("checkpoint_save") >= 2
    # each round's event carries that round's metrics, at the step it happened
    rounds = [e for e in events if e["event"] == "reallocation_round"]
    assert [(e["realloc_round"], e["global_step"]) for e in rounds] == [(1.0, 4), (2.0, 8)]
    assert all(e["realloc_moved_words"] >= 0 and e["realloc_stats_mb"] > 0 for e in rounds)
    seconds = [e["seconds"] for e in events]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    peaks = [e["peak_rss_mb"] for e in events]
    assert peaks == sorted(peaks)  # the process's peak never falls
    for e in events:
        assert 0 < e["rss_mb"] <= e["peak_rss_mb"] + 1 and 0 < e["phase_peak_mb"] <= e["peak_rss_mb"] + 1


@pytest.mark.skipif(not LINUX_PHASES, reason="per-phase peaks need Linux's /proc/self/clear_refs")
def test_phase_peak_is_the_peak_since_the_last_reset_and_the_process_peak_stays():
    reset_phase_peak()
    block = np.ones(96 * 2 ** 20, dtype=np.uint8)  # 96 MB, touched
    high = phase_peak_mb()
    del block
    reset_phase_peak()  # a new phase starts at the current resident size, without the block
    assert phase_peak_mb() < high - 64
    # the kernel's own high-water mark fell with the reset; ours does not (the kernel records the
    # mark lazily, when memory is unmapped: a fraction of a MB may be missed)
    assert peak_rss_mb() > high - 2


# ---- the rich progress bar -----------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def throttled_draws(monkeypatch, updates_per_second: float, batches: int, step_seconds: float) -> list[int]:
    """Batches after which the throttled bar redraws (Lightning's rich bar's batch hook ran), with a
    clock that advances ``step_seconds`` a batch."""
    from lightning.pytorch.callbacks import RichProgressBar

    drawn = []
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, pl_module, outputs, batch, batch_idx: drawn.append(batch_idx))
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    bar = progress.ThrottledRichProgressBar(updates_per_second)
    trainer = SimpleNamespace(max_epochs=1, max_steps=-1, global_step=0, num_training_batches=batches)
    bar._trainer = trainer
    for i in range(batches):
        clock.now = i * step_seconds
        bar.on_train_batch_end(trainer, None, None, None, i)
    return drawn


def test_rich_bar_redraws_at_most_n_times_a_second_and_after_the_last_batch(monkeypatch):
    # 10 batches a second, at most 4 redraws a second: every third batch, and the epoch's last
    assert throttled_draws(monkeypatch, 4.0, 20, 0.1) == [0, 3, 6, 9, 12, 15, 18, 19]
    # slower batches than the limit: every one
    assert throttled_draws(monkeypatch, 4.0, 5, 0.5) == [0, 1, 2, 3, 4]
    # 0: no limit
    assert throttled_draws(monkeypatch, 0.0, 5, 0.0) == [0, 1, 2, 3, 4]


def test_the_rich_bar_only_in_a_terminal(monkeypatch):
    monkeypatch.setattr(progress.sys, "stdout", SimpleNamespace(isatty=lambda: True))
    bar = progress.auto_progress_bar(updates_per_second=2.0)
    assert isinstance(bar, progress.ThrottledRichProgressBar) and bar._interval == 0.5
    monkeypatch.setattr(progress.sys, "stdout", SimpleNamespace(isatty=lambda: False))
    bar = progress.auto_progress_bar(lines_per_epoch=5)
    assert isinstance(bar, progress.PlainProgressBar) and bar.lines_per_epoch == 5


# ---- atomic checkpoint writes --------------------------------------------------------------------
class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_checkpoint_save_that_fails_leaves_the_previous_file_intact(tmp_path):
    """torch.save opens (and truncates) its file before it pickles anything: written in place, a
    save that fails would destroy the last good checkpoint."""
    from lrnn_lightning.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 1}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 2, "bad": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.arange(1000.0))
    # a save that succeeds replaces it whole
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)
    assert io.load_checkpoint(path)["epoch"] == 3


def test_an_atomic_text_write_that_fails_leaves_the_previous_file(tmp_path):
    from lrnn_lightning.atomic import atomic_path, write_text

    path = tmp_path / "metrics.json"
    write_text(path, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
