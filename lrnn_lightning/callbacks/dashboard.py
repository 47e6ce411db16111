"""What a run looks like while it trains: per-epoch pictures, samples and facts for W&B, TensorBoard
and the run directory."""

from __future__ import annotations

import colorsys
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from lrnn_lightning.atomic import atomic_path, write_text
from lrnn_lightning.callbacks.reallocation import Reallocation
from lrnn_lightning.resume import epoch_cut_short

log = logging.getLogger(__name__)

HISTORY_KEYS = ("realloc/cost_before", "realloc/cost_after", "realloc/lower_bound", "realloc/moved_words")


def _matplotlib_figure():
    """``matplotlib.figure.Figure`` (no pyplot: no global state, no GUI backend), or None."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def synthetic_word_classes(corpus: Any, words: list[str]) -> np.ndarray | None:
    """The true class (1..K) of each vocabulary word of a synthetic corpus; ``<eos>`` 0, others -1.
    None for any other corpus."""
    from lrnn_lightning.data.synthetic import EOS_STATE, ClassMarkovLanguage, SyntheticCorpus
    from lrnn_lightning.data.vocab import EOS

    if not isinstance(corpus, SyntheticCorpus):
        return None
    lang = ClassMarkovLanguage(corpus.spec)
    index = dict(zip(lang.words, lang.word_class.tolist()))
    index[EOS] = EOS_STATE
    return np.array([index.get(w, -1) for w in words], dtype=np.int64)


def class_colours(num_classes: int) -> np.ndarray:
    """``[K + 2, 3]`` RGB: index 0 for ``<eos>`` (black), 1..K spread over the hues by the golden
    ratio (neighbouring classes look different), K + 1 for words without a class (grey)."""
    out = np.zeros((num_classes + 2, 3))
    for c in range(1, num_classes + 1):
        out[c] = colorsys.hsv_to_rgb((c * 0.6180339887) % 1.0, 0.55 + 0.4 * (c % 2), 0.95 - 0.25 * (c % 3 == 0))
    out[num_classes + 1] = 0.6
    return out


def table_picture(word_at: np.ndarray, rows: int, cols: int, classes: np.ndarray | None) -> tuple[np.ndarray, str]:
    """An ``[R, C, 3]`` RGB image of the word table: each cell coloured by the true class of its word
    (synthetic data) or else by its word's frequency band (``floor(log2(rank + 1))``, ids are ranks);
    empty cells white. Returns the image and what the colours mean."""
    word_at = word_at.reshape(rows, cols)
    filled = word_at >= 0
    rgb = np.ones((rows, cols, 3))
    w = word_at[filled]
    if classes is not None:
        K = int(classes.max(initial=0))
        c = classes[w]
        rgb[filled] = class_colours(K)[np.where(c >= 0, c, K + 1)]
        return rgb, f"colour: the word's true class ({K} classes; black <eos>, grey none)"
    from matplotlib import colormaps

    band = np.floor(np.log2(w + 1.0))
    rgb[filled] = colormaps["viridis"](band / max(band.max(initial=0), 1.0))[:, :3]
    return rgb, f"colour: frequency band log2(rank) (dark: most frequent, yellow: rank ~2^{int(band.max(initial=0))})"


class Dashboard(L.Callback):
    """Per epoch (every ``every_n_epochs``), on rank 0 unless said otherwise:

    - ``data/optimal_ppl`` and ``val/ppl_over_optimal`` (``val/ppl / data/optimal_ppl``) when the data
      has a known optimum (the synthetic language), as epoch metrics for every logger;
    - ``gpu/max_memory_allocated_mb``: the epoch's peak of ``torch.cuda.max_memory_allocated`` (CUDA
      only; the max over ranks);
    - a generated sample (``sample_words`` words from ``<eos>``, the sampler of ``generate.py``, at
      ``temperature``, from a private generator: the run's random streams are untouched):
      W&B table ``samples/text`` (every epoch so far), TensorBoard text, ``<dirpath>/samples/epoch_NNN.txt``;
    - LightRNN: a picture of the word table (``table_picture``) as ``<dirpath>/plots/table_epoch_NNN.png``
      and W&B image ``table/image``, next to the W&B table ``table/rows`` (the rows of the most frequent
      words with their words); and when a reallocation round happened, ``plots/realloc_history.png``
      and the W&B table ``realloc/history`` with line charts ``realloc/costs`` and ``realloc/moved``
      (every round so far).

    Once: ``model/sru_backend``, the SRU backend each layer actually ran (``triton``/``torch``; one
    name when all agree) in the loggers' hyperparameters, the W&B summary and ``metrics.json``.

    Pictures need matplotlib (``pip install 'lrnn-lightning[bench]'``); without it they are skipped
    with one info line and everything else is logged.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1, sample_words: int = 60,
                 temperature: float = 1.0, seed: int = 0, rows_shown: int = 16, words_per_row: int = 12,
                 pictures: bool = True):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.dirpath = Path(dirpath) if dirpath else None
        self.every_n_epochs, self.sample_words = every_n_epochs, sample_words
        self.temperature, self.seed = temperature, seed
        self.rows_shown, self.words_per_row, self.pictures = rows_shown, words_per_row, pictures
        self.samples: list[list] = []  # [epoch, global step, text] per epoch so far: the W&B table
        self.metrics: dict[str, Any] = {}
        self._backend_logged = False
        self._rounds_drawn = 0
        self._classes: np.ndarray | None = None
        self._classes_done = False
        self._no_matplotlib_said = False
        self._validated = False  # a validation ended since the last epoch end: val/ppl is this epoch's

    # ---- hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._backend_logged:
            self._backend_logged = True
            self._log_backend(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        validated, self._validated = self._validated, False
        if trainer.sanity_checking or trainer.fast_dev_run or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if epoch_cut_short(trainer):  # a stop in the middle of the epoch: the resumed run ends it
            return
        self._log_epoch_metrics(trainer, pl_module, validated)
        if not trainer.is_global_zero:
            return
        self._sample(trainer, pl_module)
        head = getattr(pl_module, "head", None)
        if hasattr(head, "table"):
            self._table(trainer, head)
        realloc = next((c for c in trainer.callbacks if isinstance(c, Reallocation)), None)
        if realloc is not None and len(realloc.history) > self._rounds_drawn:
            self._rounds_drawn = len(realloc.history)
            self._history(trainer, realloc.history)

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples = list(state_dict.get("samples", []))

    # ---- metrics -------------------------------------------------------------------------------------
    def _log_epoch_metrics(self, trainer, pl_module, validated: bool) -> None:
        values = {}
        optimal = (getattr(trainer.datamodule, "metrics", None) or {}).get("data/optimal_ppl")
        if optimal:
            values["data/optimal_ppl"] = float(optimal)
            ppl = trainer.callback_metrics.get("val/ppl")
            if ppl is not None and validated:
                values["val/ppl_over_optimal"] = float(ppl) / float(optimal)
        for key, value in values.items():
            # equal on every rank: sync_dist only averages equals (and keeps Lightning's DDP check quiet)
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2 ** 20
            pl_module.log("gpu/max_memory_allocated_mb", peak, on_step=False, on_epoch=True, sync_dist=True,
                          reduce_fx="max")
            key = "gpu/max_memory_allocated_mb"
            self.metrics[key] = max(peak, self.metrics.get(key, 0.0))

    def _log_backend(self, trainer, pl_module) -> None:
        from lrnn_lightning.modules.sru import SRULayer

        ran = [m.last_backend for m in pl_module.modules() if isinstance(m, SRULayer) and m.last_backend]
        if not ran:
            return
        backend = ran[0] if len(set(ran)) == 1 else ",".join(ran)
        self.metrics["model/sru_backend"] = backend
        if not trainer.is_global_zero:
            return
        log.info("SRU backend that ran: %s (per layer: %s)", backend, ", ".join(ran))
        params = {"model/sru_backend": backend, "model/sru_backend_per_layer": ran}
        for lg in trainer.loggers:
            lg.log_hyperparams(params)
            summary = _wandb_summary(lg)
            if summary is not None:
                summary["model/sru_backend"] = backend

    # ---- a generated sample --------------------------------------------------------------------------
    def _sample(self, trainer, pl_module) -> None:
        from lrnn_lightning.generation import generate_words

        vocab = getattr(trainer.datamodule, "vocab", None)
        head = getattr(pl_module, "head", None)
        if vocab is None or not hasattr(head, "sample") or self.sample_words <= 0:
            return
        device = pl_module.device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + trainer.current_epoch)
        was_training, threads = pl_module.training, torch.get_num_threads()
        pl_module.eval()
        if device.type == "cpu":  # one token at a time: tiny ops, where a thread pool only adds waiting
            torch.set_num_threads(1)
        try:
            words = generate_words(pl_module, vocab, [], self.sample_words, self.temperature, gen)
        finally:
            pl_module.train(was_training)
            torch.set_num_threads(threads)
        text = " ".join(words).replace(" <eos> ", "\n").replace("<eos>", "\n").strip()
        epoch, step = trainer.current_epoch, trainer.global_step
        write_text(self.dirpath / "samples" / f"epoch_{epoch:03d}.txt", text + "\n")
        self.samples = [s for s in self.samples if s[0] != epoch] + [[epoch, step, text]]
        for lg in trainer.loggers:
            if _is_wandb(lg):
                lg.log_table(key="samples/text", columns=["epoch", "step", "sample"], data=self.samples, step=step)
            elif hasattr(getattr(lg, "experiment", None), "add_text"):  # TensorBoard
                lg.experiment.add_text("samples", text.replace("\n", "  \n"), step)

    # ---- the word table ------------------------------------------------------------------------------
    def _word_classes(self, trainer) -> np.ndarray | None:
        if not self._classes_done:
            self._classes_done = True
            dm = trainer.datamodule
            vocab = getattr(dm, "vocab", None)
            if vocab is not None:
                try:
                    self._classes = synthetic_word_classes(getattr(dm, "corpus", None), vocab.words)
                except Exception as e:  # a picture is not worth a failed run
                    log.info("no class colours for the word table: %s", e)
        return self._classes

    def _table(self, trainer, head) -> None:
        vocab = getattr(trainer.datamodule, "vocab", None)
        if vocab is None:
            return
        table, epoch, step = head.table, trainer.current_epoch, trainer.global_step
        word_at = table.word_at().cpu().numpy()
        classes = self._word_classes(trainer)
        data = self._rows(word_at.reshape(table.rows, table.cols), table, vocab.words, classes, epoch)
        columns = ["epoch", "row", "words (most frequent first)"] + (["top class share"] if classes is not None else [])
        for lg in trainer.loggers:
            if _is_wandb(lg):
                lg.log_table(key="table/rows", columns=columns, data=data, step=step)
        Figure = self._figure_class()
        if Figure is None:
            return
        rgb, meaning = table_picture(word_at, table.rows, table.cols, classes)
        fig = Figure(figsize=(6.4, 6.4 * table.rows / table.cols + 0.6))
        ax = fig.add_subplot()
        ax.imshow(rgb, interpolation="nearest", aspect="equal")
        ax.set_title(f"word table {table.rows}x{table.cols}, epoch {epoch}\n{meaning}", fontsize=9)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        # at least one pixel per cell, at most ~2000 pixels a side
        dpi = int(min(max(100, 1.3 * max(table.rows, table.cols) / 6.4), 2000 / 6.4))
        path = self._save(fig, f"table_epoch_{epoch:03d}.png", dpi)
        for lg in trainer.loggers:
            if _is_wandb(lg):
                lg.log_image(key="table/image", images=[str(path)], step=step, caption=[f"epoch {epoch}"])

    def _rows(self, grid: np.ndarray, table, words: list[str], classes: np.ndarray | None, epoch: int) -> list[list]:
        """The rows holding the most frequent words (ids are frequency ranks), each with its words."""
        first = table.row(torch.arange(min(self.rows_shown * 4, table.vocab_size), device=table.cell.device))
        out = []
        for r in list(dict.fromkeys(first.tolist()))[: self.rows_shown]:
            ids = np.sort(grid[r][grid[r] >= 0])
            labels = [words[w] + (f"/c{classes[w]}" if classes is not None else "") for w in ids[: self.words_per_row]]
            shown = " ".join(labels)
            row = [epoch, r, shown]
            if classes is not None:
                row.append(round(float(np.bincount(classes[ids] + 1).max() / max(len(ids), 1)), 3))
            out.append(row)
        return out

    # ---- reallocation history ------------------------------------------------------------------------
    def _history(self, trainer, history: list[dict[str, float]]) -> None:
        rounds = list(range(1, len(history) + 1))
        cols = {k: [float(h.get(k, math.nan)) for h in history] for k in HISTORY_KEYS}
        step = trainer.global_step
        wandb_loggers = [lg for lg in trainer.loggers if _is_wandb(lg)]
        if wandb_loggers:
            import wandb

            names = [k.split("/", 1)[1] for k in HISTORY_KEYS]
            data = [[r, *(cols[k][i] for k in HISTORY_KEYS)] for i, r in enumerate(rounds)]
            tbl = wandb.Table(columns=["round", *names], data=data)
            costs = wandb.plot.line_series(xs=rounds, ys=[cols[k] for k in HISTORY_KEYS[:3]], keys=names[:3],
                                           title="reallocation: cost of the table (nats)", xname="round")
            moved = wandb.plot.line(tbl, "round", "moved_words", title="reallocation: words moved")
            for lg in wandb_loggers:
                lg.log_metrics({"realloc/history": tbl, "realloc/costs": costs, "realloc/moved": moved}, step=step)
        Figure = self._figure_class()
        if Figure is None:
            return
        fig = Figure(figsize=(10, 4))
        ax, ax2 = fig.subplots(1, 2)
        for k, style in zip(HISTORY_KEYS[:3], ("o-", "s-", "^--")):
            ax.plot(rounds, cols[k], style, label=k.split("/", 1)[1])
        ax.set_xlabel("round")
        ax.set_ylabel("cost (nats over the epoch's tokens)")
        ax.set_title("cost of the table before/after each round")
        ax.legend(fontsize=8)
        ax2.bar(rounds, cols["realloc/moved_words"], color="tab:purple")
        ax2.set_xlabel("round")
        ax2.set_ylabel("words moved")
        ax2.set_title("words moved per round")
        for a in (ax, ax2):
            a.set_xticks(rounds)
        fig.tight_layout()
        self._save(fig, "realloc_history.png", 100)

    # ---- files ---------------------------------------------------------------------------------------
    def _figure_class(self):
        if not self.pictures:
            return None
        Figure = _matplotlib_figure()
        if Figure is None and not self._no_matplotlib_said:
            self._no_matplotlib_said = True
            log.info("matplotlib is not installed (pip install 'lrnn-lightning[bench]'): no pictures of the word "
                     "table and the reallocation history; samples, tables and metrics are still logged")
        return Figure

    def _save(self, fig, name: str, dpi: int) -> Path:
        path = self.dirpath / "plots" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
        return path


def _is_wandb(lg) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(lg, WandbLogger)


def _wandb_summary(lg):
    if not _is_wandb(lg):
        return None
    return getattr(lg.experiment, "summary", None)
