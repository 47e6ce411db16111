"""Wall time and peak resident memory of each process, phase by phase, as JSON in the run directory."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import lightning as L


# the peak before the last reset_phase_peak: Linux's ru_maxrss is the high-water mark that the reset
# lowers, so without it the "peak so far" would fall after every phase
_peak_before_reset_mb = 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB), phases reset or not."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024, _peak_before_reset_mb)


def phase_peak_mb() -> float:
    """Peak RSS since the last ``reset_phase_peak`` (Linux ``VmHWM``), else the process's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def reset_phase_peak() -> None:
    """Start a new phase: Linux resets ``VmHWM`` to the current RSS when 5 is written to clear_refs."""
    global _peak_before_reset_mb
    _peak_before_reset_mb = max(peak_rss_mb(), phase_peak_mb())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


class ResourceLog(L.Callback):
    """Writes ``<dirpath>/rank<r>.json``: for every rank, a list of events (fit start, train start
    (after the context start), each epoch start, each reallocation round, each checkpoint save,
    train end), each with the seconds since the process started the fit, the process's peak RSS so
    far, its peak RSS since the previous event (``phase_peak_mb``: the phase that ends with this
    event; Linux) and its current RSS. Rewritten atomically at every event."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.events: list[dict] = []
        self._t0 = time.perf_counter()

    def _event(self, trainer, name: str, **extra) -> None:
        from lrnn_lightning.atomic import write_text

        self.events.append({"event": name, "seconds": time.perf_counter() - self._t0, "global_step": trainer.global_step,
                            "peak_rss_mb": peak_rss_mb(), "phase_peak_mb": phase_peak_mb(), "rss_mb": current_rss_mb(),
                            **extra})
        reset_phase_peak()
        path = self.dirpath / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"rank": trainer.global_rank, "pid": os.getpid(), "events": self.events}, indent=1))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._event(trainer, "fit_start")

    def on_train_start(self, trainer, pl_module) -> None:
        self._event(trainer, "train_start")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._event(trainer, "epoch_start", epoch=trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        realloc = next((c for c in trainer.callbacks if hasattr(c, "history") and hasattr(c, "rounds")), None)
        if realloc is not None and realloc.rounds > getattr(self, "_rounds_seen", 0):
            self._rounds_seen = realloc.rounds
            self._event(trainer, "reallocation_round", **{k.replace("/", "_"): v for k, v in realloc.history[-1].items()})

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._event(trainer, "checkpoint_save")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._event(trainer, "validation_end")

    def on_train_end(self, trainer, pl_module) -> None:
        self._event(trainer, "train_end")
