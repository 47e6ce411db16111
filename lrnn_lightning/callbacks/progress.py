from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


def auto_progress_bar(lines_per_epoch: int = 10, updates_per_second: float = 4.0) -> ProgressBar:
    """A rich progress bar in a terminal; plain log lines when output goes to a file or pipe."""
    if sys.stdout.isatty():
        return ThrottledRichProgressBar(updates_per_second)
    return PlainProgressBar(lines_per_epoch)


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's rich bar, redrawn (and its metrics read, which syncs with the GPU) at most
    ``updates_per_second`` times a second during training instead of after every batch."""

    def __init__(self, updates_per_second: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        self._interval = 1.0 / updates_per_second if updates_per_second > 0 else 0.0
        self._drawn = float("-inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._drawn < self._interval and batch_idx + 1 < self.total_train_batches:
            return
        self._drawn = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _fmt(metrics: dict) -> str:
    parts = []
    for k, v in metrics.items():
        if k == "v_num":
            continue
        v = float(v)
        parts.append(f"{k}={v:.4g}")
    return "  ".join(parts)


class PlainProgressBar(ProgressBar):
    """One line every ``1/lines_per_epoch`` of an epoch and one after each validation: log-file friendly."""

    def __init__(self, lines_per_epoch: int = 10):
        super().__init__()
        self.lines_per_epoch = max(1, lines_per_epoch)
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start for the epoch it resumes
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = self.total_train_batches
        n = batch_idx + 1
        every = max(1, int(total) // self.lines_per_epoch) if total != float("inf") else 100
        if n % every == 0 or n == total:
            elapsed = time.perf_counter() - self._t0
            pct = f"{100 * n / total:3.0f}%" if total != float("inf") else ""
            self._print(
                trainer,
                f"epoch {trainer.current_epoch} {n}/{total} {pct} {elapsed:.0f}s  {_fmt(self.get_metrics(trainer, pl_module))}",
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        # the dashboard logs val/ppl_over_optimal at the epoch's end, after this line: what
        # callback_metrics holds now is the previous validation's ratio. Show this one's.
        shown.pop("val/ppl_over_optimal", None)
        optimal = (getattr(trainer.datamodule, "metrics", None) or {}).get("data/optimal_ppl")
        if optimal and "val/ppl" in shown:
            shown["val/ppl_over_optimal"] = float(shown["val/ppl"]) / float(optimal)
        self._print(trainer, f"epoch {trainer.current_epoch} validation  {_fmt(shown)}")

    def on_test_end(self, trainer, pl_module) -> None:
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self._print(trainer, f"test  {_fmt(shown)}")
